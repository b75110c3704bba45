"""Observers against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimtorch.quant.observers import (
    OBSERVERS,
    create_observer,
    histogram_mse,
    kl_threshold_bin,
    rebin,
)
from slimtorch.quant.primitives import choose_qparams


@pytest.mark.parametrize("name", OBSERVERS.names())
def test_every_observer_gives_valid_qparams(name):
    obs = create_observer(name)
    for _ in range(3):
        obs(torch.randn(64, 8))
    s, z = obs.calculate_qparams()
    assert s.item() > 0 and 0 <= z.item() <= 255
    lo, hi = obs.min_max()
    assert lo.item() <= 0 <= hi.item()


@pytest.mark.parametrize("name", OBSERVERS.names())
def test_observer_without_data(name):
    with pytest.raises(ValueError, match="has seen no data"):
        create_observer(name).calculate_qparams()


def test_minmax_running_and_per_channel():
    obs = create_observer("minmax")
    obs(torch.tensor([1.0, -2.0]))
    obs(torch.tensor([3.0, 0.5]))
    assert (obs.min_val.item(), obs.max_val.item()) == (-2.0, 3.0)
    s, z = obs.calculate_qparams()
    assert s.item() == pytest.approx(5 / 255) and z.item() == round(2 / (5 / 255))
    pc = create_observer("minmax", axis=0, symmetric=True, signed=True)
    pc(torch.tensor([[1.0, -4.0], [0.5, 0.25]]))
    assert pc.min_val.tolist() == [-4.0, 0.25] and pc.max_val.tolist() == [1.0, 0.5]
    s, z = pc.calculate_qparams()
    assert s.tolist() == pytest.approx([4 / 127, 0.5 / 127]) and z.tolist() == [0, 0]


def test_moving_average_by_hand():
    obs = create_observer("moving_average", averaging_constant=0.5)
    obs(torch.tensor([0.0, 2.0]))  # first batch: min 0, max 2
    obs(torch.tensor([-2.0, 4.0]))  # 0 + .5 (-2 - 0) = -1 ; 2 + .5 (4 - 2) = 3
    assert (obs.min_val.item(), obs.max_val.item()) == (-1.0, 3.0)
    with pytest.raises(ValueError, match="averaging_constant"):
        create_observer("moving_average", averaging_constant=0.0)


def test_histogram_rebin_preserves_mass_and_matches_direct_histogram():
    counts = torch.zeros(16, dtype=torch.float64)
    counts[:8] = 1.0  # uniform on [0, 1) over bins of width 1/8 when range is [0, 2]
    new = rebin(counts, 0.0, 2.0, 0.0, 4.0)
    assert new.sum().item() == pytest.approx(8.0)
    assert new[:4].tolist() == pytest.approx([2.0, 2.0, 2.0, 2.0])  # new bins are twice as wide
    obs = create_observer("percentile", bins=100)
    obs(torch.linspace(0, 1, 101))
    obs(torch.linspace(0, 2, 201))  # the range doubles -> re-binned
    assert obs.hist.sum().item() == pytest.approx(302)
    assert (float(obs.hist_lo), float(obs.hist_hi)) == (0.0, 2.0)


def test_percentile_by_hand():
    x = torch.arange(0, 10000, dtype=torch.float32)  # uniform 0..9999
    obs = create_observer("percentile", percentile=99.0)
    obs(x)
    lo, hi = obs.min_max()
    assert hi.item() == pytest.approx(9899, abs=6)  # 99th percentile of 0..9999
    assert lo.item() == 0.0  # non-negative data keeps 0 as its minimum
    obs = create_observer("percentile", percentile=99.0)
    obs(x - 5000)
    lo, hi = obs.min_max()
    assert lo.item() == pytest.approx(-5000 + 100, abs=6) and hi.item() == pytest.approx(4899, abs=6)
    sym = create_observer("percentile", percentile=90.0, symmetric=True, signed=True)
    sym(x - 5000)  # |x| uniform on [0, 5000]: 90th percentile = 4500
    lo, hi = sym.min_max()
    assert hi.item() == pytest.approx(4500, abs=6) and lo.item() == -hi.item()
    with pytest.raises(ValueError, match="percentile"):
        create_observer("percentile", percentile=30.0)


def test_histogram_mse_by_hand_and_mse_clips_outliers():
    # two values 0 and 1 on a 2-bit unsigned grid over [0, 3]: s = 1, exact -> error 0
    err = histogram_mse(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]),
                        torch.tensor([3.0, 1.5]), bits=2, symmetric=False, signed=False)
    # range [0, 1.5]: s = 0.5, 1.0 exact too; both zero
    assert err.tolist() == pytest.approx([0.0, 0.0])
    err = histogram_mse(torch.tensor([0.4]), torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0]),
                        bits=2, symmetric=False, signed=False)
    assert err.item() == pytest.approx(0.16)  # 0.4 -> 0, squared error 0.16
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g), torch.tensor([60.0])])  # one huge outlier
    obs = create_observer("mse", bits=4)
    obs(x)
    lo, hi = obs.min_max()
    assert hi.item() < 30  # the outlier is clipped
    # and the choice beats the plain min-max range on the actual data
    def mse(lo_, hi_):
        s, z = choose_qparams(lo_, hi_, 4, False, False)
        q = torch.clamp(torch.round(x / s) + z, 0, 15)
        return ((q - z) * s - x).pow(2).mean().item()
    assert mse(lo, hi) < mse(x.min(), x.max())


def test_kl_threshold_hand_example():
    # 4 bins, 2 levels. i=2: P=[1, 1+2+0]=[1,3]/4, Q = chunks {0},{1} of [1,1] -> [1,1]/2: KL > 0.
    # i=3: P=[1,1,2]/4 (empty tail), chunks {0,1},{2}: Q=[1,1,2]/4 -> KL = 0, the first minimum
    assert kl_threshold_bin(np.array([1.0, 1.0, 2.0, 0.0]), levels=2) == 3
    p = np.array([1, 3]) / 4
    q = np.array([1, 1]) / 2
    kl2 = float(np.sum(p * np.log(p / q)))
    assert kl2 > 0
    # a uniform histogram is represented exactly at full range: no clipping
    assert kl_threshold_bin(np.full(1024, 5.0), levels=128) == 1024
    # a decaying tail is clipped
    hist = np.exp(-np.arange(1024) / 40.0) * 1e6
    assert 128 <= kl_threshold_bin(hist, levels=128) < 1024


def test_kl_observer_clips_gaussian_tail():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200000, generator=g)
    obs = create_observer("kl", symmetric=True, signed=True)
    obs(x)
    lo, hi = obs.min_max()
    amax = x.abs().max().item()
    assert 2.0 < hi.item() < amax and lo.item() == -hi.item()
    relu = create_observer("kl")
    relu(torch.relu(x))  # half the values are exact zeros: they must not drag the threshold down
    lo, hi = relu.min_max()
    assert lo.item() == 0.0 and 2.0 < hi.item() <= amax
    assert relu.zeros.item() == (x <= 0).sum().item()


def test_kl_coverage_guard_on_a_dominant_background_value():
    # like a normalised MNIST image: 80% background at -0.42, 20% foreground spread up to 2.8
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.full((80000,), -0.42), torch.rand(20000, generator=g) * 3.2 - 0.4])
    obs = create_observer("kl", symmetric=True, signed=True)
    obs(x)
    _, hi = obs.min_max()
    q99 = x.abs().quantile(0.99).item()
    assert hi.item() >= q99 - 0.01  # without the guard KL clips at the background value
    free = create_observer("kl", symmetric=True, signed=True, coverage=0.0)
    free(x)
    assert free.min_max()[1].item() < 0.5
    with pytest.raises(ValueError, match="coverage"):
        create_observer("kl", coverage=1.5)


def test_histogram_observers_are_per_tensor():
    with pytest.raises(ValueError, match="per-tensor only"):
        create_observer("percentile", axis=0)


def test_unknown_observer_lists_valid():
    with pytest.raises(ValueError, match="unknown observer 'minmx'.*minmax"):
        create_observer("minmx")
