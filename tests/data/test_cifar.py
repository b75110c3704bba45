import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from slimtorch import data
from slimtorch.core.errors import SlimtorchError
from slimtorch.data import cifar

CLASSES = ["dog", "airplane", "cat"]  # written unsorted on purpose


def jpeg_bytes(seed: int, size=(32, 32)) -> bytes:
    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def decoded(b: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(b)).convert("RGB"))  # (H, W, 3): the reference decoder


def make_tree(base, per_class=(("train", 3), ("test", 2))):
    """Writes base/<split>/<class>/<k>.jpg; returns {split: [(class, file, bytes)]} in sorted order."""
    out = {}
    seed = 0
    for split, n in per_class:
        items = []
        for cls in CLASSES:
            (base / split / cls).mkdir(parents=True, exist_ok=True)
            for k in reversed(range(n)):
                b = jpeg_bytes(seed)
                seed += 1
                (base / split / cls / f"{k:04d}.jpg").write_bytes(b)
                items.append((cls, f"{k:04d}.jpg", b))
        out[split] = sorted(items, key=lambda t: (t[0], t[1]))
    return out


def check_against(ds, items):
    classes = sorted(CLASSES)
    assert ds.classes == classes and len(ds) == len(items)
    assert ds.images.shape == (len(items), 3, 32, 32) and ds.images.dtype == torch.uint8
    for i, (cls, _, b) in enumerate(items):
        assert torch.equal(ds.images[i], torch.from_numpy(decoded(b)).permute(2, 0, 1))
        assert int(ds.targets[i]) == classes.index(cls)


def test_image_folder_tree(tmp_path):
    ref = make_tree(tmp_path / "cifar10")
    for split in ("train", "test"):
        check_against(data.load("cifar10", split, root=tmp_path, progress=False), ref[split])
    ds = data.load("cifar10", "test", root=tmp_path, progress=False)
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    mean, std = torch.tensor(cifar.MEAN).view(3, 1, 1), torch.tensor(cifar.STD).view(3, 1, 1)
    torch.testing.assert_close(x, (ds.images[1].float() / 255 - mean) / std)
    torch.testing.assert_close(ds.data[1], x)


@pytest.mark.parametrize("prefix", ["", "cifar10-jpg/"])
def test_tar_gz_of_a_tree(tmp_path, prefix):
    ref = make_tree(tmp_path / "src")
    tar = tmp_path / "data" / "cifar10-jpg.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as tf:
        for split in ("test", "train"):  # archive order must not matter
            tf.add(tmp_path / "src" / split, arcname=prefix + split)
    for split in ("train", "test"):
        check_against(data.load("cifar10", split, root=tmp_path / "data", progress=False), ref[split])
        check_against(data.load("cifar10", split, root=tar, progress=False), ref[split])


def test_second_load_uses_the_cache(tmp_path, monkeypatch):
    make_tree(tmp_path / "cifar10")
    a = data.load("cifar10", root=tmp_path, progress=False)
    assert list((data.cache_dir() / "decoded").glob("cifar10-*/train_images.npy"))

    def boom(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cifar, "_decode_tree", boom)
    b = data.load("cifar10", root=tmp_path, progress=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)


def test_corrupt_jpeg_is_named_in_tree_and_tar(tmp_path):
    make_tree(tmp_path / "cifar10")
    bad = tmp_path / "cifar10" / "train" / "cat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(SlimtorchError, match=r"corrupt image .*train/cat/0001\.jpg"):
        data.load("cifar10", root=tmp_path, progress=False)
    bad.write_bytes(b"not a jpeg at all")
    tar = tmp_path / "t" / "cifar10.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "cifar10" / "train", arcname="train")
        tf.add(tmp_path / "cifar10" / "test", arcname="test")
    with pytest.raises(SlimtorchError, match=r"corrupt image .*cifar10\.tar\.gz:train/cat/0001\.jpg"):
        data.load("cifar10", root=tar.parent, progress=False)


def test_truncated_archive_is_named(tmp_path):
    make_tree(tmp_path / "src")
    tar = tmp_path / "d" / "cifar10-jpg.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "src" / "train", arcname="train")
    tar.write_bytes(tar.read_bytes()[:-2000])
    with pytest.raises(SlimtorchError, match=r"cifar10-jpg\.tar\.gz: corrupt or truncated tar archive"):
        data.load("cifar10", root=tar.parent, progress=False)


def test_mixed_image_sizes_are_refused(tmp_path):
    make_tree(tmp_path / "cifar10")
    odd = tmp_path / "cifar10" / "test" / "dog" / "0000.jpg"
    odd.write_bytes(jpeg_bytes(99, size=(30, 32)))
    with pytest.raises(
        SlimtorchError, match=r"test/dog/0000\.jpg: image size \(32, 30\) differs from \(32, 32\)"
    ):
        data.load("cifar10", root=tmp_path, progress=False)


