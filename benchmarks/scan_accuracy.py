"""SCAN on this CPU: accuracy and end-to-end time against the peers, measured in the same run.

For each dataset and seed, k = the number of classes (labels are read only for that and to score):

- ours: the ``scan`` recipe (SimCLR pretext -> neighbours -> clustering heads -> self-labelling when the
  budget has it), timed end to end (decoding, every stage, the final assignment);
- ``scan heads (before self-labelling)``: the same run's clusters after its scan stage (the kept head), so
  the table shows what self-labelling adds; only for runs that self-label (the CPU budget skips it, and its
  clusters are then the heads');
- ``pretext + k-means``: k-means (10 restarts) on the L2-normalised features of the same run's pretext (read
  back from that run's cache, so it costs no training): what SCAN's later stages add;
- ``ours + SETTING`` (one row per ``--also SETTING``): the scan recipe with that override too, fitted on the
  same run's cached pretext (so the pretext is the same network, and its seconds are the later stages' only):
  a stage setting compared with the preset's on the same features;
- the default a user gets without SCAN and without pretrained weights (what ``imclust run --weightless`` picks
  for the set: the colour default for colour sets, the grey default for grey ones);
- raw-pixel k-means (the pixels at 32x32 for photos, k-means++, 10 restarts).

Every fit (ours and the peers') runs with an empty cache folder, so nothing is reused from an earlier run
(the peers' SimCLR pretext included) and each is timed from scratch.
Collapse warnings of our runs (empty or dominant clusters, after any stage) are counted in the table, with the
runs whose self-labelling was kept (it is discarded when it collapses the scan stage's clusters) or skipped.
Results go to the ``scan-cpu`` block of RESULTS.md with ``--write`` (another block with ``--section NAME``);
``--json FILE`` also keeps the rows, and ``--summarise FILE...`` rebuilds the table from such files (nothing
refitted), so that a run made without ``--write`` can still be written.

    flock /tmp/imclust-bench.lock python benchmarks/scan_accuracy.py --datasets cifar10-test --seeds 0 1 2 --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
from _common import SUITE_SETS, by_dataset_and_method, fresh_cache, load_average, require_sets, results_head, score_cells, table, update_section  # noqa: E402

from imclust import components  # noqa: E402,F401
from imclust.api import build_pipeline  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402
from imclust.pipeline import Pipeline  # noqa: E402
from imclust.recipes import default_recipe  # noqa: E402

#: every set of the suite, under this table's names (CIFAR-10 as its 10k test folder, ``cifar10-test``)
SOURCES = {("cifar10-test" if name == "cifar10" else name): path for name, path in SUITE_SETS.items()}
OURS = "ours (scan)"
HEADS = "scan heads (before self-labelling)"
PRETEXT = "pretext + k-means"
PIXELS = "raw-pixel k-means"


def peers(ds, default: str) -> dict[str, str | dict]:
    """The set's weightless default recipe ``default`` (by name) and raw-pixel k-means (a spec: no recipe)."""
    pixels = {"type": "pixels", "size": 32} if min(ds.shape[1:]) > 32 else {"type": "pixels"}
    return {default: default,
            PIXELS: {"encoder": pixels, "reducers": [], "clusterer": {"type": "kmeans", "n_init": 10}}}


def fit(method: str | dict, ds, k: int, seed: int, name: str, overrides=(),
        cache_dir: str | None = None) -> tuple[Pipeline, float]:
    """Fit ``method`` with k clusters, timed: a recipe's name (built as ``imclust run`` builds it, with
    ``overrides``) or the spec of a peer that is no recipe; ``cache_dir``: the encoder's cache folder."""
    t = time.perf_counter()
    if isinstance(method, str):
        pipe, _ = build_pipeline(method, overrides, seed=seed)
    else:
        pipe = Pipeline.from_spec(json.loads(json.dumps(method)), name=name, seed=seed)
    if cache_dir is not None:
        pipe.encoder.set_params(cache_dir=cache_dir)
    pipe.set_k(k)
    pipe.fit(ds)
    return pipe, time.perf_counter() - t


def pretext_kmeans(pipe: Pipeline, ds, k: int, seed: int) -> np.ndarray:
    """k-means on the run's own pretext features, loaded from its cache (no training)."""
    from imclust.base import build
    from imclust.cluster import KMeans
    from imclust.encoders.contrastive import in_memory

    enc = pipe.encoder
    side = enc.settings_["size"]
    pre = build({"type": "simclr", **enc.settings_["pretext"], **enc._shared("pretext"), "cache": True,
                 "cache_dir": enc.cache_dir}, kind="encoder")
    pre.fit(in_memory(ds.resized((side, side))))
    if not pre.from_cache_:
        raise RuntimeError("the pretext was not found in the run's cache")
    f = pre.train_features()
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(f)


