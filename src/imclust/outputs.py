"""Writing a run's outputs, all atomically.

``predictions.csv`` (id,label), ``embedding.npy``, ``metrics.json``, ``model/``, ``skipped.csv`` and
``run.json`` (the configuration, timings and versions that the report reads). Recipes may name extra
writers (``outputs = [...]`` in their TOML); they are registered here with :func:`register_output`.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .io import write_csv, write_json, write_npy

OUTPUT_WRITERS: dict[str, Callable] = {}


def register_output(name: str):
    def deco(fn):
        OUTPUT_WRITERS[name] = fn
        return fn

    return deco


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("imclust", "torch", "numpy", "scikit-learn", "scipy", "faiss-cpu", "openTSNE", "umap-learn", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_predictions(path, ids, labels) -> Path:
    return write_csv(path, ["id", "label"], zip(ids, (int(v) for v in labels)))


def write_skipped(path, skipped) -> Path:
    return write_csv(path, ["id", "reason"], ((s.id, s.reason) for s in skipped))


def write_run(out, result) -> None:
    """Write everything a run produced into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", result.ids, result.labels)
    write_npy(out / "embedding.npy", result.embedding)
    write_json(out / "metrics.json", result.metrics)
    write_skipped(out / "skipped.csv", result.skipped)
    if result.true_labels is not None:
        write_npy(out / "true_labels.npy", np.asarray(result.true_labels, dtype=np.int64))
    result.pipeline.save(out / "model")
    write_json(out / "run.json", {
        "source": result.source,
        "source_kind": result.source_kind,
        "n": len(result.ids),
        "recipe": result.recipe_name,
        "config": result.config,
        "seed": result.seed,
        "k": result.k,
        "timings": result.timings,
        "versions": versions(),
        "command": " ".join(sys.argv),
        "class_names": result.class_names,
        "n_skipped": len(result.skipped),
        # problems a component found while fitting (e.g. a DeepCluster collapse), kept for the report
        "warnings": list(getattr(result.pipeline.encoder, "warnings_", None) or []),
    })
    from .report.figures import write_run_figures

    write_run_figures(result, out)
    for name in result.config.get("outputs", []):
        OUTPUT_WRITERS[name](result, out)
