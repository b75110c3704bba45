import gzip
import struct

import numpy as np
import pytest

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_roundtrip_images_and_labels(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "i").write_bytes(idx_bytes(imgs))
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(np.array([7, 1], np.uint8))))
    np.testing.assert_array_equal(read_idx(tmp_path / "i", IMAGES_MAGIC), imgs)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz", LABELS_MAGIC), [7, 1])


def test_big_endian_types_are_converted():
    arr = np.array([1, -2, 300], dtype=">i4")
    out = parse_idx(idx_bytes(arr, 0x0C), "x")
    assert out.dtype == np.int32 and out.tolist() == [1, -2, 300]


def test_wrong_magic_names_file(tmp_path):
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(idx_bytes(np.zeros((2, 2, 2), np.uint8)))  # an images file in the labels' place
    with pytest.raises(
        SlimtorchError, match=r"train-labels-idx1-ubyte: bad IDX magic number 2051 \(expected 2049\)"
    ):
        read_idx(p, LABELS_MAGIC)


def test_truncated_data_names_file(tmp_path):
    p = tmp_path / "imgs"
    p.write_bytes(idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-7])
    with pytest.raises(
        SlimtorchError, match=r"imgs: header says shape \(4, 5, 5\) \(100 data bytes\) but the file holds 93"
    ):
        read_idx(p, IMAGES_MAGIC)


def test_truncated_header_and_empty_file(tmp_path):
    p = tmp_path / "short"
    p.write_bytes(idx_bytes(np.zeros((4, 5, 5), np.uint8))[:9])
    with pytest.raises(SlimtorchError, match="short: truncated IDX header"):
        read_idx(p, IMAGES_MAGIC)
    p.write_bytes(b"")
    with pytest.raises(SlimtorchError, match="short: truncated IDX file"):
        read_idx(p)


def test_truncated_gzip_names_file(tmp_path):
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(
        gzip.compress(idx_bytes(np.random.RandomState(0).randint(0, 255, (50, 8, 8)).astype(np.uint8)))[:200]
    )
    with pytest.raises(SlimtorchError, match=r"t10k-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(p, IMAGES_MAGIC)


def test_not_idx_at_all(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"hello world!")
    with pytest.raises(SlimtorchError, match="x: not an IDX file"):
        read_idx(p)
