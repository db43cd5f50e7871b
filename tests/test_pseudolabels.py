"""Pseudo-label tools (imclust.nn.pseudolabels): k-means with repair, the uniform sampler, alignment, NMI between
epochs, per-epoch seeding and the checkpointed state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imclust.cluster import faiss_available
from imclust.metrics import cluster_acc
from imclust.nn.pseudolabels import (PseudoLabels, align_labels, kmeans_labels, nmi_between, repair_empty,
                                     uniform_cluster_sample)
from imclust.nn.train import epoch_seed


def _groups(seed=0):
    rs = np.random.RandomState(seed)
    return np.vstack([rs.randn(40, 3) * 0.05 + c for c in ([5, 0, 0], [0, 5, 0], [0, 0, 5])]).astype(np.float32)


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_kmeans_labels_finds_separated_groups(backend):
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss not installed")
    labels, centres, repaired = kmeans_labels(_groups(), 3, seed=0, max_iter=20, backend=backend)
    assert cluster_acc(np.repeat([0, 1, 2], 40), labels) == 1.0
    assert centres.shape == (3, 3) and repaired == 0


def test_kmeans_labels_leaves_no_cluster_empty():
    # 60 copies of one point and 5 distinct points, 12 clusters: k-means alone leaves clusters empty
    rs = np.random.RandomState(0)
    X = np.vstack([np.ones((60, 4)), rs.randn(5, 4)]).astype(np.float32)
    labels, centres, repaired = kmeans_labels(X, 12, seed=1, max_iter=5)
    assert repaired > 0
    assert np.bincount(labels, minlength=12).min() >= 1
    for j in range(12):  # each centre is its cluster's mean after repair
        np.testing.assert_allclose(centres[j], X[labels == j].mean(0), atol=1e-5)


def test_repair_empty_splits_the_largest_along_its_principal_direction():
    Z = np.concatenate([np.zeros((10, 2)), np.ones((10, 2)) * 5]) + np.random.RandomState(0).randn(20, 2) * 0.1
    filled, n = repair_empty(np.zeros(20, np.int64), Z, 3)
    assert n == 2 and sorted(np.bincount(filled, minlength=3)) == [5, 5, 10]
    # the first split separates the two groups (principal direction), not a random half
    assert len(set(filled[:10])) == 1 or len(set(filled[10:])) == 1


def test_align_and_nmi_between_epochs():
    prev = np.array([0, 0, 1, 1, 2, 2])
    new = np.array([2, 2, 0, 0, 1, 1])
    assert np.array_equal(align_labels(prev, new, 3), prev)
    assert nmi_between(prev, new) == pytest.approx(1.0)
    assert nmi_between(prev, np.array([0, 1, 0, 1, 0, 1])) < 0.1


def test_uniform_sampler_balances_clusters_and_is_seeded():
    labels = np.array([0] * 90 + [1] * 8 + [2] * 2)
    s = uniform_cluster_sample(labels, 300, torch.Generator().manual_seed(0))
    counts = np.bincount(labels[s], minlength=3)
    assert len(s) == 300 and counts.min() == counts.max() == 100
    assert np.array_equal(s, uniform_cluster_sample(labels, 300, torch.Generator().manual_seed(0)))


def test_epoch_seed_streams_differ_and_stream_zero_is_the_epoch_seed():
    assert epoch_seed(3, 2) == epoch_seed(3, 2, 0) == (3 * 1_000_003 + 2 * 7919) % (2**31 - 1)
    assert len({epoch_seed(3, 2, s) for s in range(5)}) == 5
    assert epoch_seed(3, 2, 1) != epoch_seed(3, 3, 1) != epoch_seed(4, 2, 1)


def test_pseudolabels_per_epoch_records_state_and_seeding():
    X = _groups()
    a = PseudoLabels(3, seed=5, align=True, max_iter=10)
    r0 = a.update(X, 0)
    assert "nmi_prev" not in r0 and r0["clusters_used"] == 3 and r0["largest_cluster"] == pytest.approx(1 / 3)
    first = a.labels.copy()
    r1 = a.update(X[::-1].copy()[::-1], 1)  # same points: aligned to the previous numbering
    assert r1["nmi_prev"] == pytest.approx(1.0) and np.array_equal(a.labels, first)
    # the checkpointed state brings the assignment back; the same seed and epoch give the same sample
    b = PseudoLabels(3, seed=5, align=True, max_iter=10)
    b.restore(a.state())
    assert np.array_equal(b.labels, a.labels)
    assert np.array_equal(a.sample(50, 4), b.sample(50, 4))
    assert not np.array_equal(a.sample(50, 4), a.sample(50, 5))
