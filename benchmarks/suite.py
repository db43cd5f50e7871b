"""The benchmark suite: a recipe against two peers on the 15 image sets, one fresh process per fit.

For every set (the builtin digits plus the 14 sets of ``../shared/data``; CIFAR-10 as its 10k ``test``
folder), every method and every seed, a child process loads the images exactly as ``imclust run`` does,
fits with k = the number of classes (only their count is read; labels score the result afterwards) and
writes one JSON result. The methods:

- ``recipe``: by default whatever ``imclust run`` picks for the set (the grey default for grey images, the
  colour default for colour ones; each the default that needs no pretrained weights, as
  ``imclust run --weightless``, unless ``--with-weights``); ``--recipe NAME`` names one, ``--set
  part.option=value`` overrides it.
- ``kmeans``: raw-pixel k-means, scikit-learn ``KMeans(n_init=10)`` on the pixels as loaded.
- ``manifold``: PCA-50 -> UMAP (umap-learn itself; n_components = k, 10 neighbours, min_dist 0) -> GMM
  (full covariance). Where duplicate images make the GMM fail, ``reg_covar`` is raised tenfold from
  scikit-learn's 1e-6 until it fits, as a user would; the value used is recorded.

Each fit runs in its own process, so its time includes its own imports and JIT compilation (umap-learn's
numba JIT, torch start-up); "seconds" is that process's wall time from start to exit, and "MiB" its peak
resident memory (``os.wait4``, which covers the child and anything it waited for). Results are cached as
JSON per (set, method, seed, quick) under ``benchmarks/.suite-cache/``, keyed by a fingerprint of the
method (for the recipe: the recipe, its overrides and every source file of the package), so an interrupted
run resumes where it stopped and a code change refits only the recipe. ``--fresh`` ignores the cache.

The full run (all 15 sets, seeds 0-2, no ``--quick``) writes its table at the top of
``benchmarks/RESULTS.md``; other runs print theirs (``--markdown FILE`` saves it too).

    flock /tmp/imclust-bench.lock python benchmarks/suite.py                     # the scoreboard (3 seeds)
    python benchmarks/suite.py --quick                                          # one seed, <= 2,000 images per set
    python benchmarks/suite.py --quick --only pie27 --only umist --methods recipe
    python benchmarks/suite.py --recipe hog-umap --set reducers.0.n_components=30 --seeds 0

A set's rows say "win" when the recipe's mean ACC is at least the peer's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
CACHE = HERE / ".suite-cache"
sys.path.insert(0, str(HERE))

from _common import SUITE_SETS as SETS  # noqa: E402  (name -> source as `imclust run` takes it)
from _common import load_average, require_sets, results_head  # noqa: E402
METHODS = ("recipe", "kmeans", "manifold")
PEER_NAMES = {"kmeans": "raw-pixel k-means", "manifold": "PCA-50 → UMAP → GMM"}
QUICK_MAX = 2000
# Bump when the peers' code below changes: their cached results are keyed by it, not by the package's code.
PEER_VERSION = 1
RESULTS_BLOCK = "suite"


# ---------------------------------------------------------------------------------------------------
# child: one fit
# ---------------------------------------------------------------------------------------------------
def load_set(name: str, quick: bool):
    """The set as ``imclust run`` loads it; with ``quick``, a seeded (seed 0, not stratified) subsample of
    at most QUICK_MAX images, the same for every method and seed."""
    import numpy as np

    from imclust.data import load_source

    ds = load_source(str(SETS[name]))
    if quick and len(ds) > QUICK_MAX:
        idx = np.sort(np.random.default_rng(0).choice(len(ds), QUICK_MAX, replace=False))
        ds = ds.subset(idx)
    return ds


def fit_recipe(ds, k: int, seed: int, recipe: str | None, overrides: list[str], with_weights: bool = False) -> tuple:
    """The recipe's pipeline fitted the way ``imclust run`` fits it; returns (labels, info)."""
    from imclust.api import build_pipeline, fit_pipeline
    from imclust.recipes import default_recipe

    kw = {}
    if recipe is None:
        # issue 13 measures the sets without pretrained weights: ask for the weightless defaults where
        # `imclust run` has that switch (--weightless), unless --with-weights says otherwise
        import inspect

        kw = {"weightless": not with_weights} if "weightless" in inspect.signature(default_recipe).parameters else {}
    name = recipe or default_recipe(ds.channels, **kw)
    pipe, cfg = build_pipeline(name, overrides, seed)
    fit_pipeline(pipe, ds, k)
    info = {"recipe": cfg["name"], "timings": {k: round(v, 2) for k, v in getattr(pipe, "timings_", {}).items()}}
    # an encoder that chooses something from the data says how (a dict of JSON-able values)
    choice = getattr(pipe.encoder, "choice_", None)
    if choice is not None:
        info["choice"] = choice
    return pipe.labels_, info


