"""DEC and IDEC on digits, MNIST-test, USPS and Fashion-1k, with the peers that show what the refinement adds.

For each dataset and seed, in one process:

* raw-pixel k-means (k-means++, 10 restarts);
* the autoencoder the ``dec`` recipe pretrains (D-500-500-2000-10), and k-means (20 restarts) on its codes:
  the DEC/IDEC starting point (``init_labels_``);
* the ``dec`` recipe: KL(P‖Q) refinement from there;
* the ``idec`` recipe, from the *same* pretrained autoencoder (its checkpoint is resumed, zero epochs left).

k = the number of classes; labels are read only to score. Published figures (full MNIST, 70,000 images):
DEC 0.843, IDEC 0.881; IDEC on USPS 0.761.

    python benchmarks/dec_accuracy.py --datasets digits mnist-test usps fashion-1k --seeds 0 1 2

On a shared machine the datasets may run in separate processes (``--no-write --json part.json`` each), then
``--merge part1.json part2.json ...`` writes the one table: every figure is the same as in a single process.
``--pretrain-dir DIR`` keeps the pretraining checkpoints (``DIR/<dataset>-s<seed>-pretrain``) and resumes
them, so an interrupted benchmark loses no pretraining.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import available, command, machine, table, today, update_section  # noqa: E402

METHODS = ("raw-pixel k-means", "k-means on the AE codes", "DEC", "IDEC")


def one(name: str, source: str, seed: int, overrides: list[str], workdir: Path, keep: bool = False) -> dict:
    """Every method on one dataset and seed. ``keep``: the pretraining checkpoints in ``workdir`` are kept
    and resumed (a finished one is loaded, an interrupted one continued), as a rerun with ``--pretrain-dir``
    finds them."""
    from imclust.api import build_pipeline
    from imclust.cluster import KMeans
    from imclust.data import load_source
    from imclust.metrics import external_metrics

    ds = load_source(source)
    y, k = ds.labels, len(np.unique(ds.labels))
    unlabelled = ds.with_labels(None)
    out: dict = {}
    t = time.perf_counter()
    X = ds.to_array(desc=None).reshape(len(ds), -1)
    out["raw-pixel k-means"] = {**external_metrics(y, KMeans(k, n_init=10, random_state=seed).fit_predict(X)),
                                "seconds": time.perf_counter() - t}
    shared = str(workdir / f"{name}-s{seed}-pretrain")
    for method, recipe, resume in (("DEC", "dec", keep), ("IDEC", "idec", True)):
        pipe, _ = build_pipeline(recipe, overrides, seed)
        pipe.encoder.set_params(pretrain={**(pipe.encoder.pretrain or {}), "checkpoint_dir": shared, "resume": resume})
        pipe.set_k(k)
        pipe.fit(unlabelled)
        enc = pipe.encoder
        pre_s = sum(h["seconds"] for h in enc.pretrain_history_)
        # refinement time from its own history: a resumed pretraining costs this process little or nothing
        out[method] = {**external_metrics(y, pipe.labels_), "seconds": sum(h["seconds"] for h in enc.history_),
                       "refine_epochs": len(enc.history_), "converged": getattr(enc, "converged_", None)}
        if method == "DEC":
            out["k-means on the AE codes"] = {**external_metrics(y, enc.init_labels_), "seconds": pre_s,
                                              "pretrain_epochs": len(enc.pretrain_history_)}
        else:
            out["same_start"] = bool(np.array_equal(enc.init_labels_, first_init))
        first_init = enc.init_labels_
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist-test", "usps", "fashion-1k"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for dec and idec")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--pretrain-dir", help="keep the autoencoders' pretraining checkpoints here and resume them: "
                    "a rerun (or another process) reuses a finished pretraining and continues an interrupted one")
    ap.add_argument("--section", default="dec-accuracy")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update RESULTS.md")
    ap.add_argument("--merge", nargs="+", help="build the table from these --json files instead of running")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        results = {k: v for part in parts for k, v in part["results"].items()}
        loads = (min(p["load"][0] for p in parts), max(p["load"][1] for p in parts))
        cmd = "; ".join(p["command"] for p in parts) + f"; then {command()}"
    else:
        results, loads, cmd = run(args)
    body = report(results, loads, cmd, args)
    print(body)
    if not args.no_write:
        update_section(args.section, body)


def run(args) -> tuple[dict, tuple, str]:
    import torch

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="dec-bench-") as tmp:
        workdir = Path(args.pretrain_dir) if args.pretrain_dir else Path(tmp)
        for name, source in available(args.datasets).items():
            for seed in args.seeds:
                r = {"seed": seed, **one(name, source, seed, args.overrides, workdir, keep=bool(args.pretrain_dir))}
                results.setdefault(name, []).append(r)
                print(f"{name} seed {seed}: " + "  ".join(f"{m} {r[m]['acc']:.4f} ({r[m]['seconds']:.0f}s)" for m in METHODS),
                      flush=True)
    loads = (load0, os.getloadavg()[0])
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "load": loads, "command": command()}, indent=1,
                                              default=str))
    return results, loads, command()


def report(results: dict, loads: tuple, cmd: str, args) -> str:
    rows = []
    for name, rs in results.items():
        base = np.mean([r["k-means on the AE codes"]["acc"] for r in rs])
        for m in METHODS:
            acc = [r[m]["acc"] for r in rs]
            rows.append([name, m, f"{np.mean(acc):.3f} ± {np.std(acc):.3f}",
                         f"{np.mean([r[m]['nmi'] for r in rs]):.3f}", f"{np.mean([r[m]['ari'] for r in rs]):.3f}",
                         f"{np.mean(acc) / base:.2f}×", f"{max(r[m]['seconds'] for r in rs):.0f}"])
    conv = {n: [r["DEC"]["refine_epochs"] for r in rs] for n, rs in results.items()}
    iconv = {n: [r["IDEC"]["refine_epochs"] for r in rs] for n, rs in results.items()}
    same = all(r["same_start"] for rs in results.values() for r in rs)
    seeds = sorted({r["seed"] for rs in results.values() for r in rs})
    return "\n".join([
        "## DEC and IDEC (issue 12)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: 2-core CPU, 24 GiB, no GPU ({machine()}); 1-min load average {loads[0]:.1f} at the start and "
        f"{loads[1]:.1f} at the end (shared with other jobs: times are indicative).  ",
        f"Date: {today()}. Mean over seeds {', '.join(map(str, seeds))}; k = number of classes; labels read only "
        "to score. Recipes `dec` and `idec` as shipped" + (f" with {', '.join(args.overrides)}" if args.overrides else "")
        + ": DEC autoencoder D-500-500-2000-10 (50 epochs, at least 2,000 steps, Adam 1e-3, batch 256), k-means "
        "(20 restarts) on its codes, then refinement (Adam 1e-3, batch 256, target refreshed every pass, stop when "
        "fewer than 0.1 % of the images change cluster; IDEC: MSE + 0.1·KL). DEC and IDEC start from the same "
        f"pretrained autoencoder and the same k-means ({'checked: identical starts' if same else 'NOT identical starts'}).",
        "",
        table(rows, ["dataset", "method", "ACC (mean ± sd)", "NMI", "ARI", "ACC ÷ k-means on AE codes",
                     "slowest run, s (AE codes: pretraining)"]),
        "",
        "Refinement periods run (DEC): " + "; ".join(f"{n} {v}" for n, v in conv.items())
        + ". IDEC: " + "; ".join(f"{n} {v}" for n, v in iconv.items()) + ".",
        "Published (full MNIST, 70,000 images): DEC 0.843, IDEC 0.881; USPS: IDEC 0.761.",
    ] + (["With `--pretrain-dir`, a pretraining checkpoint already in that folder was resumed (a finished one "
          "loaded, an interrupted one continued): the pretraining seconds are those of the run that made it, and "
          "the refinement seconds are this run's."] if "--pretrain-dir" in cmd else []))


if __name__ == "__main__":
    main()
