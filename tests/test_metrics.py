"""Metrics against hand-computed cases."""

import numpy as np
import pytest

from imclust import metrics as M
from imclust.errors import UserError


def test_acc_permuted_labels_is_one():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([2, 2, 0, 0, 1, 1])
    assert M.cluster_acc(y, p) == 1.0


def test_acc_hand_computed():
    # clusters: A={0,0,1}, B={1,1,0}; best matching A->0 (2 right), B->1 (2 right): 4/6
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([5, 5, 5, 7, 7, 7])
    assert M.cluster_acc(y, p) == pytest.approx(4 / 6)


def test_acc_more_clusters_than_classes():
    # 3 clusters, 2 classes: only two clusters can be matched one to one
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0, 0, 1, 2, 2, 2])
    # match cluster0->class0 (2), cluster2->class1 (3): 5/6; cluster 1's point counts as an error
    assert M.cluster_acc(y, p) == pytest.approx(5 / 6)
    assert M.purity(y, p) == 1.0


def test_acc_fewer_clusters_than_classes():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.zeros(6, int)
    assert M.cluster_acc(y, p) == pytest.approx(2 / 6)


def test_purity_hand_computed():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 0, 0, 1, 1, 1])
    # cluster 0 majority 0 (2), cluster 1 majority 1 (2) -> 4/6
    assert M.purity(y, p) == pytest.approx(4 / 6)


def test_nmi_hand_computed_arithmetic_and_geometric():
    # y: two classes of 2; p: one cluster of 3, one of 1
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 0, 0, 1])
    # H(Y)=ln2, H(P)=-(3/4 ln 3/4 + 1/4 ln 1/4), I = H(Y) - H(Y|P)
    hy = np.log(2)
    hp = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    # H(Y|P): cluster 0 has (2 of class 0, 1 of class 1) with prob 3/4
    hyp = 0.75 * -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    mi = hy - hyp
    assert M.nmi(y, p) == pytest.approx(mi / ((hy + hp) / 2))
    assert M.nmi(y, p, "geometric") == pytest.approx(mi / np.sqrt(hy * hp))


def test_ari_hand_computed():
    # contingency [[2,0],[1,1]] : sum C(nij,2)=1; a=[C(2,2)+C(2,2)]=2; b=[C(3,2)+C(1,2)]=3; C(4,2)=6
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 0, 0, 1])
    exp = 2 * 3 / 6
    expected = (1 - exp) / (0.5 * (2 + 3) - exp)
    assert M.ari(y, p) == pytest.approx(expected)


def test_aligned_confusion_puts_matches_on_diagonal():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([7, 7, 3, 3, 5, 5])
    cm, classes, clusters = M.aligned_confusion(y, p)
    assert np.array_equal(np.diag(cm), [2, 2, 2])
    assert clusters == [7, 3, 5]


def test_internal_metrics_prefer_the_true_partition(blobs):
    x, y = blobs
    X = x.reshape(len(x), -1)
    good = M.internal_metrics(X, y)
    rnd = M.internal_metrics(X, np.random.RandomState(0).randint(0, 3, len(y)))
    assert good["silhouette"] > rnd["silhouette"]
    assert good["calinski_harabasz"] > rnd["calinski_harabasz"]
    assert good["davies_bouldin"] < rnd["davies_bouldin"]


def test_silhouette_is_sampled_for_large_n():
    X = np.random.RandomState(0).randn(3000, 2)
    y = (X[:, 0] > 0).astype(int)
    a = M.internal_metrics(X, y, sample_size=500, random_state=0)["silhouette"]
    b = M.internal_metrics(X, y, sample_size=500, random_state=1)["silhouette"]
    assert a != b  # a sample, not the full set
    assert abs(a - b) < 0.1


def test_length_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="3 labels against 2"):
        M.cluster_acc([0, 1, 1], [0, 1])
