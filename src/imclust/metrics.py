"""Clustering metrics, as papers report them.

With labels: ACC (Hungarian matching of clusters to classes; valid when k differs from the number of
classes), NMI (arithmetic mean normalisation by default), ARI and purity. Without labels: silhouette
(sampled for large n), Calinski–Harabasz and Davies–Bouldin.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from .errors import UserError

METRIC_HELP = {
    "acc": "Accuracy after the best one-to-one matching of clusters to classes (Hungarian); 1 is perfect.",
    "nmi": "Normalised mutual information between clusters and classes; 0 is independent, 1 is identical.",
    "ari": "Adjusted Rand index: agreement on which pairs share a group, corrected for chance; 0 is random, 1 is perfect.",
    "purity": "Share of images whose cluster's majority class is their own class; rises with k.",
    "silhouette": "How much closer points are to their own cluster than to the next (-1..1); higher is better. No labels needed.",
    "calinski_harabasz": "Between-cluster over within-cluster dispersion; higher is better. No labels needed.",
    "davies_bouldin": "Average similarity of each cluster with its most similar one; lower is better. No labels needed.",
}


def _check(y_true, y_pred):
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if len(y_true) != len(y_pred):
        raise UserError(f"{len(y_true)} labels against {len(y_pred)} predictions; they must match one to one")
    if len(y_true) == 0:
        raise UserError("no predictions to evaluate")
    return y_true, y_pred


def contingency(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table (clusters × classes) with the class and cluster values it is indexed by."""
    y_true, y_pred = _check(y_true, y_pred)
    classes, ti = np.unique(y_true, return_inverse=True)
    clusters, pi = np.unique(y_pred, return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (pi, ti), 1)
    return table, clusters, classes


def hungarian_mapping(y_true, y_pred) -> dict:
    """Best one-to-one map cluster → class. Clusters left over (k > classes) map to their majority class."""
    table, clusters, classes = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    mapping = {clusters[r]: classes[c] for r, c in zip(rows, cols)}
    for r, cl in enumerate(clusters):
        if cl not in mapping:
            mapping[cl] = classes[int(np.argmax(table[r]))]
    return mapping


def cluster_acc(y_true, y_pred) -> float:
    """Unsupervised clustering accuracy: the share of points on the diagonal after Hungarian matching.

    With k clusters and c classes, at most min(k, c) clusters are matched one to one; points in unmatched
    clusters count as errors, as in the DEC/IDEC evaluation code.
    """
    table, _, _ = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def purity(y_true, y_pred) -> float:
    table, _, _ = contingency(y_true, y_pred)
    return float(table.max(axis=1).sum() / table.sum())


def nmi(y_true, y_pred, average_method: str = "arithmetic") -> float:
    y_true, y_pred = _check(y_true, y_pred)
    if average_method not in ("arithmetic", "geometric", "min", "max"):
        raise UserError(f"unknown NMI normalisation {average_method!r}; use arithmetic, geometric, min or max")
    return float(skm.normalized_mutual_info_score(y_true, y_pred, average_method=average_method))


def ari(y_true, y_pred) -> float:
    y_true, y_pred = _check(y_true, y_pred)
    return float(skm.adjusted_rand_score(y_true, y_pred))


def aligned_confusion(y_true, y_pred) -> tuple[np.ndarray, list, list]:
    """Confusion matrix (classes × clusters) with clusters reordered to follow their matched class."""
    table, clusters, classes = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    order_matched = [r for _, r in sorted(zip(cols, rows))]
    rest = [r for r in range(len(clusters)) if r not in set(rows)]
    order = order_matched + rest
    return table[order].T, list(classes), [clusters[r] for r in order]


def external_metrics(y_true, y_pred, nmi_average: str = "arithmetic") -> dict[str, float]:
    return {
        "acc": cluster_acc(y_true, y_pred),
        "nmi": nmi(y_true, y_pred, nmi_average),
        "ari": ari(y_true, y_pred),
        "purity": purity(y_true, y_pred),
    }


def internal_metrics(X, y_pred, sample_size: int = 10_000, random_state: int = 0) -> dict[str, float | None]:
    """Silhouette (on a sample when n is large), Calinski–Harabasz and Davies–Bouldin on the embedding X."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    y_pred = np.asarray(y_pred)
    k = len(np.unique(y_pred))
    if k < 2 or k >= len(X):
        return {"silhouette": None, "calinski_harabasz": None, "davies_bouldin": None}
    ss = sample_size if len(X) > sample_size else None
    return {
        "silhouette": float(skm.silhouette_score(X, y_pred, sample_size=ss, random_state=random_state)),
        "calinski_harabasz": float(skm.calinski_harabasz_score(X, y_pred)),
        "davies_bouldin": float(skm.davies_bouldin_score(X, y_pred)),
    }


def evaluate(y_pred, y_true=None, X=None, nmi_average: str = "arithmetic", random_state: int = 0) -> dict:
    """All metrics that the inputs allow: external ones with ``y_true``, internal ones with ``X``."""
    out: dict = {}
    if y_true is not None:
        out.update(external_metrics(y_true, y_pred, nmi_average))
    if X is not None:
        out.update(internal_metrics(X, y_pred, random_state=random_state))
    out["n"] = int(len(y_pred))
    out["k_found"] = int(len(np.unique(y_pred)))
    return out
