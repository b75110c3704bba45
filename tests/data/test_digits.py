import numpy as np
import torch

from slimtorch import data


def test_shapes_sizes_and_dtypes():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y) < 10
    assert train.num_classes == 10 and train.input_shape == (1, 8, 8)


def test_split_is_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = data.load("digits", "train"), data.load("digits", "test")
    # Each class contributes round(0.2 * n_c) items to test.
    expected = np.array([round(0.2 * c) for c in np.bincount(labels)])
    assert test.targets.bincount().numpy().tolist() == expected.tolist()
    assert (train.targets.bincount() + test.targets.bincount()).numpy().tolist() == np.bincount(
        labels
    ).tolist()
    rows = {tuple(r) for r in train.images.flatten(1).tolist()}
    # Digits has a few duplicate images; the split is by index, so at most those can coincide.
    assert sum(tuple(r) in rows for r in test.images.flatten(1).tolist()) <= 5


def test_normalized_with_train_statistics_and_deterministic():
    a, b = data.load("digits", "train"), data.load("digits", "train")
    assert torch.equal(a.data, b.data)
    assert abs(float(a.data.mean())) < 1e-5 and abs(float(a.data.std()) - 1) < 1e-3
    x, _ = a[5]
    torch.testing.assert_close(x, a.data[5])
    torch.testing.assert_close(x, (a.images[5].float() / 16 - a.mean) / a.std)


def test_augment_shifts_by_at_most_one_pixel():
    torch.manual_seed(0)
    plain, aug = data.load("digits"), data.load("digits", augment=True)
    x = plain.images[3].float() / 16
    from slimtorch.data.transforms import normalize, shift

    cands = [normalize(shift(x, dy, dx), plain.mean, plain.std) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    for _ in range(10):
        got, y = aug[3]
        assert int(y) == int(plain.targets[3])
        assert any(torch.allclose(got, c) for c in cands)
