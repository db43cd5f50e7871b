"""Writing a run's outputs, all atomically.

``predictions.csv`` (id,label), ``embedding.npy``, ``metrics.json``, ``model/``, ``skipped.csv``,
``run.json`` (the configuration, timings and versions that the report reads) and, when k was chosen
automatically, ``k_selection.json`` (the curve over the candidate k and the command that reruns with another k). Recipes may name extra
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


# Outputs that only some runs write. A run into a folder that holds an earlier run's outputs removes these
# first, so the report never shows another run's figures as this one's. Exported clusters/ are never touched.
CONDITIONAL_OUTPUTS = ("true_labels.npy", "scatter_labels.png", "scatter_3d.png", "reconstructions.png",
                       "loss_curve.png", "history.json", "prediction.csv", "prediction_invert.csv",
                       "submission.csv", "deepcluster.json", "embedding.gif", "split.csv", "map2d.npy",
                       "k_selection.json")
CONDITIONAL_GLOBS = ("montages/montage_*.png", "epochs/epoch_*.png")


def clear_stale(out: Path) -> None:
    for name in CONDITIONAL_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for pattern in CONDITIONAL_GLOBS:
        for p in out.glob(pattern):
            p.unlink(missing_ok=True)


def write_run(out, result) -> None:
    """Write everything a run produced into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clear_stale(out)
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
        **_k_selection_summary(result),
    })
    write_k_selection(out, result)
    from .report.figures import write_run_figures

    write_run_figures(result, out)
    for name in result.config.get("outputs", []):
        OUTPUT_WRITERS[name](result, out)
    write_report(result, out)


def _k_selection_summary(result) -> dict:
    sel = getattr(result.pipeline, "k_selection_", None)
    if sel is None:
        return {}
    return {"k_selection": {"criterion": sel.criterion, "k": sel.k, "runner_up": sel.runner_up,
                            "k_min": sel.k_min, "k_max": sel.k_max, "scores": {str(k): v for k, v in sel.scores().items()}}}


def write_k_selection(out: Path, result) -> None:
    """``k_selection.json`` (the whole curve the report draws and the command that reruns with another k)
    when k was chosen automatically."""
    from .kselect import rerun_template

    sel = getattr(result.pipeline, "k_selection_", None)
    if sel is not None:
        rerun = rerun_template(sys.argv, result.source, result.recipe_name, result.seed, out)
        write_json(out / "k_selection.json", {**sel.to_dict(), "rerun": rerun})


def _dataset_indices(result):
    """Dataset index of each of the run's points (points whose file failed to decode are left out)."""
    ds = result.dataset
    if len(result.ids) == len(ds):
        return None
    where = {i: j for j, i in enumerate(ds.ids)}
    return [where[i] for i in result.ids]


def write_report(result, out) -> Path | None:
    """Thumbnails (``thumbs.*``) for the report's hover, then ``report.html``.

    Every other output is already written when this runs, so a failure here does not lose the run: it is
    reported on stderr in one line (with the command that rebuilds the page) and ``None`` is returned.
    ``IMCLUST_DEBUG=1`` raises it instead.
    """
    from .report.html import build_report
    from .report.thumbs import write_thumbnails

    out = Path(out)

    def build():
        if result.dataset is not None and len(result.ids):
            write_thumbnails(result.dataset, out, _dataset_indices(result), seed=result.seed or 0)
        else:  # no images to draw: never let an earlier run's thumbnails stand in for this one's
            for name in ("thumbs.json", "thumbs.png", "thumbs.jpg"):
                (out / name).unlink(missing_ok=True)
        return build_report(out)

    return _page_or_warning(build, out)


def rebuild_report(out) -> Path | None:
    """``report.html`` again from the saved outputs (thumbnails kept), after a caller added figures to ``out``."""
    from .report.html import build_report

    return _page_or_warning(lambda: build_report(Path(out)), Path(out))


def _page_or_warning(build, out: Path) -> Path | None:
    import os

    try:
        return build()
    except Exception as err:  # the run's results are complete; the page is an extra that must not hide them
        if os.environ.get("IMCLUST_DEBUG"):
            raise
        print(f"imclust: warning: could not build {out / 'report.html'}: {type(err).__name__}: {err}. "
              f"The other outputs are complete; rebuild the page with 'imclust report {out}' "
              "(IMCLUST_DEBUG=1 shows the traceback).", file=sys.stderr, flush=True)
        return None
