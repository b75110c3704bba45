"""1-D k-means: hand examples, initialisations, and agreement with scikit-learn's Lloyd iterations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from slimtorch.share.kmeans import KMEANS_INITS, assign_1d, kmeans_1d


def test_hand_example_two_clusters():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 11.0, 12.0])
    centroids, assign = kmeans_1d(values, 2, init="linear")
    # linear init [1, 12] -> boundary 6.5 -> means 2 and 11, then nothing changes.
    assert centroids.tolist() == [2.0, 11.0]
    assert assign.tolist() == [0, 0, 0, 1, 1, 1]


def test_hand_example_empty_cluster_keeps_its_centroid():
    values = torch.tensor([0.0, 1.0, 2.0, 9.0, 10.0])
    centroids, assign = kmeans_1d(values, 3, init="linear")
    # init [0, 5, 10]: nothing is nearest to 5, so it stays; the others move to 1 and 9.5.
    assert centroids.tolist() == [1.0, 5.0, 9.5]
    assert assign.tolist() == [0, 0, 0, 2, 2]


def test_initialisations():
    values = torch.sort(torch.arange(5, dtype=torch.float64)).values
    gen = torch.Generator().manual_seed(0)
    assert KMEANS_INITS.get("linear")(values, 3, gen).tolist() == [0.0, 2.0, 4.0]
    assert KMEANS_INITS.get("density")(values, 3, gen).tolist() == [0.0, 2.0, 4.0]
    skewed = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 100.0], dtype=torch.float64)
    # density puts centroids where the weights are; linear spreads them over [min, max].
    assert KMEANS_INITS.get("density")(skewed, 3, gen).tolist() == [0.0, 0.0, 100.0]
    assert KMEANS_INITS.get("linear")(skewed, 3, gen).tolist() == [0.0, 50.0, 100.0]
    forgy = KMEANS_INITS.get("random")(values, 3, gen)
    assert len(set(forgy.tolist())) == 3 and set(forgy.tolist()) <= set(values.tolist())


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_matches_sklearn_lloyd_from_the_same_init(init):
    rng = np.random.default_rng(1)
    values = torch.from_numpy(np.concatenate([rng.normal(-0.1, 0.03, 700), rng.normal(0.08, 0.02, 300)]))
    k = 8
    gen = torch.Generator().manual_seed(3)
    init_c = torch.sort(KMEANS_INITS.get(init)(torch.sort(values).values, k, gen)).values
    ours, assign = kmeans_1d(values, k, init=init, iters=300, seed=3)
    ref = KMeans(k, init=init_c.numpy().reshape(-1, 1), n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(
        values.numpy().reshape(-1, 1)
    )
    np.testing.assert_allclose(np.sort(ref.cluster_centers_.ravel()), ours.numpy(), rtol=1e-9, atol=1e-12)
    # Every value sits with its nearest centroid.
    dist = (values[:, None] - ours[None, :]).abs()
    assert torch.equal(dist[torch.arange(values.numel()), assign], dist.min(dim=1).values)


def test_assign_ties_and_unsorted_centroids():
    c = torch.tensor([3.0, -1.0, 1.0])
    assert assign_1d(torch.tensor([-5.0, 0.0, 0.9, 2.0, 10.0]), c).tolist() == [1, 1, 2, 2, 0]


def test_more_centroids_than_values_and_dtype():
    values = torch.tensor([0.5, -0.5], dtype=torch.float32)
    centroids, assign = kmeans_1d(values, 16, init="random")
    assert centroids.dtype == torch.float32 and centroids.numel() == 16
    assert torch.equal(centroids[assign], values)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown kmeans init 'bogus'; valid: density, linear, random"):
        kmeans_1d(torch.ones(3), 2, init="bogus")
    with pytest.raises(ValueError, match="k must be >= 1"):
        kmeans_1d(torch.ones(3), 0)
    with pytest.raises(ValueError, match="at least one value"):
        kmeans_1d(torch.ones(0), 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        kmeans_1d(torch.tensor([1.0, float("nan")]), 2)
