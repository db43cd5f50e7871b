"""scikit-learn's estimator checks over every registered reducer and clusterer.

The components are discovered from the registry by kind, so a reducer or clusterer added later is checked
without touching this file. A component is checked with its default parameters unless ``CHECK_PARAMS`` names
it (with the reason); a check may be expected to fail only through ``EXPECTED_FAILURES``, with the reason.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from imclust import components  # noqa: F401  (registers every component)
from imclust.base import registered
from imclust.errors import NotInstalledError

#: parameters that fit scikit-learn's tiny test arrays (10-100 points) or keep the ~45 fits per component short
CHECK_PARAMS: dict[str, tuple[dict, str]] = {
    "hdbscan": ({"min_cluster_size": 5}, "the default minimum cluster size (20) is larger than the 10-15-point arrays "
                                         "of several checks and than each 17-point blob of check_clustering"),
    "tsne": ({"n_iter": 260, "n_jobs": 1}, "1,000 iterations on every thread per fit make the checks take minutes; they "
                                           "test the contract, not the quality of the layout"),
    "umap": ({"n_epochs": 50}, "as for tsne: fewer optimisation epochs per fit"),
    "temi": ({"steps": 60, "n_heads": 2, "hidden": 32, "bottleneck": 16, "knn": 5, "device": "cpu"},
             "a smaller, shorter head training per fit (1,000 steps of 8 heads per fit make the checks take minutes)"),
    "turtle": ({"iterations": 100, "device": "cpu"}, "as for temi: a shorter training per fit"),
}
#: checks expected to fail, by component name: {check name: why}
EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "pca": {"check_methods_sample_order_invariance": (
        "PCA works in float32 (features can be larger than memory); a float32 matrix product may round a row "
        "1 ULP differently with its place in the block (seen after other tests had loaded torch's BLAS), and the "
        "check's rtol of 1e-7 is below float32's 1.2e-7 step")},
}
#: components whose checks take more than a few seconds
SLOW = {"tsne", "umap"}


def _components(slow: bool) -> list:
    out = []
    for kind in ("reducer", "clusterer"):
        for name, cls in registered(kind).items():
            if (name in SLOW) == slow:
                out.append(cls(**CHECK_PARAMS.get(name, ({}, ""))[0]))
    return out


def _expected_failures(estimator) -> dict[str, str]:
    return EXPECTED_FAILURES.get(estimator.component_name, {})


def _run(estimator, check):
    try:
        check(estimator)
    except NotInstalledError as err:  # an optional backend that is not installed here
        pytest.skip(str(err))


@parametrize_with_checks(_components(slow=False), expected_failed_checks=_expected_failures)
def test_component_meets_the_sklearn_contract(estimator, check):
    _run(estimator, check)


@pytest.mark.slow
@parametrize_with_checks(_components(slow=True), expected_failed_checks=_expected_failures)
def test_slow_component_meets_the_sklearn_contract(estimator, check):
    _run(estimator, check)


def test_every_registered_reducer_and_clusterer_is_checked():
    checked = {type(e).component_name for e in _components(False) + _components(True)}
    assert checked == set(registered("reducer")) | set(registered("clusterer"))
    assert set(CHECK_PARAMS) <= checked and set(EXPECTED_FAILURES) <= checked


def test_bad_arrays_raise_errors_that_are_user_errors_and_value_errors():
    import numpy as np

    from imclust.cluster import KMeans
    from imclust.errors import UserError
    from imclust.reduce import PCA

    X = np.random.RandomState(0).rand(20, 3).astype(np.float32)
    for bad, match in ((X[:, 0], "2-D array"), (np.where(X > 0.9, np.nan, X), "NaN"), (X[:0], "0 sample")):
        for est in (PCA(2), KMeans(2)):
            with pytest.raises(ValueError, match=match) as err:
                est.fit(bad)
            assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    km = KMeans(2, max_iter=7, backend="sklearn", n_init=1).fit(X)
    assert km.max_iter == 7 and km.n_iter_ <= 7  # no silent raise of max_iter
    with pytest.raises(ValueError, match="X has 4 features, but KMeans is expecting 3"):
        km.predict(np.hstack([X, X[:, :1]]))
