"""Your own data: arrays (.npz, .npy pair), image folders, text files, datasets folders; --data PATH."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimtorch import data
from slimtorch.core.errors import SlimtorchError


def _xy(n_per_class=10, classes=3):
    rng = np.random.RandomState(1)
    y = np.repeat(np.arange(classes), n_per_class)
    return rng.randn(len(y), 2, 4, 4).astype(np.float32), y


def test_npz_round_trip_with_a_stratified_split(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    train = data.load("arrays", "train", root=tmp_path / "d.npz")
    test = data.load("arrays", "test", root=tmp_path / "d.npz")
    assert (len(train), len(test)) == (24, 6)  # 20% of each class of 10 is test
    assert torch.bincount(test.y).tolist() == [2, 2, 2] and train.num_classes == 3
    # every sample is in exactly one split, unchanged
    both = torch.cat([train.x, test.x])
    assert sorted(both.sum(dim=(1, 2, 3)).tolist()) == pytest.approx(sorted(x.sum(axis=(1, 2, 3)).tolist()))
    xi, yi = train[0]
    assert xi.dtype == torch.float32 and xi.shape == (2, 4, 4) and yi.dtype == torch.int64


def test_npz_with_its_own_splits_and_uint8_images(tmp_path):
    imgs = np.full((4, 5, 5), 255, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=imgs, y_train=np.array([0, 1, 0, 1]), x_test=imgs[:2], y_test=np.array([1, 0]))
    train = data.load("arrays", "train", root=tmp_path / "d.npz")
    test = data.load("arrays", "test", root=tmp_path / "d.npz")
    assert len(train) == 4 and len(test) == 2 and test.y.tolist() == [1, 0]
    assert train.x.shape == (4, 1, 5, 5) and float(train.x.max()) == 1.0  # uint8 -> /255, channel axis added


def test_npy_pair_and_int_token_inputs(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(40, dtype=np.int32).reshape(10, 4))
    np.save(tmp_path / "y.npy", np.array([0, 1] * 5))
    train = data.load("arrays", "train", root=tmp_path)
    assert train.x.dtype == torch.int64 and len(train) + len(data.load("arrays", "test", root=tmp_path)) == 10
    assert data.detect_kind(tmp_path) == "arrays"
    assert data.resolve(str(tmp_path / "x.npy")) == ("arrays", str(tmp_path / "x.npy"))


@pytest.mark.parametrize("arrays,msg", [
    ({"x": np.zeros((3, 2)), "y": np.zeros(2, dtype=int)}, "x has 3 samples but y has 2"),
    ({"inputs": np.zeros((3, 2))}, r"found arrays \['inputs'\]; expected x and y"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, -1, 0, 1])}, "class labels y must be >= 0"),
])
def test_bad_arrays_are_named(tmp_path, arrays, msg):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(SlimtorchError, match=msg):
        data.load("arrays", "train", root=tmp_path / "d.npz")


def test_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    with pytest.raises(SlimtorchError, match="object arrays \\(pickles\\) are refused"):
        data.load("arrays", "train", root=tmp_path)


def _png(path, value, size=6):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_flat_round_trip(tmp_path):
    for c, v in (("cat", 10), ("dog", 200)):
        for i in range(5):
            _png(tmp_path / "imgs" / c / f"{i}.png", v + i)
    train = data.load("image_folder", "train", root=tmp_path / "imgs")
    test = data.load("image_folder", "test", root=tmp_path / "imgs")
    assert train.classes == ["cat", "dog"] and (len(train), len(test)) == (8, 2)
    assert sorted(test.targets.tolist()) == [0, 1]
    # normalized with the training pixels' mean and std: the training images average to 0
    assert float(train.data.mean()) == pytest.approx(0.0, abs=1e-5)
    raw = train.images.float() / 255
    assert torch.allclose(train.data, (raw - train.mean[:, None, None]) / train.std[:, None, None], atol=1e-6)
    assert data.resolve(str(tmp_path / "imgs")) == ("image_folder", str(tmp_path / "imgs"))


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for c in ("a", "b"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", 50 * (c == "b"))
    assert len(data.load("image_folder", "train", root=tmp_path)) == 6
    assert data.load("image_folder", "test", root=tmp_path).targets.tolist() == [0, 1]


def test_image_folder_errors_name_the_file(tmp_path):
    _png(tmp_path / "a" / "0.png", 0)
    _png(tmp_path / "a" / "1.png", 0, size=7)
    with pytest.raises(SlimtorchError, match=r"1.png: image size \(7, 7\) differs"):
        data.load("image_folder", "train", root=tmp_path)
    (tmp_path / "a" / "1.png").unlink()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SlimtorchError, match="corrupt image .*bad.png"):
        data.load("image_folder", "train", root=tmp_path)


def test_text_file_round_trip(tmp_path):
    text = "abcabcabd" * 20
    (tmp_path / "c.txt").write_text(text)
    train = data.load("text", "train", root=tmp_path / "c.txt", block_size=8)
    assert train.chars == ["a", "b", "c", "d"] and train.decode(train[0][0]) == text[:8]
    assert train.decode(train[0][1]) == text[1:9]
    assert data.resolve(str(tmp_path / "c.txt")) == ("text", str(tmp_path / "c.txt"))


@pytest.mark.parametrize("name", ["arrays", "image_folder", "text", "hf_disk"])
def test_user_datasets_need_a_root_that_exists(tmp_path, name):
    with pytest.raises(SlimtorchError, match=f"dataset '{name}' reads your files: give root="):
        data.load(name, "train")
    with pytest.raises(SlimtorchError, match="does not exist"):
        data.load(name, "train", root=tmp_path / "missing")


def test_a_missing_root_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTORCH_DATA", str(tmp_path))
    with pytest.raises(SlimtorchError, match="root .*nope does not exist \\(it is not replaced by \\$SLIMTORCH_DATA"):
        data.load("mnist", "train", root=tmp_path / "nope")


def test_resolve_refuses_unknown_names():
    msg = r"--data: unknown dataset 'no_such_data'; valid: arrays, .* \(and no file or folder no_such_data exists\)"
    with pytest.raises(SlimtorchError, match=msg):
        data.resolve("no_such_data")


def test_hf_disk_without_datasets_names_the_package(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "dataset_dict.json").write_text("{}")
    assert data.detect_kind(tmp_path) == "hf_disk"
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(SlimtorchError, match="needs the 'datasets' package, which is not installed: pip install"):
        data.load("hf_disk", "train", root=tmp_path)


def test_hf_disk_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    ids = np.arange(60).reshape(10, 6) % 7
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist(),
                                     "label": [0, 1] * 5})
    ds.save_to_disk(str(tmp_path / "hf"))
    train = data.load("hf_disk", "train", root=tmp_path / "hf")
    test = data.load("hf_disk", "test", root=tmp_path / "hf")
    assert len(train) + len(test) == 10
    x, y = train[0]
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].dtype == torch.int64


def test_hf_disk_image_column_and_dict_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    def part(n, offset):
        imgs = [Image.fromarray(np.full((4, 4, 3), 40 * (i % 2) + offset, dtype=np.uint8)) for i in range(n)]
        return datasets.Dataset.from_dict({"img": imgs, "label": [i % 2 for i in range(n)]},
                                          features=datasets.Features({"img": datasets.Image(),
                                                                      "label": datasets.Value("int64")}))

    datasets.DatasetDict({"train": part(6, 0), "test": part(2, 100)}).save_to_disk(str(tmp_path / "hf"))
    assert data.detect_kind(tmp_path / "hf") == "hf_disk"
    train = data.load("hf_disk", "train", root=tmp_path / "hf")
    test = data.load("hf_disk", "test", root=tmp_path / "hf")
    assert (len(train), len(test)) == (6, 2) and test.targets.tolist() == [0, 1]
    assert train.images.shape == (6, 3, 4, 4) and int(test.images[1, 0, 0, 0]) == 140
    assert float(train.data.mean()) == pytest.approx(0.0, abs=1e-5)  # normalized with the train split's pixels


class _StandInDataset:
    """The part of ``datasets.Dataset`` that ``hf_disk`` uses (column access, row access, column_names),
    so the conversion is tested where the real package is not installed (it is an optional extra)."""

    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        return {k: v[key] for k, v in self.columns.items()}


def _stand_in(monkeypatch, tmp_path, obj):
    import sys
    import types

    fake = types.ModuleType("datasets")
    fake.load_from_disk = lambda path: obj
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (tmp_path / "dataset_info.json").write_text("{}")


def test_hf_disk_token_columns_become_dict_batches(tmp_path, monkeypatch):
    ids = (np.arange(60).reshape(10, 6) % 7).tolist()
    _stand_in(monkeypatch, tmp_path, _StandInDataset({"input_ids": ids, "attention_mask": [[1] * 6] * 10,
                                                      "label": [0, 1] * 5}))
    train = data.load("hf_disk", "train", root=tmp_path)
    test = data.load("hf_disk", "test", root=tmp_path)
    assert (len(train), len(test)) == (8, 2) and sorted(test.y.tolist()) == [0, 1]  # stratified 80/20
    x, y = train[0]
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].dtype == torch.int64
    assert x["input_ids"].tolist() == ids[_train_rows()[0]]  # the first training row, unchanged
    from torch.utils.data import DataLoader

    from slimtorch.core.batches import split_batch

    inputs, target = split_batch(next(iter(DataLoader(train, batch_size=4))))
    assert set(inputs.kwargs) == {"input_ids", "attention_mask"} and target.shape == (4,)


def _train_rows():
    from slimtorch.data.user_split import split_indices

    return split_indices(np.array([0, 1] * 5), "train")


def test_hf_disk_image_column_with_its_own_splits(tmp_path, monkeypatch):
    from PIL import Image

    def part(n, offset):
        return _StandInDataset({"image": [Image.fromarray(np.full((4, 4, 3), offset + 40 * (i % 2), np.uint8))
                                          for i in range(n)], "label": [i % 2 for i in range(n)]})

    _stand_in(monkeypatch, tmp_path, {"train": part(6, 0), "validation": part(2, 100)})
    train = data.load("hf_disk", "train", root=tmp_path)
    test = data.load("hf_disk", "test", root=tmp_path)  # the validation split serves as test
    assert (len(train), len(test)) == (6, 2) and test.targets.tolist() == [0, 1]
    assert int(test.images[1, 0, 0, 0]) == 140 and float(train.data.mean()) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("columns,msg", [
    ({"text": ["a", "b"], "label": [0, 1]}, "column 'text' holds <U1 values; tokenize text columns first"),
    ({"input_ids": [[1, 2], [3]], "label": [0, 1]}, "rows of different lengths"),
    ({"input_ids": [[1], [2]]}, r"no label column among \['input_ids'\]"),
])
def test_hf_disk_bad_columns_are_named(tmp_path, monkeypatch, columns, msg):
    _stand_in(monkeypatch, tmp_path, {"train": _StandInDataset(columns), "test": _StandInDataset(columns)})
    with pytest.raises(SlimtorchError, match=msg):
        data.load("hf_disk", "train", root=tmp_path)
