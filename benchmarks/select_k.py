"""Choosing k when it is unknown (``--k auto``), on every set of the benchmark suite in one run.

For each set and seed, the default recipe (whatever :func:`imclust.recipes.default_recipe` names: with
``imclust[photos]`` installed ``hog-ae-lite-umap`` for grey images and ``photo-lite`` for colour, else the
defaults that need no weights, ``hog-ae-umap`` and ``photo-simclr-umap``) is
fitted once with k = the number of classes: that is "a run with k given" (its seconds are the time reference and
its scores the true-k columns). Its fitted encoder's output is then given to the recipe's later stages again with
``--k auto`` (:meth:`imclust.pipeline.Pipeline.refit_encoded`): that is the ``--k auto`` run, and its final
embedding is the one the other rules below choose k on and every rule's k is clustered on. The run's embedding
differs from the one with k given where a reducer compares graphs at the run's k (the grey defaults: with
``--k auto`` it compares them at the middle of the candidate range, not at the true k, and ours chooses k on that
layout; the run then compares the graphs again at the k it chose and clusters the cleanest graph's layout at that
k, so that its clusters are those of a run with that k given).

- ours: :func:`imclust.kselect.select_k` with plain ``--k auto`` bounds: the candidate nearest the geometric mean of
  its two criteria's k, each of which is also scored on its own (stability gap, reproducible clusters);
- silhouette: the rule ``--k auto`` used before (k-means with 3 starts on a sample of at most 5,000 points,
  k = 2..15, the best silhouette);
- true k: the number of classes (labels read only for this and for scoring);
- clustimage (``--clustimage PYTHON``): the peer tool with its defaults, run by the Python of the virtual
  environment it is installed in (``python -m venv /tmp/civenv && /tmp/civenv/bin/pip install clustimage``;
  ``benchmarks/_clustimage_peer.py``); it uses its own features, so its scores compare whole tools, its k compares
  the choice. It runs for the first seed only (it is deterministic); with ``--rows``, kept rows of that seed
  that lack it get it added, everything else as measured.

The rules' k is clustered with the recipe's own clusterer (a GMM with 10 starts) and scored with Hungarian ACC,
NMI and ARI (ACC is defined for any k). The targets of issue 18: the chosen k within ±25 % of the truth on at
least 12 of 15 sets, never 2 when the truth is 6 or more, NMI at the chosen k within 0.05 of NMI at the true k on
at least 12 of 15, and choosing k costing at most as much again as the run with k given (sets up to 10k images).

    flock /tmp/imclust-bench.lock python benchmarks/select_k.py --seeds 0 1 2 --write

The run with k given is a first run: it fits with an empty ``$IMCLUST_CACHE_DIR``, so that no encoder features
or pretext come from an earlier run of the same images (a rerun that reads them is a few seconds of PCA and GMM).
``--cache DIR`` keeps each set's two embeddings (and both runs' labels and seconds, and the auto run's selection, as
measured when they were first fitted) so that later runs, for example while studying a rule, skip the encoder.
It keeps the encoder's output too: with ``--refit`` both runs fit the stages after the encoder again with the
current code, so that a change to those stages is measured on the whole suite without encoding again.
``--rows FILE`` keeps every measured row, so that seeds run at different times (or in parallel, each into its own
file, then concatenated) make one table; the header's load average then describes the last invocation only.
``--study`` adds the other criteria studied (their k only, a table of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SUITE_SETS, fresh_cache, load_average, recipe_pipeline, require_sets, results_head, table, update_section  # noqa: E402

from imclust import components  # noqa: E402,F401
from imclust.base import build  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.kselect import DISAGREE, KSelection, criteria_disagree  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402
from imclust.recipes import default_recipe, load_recipe  # noqa: E402

SUITE = SUITE_SETS
PEER_SCRIPT = Path(__file__).resolve().with_name("_clustimage_peer.py")


def silhouette_choice(X, seed: int, k_min: int = 2, k_max: int = 15, sample: int = 5000) -> int:
    """The previous ``--k auto``: k-means (3 starts) on a sample, the k with the best silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rs = np.random.RandomState(seed)
    Xs = X[rs.choice(len(X), sample, replace=False)] if len(X) > sample else X
    scores = {}
    for k in range(k_min, min(k_max, len(Xs) - 1) + 1):
        lab = KMeans(k, n_init=3, random_state=seed).fit_predict(Xs)
        if len(np.unique(lab)) > 1:
            scores[k] = silhouette_score(Xs, lab, random_state=seed)
    return int(max(scores, key=scores.get))


