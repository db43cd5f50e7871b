"""Shared helpers for benchmark scripts: datasets, machine description, RESULTS.md sections."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("IMCLUST_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = HERE / "RESULTS.md"

#: the benchmark suite: the builtin digits and the 14 sets of ../shared/data, as `imclust run` takes them
#: (CIFAR-10 as its 10k test folder)
SUITE_SETS = {
    "digits": "digits",
    "mnist-test": DATA / "mnist-test" / "t10k-images-idx3-ubyte.gz",
    "usps": DATA / "usps" / "usps.npz",
    "fashion-mnist-1k": DATA / "fashion-mnist-1k" / "fashion_mnist_test_1k.npz",
    "cifar10": DATA / "cifar10" / "test",
    "flowers5": DATA / "flowers5",
    "umist": DATA / "umist" / "umist.npz",
    "pie27": DATA / "pie27" / "pie27.npz",
    "eth80": DATA / "eth80" / "eth80.npz",
    "mpeg7": DATA / "mpeg7" / "mpeg7.npz",
    "mednist": DATA / "mednist" / "mednist.npz",
    "kannada-test": DATA / "kannada-test" / "kannada-test.npz",
    "notmnist-test": DATA / "notmnist-test" / "notmnist-test.npz",
    "gtsrb-test": DATA / "gtsrb-test" / "gtsrb-test.npz",
    "intel-scenes": DATA / "intel-scenes",
}

#: the grey sets of the older accuracy scripts, under their names there
DATASETS = {("fashion-1k" if name == "fashion-mnist-1k" else name): SUITE_SETS[name]
            for name in ("digits", "mnist-test", "usps", "fashion-mnist-1k", "umist", "pie27", "mednist")}


@contextlib.contextmanager
def fresh_cache():
    """An empty ``$IMCLUST_CACHE_DIR`` for one fit, so that nothing (a pretext, features) comes from an
    earlier run and every method is timed from scratch; the previous value is restored after."""
    before = os.environ.get("IMCLUST_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="imclust-bench-") as cache:
        os.environ["IMCLUST_CACHE_DIR"] = cache
        try:
            yield cache
        finally:
            if before is None:
                os.environ.pop("IMCLUST_CACHE_DIR", None)
            else:
                os.environ["IMCLUST_CACHE_DIR"] = before


def recipe_pipeline(recipe: str, k, seed: int):
    """The recipe's pipeline as ``imclust run`` builds it (:func:`imclust.api.build_pipeline`), asked for ``k``
    clusters (a whole number, ``"auto"`` or ``"auto:MIN-MAX"``)."""
    from imclust.api import build_pipeline

    pipe, _ = build_pipeline(recipe, seed=seed)
    pipe.set_k(k)
    return pipe


def load_average() -> float:
    return os.getloadavg()[0]


def available(names):
    out = {}
    for n in names:
        p = DATASETS[n]
        if isinstance(p, str) or Path(p).exists():
            out[n] = str(p)
        else:
            print(f"skipping {n}: {p} not found", file=sys.stderr)
    return out


def require_sets(sources: dict, names) -> None:
    """Exit with one line naming every set of ``names`` whose file or folder in ``sources`` (name -> path, or
    ``"digits"``, scikit-learn's, built in) is missing."""
    missing = [str(sources[n]) for n in names if sources[n] != "digits" and not Path(sources[n]).exists()]
    if missing:
        sys.exit(f"not found: {', '.join(missing)}; this benchmark reads ../shared/data (or $IMCLUST_SHARED_DATA)")


def cpu_model() -> str:
    """The CPU's model name (what decides, for one, whether bf16 is native), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: bool = True) -> str:
    """The CPU, whether it computes bf16 natively (``precision = "auto"`` trains in bf16 there and in fp32
    elsewhere, several times slower: timings from the two kinds do not compare), cores, torch and python."""
    import torch

    from imclust.nn.train import resolve_precision

    bf16 = ("native bf16" if resolve_precision("auto", torch.device("cpu")) == "bf16"
            else "no native bf16, so precision auto is fp32")
    return (f"{platform.processor() or platform.machine()} ({cpu_model()}, {bf16}), {os.cpu_count()} cores, "
            f"torch {torch.__version__}, " + (f"{torch.get_num_threads()} threads, " if threads else "")
            + f"python {platform.python_version()}")


def today() -> str:
    return datetime.date.today().isoformat()


def command() -> str:
    """The command that ran this script, quoted so that it can be pasted back into a shell."""
    import shlex

    return "python " + shlex.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def results_head(load_start: float, *, threads: bool = True, command_prefix: str = "") -> str:
    """The lines that open a results block, each ending in a Markdown line break: the command that reproduces
    it (after ``command_prefix``, e.g. a lock or an environment), this machine (with torch's thread count unless
    ``threads`` is false), the date, and the 1-min load average at ``load_start`` and now, at the end."""
    return (f"Command: `{command_prefix}{command()}`  \nMachine: {machine(threads)}  \n"
            f"Date: {today()}; 1-min load average {load_start:.1f} at the start, {load_average():.1f} at the end.  \n")


def update_section(name: str, body: str, top: bool = False) -> None:
    """Replace the block between <!-- name:start --> and <!-- name:end --> in RESULTS.md; a new block is
    appended, or with ``top`` put right after the title and its introduction (before the first block or
    ``## `` section)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEvery figure here comes from a script in this folder; rerun it with the command given.\n"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    elif top:
        first = re.search(r"^(<!-- |## )", text, flags=re.M)
        cut = first.start() if first else len(text)
        text = text[:cut].rstrip() + "\n\n" + block + "\n\n" + text[cut:].lstrip()
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    from imclust.io import write_text

    write_text(RESULTS, text)


def measured_rows(summarise, datasets, order, measure_one, rows_path=None) -> list[dict]:
    """The rows of a table: read from JSON-lines files (``--summarise PATH...``), sorted by their ``dataset`` in the
    order of ``order`` (names not in it last); else measured, ``measure_one(name)`` for each of ``datasets``, each
    set's rows also appended to ``rows_path`` (``--rows``) as soon as they exist, so that runs made apart (or
    side by side) can be summarised together."""
    import json

    if summarise:
        rows = [json.loads(line) for path in summarise for line in Path(path).read_text().splitlines() if line.strip()]
        rank = {name: i for i, name in enumerate(order)}
        return sorted(rows, key=lambda r: rank.get(r["dataset"], len(rank)))
    rows = []
    for name in datasets:
        new = measure_one(name)
        rows += new
        if rows_path:
            with open(rows_path, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in new)
    return rows


def by_dataset_and_method(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """Measured rows (dicts with ``dataset``, ``method``, ``acc``, ``nmi``, ``ari``) grouped by (dataset, method),
    in the order first seen: one group per line of a scoreboard table."""
    keys = list(dict.fromkeys((r["dataset"], r["method"]) for r in rows))
    return [(d, m, [r for r in rows if r["dataset"] == d and r["method"] == m]) for d, m in keys]


def score_cells(group: list[dict]) -> list[str]:
    """ACC (mean ± sd), NMI and ARI (means) of a group of rows, as table cells."""
    import numpy as np

    acc = np.array([r["acc"] for r in group])
    return [f"{acc.mean():.3f} ± {acc.std():.3f}", f"{np.mean([r['nmi'] for r in group]):.3f}",
            f"{np.mean([r['ari'] for r in group]):.3f}"]


def table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