def pixel_matrix(ds):
    return ds.to_array(desc=None).reshape(len(ds), -1)


def fit_kmeans(ds, k: int, seed: int) -> tuple:
    from sklearn.cluster import KMeans

    x = pixel_matrix(ds)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x), {}


def fit_manifold(ds, k: int, seed: int) -> tuple:
    """PCA-50 -> umap-learn (k dims, 10 neighbours, min_dist 0) -> GMM, written as a user would."""
    import umap
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    x = pixel_matrix(ds)
    z = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
    e = umap.UMAP(n_components=k, n_neighbors=10, min_dist=0.0, random_state=seed).fit_transform(z)
    reg = 1e-6
    while True:
        try:
            labels = GaussianMixture(n_components=k, covariance_type="full", reg_covar=reg,
                                     random_state=seed).fit_predict(e)
            break
        except ValueError:  # "ill-defined empirical covariance": duplicate images collapse a component
            if reg >= 1.0:
                raise
            reg *= 10
    return labels, {"reg_covar": reg}


def child_main(args) -> None:
    import numpy as np

    sys.path.insert(0, str(SRC))
    os.environ.setdefault("IMCLUST_QUIET", "1")
    t0 = time.perf_counter()
    ds = load_set(args.only[0], args.quick)
    k = int(len(np.unique(ds.labels)))  # only the count of the classes is read before scoring
    load_s = time.perf_counter() - t0
    if args.method == "recipe":
        labels, info = fit_recipe(ds, k, args.seed, args.recipe, args.overrides, args.with_weights)
    elif args.method == "kmeans":
        labels, info = fit_kmeans(ds, k, args.seed)
    else:
        labels, info = fit_manifold(ds, k, args.seed)
    from imclust.metrics import evaluate

    y, pred = ds.labels, np.asarray(labels)
    if ds.failed:  # files that failed to decode are left out, as `imclust run` does
        keep = np.setdiff1d(np.arange(len(ds)), list(ds.failed))
        y, pred = y[keep], pred[keep]
    m = evaluate(pred, y)
    out = {"set": args.only[0], "method": args.method, "seed": args.seed, "quick": args.quick, "n": len(ds),
           "k": k, "acc": m["acc"], "nmi": m["nmi"], "ari": m["ari"], "load_s": round(load_s, 2),
           "fit_s": round(time.perf_counter() - t0 - load_s, 2), **info}
    Path(args.child_out).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------------
# parent: schedule children, cache, table
# ---------------------------------------------------------------------------------------------------
def source_fingerprint() -> str:
    """Hash of every source file of the package (Python and recipes): a code change refits the recipe."""
    h = hashlib.sha1()
    for p in sorted((SRC / "imclust").rglob("*")):
        if p.is_file() and p.suffix in (".py", ".toml"):
            h.update(str(p.relative_to(SRC)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def method_fingerprint(method: str, recipe: str | None, overrides: list[str], src_hash: str,
                       with_weights: bool = False) -> str:
    if method == "recipe":
        key = ["recipe", recipe or "(imclust run's choice)", *overrides, src_hash] + (["with weights"] if with_weights else [])
    else:
        import sklearn

        key = [method, PEER_VERSION, sklearn.__version__]
        if method == "manifold":
            import importlib.metadata as md

            key.append(md.version("umap-learn"))
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]


def cache_path(name: str, method: str, seed: int, quick: bool, fp: str) -> Path:
    return CACHE / name / f"{method}-{'quick' if quick else 'full'}-seed{seed}-{fp}.json"


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["IMCLUST_QUIET"] = "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    return env


class Job:
    def __init__(self, name, method, seed, path: Path, argv: list[str], env: dict):
        self.name, self.method, self.seed, self.path = name, method, seed, path
        self.tmp = path.with_suffix(".part")
        self.log = path.with_suffix(".log")
        self.argv, self.env = argv + ["--child-out", str(self.tmp)], env

    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.log, "w")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.logf, stderr=subprocess.STDOUT)

    def poll(self):
        """None while running; else the result dict (or an error dict)."""
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return None
        secs = time.perf_counter() - self.t0
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.logf.close()
        if self.proc.returncode != 0 or not self.tmp.exists():
            tail = self.log.read_text()[-2000:]
            return {"set": self.name, "method": self.method, "seed": self.seed, "error": tail.strip().splitlines()[-1:] or ["?"]}
        r = json.loads(self.tmp.read_text())
        r["seconds"] = round(secs, 1)
        r["rss_mib"] = round(usage.ru_maxrss / 1024, 0)  # Linux: KiB
        from imclust.io import write_text

        write_text(self.path, json.dumps(r, indent=1))
        self.tmp.unlink()
        return r