# -- the other candidates studied (``--study``): each one's k on the same embedding --------------------------
def _sample(X, seed: int, m: int = 3000):
    rs = np.random.RandomState(seed)
    return X[rs.choice(len(X), m, replace=False)] if len(X) > m else X


def bic_choice(X, ks, seed: int) -> int:
    """The GMM's BIC (full covariance, as the recipe's clusterer), lowest over the candidates."""
    import warnings

    from sklearn.mixture import GaussianMixture

    Xs = _sample(X, seed).astype(np.float64)
    bic = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in ks:
            bic[k] = GaussianMixture(k, covariance_type="full", random_state=seed, max_iter=100).fit(Xs).bic(Xs)
    return int(min(bic, key=bic.get))


def eigengap_choice(X, ks, seed: int, neighbours: int = 15) -> int:
    """The largest gap between consecutive eigenvalues of the normalised Laplacian of the kNN graph."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh
    from sklearn.neighbors import NearestNeighbors

    Xs = _sample(X, seed).astype(np.float64)
    n = len(Xs)
    d, idx = NearestNeighbors(n_neighbors=neighbours + 1).fit(Xs).kneighbors(Xs)
    w = np.exp(-(d[:, 1:] / (d[:, -1:] + 1e-12)) ** 2)
    W = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), neighbours), idx[:, 1:].ravel())), shape=(n, n))
    W = W.maximum(W.T)
    deg = np.asarray(W.sum(1)).ravel()
    A = sp.diags(1 / np.sqrt(deg)) @ W @ sp.diags(1 / np.sqrt(deg))
    top = min(max(ks) + 2, n - 2)
    lam = np.sort(1 - eigsh(A, k=top, which="LA", v0=np.random.RandomState(seed).rand(n))[0])
    return int(max((k for k in ks if k < len(lam)), key=lambda k: lam[k] - lam[k - 1]))


def gap_statistic_choice(X, ks, seed: int, references: int = 5) -> int:
    """Tibshirani's gap statistic (k-means, uniform reference in the principal-axes box, the 1-SE rule)."""
    from sklearn.cluster import KMeans

    Xs = _sample(X, seed).astype(np.float64)
    rs = np.random.RandomState(seed)
    mu = Xs.mean(0)
    vt = np.linalg.svd(Xs - mu, full_matrices=False)[2]
    z = (Xs - mu) @ vt.T
    refs = [rs.uniform(z.min(0), z.max(0), size=z.shape) @ vt + mu for _ in range(references)]
    gap, se = {}, {}
    for k in ks:
        log_w = np.log(KMeans(k, n_init=3, random_state=seed).fit(Xs).inertia_)
        log_ref = np.array([np.log(KMeans(k, n_init=1, random_state=seed).fit(r).inertia_) for r in refs])
        gap[k], se[k] = log_ref.mean() - log_w, log_ref.std() * np.sqrt(1 + 1 / references)
    for a, b in zip(ks, ks[1:]):
        if gap[a] >= gap[b] - se[b]:
            return int(a)
    return int(ks[-1])


def study(X, sel, seed: int) -> dict:
    """k by each studied candidate on the embedding, over the same candidates as ours (BIC up to 60 for time)."""
    ks = sel.candidates
    stability_only = int(ks[int(np.argmax(sel.stability))])
    return {"stability (no reference)": stability_only, "GMM BIC": bic_choice(X, [k for k in ks if k <= 60], seed),
            "eigengap": eigengap_choice(X, ks, seed), "gap statistic": gap_statistic_choice(X, ks, seed)}


