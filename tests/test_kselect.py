"""Choosing k when it is unknown (``--k auto`` / ``--k auto:MIN-MAX``): the stability gap, reproducible clusters and
their consensus on synthetic data with a known number of groups, the bounds, determinism, labels never read, and what
a run writes and shows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imclust import components  # noqa: F401
from imclust.api import run
from imclust.data import ImageSet
from imclust.errors import UserError
from imclust.kselect import (REPRODUCED, WEAK, _nearest_candidate, adjusted_rand, candidates, criteria_disagree, default_k_max,
                             pairs_kept_together, parse_auto, rerun_template, scores_peak_at_top, select_k, wider_range)
from imclust.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def _blobs(k=6, n_per=120, d=None, seed=0, spread=8.0):
    """k round Gaussian groups, all the same distance apart (centres on the axes of k dimensions)."""
    rng = np.random.RandomState(seed)
    d = d or k
    centres = spread * np.eye(k, d)
    return np.concatenate([c + rng.randn(n_per, d) for c in centres]).astype(np.float32)


def _rings(k=4, n_per=150, seed=0):
    """k hollow rings (radius 1, a little noise) with centres evenly spaced on a circle of radius 6: groups that
    are not Gaussian blobs."""
    rng = np.random.RandomState(seed)
    t = rng.uniform(0, 2 * np.pi, (k, n_per))
    a = 2 * np.pi * np.arange(k) / k
    xs = [np.stack([6 * np.cos(a[i]) + np.cos(t[i]), 6 * np.sin(a[i]) + np.sin(t[i])], 1) + 0.05 * rng.randn(n_per, 2)
          for i in range(k)]
    return np.concatenate(xs).astype(np.float32)


@pytest.mark.parametrize("k", [3, 6, 9])
def test_blobs_with_known_k(k):
    sel = select_k(_blobs(k=k, seed=k), "auto:2-15", random_state=0)
    assert sel.k == k and not sel.weak
    assert sel.runner_up is not None and sel.runner_up != k
    assert sel.candidates == list(range(2, 16))
    assert len(sel.score) == len(sel.stability) == len(sel.reference) == len(sel.candidates)


@pytest.mark.parametrize("k", [3, 6])
def test_both_criteria_find_blobs_and_not_the_cloud(k):
    sel = select_k(_blobs(k=k, seed=k), "auto:2-12", random_state=0)
    assert sel.k_stability == sel.k_reproduced == sel.k == k
    at_k = sel.candidates.index(k)
    assert sel.reproduced[at_k] >= REPRODUCED > sel.reproduced_reference[at_k]
    assert max(v for kk, v in zip(sel.candidates, sel.reproduced) if kk > k) < REPRODUCED  # the largest k that holds
    assert len(sel.reproduced) == len(sel.reproduced_reference) == len(sel.candidates)


def test_cloud_is_fitted_only_where_the_reproducible_k_needs_it(monkeypatch):
    import imclust.kselect as kselect

    X = _blobs(k=4, seed=1)
    lazy = select_k(X, "auto:2-12", random_state=0)
    ks, kept, cloud = lazy.candidates, lazy.reproduced, lazy.reproduced_reference
    assert any(v is None for v in cloud) and cloud[ks.index(lazy.k_reproduced)] is not None
    # every candidate above the choice that the data reproduces was fitted on the cloud, and the cloud held there
    above = [j for j, kk in enumerate(ks) if kk > lazy.k_reproduced and kept[j] >= REPRODUCED]
    assert all(cloud[j] is not None and cloud[j] >= REPRODUCED for j in above)
    # the same choice as fitting the cloud everywhere (the threshold a cloud share never reaches forces it)
    monkeypatch.setattr(kselect, "REPRODUCED", 2.0)
    full = select_k(X, "auto:2-12", random_state=0)
    assert all(v is not None for v in full.reproduced_reference)
    assert [v for v in cloud if v is not None] == [v for v, w in zip(full.reproduced_reference, cloud) if w is not None]
    held = [kk for kk, d, r in zip(ks, kept, full.reproduced_reference) if d >= REPRODUCED > r]
    assert lazy.k_reproduced == max(held)


def _pairs_of_blobs(separation=4.0, seed=0):
    """Three far-apart groups, each made of two blobs ``separation`` standard deviations apart: a coarse level (3)
    and a fine one (6) that the two criteria weigh differently."""
    rng = np.random.RandomState(seed)
    centres = []
    for i in range(3):
        for j in (0, 1):
            c = np.zeros(6)
            c[i], c[3 + i] = 12.0, separation * j
            centres.append(c)
    return np.concatenate([c + rng.randn(150, 6) for c in centres]).astype(np.float32)


def test_chosen_k_is_the_candidate_nearest_the_geometric_mean_of_the_two_criteria():
    sel = select_k(_pairs_of_blobs(), "auto:2-12", random_state=0)
    assert sel.k_stability < sel.k_reproduced  # the coarse level against the fine one
    assert sel.k == _nearest_candidate(sel.candidates, np.sqrt(sel.k_stability * sel.k_reproduced))
    assert sel.k_stability <= sel.k <= sel.k_reproduced


def test_criteria_two_scales_apart_make_the_choice_uncertain(capsys, monkeypatch):
    """Groups of pairs: the criteria take the two levels (3 and 6), the run says k is uncertain and names both."""
    monkeypatch.setenv("IMCLUST_QUIET", "0")
    sel = select_k(_pairs_of_blobs(), "auto:2-12", random_state=0)
    assert (sel.k_stability, sel.k_reproduced) == (3, 6) and sel.uncertain
    line = capsys.readouterr().err
    assert "the two criteria disagree by 2.0x, so k is uncertain" in line and "k=3 and k=6" in line
    assert not select_k(_blobs(k=4), "auto:2-10", random_state=0).uncertain
    assert not capsys.readouterr().err.count("uncertain")
    assert criteria_disagree(3, 6) and criteria_disagree(20, 3) and criteria_disagree(6, 3)
    assert not criteria_disagree(4, 7) and not criteria_disagree(10, 10)


def test_a_score_still_rising_at_the_largest_candidate_is_said_with_a_wider_range(capsys, monkeypatch):
    """Twelve groups searched up to 8: the best score is the last candidate's, and the run says that finer
    groupings were not examined and gives a range that looks further (twice as far, at most half the images)."""
    monkeypatch.setenv("IMCLUST_QUIET", "0")
    sel = select_k(_blobs(k=12, n_per=40), "auto:2-8", random_state=0)
    assert sel.peaks_at_top and max(sel.score) == sel.score[-1]
    line = capsys.readouterr().err
    assert "the score is highest at the largest candidate, k=8" in line and "(--k auto:2-16 looks further)" in line
    sel = select_k(_blobs(k=4), "auto:2-10", random_state=0)
    assert not sel.peaks_at_top and "largest candidate" not in capsys.readouterr().err
    assert scores_peak_at_top([0.1, 0.2, 0.3]) and scores_peak_at_top([0.3, 0.1, 0.31])
    assert not scores_peak_at_top([0.1, 0.3, 0.2]) and not scores_peak_at_top([0.4])
    assert not scores_peak_at_top([0.3, 0.1, 0.3]) and not scores_peak_at_top([0.0, 0.0, 0.0])  # ties: no rise
    assert wider_range(2, 8, 480) == "auto:2-16" and wider_range(5, 100, 300) == "auto:5-150"
    assert wider_range(2, 150, 300) is None and parse_auto(wider_range(5, 100, 300), 300) == (5, 150)


def test_nearest_candidate_on_a_log_scale():
    ks = candidates(2, 40)
    assert _nearest_candidate(ks, np.sqrt(3 * 6)) == 4
    assert _nearest_candidate(ks, np.sqrt(20 * 25)) == 22  # 22.4: between 22 and 25 on the grid
    assert _nearest_candidate([2, 8], 4.0) == 2  # a tie goes to the smaller k
    assert _nearest_candidate([5, 9], 100.0) == 9


def test_pairs_kept_together_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    other = np.array([5, 5, 5, 7, 7, 7, 7])
    # cluster 0: 6 pairs, 3 kept (the three 5s); cluster 1: 1 pair, kept; cluster 2 has one point: not judged
    assert pairs_kept_together(labels, other).tolist() == [0.5, 1.0]


def test_curves_do_not_depend_on_the_thread_count():
    from imclust.threads import get_threads, set_threads

    X = _pairs_of_blobs(seed=1)
    before = get_threads()
    try:
        set_threads(1)
        one = select_k(X, "auto:2-10", random_state=2)
        set_threads(2)
        two = select_k(X, "auto:2-10", random_state=2)
    finally:
        set_threads(before)
    assert one.to_dict() | {"seconds": 0} == two.to_dict() | {"seconds": 0}


def test_wide_embedding_is_compared_on_its_leading_components():
    """Groups in 6 of 300 dimensions, the other 294 noise (the shape of pretrained features): k is found on the
    sample's leading principal components, and the selection says so."""
    rng = np.random.RandomState(1)
    X = np.concatenate([_blobs(k=6, seed=2), 0.3 * rng.randn(720, 294).astype(np.float32)], axis=1)
    sel = select_k(X, "auto:2-12", random_state=0)
    assert sel.k == 6 and not sel.weak
    assert sel.dims == 50 and sel.to_dict()["dims"] == 50
    assert select_k(_blobs(k=6, seed=2), "auto:2-12", random_state=0).dims is None  # narrow: used as it is