def run_all(args) -> list[dict]:
    src_hash = source_fingerprint()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = child_env(threads)
    todo, results = [], []
    for name in args.only:
        for method in args.methods:
            fp = method_fingerprint(method, args.recipe, args.overrides, src_hash, args.with_weights)
            for seed in args.seeds:
                path = cache_path(name, method, seed, args.quick, fp)
                if path.exists() and not args.fresh:
                    results.append(json.loads(path.read_text()))
                    continue
                argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--only", name, "--method", method,
                        "--seed", str(seed)] + (["--quick"] if args.quick else [])
                if method == "recipe":
                    argv += (["--recipe", args.recipe] if args.recipe else []) + [a for o in args.overrides for a in ("--set", o)]
                    argv += ["--with-weights"] if args.with_weights else []
                todo.append(Job(name, method, seed, path, argv, env))
    if results:
        print(f"{len(results)} result(s) from the cache ({CACHE.relative_to(REPO)}); {len(todo)} fit(s) to run", flush=True)
    running: list[Job] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            job = todo.pop(0)
            job.start()
            running.append(job)
        time.sleep(0.2)
        for job in list(running):
            r = job.poll()
            if r is None:
                continue
            running.remove(job)
            results.append(r)
            if "error" in r:
                print(f"FAILED {job.name} {job.method} seed {job.seed}: {r['error'][0]} (log: {job.log})", flush=True)
            else:
                print(f"{r['set']:>16} {r['method']:>8} seed {r['seed']}: ACC {r['acc']:.3f} NMI {r['nmi']:.3f} "
                      f"ARI {r['ari']:.3f}  {r['seconds']:.0f} s  {r['rss_mib']:.0f} MiB"
                      + (f"  [{r['recipe']}]" if "recipe" in r else ""), flush=True)
    return results