def test_test_class_missing_from_train(tmp_path):
    make_tree(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "test" / "zebra").mkdir()
    (tmp_path / "cifar10" / "test" / "zebra" / "a.jpg").write_bytes(jpeg_bytes(5))
    with pytest.raises(SlimtorchError, match=r"test/ has classes \['zebra'\] that train/ lacks"):
        data.load("cifar10", root=tmp_path, progress=False)


def test_augment_is_crop_and_flip(tmp_path):
    make_tree(tmp_path / "cifar10")
    plain = data.load("cifar10", root=tmp_path, progress=False)
    aug = data.load("cifar10", root=tmp_path, augment=True, progress=False)
    from slimtorch.data.transforms import normalize, shift

    x = plain.images[0].float() / 255
    cands = [normalize(shift(x, dy, dx), plain.mean, plain.std) for dy in range(-4, 5) for dx in range(-4, 5)]
    cands += [c.flip(-1) for c in cands]
    for _ in range(10):
        got, _ = aug[0]
        assert got.shape == (3, 32, 32)
        assert any(torch.allclose(got, c) for c in cands)


def test_shared_archive_is_found_without_decoding(shared_data):
    path, decode, files = cifar.find_source(shared_data)
    assert path == shared_data / "cifar10-jpg.tar.gz" and decode is cifar._decode_archive


# --------------------------------------------------------------------------------------- pickles


def write_batches(d, protocol=2, n=4, meta=True):
    """cifar-10-batches-py with two train batches; keys are bytes as in the original files."""
    d.mkdir(parents=True)
    rng = np.random.RandomState(0)
    ref = {}
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        x = rng.randint(0, 256, (n, 3072)).astype(np.uint8)
        y = [int(v) for v in rng.randint(0, 10, n)]
        obj = {b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"f.png"] * n}
        (d / name).write_bytes(pickle.dumps(obj, protocol=protocol))
        ref[name] = (x, y)
    if meta:
        names = [c.encode() for c in cifar.CLASSES]
        (d / "batches.meta").write_bytes(
            pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=protocol)
        )
    return ref


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_batches(tmp_path, protocol):
    ref = write_batches(tmp_path / "cifar10" / "cifar-10-batches-py", protocol)
    train = data.load("cifar10", "train", root=tmp_path, progress=False)
    test = data.load("cifar10", "test", root=tmp_path, progress=False)
    assert train.classes == list(cifar.CLASSES)
    x = np.concatenate([ref["data_batch_1"][0], ref["data_batch_2"][0]]).reshape(-1, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(x))
    assert train.targets.tolist() == ref["data_batch_1"][1] + ref["data_batch_2"][1]
    assert test.targets.tolist() == ref["test_batch"][1] and len(test) == 4


def test_pickle_batches_inside_a_tar(tmp_path):
    ref = write_batches(tmp_path / "src" / "cifar-10-batches-py", meta=False)
    tar = tmp_path / "d" / "cifar-10-python.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    test = data.load("cifar10", "test", root=tar.parent, progress=False)
    assert test.targets.tolist() == ref["test_batch"][1] and test.classes == list(cifar.CLASSES)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    write_batches(d)
    marker = tmp_path / "pwned"
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": []}))
    with pytest.raises(
        SlimtorchError, match=r"data_batch_1: refused or corrupt pickle: global .*open is not allowed"
    ):
        data.load("cifar10", root=tmp_path, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload,match",
    [
        (
            {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4, b"extra": 1},
            r"unexpected key b'extra'",
        ),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, r"'data' must be a uint8 array"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 11]}, r"need 4 labels in 0..9"),
        ({b"data": np.zeros((4, 3072), np.uint8)}, r"needs 'data' and 'labels'"),
        ([1, 2, 3], r"expected a dict, found list"),
        ({b"data": np.array([object()] * 4), b"labels": [0] * 4}, r"refused or corrupt pickle"),
    ],
)
def test_invalid_batches_name_the_file(tmp_path, payload, match):
    d = tmp_path / "cifar-10-batches-py"
    write_batches(d)
    (d / "test_batch").write_bytes(pickle.dumps(payload))
    with pytest.raises(SlimtorchError, match=r"test_batch: .*" + match):
        data.load("cifar10", root=tmp_path, progress=False)


def test_truncated_pickle_is_named(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    write_batches(d)
    p = d / "data_batch_2"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(
        SlimtorchError, match=r"data_batch_2: (corrupt or truncated|refused or corrupt) pickle"
    ):
        data.load("cifar10", root=tmp_path, progress=False)