@pytest.mark.parametrize("k", [4, 6])
def test_rings_with_known_k(k):
    sel = select_k(_rings(k=k), "auto:2-12", random_state=0)
    assert sel.k == k and not sel.weak


def test_structureless_cloud_gives_a_weak_choice():
    """One Gaussian cloud: every k is about as (un)stable as on the reference, and the choice says it is weak."""
    X = np.random.RandomState(0).randn(800, 5).astype(np.float32)
    sel = select_k(X, "auto:2-10", random_state=0)
    assert sel.weak and max(sel.score) < 0.1
    assert not select_k(_blobs(k=4), "auto:2-10", random_state=0).weak


def test_tiny_input_has_one_candidate():
    sel = select_k(np.random.RandomState(0).randn(12, 3), "auto", random_state=0)  # 12 images: range 2-2
    assert sel.k == 2 and sel.candidates == [2] and sel.runner_up is None


def test_bounds_are_respected():
    X = _blobs(k=3, seed=1)
    sel = select_k(X, "auto:5-8", random_state=0)
    assert sel.candidates == [5, 6, 7, 8] and 5 <= sel.k <= 8
    assert (sel.k_min, sel.k_max) == (5, 8)
    one = select_k(X, "auto:4-4", random_state=0)
    assert one.k == 4 and one.candidates == [4] and one.runner_up is None


