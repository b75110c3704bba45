import gzip
import struct

import numpy as np
import pytest
import torch

from slimtorch import data
from slimtorch.core.errors import SlimtorchError
from slimtorch.data import mnist


def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(d, n_train=30, n_test=10, gz=True, dotted=False, seed=0):
    """Tiny MNIST-format files; returns {split: (images (N,28,28), labels (N,))}."""
    rng = np.random.RandomState(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        imgs = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        lbls = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr, ext in (("images", imgs, "idx3-ubyte"), ("labels", lbls, "idx1-ubyte")):
            name = f"{prefix}-{kind}.{ext}" if dotted else f"{prefix}-{kind}-{ext}"
            raw = idx_bytes(arr)
            if gz:
                (d / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (d / name).write_bytes(raw)
        out[split] = (imgs, lbls)
    return out


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True), (True, True)])
def test_synthetic_files_load_exactly(tmp_path, gz, dotted):
    ref = write_mnist(tmp_path / "mnist", gz=gz, dotted=dotted)
    for split, n in (("train", 30), ("test", 10)):
        ds = data.load("mnist", split, root=tmp_path)
        assert len(ds) == n
        x, y = ds[3]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        imgs, lbls = ref[split]
        expect = (torch.from_numpy(imgs[3]).float()[None] / 255 - 0.1307) / 0.3081
        torch.testing.assert_close(x, expect)
        assert ds.targets.tolist() == lbls.tolist()
        torch.testing.assert_close(ds.data[3], expect)


def test_files_directly_in_root_and_via_env(tmp_path, monkeypatch):
    write_mnist(tmp_path / "flat")
    assert len(data.load("mnist", root=tmp_path / "flat")) == 30
    monkeypatch.setenv("SLIMTORCH_DATA", str(tmp_path / "flat"))
    assert len(data.load("mnist", "test")) == 10


def test_second_load_comes_from_the_npy_cache(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist")
    first = data.load("mnist", root=tmp_path)
    assert list((data.cache_dir() / "decoded").glob("mnist-train-*/images.npy"))

    def boom(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(mnist, "read_mnist", boom)
    second = data.load("mnist", root=tmp_path)
    assert torch.equal(first.images, second.images) and torch.equal(first.targets, second.targets)


def test_changed_source_is_decoded_again(tmp_path):
    write_mnist(tmp_path / "mnist", seed=0)
    a = data.load("mnist", root=tmp_path)
    write_mnist(tmp_path / "mnist", n_train=20, seed=1)
    b = data.load("mnist", root=tmp_path)
    assert len(a) == 30 and len(b) == 20


def test_corrupt_magic_names_file(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    p = tmp_path / "mnist" / "train-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[3] = 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(
        SlimtorchError, match=r"train-images-idx3-ubyte: bad IDX magic number 2049 \(expected 2051\)"
    ):
        data.load("mnist", root=tmp_path)


def test_truncated_gz_file_is_named(tmp_path):
    write_mnist(tmp_path / "mnist")
    p = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(SlimtorchError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        data.load("mnist", "test", root=tmp_path)


def test_truncated_raw_file_is_named(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    p = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(
        SlimtorchError, match=r"train-labels-idx1-ubyte: header says shape \(30,\).*holds 25.*truncated"
    ):
        data.load("mnist", root=tmp_path)


def test_image_and_label_counts_must_match(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(
        SlimtorchError, match=r"holds 30 images but .*train-labels-idx1-ubyte holds 29 labels"
    ):
        data.load("mnist", root=tmp_path)


def test_label_out_of_range(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(30, 12, np.uint8)))
    with pytest.raises(SlimtorchError, match=r"train-labels-idx1-ubyte: label 12 outside 0..9"):
        data.load("mnist", root=tmp_path)


def test_images_without_labels_is_reported(tmp_path):
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SlimtorchError, match=r"has train-images-idx3-ubyte.gz but not its labels"):
        data.load("mnist", root=tmp_path)


def test_augment_is_a_shift_of_at_most_two_pixels(tmp_path):
    write_mnist(tmp_path / "mnist")
    plain, aug = data.load("mnist", root=tmp_path), data.load("mnist", root=tmp_path, augment=True)
    from slimtorch.data.transforms import normalize, shift

    x = plain.images[0].float() / 255
    cands = {
        (dy, dx): normalize(shift(x, dy, dx), plain.mean, plain.std)
        for dy in range(-2, 3)
        for dx in range(-2, 3)
    }
    seen = set()
    for _ in range(60):
        got, _ = aug[0]
        match = [k for k, c in cands.items() if torch.equal(got, c)]
        assert match, "augmented image is not a shift by at most 2 px"
        seen.add(match[0])
    assert len(seen) > 10  # the shifts really vary


# ------------------------------------------------------------------------------------- shared MNIST

TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_shared_mnist(shared_data):
    train = data.load("mnist", "train", root=shared_data)
    test = data.load("mnist", "test", root=shared_data)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.targets.bincount().tolist() == TRAIN_HIST
    assert test.targets.bincount().tolist() == TEST_HIST
    # The standard constants are the training pixels' statistics.
    px = train.images.float() / 255
    assert abs(float(px.mean()) - 0.1307) < 1e-3 and abs(float(px.std()) - 0.3081) < 1e-3
    x, y = test[0]
    assert x.shape == (1, 28, 28) and int(y) == 7  # the famous first test digit


def test_loader_batches_equal_items_and_augment_per_image(tmp_path):
    write_mnist(tmp_path / "mnist")
    ds = data.load("mnist", root=tmp_path)
    xb, yb = next(iter(data.make_loader(ds, 8)))  # goes through the batched __getitems__
    assert torch.equal(xb, torch.stack([ds[i][0] for i in range(8)]))
    assert yb.tolist() == ds.targets[:8].tolist()
    sub = data.calibration_subset(ds, 5, seed=1)
    xs, ys = next(iter(data.make_loader(sub, 5)))
    assert torch.equal(xs, ds.data[sub.indices]) and ys.tolist() == ds.targets[sub.indices].tolist()

    aug = data.load("mnist", root=tmp_path, augment=True)
    from slimtorch.data.transforms import normalize, shift

    xa, _ = next(iter(data.make_loader(aug, 30)))
    shifts = set()
    for k in range(30):
        x = ds.images[k].float() / 255
        m = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
             if torch.allclose(xa[k], normalize(shift(x, dy, dx), ds.mean, ds.std))]
        assert m
        shifts.add(m[0])
    assert len(shifts) > 5  # each image draws its own shift


def test_zero_images_is_named(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    empty = np.zeros((0, 28, 28), np.uint8)
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(idx_bytes(empty))
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    with pytest.raises(SlimtorchError, match=r"train-images-idx3-ubyte holds 0 images \(and .* 0 labels\); an MNIST "
                       "split needs at least one"):
        data.load("mnist", root=tmp_path)
