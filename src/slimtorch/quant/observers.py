"""Observers: watch tensors during calibration and choose the range ``[lo, hi]`` to quantize.

Every observer is an ``nn.Module`` whose ``forward(x)`` records statistics and returns ``x`` unchanged,
registered by name in :data:`OBSERVERS` (``"minmax"``, ``"moving_average"``, ``"percentile"``,
``"mse"``, ``"kl"``). ``calculate_qparams()`` turns the chosen range into a scale and zero point with
:func:`slimtorch.quant.primitives.choose_qparams`.

The three histogram observers (percentile, MSE, KL) keep one histogram of 2048 bins per tensor; when a
later batch exceeds its range the old counts are re-binned onto the wider range by interpolating
their cumulative distribution (uniform density inside a bin), so memory stays constant however much
calibration data is seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from slimtorch.core.config import check_range
from slimtorch.core.registry import Registry
from slimtorch.quant.primitives import check_bits, choose_qparams, qrange, reduce_minmax

#: name -> Observer class.
OBSERVERS: Registry[type[Observer]] = Registry("observer")


def register_observer(name: str):
    """Class decorator adding an :class:`Observer` subclass to :data:`OBSERVERS`."""

    def deco(cls: type[Observer]) -> type[Observer]:
        cls.name = name
        OBSERVERS.register(name, cls)
        return cls

    return deco


def create_observer(name: str, **kwargs) -> Observer:
    """Instantiate the observer registered as ``name`` with ``kwargs``."""
    return OBSERVERS.get(name)(**kwargs)


#: Observer arguments a config sets itself (from its bit width and grid), never through ``observer_kwargs``.
_SET_BY_CONFIG = ("bits", "symmetric", "signed", "axis", "group_size")


def observer_options(name: str) -> list[str]:
    """The keyword arguments observer ``name`` takes besides those a config sets (``percentile``, ``bins``...)."""
    import inspect

    keys: list[str] = []
    for cls in OBSERVERS.get(name).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        keys += [k for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return sorted(set(keys) - set(_SET_BY_CONFIG))


def check_observer_kwargs(name: str, kwargs: object, what: str = "observer_kwargs", **grid: object) -> None:
    """Validate ``observer_kwargs`` for observer ``name`` before anything runs.

    The value must be a mapping of the observer's own option names (:func:`observer_options`) to plain
    numbers, booleans or strings; the observer is then built once with them (and ``grid``: ``bits``,
    ``symmetric``, ...), so a bad value is refused with the observer's own message.

    Raises:
        ValueError: naming the key and what is allowed.
    """
    if not isinstance(kwargs, dict):
        raise ValueError(f"{what} must be a mapping of observer options, got {type(kwargs).__name__}")
    allowed = observer_options(name)
    unknown = sorted(str(k) for k in kwargs if k not in allowed)
    if unknown:
        raise ValueError(f"{what}: unknown option(s) {unknown} for observer {name!r}; allowed: {allowed}")
    for k, v in kwargs.items():
        if not isinstance(v, (bool, int, float, str)):
            raise ValueError(f"{what}.{k} must be a number, a boolean or a string, got {type(v).__name__}")
    try:
        create_observer(name, **grid, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: {e}") from None


class Observer(nn.Module):
    """Base class: records statistics of the tensors it sees and proposes a quantization range.

    Args:
        bits: grid width, 2..8.
        symmetric: symmetric grid (zero point in the middle) or asymmetric.
        signed: signed or unsigned integer grid.
        axis: channel axis for per-channel ranges (None: per tensor).
        group_size: group length along ``axis`` (per-group ranges).
        narrow: narrow signed range (``[-127, 127]``).
        power_of_two: round scales up to powers of two.
    """

    name = ""
    #: whether the observer supports per-channel / per-group statistics.
    per_channel_ok = True

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False, axis: int | None = None,
                 group_size: int | None = None, narrow: bool = False, power_of_two: bool = False) -> None:
        super().__init__()
        check_bits(bits)
        if axis is not None and not self.per_channel_ok:
            raise ValueError(f"observer {self.name!r} is per-tensor only (got axis={axis}); use 'minmax' or "
                             "'moving_average' for per-channel ranges")
        self.bits, self.symmetric, self.signed = bits, symmetric, signed
        self.axis, self.group_size, self.narrow, self.power_of_two = axis, group_size, narrow, power_of_two
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.num_batches = 0

    @property
    def has_data(self) -> bool:
        """Whether any tensor was observed."""
        return self.num_batches > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record statistics of ``x`` and return it unchanged."""
        x = x.detach().float()
        if x.numel() > 0:
            self.observe(x)
            self.num_batches += 1
        return x

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _batch_minmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return reduce_minmax(x, self.axis, self.group_size)

    def min_max(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range the observer proposes to quantize."""
        return self.min_val, self.max_val

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the proposed range.

        Raises:
            ValueError: if nothing was observed.
        """
        if not self.has_data:
            raise ValueError(f"{type(self).__name__} has seen no data; run calibration batches first")
        lo, hi = self.min_max()
        return choose_qparams(lo, hi, self.bits, self.symmetric, self.signed, narrow=self.narrow,
                              power_of_two=self.power_of_two)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, signed={self.signed}, axis={self.axis}"


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Running minimum and maximum over everything observed."""

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = self._batch_minmax(x)
        if self.num_batches == 0:
            self.min_val, self.max_val = lo.clone(), hi.clone()
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)


@register_observer("moving_average")
class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch min/max: ``m <- m + c * (m_batch - m)``.

    The first batch initialises ``m``. Used by QAT (Jacob et al. 2018, §3.1) where ranges drift.

    Args:
        averaging_constant: ``c`` in (0, 1].
    """

    def __init__(self, averaging_constant: float = 0.01, **kwargs) -> None:
        check_range("averaging_constant", averaging_constant, 0.0, 1.0, lo_open=True)
        super().__init__(**kwargs)
        self.averaging_constant = averaging_constant

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = self._batch_minmax(x)
        if self.num_batches == 0:
            self.min_val, self.max_val = lo.clone(), hi.clone()
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)