def test_same_seed_same_choice_and_curve():
    X = _blobs(k=5, seed=2)
    a, b = select_k(X, "auto:2-12", random_state=3), select_k(X, "auto:2-12", random_state=3)
    assert a.k == b.k and a.score == b.score and a.stability == b.stability and a.reproduced == b.reproduced


def test_default_range_scales_with_n():
    assert parse_auto("auto", 5000) == (2, 100)
    assert parse_auto("auto", 575) == (2, 57)
    assert parse_auto("auto", 60) == (2, 6)
    assert default_k_max(12) == 2
    assert parse_auto(" AUTO:5-40 ", 1000) == (5, 40)


def test_adjusted_rand_matches_scikit_learn():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.RandomState(0)
    for ka, kb, n in ((2, 2, 10), (5, 9, 300), (40, 3, 1000), (1, 1, 20), (1, 4, 50)):
        a, b = rng.randint(0, ka, n), rng.randint(0, kb, n)
        b[: n // 2] = a[: n // 2] % kb  # partly agreeing
        assert adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert adjusted_rand(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == 1.0


def test_candidate_grid():
    ks = candidates(2, 100)
    assert ks[:19] == list(range(2, 21)) and ks[-1] == 100
    assert all(1.05 <= b / a <= 1.15 for a, b in zip(ks[19:-1], ks[20:-1]))  # steps of about 10 %
    assert candidates(30, 31) == [30, 31]
    assert candidates(7, 7) == [7]


@pytest.mark.parametrize("text, n, message", [
    ("auto:40-5", 1000, "MIN (40) is larger than MAX (5); write --k auto:5-40"),
    ("auto:1-10", 1000, "MIN must be at least 2"),
    ("auto:5", 1000, "write a whole number, 'auto', or 'auto:MIN-MAX'"),
    ("auto:a-b", 1000, "write a whole number, 'auto', or 'auto:MIN-MAX'"),
    ("auto:2-5000", 1797, "MAX (5000) must be at most half the number of images (1797 images, so at most 898"),
    ("auto", 2, "cannot choose k automatically for 2 image(s)"),
])
def test_bad_bounds_one_line(text, n, message):
    with pytest.raises(UserError) as err:
        parse_auto(text, n)
    assert message in str(err.value) and "\n" not in str(err.value)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "IMCLUST_QUIET": "1"}
    p = subprocess.run([sys.executable, "-m", "imclust", *map(str, args)], capture_output=True, text=True, env=env)
    return p.returncode, p.stderr


@pytest.mark.parametrize("k, message", [("auto:40-5", "write --k auto:5-40"), ("auto:1-9", "at least 2"),
                                        ("auto:3-9999", "at most half the number of images (1797 images"),
                                        ("auto:x", "'auto:MIN-MAX'")])
def test_cli_bad_bounds_exit_2_with_one_line(tmp_path, k, message):
    code, err = _cli("run", "digits", "--recipe", "baseline", "--k", k, "--out", tmp_path / "o")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("imclust: error:") and message in lines[0], err
    assert not (tmp_path / "o").exists()


class _NoLabels(ImageSet):
    """An image set with labels that raise when read once it is built: --k auto must never touch them."""

    def __init__(self, *args, **kw):
        self._armed = False
        super().__init__(*args, **kw)
        self._armed = True

    @property
    def labels(self):
        if self._armed:
            raise AssertionError("labels were read")
        return self._labels

    @labels.setter
    def labels(self, value):
        self._labels = value


def test_pipeline_auto_never_reads_labels_and_keeps_n_clusters():
    from conftest import blobs_images

    x, y = blobs_images(n_per=60, k=3, size=8)
    ds = _NoLabels([str(i) for i in range(len(x))], lambda idx: x[idx], x.shape[1:], labels=y, source="blobs")
    with pytest.raises(AssertionError, match="labels were read"):
        ds.labels  # the trap works
    spec = {"encoder": {"type": "pixels"}, "reducers": [{"type": "pca", "n_components": 5}],
            "clusterer": {"type": "kmeans", "n_clusters": "auto:2-8", "n_init": 3}}
    pipe = Pipeline.from_spec(spec, seed=0).fit(ds)
    assert pipe.k_selection_.k == 3 and pipe.clusterer.n_clusters_ == 3
    assert pipe.clusterer.get_params()["n_clusters"] == "auto:2-8"  # as asked: the choice lives in n_clusters_
    assert len(np.unique(pipe.labels_)) == 3 and "choose_k" in pipe.timings_


def test_run_writes_the_evidence_and_the_report_shows_it(tmp_path):
    out = tmp_path / "run"
    res = run("digits", recipe="baseline", k="auto:6-14", out=str(out), seed=0)
    sel = json.loads((out / "k_selection.json").read_text())
    info = json.loads((out / "run.json").read_text())
    assert res.k == sel["k"] == info["k"] == info["k_selection"]["k"] and 6 <= res.k <= 14
    assert sel["candidates"] == list(range(6, 15)) and set(info["k_selection"]["scores"]) == {str(k) for k in range(6, 15)}
    assert info["k_selection"]["uncertain"] == criteria_disagree(sel["k_stability"], sel["k_reproduced"])
    assert info["k_selection"]["weak"] == (max(sel["score"]) < WEAK)
    assert info["k_selection"]["peaks_at_top"] == scores_peak_at_top(sel["score"])
    assert sel["runner_up"] in sel["candidates"] and sel["runner_up"] != sel["k"]
    assert sel["rerun"].startswith("imclust run digits --recipe baseline --seed 0 --k {k} --out ")
    model = json.loads((out / "model" / "pipeline.json").read_text())["parts"]["clusterer"]
    assert model["spec"]["n_clusters"] == "auto:6-14" and model["state"]["n_clusters_"] == res.k
    from imclust.data import load_source

    # the saved model places images with the chosen k, without choosing again
    assert np.array_equal(Pipeline.load(out / "model").predict(load_source("digits")), res.labels)
    page = (out / "report.html").read_text()
    assert 'id="k-choice"' in page and f"chosen k={res.k}" in page and f"runner-up k={sel['runner_up']}" in page
    assert page.count('class="k-point"') == len(sel["candidates"])
    assert f"--k {sel['runner_up']} --out" in page
    # a later run with k given into the same folder leaves no stale evidence behind
    run("digits", recipe="baseline", k=5, out=str(out), seed=0)
    assert not (out / "k_selection.json").exists() and 'id="k-choice"' not in (out / "report.html").read_text()


def test_rerun_command_replaces_k_and_out():
    argv = ["/usr/bin/imclust", "run", "my photos/", "--k", "auto:2-30", "--out", "runs/p", "--set", "clusterer.n_init=3"]
    t = rerun_template(argv, "my photos/", "photo-umap", 0, "runs/p")
    assert t == "imclust run 'my photos/' --set clusterer.n_init=3 --k {k} --out runs/p-k{k}"
    t = rerun_template(["python", "-m", "pytest"], "digits", "hog-umap", 4, "runs/d/")
    assert t == "imclust run digits --recipe hog-umap --seed 4 --k {k} --out runs/d-k{k}"
    t = rerun_template(["x/imclust/__main__.py", "run", "d.npz", "--k=auto", "--out=o"], "d.npz", "r", 0, "o")
    assert t == "imclust run d.npz --k {k} --out o-k{k}"