class CachedEncoder:
    """Stands in for a fitted encoder whose output was read from the cache: what the stages after it ask of it
    (its name, and the widths and names of its views)."""

    def __init__(self, name: str, view_dims, view_names):
        self.component_name = name
        self.view_dims_ = [int(d) for d in view_dims] or None
        self.view_names_ = [str(v) for v in view_names] or None


def reference_run(name: str, seed: int, cache: Path | None, refit: bool = False) -> dict:
    """The default recipe with k = number of classes (embedding, labels, scores and seconds per stage), and the
    same run with ``--k auto``: its embedding (where a reducer compares graphs at the run's k, the layout differs),
    its selection, labels and seconds. The encoder is fitted once; the auto run refits the stages after it.
    ``refit``: the encoder's output comes from the cache and both runs fit the stages after it again with the
    current code (the encoder's seconds are the cached ones)."""
    path = cache / f"{name}-seed{seed}.npz" if cache else None
    cached = np.load(path, allow_pickle=False) if path is not None and path.exists() else None
    if refit:
        if cached is None or "features" not in cached.files:
            raise SystemExit(f"--refit: {path} is missing or holds no encoder output (caches written before it was "
                             "kept hold only embeddings); run this set and seed without --refit first")
        recipe, y = str(cached["recipe"]), cached["y"]
        k_true = int(len(np.unique(y)))
        pipe = recipe_pipeline(recipe, k_true, seed)
        pipe.encoder = CachedEncoder(pipe.encoder.component_name, cached["view_dims"], cached["view_names"])
        encode_s = {key: v for key, v in json.loads(str(cached["timings"])).items() if key in ("load", "encode")}
        pipe.refit_encoded(cached["features"], k_true)
        return auto_run(pipe, {"y": y, "recipe": recipe, "timings": {**pipe.timings_, **encode_s},
                               "cached": False, "refit": True}, None)
    if cached is not None and "embedding_auto" in cached.files:  # a cache without the auto run is fitted again
        f = cached
        return {"embedding": f["embedding"], "y": f["y"], "labels": f["labels"], "recipe": str(f["recipe"]),
                "embedding_auto": f["embedding_auto"], "labels_auto": f["labels_auto"],
                **{key: json.loads(str(f[key])) for key in ("timings", "timings_auto", "selection", "graphs")},
                "cached": True}
    t = time.perf_counter()
    ds = load_source(str(SUITE[name]))
    load_s = time.perf_counter() - t
    y = np.asarray(ds.labels)
    recipe = default_recipe(ds.channels)
    with fresh_cache():  # the reference is a first run: no features or pretext from an earlier one
        pipe = recipe_pipeline(recipe, int(len(np.unique(y))), seed).fit(ds)
    return auto_run(pipe, {"y": y, "recipe": recipe, "timings": {"load": load_s, **pipe.timings_}, "cached": False},
                    path)


def auto_run(pipe, out: dict, path: Path | None) -> dict:
    """``out`` (the run with k given, just fitted by ``pipe``) with that run's embedding, labels and graph, then
    the same stages fitted again with ``--k auto``; kept in ``path`` (with the encoder's output) where given."""
    out.update(embedding=pipe.embedding_, labels=pipe.labels_, graphs={"given": graph_chosen(pipe)})
    pipe.refit_encoded(pipe.features_, "auto")
    out.update(embedding_auto=pipe.embedding_, labels_auto=pipe.labels_, timings_auto=pipe.timings_,
               selection=pipe.k_selection_.to_dict())
    out["graphs"]["auto"] = graph_chosen(pipe)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the encoder's output too (and its views' widths and names), so that a study of the stages after the
        # encoder can fit them again without encoding (--refit)
        views = {"view_dims": np.asarray(getattr(pipe.encoder, "view_dims_", None) or [], dtype=np.int64),
                 "view_names": np.asarray(getattr(pipe.encoder, "view_names_", None) or [], dtype=str)}
        np.savez(path, **{key: out[key] for key in ("embedding", "y", "labels", "recipe", "embedding_auto", "labels_auto")},
                 **{key: json.dumps(out[key]) for key in ("timings", "timings_auto", "selection", "graphs")},
                 features=np.asarray(pipe.features_), **views)
    return out