def measure(name: str, seeds, only=None, overrides=(), also=()) -> list[dict]:
    ds = load_source(str(SOURCES[name]))
    k = len(np.unique(ds.labels))
    rows = []

    default = default_recipe(ds.channels, weightless=True)

    def record(method, labels, secs, load0, warnings=0, **extra):
        m = evaluate(labels, ds.labels)
        row = {"dataset": name, "n": len(ds), "method": method, "seed": seed, "acc": m["acc"], "nmi": m["nmi"],
               "ari": m["ari"], "seconds": secs, "load_start": load0, "load_end": os.getloadavg()[0],
               "warnings": warnings, "default": method == default, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    methods = {OURS: "scan", **peers(ds, default)}
    for seed in seeds:
        for mname, method in methods.items():
            if only and not any(mname.startswith(o) for o in only):
                continue
            load0 = os.getloadavg()[0]
            if mname == OURS:
                with fresh_cache() as cache:
                    pipe, secs = fit(method, ds, k, seed, mname, overrides, cache)
                    collapses = sum("COLLAPSE" in w for w in pipe.encoder.warnings_)
                    ran = bool(pipe.encoder.selflabel_history_)
                    record(mname, pipe.labels_, secs, load0, collapses, selflabel_ran=ran,
                           selflabel_kept=pipe.encoder.selflabel_kept_)
                    if ran:  # otherwise the scan stage's clusters are ours, and a second row would repeat them
                        record(HEADS, pipe.encoder.scan_labels_, 0.0, load0)
                    t = time.perf_counter()
                    record(PRETEXT, pretext_kmeans(pipe, ds, k, seed), time.perf_counter() - t, load0)
                    for setting in also:  # the same cache: the pretext is read back, not trained again
                        other, secs = fit(method, ds, k, seed, f"{OURS} + {setting}", [*overrides, setting], cache)
                        if not other.encoder.pretext_from_cache_:
                            raise RuntimeError(f"--also {setting}: the pretext was trained again, not read back")
                        record(f"ours + {setting}", other.labels_, secs, load0,
                               sum("COLLAPSE" in w for w in other.encoder.warnings_))
            else:
                with fresh_cache():
                    pipe, secs = fit(method, ds, k, seed, mname)
                record(mname, pipe.labels_, secs, load0)
    return rows


def selflabel_cell(rs) -> str:
    """How many of ``rs`` (our runs) kept self-labelling's network, of those that ran it."""
    ran = [r for r in rs if r.get("selflabel_ran", True)]  # rows written before the field existed all ran it
    skipped = f"skipped in {len(rs) - len(ran)}" if len(ran) < len(rs) else ""
    kept = f"{sum(r['selflabel_kept'] for r in ran)} of {len(ran)}" if ran else ""
    return "; ".join(c for c in (kept, skipped) if c)


def summarise(rows) -> str:
    out = []
    for d, m, rs in by_dataset_and_method(rows):
        acc = np.mean([r["acc"] for r in rs])
        px = [r["acc"] for r in rows if r["dataset"] == d and r["method"] == PIXELS]
        dflt = [r["acc"] for r in rows if r["dataset"] == d and r.get("default")]
        secs = [r["seconds"] for r in rs]
        timed = f"{np.mean(secs):.0f} ({max(secs):.0f})"
        out.append([f"{d} (n={rs[0]['n']})", m, *score_cells(rs),
                    "(from ours)" if m in (HEADS, PRETEXT) else
                    f"{timed}, pretext from ours" if m.startswith("ours + ") else timed,
                    f"{acc - np.mean(dflt):+.3f}" if dflt else "–",
                    f"{acc / np.mean(px):.2f}×" if px else "–",
                    str(sum(r["warnings"] for r in rs)) if m == OURS or m.startswith("ours + ") else "",
                    selflabel_cell(rs) if m == OURS else "",
                    f"{min(r['load_start'] for r in rs):.1f}–{max(r['load_end'] for r in rs):.1f}", len(rs)])
    return table(out, ["dataset", "method", "ACC (mean ± sd)", "NMI", "ARI", "seconds per run (max)",
                       "ACC − default", "ACC ÷ raw-pixel k-means", "collapse warnings",
                       "self-labelling kept", "load (1-min)", "seeds"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["cifar10-test", "intel-scenes", "flowers5", "mnist-test", "umist"],
                    choices=list(SOURCES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=None, help="run only methods whose name starts with these")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override of the scan recipe")
    ap.add_argument("--also", action="append", default=[], metavar="SETTING",
                    help="also fit ours with this override on the same (cached) pretext; one row each")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the timed runs hold the bench lock)")
    ap.add_argument("--json", default=None, help="also write the raw rows here")
    ap.add_argument("--write", action="store_true", help="replace the --section block of benchmarks/RESULTS.md")
    ap.add_argument("--section", default="scan-cpu", help="name of the RESULTS.md block that --write replaces")
    ap.add_argument("--summarise", nargs="+", default=None, metavar="JSON",
                    help="build the table from the rows of earlier --json files instead of measuring")
    ap.add_argument("--title", default=None, help="the heading of the --write block (default: the datasets)")
    args = ap.parse_args(argv)
    if args.summarise and (args.overrides or args.only or args.also):
        ap.error("--summarise rebuilds a table from measured rows: --set, --only and --also apply only when measuring")
    load_start = load_average()
    if args.summarise:
        rows = [row for path in args.summarise for row in json.loads(Path(path).read_text())]
        datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    else:
        torch.set_num_threads(args.threads)
        require_sets(SOURCES, args.datasets)
        datasets, rows = args.datasets, []
        for name in datasets:
            rows += measure(name, args.seeds, args.only, args.overrides, args.also)
    body = summarise(rows)
    print(body)
    if args.json:  # with --summarise: the rows of every file named, joined
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.write:
        rebuilt = ("The table is rebuilt from the rows of earlier runs (`--summarise`): their seconds and load column "
                   "are as measured then; the load average above is the rebuild's. " if args.summarise else "")
        title = args.title or f"SCAN on this CPU (issue 14): {', '.join(datasets)}"
        head = f"## {title}\n\n" + results_head(load_start) + rebuilt + (
                "Each run is timed end to end (decode, pretext, neighbours, heads, self-labelling, assignment); "
                "the load column is the 1-min load average at the start and end of each run.\n\n")
        update_section(args.section, head + body)


if __name__ == "__main__":
    main()