def rebin(counts: torch.Tensor, old_lo: float, old_hi: float, new_lo: float, new_hi: float) -> torch.Tensor:
    """Move histogram ``counts`` on ``[old_lo, old_hi]`` onto as many bins on ``[new_lo, new_hi]``.

    The cumulative count is interpolated linearly inside each old bin (uniform density), so the total
    is preserved exactly and ``new`` is the count mass falling into each new bin.
    """
    n = counts.numel()
    old_edges = torch.linspace(old_lo, old_hi, n + 1, dtype=torch.float64)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), counts.double().cumsum(0)])
    new_edges = torch.linspace(new_lo, new_hi, n + 1, dtype=torch.float64)
    cdf_new = torch.from_numpy(np.interp(new_edges.numpy(), old_edges.numpy(), cdf.numpy()))
    return (cdf_new[1:] - cdf_new[:-1]).to(counts.dtype)


#: Largest histogram (each observer keeps ``bins`` float64 counts; 2048 is the usual choice).
MAX_BINS = 1 << 16


class HistogramObserver(Observer):
    """Base for observers that choose the range from a histogram of everything observed.

    Args:
        bins: histogram resolution.
        absolute: histogram ``|x|`` on ``[0, max|x|]`` instead of ``x`` on ``[min, max]``.
    """

    per_channel_ok = False
    absolute = False

    def __init__(self, bins: int = 2048, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(bins, bool) or not isinstance(bins, int) or not 16 <= bins <= MAX_BINS:
            raise ValueError(f"bins must be an integer in [16, {MAX_BINS}], got {bins!r}")
        self.bins = bins
        self.register_buffer("hist", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("hist_lo", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("hist_hi", torch.tensor(0.0, dtype=torch.float64))

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min(), x.max()
        self.min_val = lo if self.num_batches == 0 else torch.minimum(self.min_val, lo)
        self.max_val = hi if self.num_batches == 0 else torch.maximum(self.max_val, hi)
        v = x.abs() if self.absolute else x
        b_lo = 0.0 if self.absolute else float(v.min())
        b_hi = float(v.max())
        if self.num_batches == 0:
            new_lo, new_hi = b_lo, b_hi
            self.hist.zero_()
        else:
            new_lo, new_hi = min(b_lo, float(self.hist_lo)), max(b_hi, float(self.hist_hi))
        if new_hi <= new_lo:  # constant data: give the histogram a tiny non-empty span
            new_hi = new_lo + max(abs(new_lo) * 1e-6, 1e-12)
        if self.num_batches > 0 and (new_lo, new_hi) != (float(self.hist_lo), float(self.hist_hi)):
            self.hist = rebin(self.hist, float(self.hist_lo), float(self.hist_hi), new_lo, new_hi)
        self.hist_lo.fill_(new_lo)
        self.hist_hi.fill_(new_hi)
        self.hist += torch.histc(v.double(), self.bins, new_lo, new_hi)

    def edges(self) -> torch.Tensor:
        """Bin edges, shape ``(bins + 1,)``."""
        return torch.linspace(float(self.hist_lo), float(self.hist_hi), self.bins + 1, dtype=torch.float64)

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the observed mass lies (linear inside a bin)."""
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64), self.hist.cumsum(0)])
        cdf = cdf / cdf[-1]
        return float(np.interp(q, cdf.numpy(), self.edges().numpy()))


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Clip to percentiles of the observed distribution (McKinstry et al. 2018 style calibration).

    Asymmetric grids take ``[P_(100-p), P_p]`` of ``x``; symmetric grids take ``P_p`` of ``|x|`` as
    the half-range. ``p = 99.999`` by default, as in ONNX Runtime's percentile calibrator (the default
    here used to be 99.99, which clipped more: 0.29 pt lower int8 accuracy on the ResNet-20 of
    bench/quant_int8.py, 0.01 pt on LeNet-5).

    Args:
        percentile: ``p`` in (50, 100].
    """

    def __init__(self, percentile: float = 99.999, **kwargs) -> None:
        check_range("percentile", percentile, 50.0, 100.0, lo_open=True)
        super().__init__(**kwargs)
        self.absolute = self.symmetric  # symmetric grids clip |x|, asymmetric ones each tail
        self.percentile = percentile

    def min_max(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.percentile / 100.0
        if self.absolute:
            t = self.quantile(p)
            lo = -t if float(self.min_val) < 0 else 0.0
            return torch.tensor(lo), torch.tensor(t)
        lo, hi = self.quantile(1.0 - p), self.quantile(p)
        return torch.tensor(min(lo, 0.0) if float(self.min_val) >= 0 else lo), torch.tensor(hi)


def histogram_mse(centers: torch.Tensor, counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                  symmetric: bool, signed: bool) -> torch.Tensor:
    """Expected squared quantization error ``sum_i n_i (c_i - Q(c_i))**2 / sum_i n_i`` per candidate.

    Args:
        centers: bin centres (or raw values), shape ``(N,)``.
        counts: their counts, shape ``(N,)``.
        lo: candidate range minima, shape ``(K,)``.
        hi: candidate range maxima, shape ``(K,)``.

    Returns:
        Shape ``(K,)``.
    """
    scale, zp = choose_qparams(lo, hi, bits, symmetric, signed)  # (K,)
    qmin, qmax = qrange(bits, signed)
    s, z = scale.double()[:, None], zp.double()[:, None]
    c = centers.double()[None, :]
    deq = (torch.clamp(torch.round(c / s) + z, qmin, qmax) - z) * s  # (K, N)
    return ((c - deq) ** 2 * counts.double()[None, :]).sum(1) / counts.double().sum().clamp_min(1e-12)


@register_observer("mse")
class MSEObserver(HistogramObserver):
    """Range that minimises the mean squared quantization error (Banner et al. 2019; Nagel et al. 2021 §3.2).

    Candidates shrink the observed range, ``[a * min, a * max]`` for ``a`` on a grid of ``steps``
    points in ``[min_ratio, 1]``; the error of each is evaluated on the histogram's bin centres.

    Args:
        steps: number of candidate ratios.
        min_ratio: smallest ratio searched.
    """

    def __init__(self, steps: int = 100, min_ratio: float = 0.05, **kwargs) -> None:
        check_range("min_ratio", min_ratio, 0.0, 1.0, lo_open=True)
        super().__init__(**kwargs)
        self.steps, self.min_ratio = steps, min_ratio

    def min_max(self) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.edges()
        centers = (e[:-1] + e[1:]) / 2
        ratios = torch.linspace(self.min_ratio, 1.0, self.steps, dtype=torch.float64)
        lo = ratios * min(float(self.min_val), 0.0)
        hi = ratios * max(float(self.max_val), 0.0)
        err = histogram_mse(centers, self.hist, lo, hi, self.bits, self.symmetric, self.signed)
        k = int(torch.argmin(err))
        return lo[k].float(), hi[k].float()


def kl_threshold_bin(hist: np.ndarray, levels: int) -> int:
    """TensorRT entropy calibration (Migacz 2017): the bin count ``i`` minimising ``KL(P || Q)``.

    For each candidate ``i`` in ``[levels, len(hist)]``: ``P`` is ``hist[:i]`` with the tail mass
    ``sum(hist[i:])`` added to its last bin; ``Q`` merges ``hist[:i]`` into ``levels`` (near-)equal
    chunks and spreads each chunk's mass evenly over the chunk's non-empty bins. Both are normalised;
    ``KL = sum_{P>0} P log(P / Q)`` (bins where ``Q = 0 < P`` get ``Q = 1e-12``).

    Args:
        hist: histogram of ``|x|`` from 0, shape ``(B,)``.
        levels: number of quantization levels on one side (128 for int8 symmetric).

    Returns:
        The best ``i``; the clipping threshold is ``i * bin_width``.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    if n <= levels:
        return n
    best_i, best_kl = n, math.inf
    for i in range(levels, n + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        ref = hist[:i]
        nonzero = ref > 0
        # chunk index of each of the i bins: ``levels`` chunks as equal as possible (sizes differ by at
        # most one bin; giving the whole remainder to the last chunk would favour multiples of levels)
        chunk = (np.arange(i) * levels) // i
        mass = np.bincount(chunk, weights=ref, minlength=levels)
        nz = np.bincount(chunk, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[chunk] / np.maximum(nz[chunk], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p, q = p / ps, q / qs
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


@register_observer("kl")
class KLObserver(HistogramObserver):
    """Entropy (KL-divergence) calibration as in TensorRT (Migacz 2017, "8-bit Inference with TensorRT").

    Histograms ``|x|``, picks the threshold ``T`` whose clipped-and-quantized distribution is closest
    in KL divergence to the clipped reference (:func:`kl_threshold_bin`), and returns ``[-T, T]`` (or
    ``[0, T]`` for non-negative data such as ReLU outputs, which then use all ``2**bits`` levels).

    The divergence does not see how far clipped values move (their mass is folded into the last
    bin of the reference), so a distribution dominated by one value, such as an image background,
    can get a threshold at that value that clips every foreground pixel. ``T`` is therefore never
    below the ``coverage`` quantile of ``|x|`` (at most ``1 - coverage`` of the values are clipped).

    Args:
        stride: evaluate every ``stride``-th candidate bin (1 = exhaustive, as TensorRT).
        coverage: the fraction of ``|x|`` that must stay inside ``[-T, T]`` (0 disables the guard).
    """

    absolute = True

    def __init__(self, bins: int = 2048, stride: int = 1, coverage: float = 0.99, **kwargs) -> None:
        check_range("coverage", coverage, 0.0, 1.0)
        super().__init__(bins=bins, **kwargs)
        self.stride, self.coverage = stride, coverage
        self.register_buffer("zeros", torch.tensor(0.0, dtype=torch.float64))

    def observe(self, x: torch.Tensor) -> None:
        if self.num_batches == 0:
            self.zeros.zero_()
        self.zeros += (x == 0).sum()
        super().observe(x)

    def min_max(self) -> tuple[torch.Tensor, torch.Tensor]:
        nonneg = float(self.min_val) >= 0
        levels = 2**self.bits if nonneg and not self.symmetric else 2 ** (self.bits - 1)
        hist = self.hist.numpy().copy()
        # exact zeros (e.g. ReLU outputs) are represented exactly whatever the threshold: they carry no
        # information about it, and their spike in bin 0 would otherwise dominate the divergence
        hist[0] = max(hist[0] - float(self.zeros), 0.0)
        if self.stride > 1:  # coarser histogram, same range
            hist = hist.reshape(-1, self.stride).sum(1) if len(hist) % self.stride == 0 else hist
        i = kl_threshold_bin(hist, levels)
        t = float(self.hist_lo) + i * (float(self.hist_hi) - float(self.hist_lo)) / len(hist)
        if self.coverage > 0:
            t = max(t, self.quantile(self.coverage))
        lo = 0.0 if nonneg else -t
        if not self.symmetric:  # an asymmetric grid spends no levels below the observed minimum
            lo = max(lo, min(float(self.min_val), 0.0))
        return torch.tensor(lo), torch.tensor(min(t, max(float(self.max_val), 0.0)))