def graph_chosen(pipe) -> str | None:
    """The graph the run laid out, where a reducer chose between graphs (else None)."""
    choice = next((getattr(r, "graph_choice_", None) for r in pipe.reducers if getattr(r, "graph_choice_", None)), None)
    return None if choice is None else str(choice["chosen"])


def cluster_at(X, k: int, recipe: str, seed: int) -> np.ndarray:
    spec = {**load_recipe(recipe)["clusterer"], "n_clusters": int(k)}
    clu = build(spec)
    if "random_state" in clu.get_params(deep=False):
        clu.set_params(random_state=seed)
    return np.asarray(clu.fit_predict(X), dtype=np.int64)


def scores(labels, y) -> dict:
    m = evaluate(labels, y)
    return {"acc": m["acc"], "nmi": m["nmi"], "ari": m["ari"]}


def clustimage_run(python: str, name: str, seed: int) -> dict | None:
    """clustimage with its defaults on the set's images, in its own virtual environment: its own choice of k,
    and the same with k = the number of classes (its reference, as ours is the recipe at the true k). None, with
    the reason on stderr, where it fails (the table then shows no peer for that set)."""
    ds = load_source(str(SUITE[name]))
    y = np.asarray(ds.labels)
    x = ds.to_array(desc=None)  # (n, C, H, W) in [0, 1]
    x = (np.clip(x.transpose(0, 2, 3, 1), 0, 1) * 255).round().astype(np.uint8)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", x)
        for key, extra in (("auto", []), ("true", [str(len(np.unique(y)))])):
            t = time.perf_counter()
            proc = subprocess.run([python, str(PEER_SCRIPT), str(Path(tmp) / "images.npy"), str(Path(tmp) / "out.json"),
                                   str(seed), *extra], capture_output=True, text=True)
            if proc.returncode != 0:
                why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                print(f"  clustimage failed on {name}: {why}", file=sys.stderr)
                return None
            labels = np.asarray(json.loads((Path(tmp) / "out.json").read_text())["labels"], dtype=np.int64)
            out[key] = {"k": int(len(np.unique(labels))), **scores(labels, y), "seconds": time.perf_counter() - t}
    return {**out["auto"], "true": out["true"]}


def measure(name: str, seed: int, cache: Path | None, peer_python: str | None, studied: bool = False,
            refit: bool = False) -> dict:
    ref = reference_run(name, seed, cache, refit)
    X, y, recipe = ref["embedding_auto"], ref["y"], ref["recipe"]
    k_true = int(len(np.unique(y)))
    given = ref["timings"]
    row = {"set": name, "seed": seed, "n": len(y), "k_true": k_true, "recipe": recipe, "cached": ref["cached"],
           "refit": ref.get("refit", False),
           "run_seconds": float(sum(given.values())), "true": scores(ref["labels"], y), "graphs": ref["graphs"],
           # the --k auto run: the same loading and encoding, then its own stages
           "auto_run_seconds": float(given["load"] + given["encode"] + sum(ref["timings_auto"].values()))}
    sel = KSelection(**ref["selection"])
    labels_at = {sel.k: np.asarray(ref["labels_auto"])}  # one GMM fit per k, whichever rules chose it

    def scored(k):
        if k not in labels_at:
            labels_at[k] = cluster_at(X, k, recipe, seed)
        return scores(labels_at[k], y)

    row["ours"] = {"k": sel.k, "runner_up": sel.runner_up, "seconds": sel.seconds, **scored(sel.k)}
    # ours is the consensus of two criteria: each one's own k, from the same selection
    row["stability gap"] = {"k": sel.k_stability, **scored(sel.k_stability)}
    row["reproducible clusters"] = {"k": sel.k_reproduced, **scored(sel.k_reproduced)}
    t = time.perf_counter()
    k_sil = silhouette_choice(X, seed)
    row["silhouette"] = {"k": k_sil, "seconds": time.perf_counter() - t, **scored(k_sil)}
    if studied:
        row["study"] = study(X, sel, seed)
    peer = clustimage_run(peer_python, name, seed) if peer_python else None
    if peer is not None:
        row["clustimage"] = peer
    print(json.dumps(row), flush=True)
    return row


