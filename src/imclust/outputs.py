"""Writing a run's outputs.

``predictions.csv`` (id,label), ``embedding.npy``, ``metrics.json``, ``model/``, ``skipped.csv``,
``run.json`` (the configuration, timings and versions that the report reads) and, when k was chosen
automatically, ``k_selection.json`` (the curve over the candidate k and the command that reruns with another k). Recipes may name extra
writers (``outputs = [...]`` in their TOML); they are registered here with :func:`register_output`.
Every file is written atomically (:mod:`imclust.io`), into a fresh folder that replaces ``--out`` as a whole
only when all of them are written (:mod:`imclust.rundir`).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .io import printable, write_csv, write_json, write_npy

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


def write_run(out, result, final=None) -> None:
    """Write everything a run produced into ``out`` (a fresh folder; ``final`` is where it will end up, for
    messages)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", result.ids, result.labels)
    write_npy(out / "embedding.npy", result.embedding)
    write_json(out / "metrics.json", result.metrics)
    write_skipped(out / "skipped.csv", result.skipped)
    if result.true_labels is not None:
        write_npy(out / "true_labels.npy", np.asarray(result.true_labels, dtype=np.int64))
    result.pipeline.save(out / "model")
    ds = result.dataset
    from .report.figures import map_layout, write_run_figures

    m2, how = map_layout(result.embedding, seed=result.seed or 0)
    write_json(out / "run.json", {
        "source": printable(result.source),
        "source_kind": result.source_kind,
        "n": len(result.ids),
        # a folder's file accounting: files seen = images clustered + rows of skipped.csv
        "n_seen": getattr(ds, "n_seen", None) if ds is not None else None,
        "recipe": result.recipe_name,
        "config": result.config,
        "seed": result.seed,
        "k": result.k,
        "timings": result.timings,
        "versions": versions(),
        "command": printable(" ".join(sys.argv)),
        "class_names": result.class_names,
        "n_skipped": len(result.skipped),
        # problems a component found while fitting (e.g. a DeepCluster collapse), kept for the report
        "warnings": list(getattr(result.pipeline.encoder, "warnings_", None) or []),
        "map": how,  # how map2d.npy was made, for the report
        **_k_selection_summary(result),
    })
    write_k_selection(out, result, final)
    write_run_figures(result, out, m2)
    for name in result.config.get("outputs", []):
        OUTPUT_WRITERS[name](result, out)
    write_report(result, out, final)


def _k_selection_summary(result) -> dict:
    sel = getattr(result.pipeline, "k_selection_", None)
    if sel is None:
        return {}
    return {"k_selection": {"criterion": sel.criterion, "k": sel.k, "runner_up": sel.runner_up,
                            "k_stability": sel.k_stability, "k_reproduced": sel.k_reproduced, "weak": sel.weak,
                            "uncertain": sel.uncertain, "peaks_at_top": sel.peaks_at_top, "k_min": sel.k_min,
                            "k_max": sel.k_max,
                            "scores": {str(k): v for k, v in sel.scores().items()}}}


def write_k_selection(out: Path, result, final=None) -> None:
    """``k_selection.json`` (the whole curve the report draws and the command that reruns with another k,
    beside ``final``, where the run's folder ends up) when k was chosen automatically."""
    from .kselect import rerun_template

    sel = getattr(result.pipeline, "k_selection_", None)
    if sel is not None:
        rerun = rerun_template(sys.argv, result.source, result.recipe_name, result.seed, Path(final or out))
        write_json(out / "k_selection.json", {**sel.to_dict(), "rerun": rerun})


def _dataset_indices(result):
    """Dataset index of each of the run's points (points whose file failed to decode are left out)."""
    ds = result.dataset
    if len(result.ids) == len(ds):
        return None
    where = {i: j for j, i in enumerate(ds.ids)}
    return [where[i] for i in result.ids]


def write_report(result, out, final=None) -> Path | None:
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
        return build_report(out)

    return _page_or_warning(build, Path(final or out))


def rebuild_report(out, final=None) -> Path | None:
    """``report.html`` again from the saved outputs (thumbnails kept), after a caller added figures to ``out``."""
    from .report.html import build_report

    return _page_or_warning(lambda: build_report(Path(out)), Path(final or out))


def _page_or_warning(build, final: Path) -> Path | None:
    import os

    try:
        return build()
    except OSError:  # a full disk or a permission: the folder would be incomplete, so the run fails whole
        raise
    except Exception as err:  # the run's results are complete; the page is an extra that must not hide them
        if os.environ.get("IMCLUST_DEBUG"):
            raise
        print(f"imclust: warning: could not build {final / 'report.html'}: {type(err).__name__}: {err}. "
              f"The other outputs are complete; rebuild the page with 'imclust report {final}' "
              "(IMCLUST_DEBUG=1 shows the traceback).", file=sys.stderr, flush=True)
        return None