def summarise(results: list[dict], sets: list[str], methods: list[str]) -> tuple[str, dict]:
    """The markdown table (one row per set, then the suite mean) and the per-set means."""
    import numpy as np

    ok = [r for r in results if "error" not in r]
    agg: dict = {}
    for name in sets:
        for m in methods:
            rs = [r for r in ok if r["set"] == name and r["method"] == m]
            if rs:
                a = {q: np.array([r[q] for r in rs]) for q in ("acc", "nmi", "ari", "seconds", "rss_mib")}
                agg[name, m] = {"n": rs[0]["n"], "k": rs[0]["k"], "seeds": len(rs), **a,
                                "recipe": sorted({r.get("recipe", "") for r in rs})}

    def ms(a):
        return f"{a.mean():.3f} ± {a.std():.3f}" if len(a) > 1 else f"{a.mean():.3f}"

    header = ["set", "n", "k"]
    if "recipe" in methods:
        header += ["recipe", "ACC", "NMI", "ARI", "s", "MiB"]
    for p in ("kmeans", "manifold"):
        if p in methods:
            header += [f"{PEER_NAMES[p]} ACC", "NMI", "ARI", "s"]
    for p in ("kmeans", "manifold"):
        if p in methods and "recipe" in methods:
            header += [f"vs {PEER_NAMES[p]}"]
    rows = []
    for name in sets:
        base = next((agg[name, m] for m in methods if (name, m) in agg), None)
        if base is None:
            continue
        row = [name, base["n"], base["k"]]
        if "recipe" in methods:
            a = agg.get((name, "recipe"))
            row += ([", ".join(a["recipe"]), ms(a["acc"]), ms(a["nmi"]), ms(a["ari"]), f"{a['seconds'].mean():.0f}",
                     f"{a['rss_mib'].max():.0f}"] if a else ["–"] * 6)
        for p in ("kmeans", "manifold"):
            if p in methods:
                a = agg.get((name, p))
                row += [ms(a["acc"]), ms(a["nmi"]), ms(a["ari"]), f"{a['seconds'].mean():.0f}"] if a else ["–"] * 4
        for p in ("kmeans", "manifold"):
            if p in methods and "recipe" in methods:
                a, b = agg.get((name, "recipe")), agg.get((name, p))
                if a and b:
                    d = a["acc"].mean() - b["acc"].mean()
                    row.append(f"{'win' if d >= 0 else '**loss**'} {d:+.3f}")
                else:
                    row.append("–")
        rows.append(row)
    # suite mean over the sets every method completed
    full = [s for s in sets if all((s, m) in agg for m in methods)]
    mean_row = [f"**mean of {len(full)} sets**", "", ""]
    if "recipe" in methods:
        mr = [agg[s, "recipe"] for s in full]
        mean_row += ["", *(f"{np.mean([a[q].mean() for a in mr]):.3f}" if mr else "–" for q in ("acc", "nmi", "ari")),
                     f"{sum(a['seconds'].mean() for a in mr):.0f} total" if mr else "–",
                     f"{max(a['rss_mib'].max() for a in mr):.0f} max" if mr else "–"]
    for p in ("kmeans", "manifold"):
        if p in methods:
            pr = [agg[s, p] for s in full]
            mean_row += [*(f"{np.mean([a[q].mean() for a in pr]):.3f}" if pr else "–" for q in ("acc", "nmi", "ari")),
                         f"{sum(a['seconds'].mean() for a in pr):.0f} total" if pr else "–"]
    for p in ("kmeans", "manifold"):
        if p in methods and "recipe" in methods:
            wins = sum(agg[s, "recipe"]["acc"].mean() >= agg[s, p]["acc"].mean() for s in full)
            d = np.mean([agg[s, "recipe"]["acc"].mean() - agg[s, p]["acc"].mean() for s in full]) if full else 0
            mean_row.append(f"{wins}/{len(full)} wins, {d:+.3f}")
    rows.append(mean_row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines), agg


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=list(SETS), metavar="SET",
                    help=f"run this set (repeatable; default: all 15): {', '.join(SETS)}")
    ap.add_argument("--recipe", default=None, help="the recipe to measure (default: what `imclust run` picks per set)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="PART.OPTION=VALUE",
                    help="override the recipe, as `imclust run --set`")
    ap.add_argument("--with-weights", action="store_true",
                    help="let every set get its pretrained-weights default (grey or colour) when the weights are "
                         "installed (default: the defaults that need no weights, as `imclust run --weightless`)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="which of recipe, kmeans (raw-pixel k-means), manifold (PCA-50 -> UMAP -> GMM) to run")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (0 with --quick)")
    ap.add_argument("--quick", action="store_true", help=f"one seed, at most {QUICK_MAX} images per set (a seeded subsample)")
    ap.add_argument("--jobs", type=int, default=1, help="fits run at once (default 1; more makes the times noisier)")
    ap.add_argument("--threads", type=int, default=None, help="threads per fit (default: cores / jobs)")
    ap.add_argument("--fresh", action="store_true", help="refit everything, ignoring the cache")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    ap.add_argument("--no-write", action="store_true", help="never write RESULTS.md, even for the full run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.only = list(dict.fromkeys(args.only or SETS))
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    return args


def main(argv=None):
    args = parse(argv)
    if args.child:
        return child_main(args)
    sys.path.insert(0, str(SRC))
    require_sets(SETS, args.only)
    load_before, started = load_average(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = run_all(args)
    errors = [r for r in results if "error" in r]
    table, _ = summarise(results, args.only, args.methods)
    recipe = f"`{args.recipe}`" if args.recipe else ("what `imclust run` picks for the set (grey default or colour default"
                                                     + (")" if args.with_weights else ", without pretrained weights)"))
    if args.overrides:
        recipe += " with " + ", ".join(f"`{o}`" for o in args.overrides)
    body = (f"## Benchmark suite: {'the default' if not args.recipe else args.recipe} against the peers on every set\n\n"
            + results_head(load_before, threads=False) + f"Started {started}; {args.jobs} fit(s) at a time.  \n"
            f"Recipe: {recipe}. Peers: {PEER_NAMES['kmeans']} (`KMeans(n_init=10)` on the pixels as loaded) and "
            f"{PEER_NAMES['manifold']} (umap-learn, n_components = k, 10 neighbours, min_dist 0; full-covariance GMM, "
            f"reg_covar raised where duplicates need it). k = number of classes. "
            f"{'Quick: at most %d images per set. ' % QUICK_MAX if args.quick else ''}"
            f"ACC/NMI/ARI: mean ± sd over seeds {', '.join(map(str, args.seeds))}; s: wall seconds of one fit's own "
            f"process (imports, JIT, loading included), mean over seeds; MiB: its peak RSS (max over seeds). "
            f"\"win\" when the recipe's mean ACC ≥ the peer's.\n\n{table}\n")
    if errors:
        body += "\nFailed fits: " + "; ".join(f"{r['set']} {r['method']} seed {r['seed']}" for r in errors) + "\n"
    print("\n" + body)
    if args.markdown:
        Path(args.markdown).write_text(body)
    complete = (not args.quick and args.only == list(SETS) and sorted(args.seeds) == [0, 1, 2]
                and list(args.methods) == list(METHODS) and not errors)
    if complete and not args.no_write:
        sys.path.insert(0, str(HERE))
        from _common import update_section

        update_section(RESULTS_BLOCK if not (args.recipe or args.overrides) else f"{RESULTS_BLOCK}-{args.recipe or 'default'}",
                       body, top=True)
        print("written at the top of benchmarks/RESULTS.md")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
