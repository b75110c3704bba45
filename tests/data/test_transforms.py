import pytest
import torch

from slimtorch.data.transforms import (
    RandomCropFlip,
    RandomShift,
    normalize,
    random_hflip,
    random_shift,
    shift,
)


def test_shift_matches_definition():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            out = shift(x, dy, dx)
            for i in range(5):
                for j in range(6):
                    si, sj = i - dy, j - dx
                    want = x[:, si, sj] if 0 <= si < 5 and 0 <= sj < 6 else torch.zeros(2)
                    assert torch.equal(out[:, i, j], want)
    assert torch.equal(shift(x, 9, 0), torch.zeros_like(x))


def _dot_position(img):
    ((i, j),) = (img[0] == 1).nonzero().tolist()
    return i, j


@pytest.mark.parametrize("batched", [False, True])
def test_random_shift_moves_at_most_max_shift_and_keeps_shape(batched):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 28, 28)
    x[0, 14, 13] = 1.0  # a single dot: its displacement is the shift
    offsets = set()
    for _ in range(30 if batched else 200):
        if batched:
            out = random_shift(x.expand(8, 1, 28, 28), 2, g)
            assert out.shape == (8, 1, 28, 28)
            pos = [_dot_position(o) for o in out]
        else:
            out = random_shift(x, 2, g)
            assert out.shape == (1, 28, 28)
            pos = [_dot_position(out)]
        for i, j in pos:
            assert abs(i - 14) <= 2 and abs(j - 13) <= 2
            offsets.add((i - 14, j - 13))
    assert len(offsets) == 25  # every shift in [-2, 2]^2 occurs


def test_batched_shift_is_a_true_shift_per_image():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 10, 10)
    out = random_shift(x, 3, g)
    for k in range(6):
        assert any(torch.equal(out[k], shift(x[k], dy, dx)) for dy in range(-3, 4) for dx in range(-3, 4))


def test_hflip_probability_and_exactness():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, 2, 3)
    out = random_hflip(x, 0.5, g)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 0.4 < flipped.float().mean() < 0.6
    assert torch.equal(random_hflip(x[0], 0.0, g), x[0]) and torch.equal(
        random_hflip(x[0], 1.0, g), x[0].flip(-1)
    )


def test_crop_flip_keeps_shape_and_is_a_shift_or_flipped_shift():
    g = torch.Generator().manual_seed(0)
    t = RandomCropFlip(padding=4)
    x = torch.rand(3, 32, 32)
    for _ in range(10):
        out = t(x, g)
        assert out.shape == (3, 32, 32)
        cands = [shift(x, dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)]
        assert any(torch.equal(out, c) or torch.equal(out, c.flip(-1)) for c in cands)


def test_normalize_formula():
    x = torch.rand(3, 4, 4)
    m, s = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(normalize(x, m, s), (x - m.view(3, 1, 1)) / s.view(3, 1, 1))


def test_configs_validate():
    with pytest.raises(ValueError, match=r"max_shift: -1 is not in \[0, 16\]"):
        RandomShift(max_shift=-1)
    with pytest.raises(ValueError, match="padding must be an integer number of pixels, got 2.5"):
        RandomCropFlip(padding=2.5)
    with pytest.raises(ValueError, match=r"flip_p: 1.5 is not in \[0.0, 1.0\]"):
        RandomCropFlip(flip_p=1.5)
    assert RandomShift.from_dict(RandomShift(3).to_dict()) == RandomShift(3)