def within(k: float, truth: int) -> bool:
    return abs(k - truth) <= 0.25 * truth


def summarise(rows: list[dict], methods: list[str]) -> tuple[str, str]:
    """The per-set table (means over seeds; chosen k per seed) and the goal counts."""
    sets = list(dict.fromkeys(r["set"] for r in rows))
    header = ["set", "n", "true k"]
    for m in methods:
        header += [f"{m} k", f"{m} ACC", f"{m} NMI", f"{m} ARI"]
    if "clustimage" in methods:
        header += ["clustimage true-k ACC", "clustimage true-k NMI"]
    header += ["true-k ACC", "true-k NMI", "true-k ARI", "graph laid out (k given → auto)", "choose s (ours)",
               "run s (k given)", "auto ÷ given"]
    lines, counts = [], {m: {"k": 0, "two": 0, "nmi": 0, "runs": 0} for m in methods}
    for s in sets:
        rs = [r for r in rows if r["set"] == s]
        k_true = rs[0]["k_true"]
        true_nmi = np.mean([r["true"]["nmi"] for r in rs])
        line = [s, rs[0]["n"], k_true]
        for m in methods:
            got = [r[m] for r in rs if m in r]
            if not got:
                line += ["–"] * 4
                continue
            ks = [g["k"] for g in got]
            c = counts[m]
            c["runs"] += len(got)
            c["k"] += sum(within(k, k_true) for k in ks)
            c["two"] += sum(k == 2 and k_true >= 6 for k in ks)
            refs = [g.get("true") or r["true"] for g, r in zip(got, [r for r in rs if m in r])]
            c["nmi"] += sum(g["nmi"] >= ref["nmi"] - 0.05 for g, ref in zip(got, refs))
            line += ["/".join(map(str, ks)), f"{np.mean([g['acc'] for g in got]):.3f}", f"{np.mean([g['nmi'] for g in got]):.3f}",
                     f"{np.mean([g['ari'] for g in got]):.3f}"]
        if "clustimage" in methods:
            peer = [r["clustimage"]["true"] for r in rs if "clustimage" in r]
            line += [f"{np.mean([p['acc'] for p in peer]):.3f}", f"{np.mean([p['nmi'] for p in peer]):.3f}"] if peer else ["–"] * 2
        timed = [r for r in rs if not r["cached"]] or rs  # a run with k given read from the cache has no fair time
        choose = np.mean([r["ours"]["seconds"] for r in timed])
        run = np.mean([r["run_seconds"] for r in timed])
        auto = np.mean([r["auto_run_seconds"] for r in timed])
        line += [f"{np.mean([r['true']['acc'] for r in rs]):.3f}", f"{true_nmi:.3f}",
                 f"{np.mean([r['true']['ari'] for r in rs]):.3f}", graphs_laid_out(rs), f"{choose:.1f}", f"{run:.1f}",
                 f"{auto / run:.2f}×"]
        lines.append(line)
    goal = []
    for m in methods:
        c = counts[m]
        if c["runs"]:
            goal.append(f"- **{m}**: k within ±25 % of the truth in {c['k']} of {c['runs']} set-runs "
                        f"({c['k'] / c['runs'] * 15:.1f} of 15 sets on average; goal ≥ 12); k = 2 with a truth of 6 or more "
                        f"{c['two']} times (goal 0); NMI within 0.05 of the true-k NMI in {c['nmi']} of {c['runs']} "
                        f"({c['nmi'] / c['runs'] * 15:.1f} of 15; goal ≥ 12).")
    both = [r for r in rows if "stability gap" in r and "reproducible clusters" in r]
    if both:  # does the run's "k is uncertain" flag point at the wrong choices?
        flagged = [criteria_disagree(r["stability gap"]["k"], r["reproducible clusters"]["k"]) for r in both]
        wrong = [not within(r["ours"]["k"], r["k_true"]) for r in both]
        n_flag = sum(flagged)
        goal.append(f"- **ours flagged uncertain** (the two criteria's k {DISAGREE:g}-fold apart or more): {n_flag} of "
                    f"{len(both)} set-runs, {sum(f and w for f, w in zip(flagged, wrong))} of them outside ±25 % of the "
                    f"truth; of the {len(both) - n_flag} not flagged, "
                    f"{sum(w and not f for f, w in zip(flagged, wrong))} outside.")
    return table(lines, header), "\n".join(goal)


