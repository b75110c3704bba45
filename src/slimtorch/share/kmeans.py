"""One-dimensional k-means (Lloyd's algorithm) for weight sharing.

Han et al. 2016, "Deep Compression", §3.1: the ``n`` weights ``W = {w_1..w_n}`` of a layer are partitioned
into ``k`` clusters ``C = {c_1..c_k}`` minimising the within-cluster sum of squares

    argmin_C  sum_i sum_{w in c_i} |w - c_i|^2

Each weight is then replaced by its centroid, so a layer stores ``log2(k)``-bit indices and a ``k``-entry
codebook. Three centroid initialisations are compared in the paper (§3.2); linear was best because it
keeps a few centroids on the large (rare but important) weights:

* ``linear``: ``k`` centroids equally spaced in ``[min(W), max(W)]``;
* ``density``: the ``k`` quantiles of the weights' CDF at equally spaced probabilities in ``[0, 1]``;
* ``random`` (Forgy): ``k`` weights drawn at random from ``W``.

In one dimension the nearest centroid is found by sorting the centroids and binary-searching the
midpoints between neighbours, so one Lloyd step costs ``O(n log k)`` instead of ``O(n k)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimtorch.core.registry import Registry

#: Centroid initialisations: ``fn(values_sorted (n,) float64, k, generator) -> centroids (k,)``.
KMEANS_INITS: Registry[Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = Registry("kmeans init")


@KMEANS_INITS.register("linear")
def linear_init(values: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` centroids equally spaced between the smallest and the largest value."""
    return torch.linspace(float(values[0]), float(values[-1]), k, dtype=torch.float64)


@KMEANS_INITS.register("density")
def density_init(values: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """The values at CDF levels ``0, 1/(k-1), ..., 1`` (linear interpolation between order statistics)."""
    n = values.numel()
    if k == 1:
        return values[n // 2 : n // 2 + 1].clone()
    pos = torch.linspace(0, n - 1, k, dtype=torch.float64)  # fractional ranks
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = pos - lo
    return values[lo] * (1 - frac) + values[hi] * frac


@KMEANS_INITS.register("random")
def random_init(values: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Forgy: ``k`` distinct observations at random (with repetition only when ``k > n``)."""
    n = values.numel()
    if k <= n:
        idx = torch.randperm(n, generator=gen)[:k]
    else:
        idx = torch.randint(0, n, (k,), generator=gen)
    return values[idx]


def assign_1d(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every value (ties go to the lower centroid).

    Args:
        values: ``(n,)`` values.
        centroids: ``(k,)`` centroids in any order.

    Returns:
        ``(n,)`` int64 indices into ``centroids``.
    """
    order = torch.argsort(centroids, stable=True)
    c = centroids[order].to(torch.float64)
    mids = (c[1:] + c[:-1]) / 2  # (k-1,) decision boundaries between sorted neighbours
    pos = torch.searchsorted(mids, values.to(torch.float64), right=False)
    return order[pos]


def kmeans_1d(
    values: torch.Tensor,
    k: int,
    init: str = "linear",
    iters: int = 100,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D set of values.

    Args:
        values: ``(n,)`` values (any float dtype; computed in float64), ``n >= 1``.
        k: number of centroids, ``>= 1``.
        init: ``"linear"``, ``"density"`` or ``"random"`` (see the module docstring).
        iters: maximum Lloyd iterations; stops earlier once no assignment changes.
        seed: seed of the ``random`` initialisation.

    Returns:
        ``(centroids (k,), assignments (n,))``: centroids in ``values.dtype``, sorted ascending;
        assignments are int64 indices into them. A cluster that ends up empty keeps its last centroid.
    """
    init_fn = KMEANS_INITS.get(init)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    flat = values.detach().reshape(-1).to(torch.float64)
    if flat.numel() == 0:
        raise ValueError("kmeans_1d needs at least one value")
    if not torch.isfinite(flat).all():
        raise ValueError("kmeans_1d: values contain NaN or inf")
    gen = torch.Generator().manual_seed(seed)
    sorted_vals = torch.sort(flat).values  # (n,)
    centroids = torch.sort(init_fn(sorted_vals, k, gen)).values
    # In 1-D every cluster is a contiguous run of the sorted values, so a Lloyd step only needs the
    # k-1 run boundaries (binary search of the midpoints) and prefix sums: O(k log n) per iteration.
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sorted_vals, 0)])  # (n+1,)
    bounds = None
    for _ in range(iters):
        mids = (centroids[1:] + centroids[:-1]) / 2
        # A value equal to a midpoint goes to the lower centroid, as in assign_1d.
        cuts = torch.searchsorted(sorted_vals, mids, right=True)
        if bounds is not None and torch.equal(cuts, bounds):
            break
        bounds = cuts
        edges = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.tensor([flat.numel()])])
        counts = (edges[1:] - edges[:-1]).to(torch.float64)  # (k,)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        # Centroid update c_j = mean of cluster j; an empty cluster keeps its centroid.
        centroids = torch.sort(torch.where(counts > 0, sums / counts.clamp_min(1), centroids)).values
    return centroids.to(values.dtype), assign_1d(flat, centroids)