def graphs_laid_out(rows: list[dict]) -> str:
    """Per seed, the graph the run with k given laid out and, where the ``--k auto`` run laid out another, that one
    ("–" for a recipe that does not choose between graphs)."""
    out = []
    for r in rows:
        given, auto = r["graphs"]["given"], r["graphs"]["auto"]
        out.append("–" if given is None else given if auto == given else f"{given} → {auto}")
    return "; ".join(out) if len(set(out)) > 1 else out[0]


def study_table(rows: list[dict], seeds, load_start: float) -> str:
    names = list(rows[0]["study"])
    sets = list(dict.fromkeys(r["set"] for r in rows))
    rules = ["ours", "stability gap", "reproducible clusters", "silhouette"]
    lines, hits = [], {m: 0 for m in [*rules, *names]}
    for s in sets:
        rs = [r for r in rows if r["set"] == s]
        truth = rs[0]["k_true"]
        picks = {**{m: [r[m]["k"] for r in rs] for m in rules}, **{m: [r["study"][m] for r in rs] for m in names}}
        for m, ks in picks.items():
            hits[m] += sum(within(k, truth) for k in ks)
        lines.append([s, truth, *["/".join(map(str, picks[m])) for m in hits]])
    runs = len(rows)
    lines.append(["**k within ±25 %**", "", *[f"{hits[m]} of {runs}" for m in hits]])
    return ("## Choosing k: the candidates studied (issue 18)\n\n" + results_head(load_start)
            + f"\nSeeds {list(seeds)}; k per seed. Every candidate reads the same embedding (that of the "
            "default recipe's `--k auto` run) and the same candidate k (plain `--k auto`; BIC up to 60 to bound its "
            "time). GMM BIC: full covariance on a 3,000-point sample, lowest BIC. Eigengap: normalised Laplacian of the "
            "15-nearest-neighbour graph (Gaussian weights scaled by each point's 15th distance), largest gap. Gap "
            "statistic: Tibshirani et al., k-means, 5 uniform references in the principal-axes box, 1-SE rule. "
            "Stability without the reference: the k with the highest mean ARI between subsample fits (the stability gap "
            "before subtracting the structureless cloud). Ours, the stability gap and reproducible clusters: "
            "`imclust.kselect` (ours is the candidate nearest the geometric mean of the other two). Silhouette: the "
            "`--k auto` before them.\n\n"
            + table(lines, ["set", "true k", *hits]) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SUITE), choices=list(SUITE))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--cache", type=Path, default=None, help="folder for the embeddings (outside the repository)")
    ap.add_argument("--clustimage", metavar="PYTHON", default=None,
                    help="the python of a virtual environment with clustimage installed (run as the peer)")
    ap.add_argument("--study", action="store_true",
                    help="also the other candidates studied (GMM BIC, eigengap, gap statistic, stability without the "
                         "reference): their k only, written as its own block")
    ap.add_argument("--rows", type=Path, default=None,
                    help="a JSON-lines file of measured rows (outside the repository): rows already there for a set and "
                         "seed are reused, new ones are appended, so that runs of some seeds can be joined in one table; "
                         "with --clustimage, a reused row of the first seed that lacks the peer gets its runs added")
    ap.add_argument("--refit", action="store_true",
                    help="read each set's encoder output from --cache (kept there by an earlier run) and fit the stages "
                         "after the encoder again with the current code, both runs: a change after the encoder is "
                         "measured without encoding again (the encoder's seconds are the cached ones)")
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    require_sets(SUITE, args.sets)
    import torch

    torch.set_num_threads(1)
    load_start = load_average()
    kept = {}
    if args.rows is not None and args.rows.exists():
        for line in args.rows.read_text().splitlines():
            row = json.loads(line)
            kept[(row["set"], row["seed"])] = row
    rows = []

    def keep(row):  # later lines of the file replace earlier ones for the same set and seed
        if args.rows is not None:
            with args.rows.open("a") as f:
                f.write(json.dumps(row) + "\n")

    for s in args.sets:
        for seed in args.seeds:
            row = kept.get((s, seed))
            peer_python = args.clustimage if seed == args.seeds[0] else None  # clustimage is deterministic: once per set
            if row is None or (args.study and "study" not in row):
                row = measure(s, seed, args.cache, peer_python, args.study, args.refit)
                keep(row)
            elif peer_python and "clustimage" not in row:
                # a kept row measured without the peer: add the peer's runs, keep everything else as measured
                peer = clustimage_run(peer_python, s, seed)
                if peer is not None:
                    row = {**row, "clustimage": peer}
                    print(json.dumps(row), flush=True)
                    keep(row)
            rows.append(row)
    if args.study:
        text = study_table(rows, args.seeds, load_start)
        print(text)
        if args.write:
            update_section("select_k-study", text)
        return
    methods = ["ours", "stability gap", "reproducible clusters", "silhouette"]
    methods += ["clustimage"] if any("clustimage" in r for r in rows) else []
    body, goal = summarise(rows, methods)
    fresh_seeds = sorted({r["seed"] for r in rows if not r["cached"]})
    timing_note = ("" if len(fresh_seeds) == len(args.seeds) else
                   " (**timings from a cache of earlier runs: not comparable**)" if not fresh_seeds else
                   f" (the timing columns are means over seed{'s' if len(fresh_seeds) > 1 else ''} "
                   f"{', '.join(map(str, fresh_seeds))}, whose runs with k given were measured afresh; the other seeds' "
                   "embeddings came from a cache)")
    refit = [r for r in rows if r.get("refit")]
    if refit:
        seeds = sorted({r["seed"] for r in refit})
        who = "every row" if len(refit) == len(rows) else (
            f"{', '.join(sorted({r['set'] for r in refit}))} at seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(map(str, seeds))}")
        timing_note += (f" ({who}: the encoder's output and seconds came from a cache, and both runs fitted and timed "
                        "the stages after it afresh)")
    head = ("## Choosing k when it is unknown (issue 18)\n\n" + results_head(load_start) + "\n"
            f"Seeds {args.seeds}. k per seed (seed order), scores are means over seeds; every rule chooses k on the "
            "embedding of the default recipe's `--k auto` run (where the recipe compares graphs, ours on the layout "
            "kept at the middle of the k range, the others on the one kept at ours' k; the graph laid out is named, "
            "given → auto where they differ), and its k is clustered with that recipe's GMM on the run's final "
            "embedding; the true-k columns are the run with k given. \"auto ÷ given\" is the seconds of the `--k auto` run (loading and encoding shared with the run "
            "with k given, then its own stages and choosing k) ÷ those of the run with k given"
            + ("; clustimage (its own PCA features, Ward, silhouette over 3-25; deterministic, so run once per set) is "
               "scored against its own run at the true k, whose ACC/NMI/ARI follow its columns" if "clustimage" in methods else "")
            + timing_note + ".\n\n")
    text = head + goal + "\n\n" + body + "\n"
    print(text)
    if args.write:
        update_section("select_k", text)


if __name__ == "__main__":
    main()
