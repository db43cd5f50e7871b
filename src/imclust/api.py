"""The library's front door: one function per CLI command, so everything the CLI does is one call away."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import components  # noqa: F401  (registers every component)
from .data import ImageSet, Skipped, load_source, read_labels_file
from .errors import UserError
from .metrics import evaluate
from .pipeline import Pipeline
from .progress import log
from .recipes import apply_override, default_recipe, load_recipe


@dataclass
class RunResult:
    ids: list
    labels: np.ndarray
    embedding: np.ndarray
    metrics: dict
    pipeline: Pipeline
    skipped: list
    true_labels: np.ndarray | None
    class_names: list | None
    recipe_name: str
    config: dict
    seed: int | None
    k: int
    timings: dict
    source: str
    source_kind: str
    dataset: ImageSet | None = field(default=None, repr=False)


def _k_of(pipe: Pipeline, labels) -> int:
    k = pipe.n_clusters_
    return int(k) if k is not None else int(len(np.unique(labels)))


def resolve_k(k, ds: ImageSet) -> int | str:
    """--k as given; else the number of classes when evaluation labels exist (only their count is read); else auto."""
    if k is None:
        if ds.labels is not None:
            n_classes = len(np.unique(ds.labels))
            log(f"k={n_classes}: the number of classes in the evaluation labels (pass --k to choose another)")
            return n_classes
        return "auto"
    if isinstance(k, str):
        if k == "auto":
            return k
        try:
            k = int(k)
        except ValueError:
            raise UserError(f"--k {k!r}: give a whole number or 'auto'") from None
    if k < 1 or k > len(ds):
        raise UserError(f"--k {k}: must be between 1 and the number of images ({len(ds)})")
    return int(k)


def build_pipeline(recipe: str | None = None, overrides=(), seed: int | None = 0,
                   encoder_options: dict | None = None) -> tuple[Pipeline, dict]:
    """The recipe's pipeline. ``seed=None`` takes the recipe's own ``seed`` (else 0); ``encoder_options``
    (from --weights, --pretrained, --feature-cache) go into the encoder and must be options it has."""
    cfg = load_recipe(recipe)
    for o in overrides:
        apply_override(cfg, o)
    opts = {k: v for k, v in (encoder_options or {}).items() if v is not None}
    if opts:
        from .base import REGISTRY

        etype = cfg["encoder"].get("type")
        valid = REGISTRY[etype]._get_param_names() if etype in REGISTRY else []
        flags = {"weights": "--weights", "pretrained": "--pretrained", "cache": "--feature-cache",
                 "cache_dir": "--feature-cache"}
        bad = [flags.get(k, k) for k in opts if k not in valid]
        if bad:
            raise UserError(f"{', '.join(dict.fromkeys(bad))}: recipe {cfg['name']!r} uses the {etype!r} encoder, "
                            "which takes no such option; use a recipe with a pretrained CNN (e.g. --recipe vgg-kmeans)")
        cfg["encoder"].update(opts)
    if seed is None:
        seed = int(cfg.get("seed", 0))
    spec = {"encoder": cfg["encoder"], "reducers": cfg.get("reducers", []), "clusterer": cfg["clusterer"]}
    return Pipeline.from_spec(spec, name=cfg["name"], seed=seed), cfg


def fit_pipeline(pipe: Pipeline, ds: ImageSet, k) -> Pipeline:
    """Fit with ``k`` clusters (given to the clusterer, or to the encoder when it owns the clusters); ``k='auto'``
    lets that part choose k (its choice lands in ``n_clusters_``)."""
    pipe.set_k(k)
    return pipe.fit(ds)


def run(source, recipe: str | None = None, k=None, out=None, seed: int | None = None, labels=None, overrides=(),
        size=None, channels=None, image_key=None, label_key=None, layout: str = "auto",
        nmi_average: str = "arithmetic", encoder_options: dict | None = None,
        export: str | None = None) -> RunResult:
    """Load ``source``, fit the recipe's pipeline, evaluate, and (with ``out``) write every output.

    ``seed=None`` uses the recipe's seed (0 when it names none). ``export`` (copy, symlink or move) puts a
    folder's files into ``out/clusters/<label>/`` after everything else is written.
    """
    t0 = time.perf_counter()
    if export is not None and out is None:
        raise UserError("--export needs an output folder (--out)")
    ds = load_source(source, size=size, channels=channels, labels=labels, image_key=image_key,
                     label_key=label_key, layout=layout)
    load_s = time.perf_counter() - t0
    log(f"loaded {ds}")
    _check_export(export, ds)
    if recipe is None:
        recipe, grey_default = default_recipe(ds.channels), default_recipe()
        if recipe != grey_default:
            log(f"colour images: recipe {recipe!r}, the default for colour (pass --recipe to choose another; "
                f"{grey_default!r} reads them as grey)")
    pipe, cfg = build_pipeline(recipe, overrides, seed, encoder_options)
    seed = pipe.seed
    if size is not None and "preprocess" in pipe.encoder.get_params(deep=False):
        # a CNN encoder reads the original files: --size is its input size (unless the recipe sets one)
        sq = size if isinstance(size, int) else (size[0] if len(set(size)) == 1 else None)
        if sq is None:
            raise UserError(f"--size {size}: a CNN encoder takes square inputs; give one number")
        if pipe.encoder.size is None:
            pipe.encoder.set_params(size=int(sq))
            log(f"CNN input size {sq} px (from --size)")
    if k is None and cfg.get("k") is not None:  # a recipe may fix k (hw9: the tutorial's two clusters)
        k = cfg["k"]
        log(f"k={k}: set by recipe {cfg['name']!r} (pass --k to choose another)")
    elif k is None and isinstance(_k_part(cfg).get("n_clusters"), int):
        k = _k_part(cfg)["n_clusters"]
        log(f"k={k}: set by recipe {cfg['name']!r} (pass --k to choose another)")
    k = resolve_k(k, ds)
    fit_pipeline(pipe, ds, k)
    ids, labels_pred, emb, y = list(ds.ids), pipe.labels_, pipe.embedding_, ds.labels
    skipped = list(ds.skipped)
    if ds.failed:
        keep = np.ones(len(ds), dtype=bool)
        for i, reason in sorted(ds.failed.items()):
            keep[i] = False
            skipped.append(Skipped(ds.ids[i], reason))
        ids = [i for i, kp in zip(ids, keep) if kp]
        labels_pred, emb = labels_pred[keep], emb[keep]
        y = None if y is None else y[keep]
        log(f"{len(ds.failed)} file(s) failed to decode and are left out of the results (see skipped.csv)")
    metrics = evaluate(labels_pred, y, emb, nmi_average=nmi_average, random_state=seed or 0)
    timings = {"load": load_s, **pipe.timings_}
    metrics["seconds"] = time.perf_counter() - t0
    result = RunResult(ids=ids, labels=labels_pred, embedding=emb, metrics=metrics, pipeline=pipe, skipped=skipped,
                       true_labels=y, class_names=ds.class_names, recipe_name=cfg["name"], config=cfg, seed=seed,
                       k=_k_of(pipe, labels_pred), timings=timings, source=str(source), source_kind=ds.kind,
                       dataset=ds)
    if out is not None:
        from .nn.distributed import barrier, is_main
        from .outputs import write_run

        if is_main():  # under torchrun every rank holds the same result; rank 0 writes it
            write_run(out, result)
            if export is not None:
                _export(out, result, export)
        barrier()
    return result


def _k_part(cfg: dict) -> dict:
    """The recipe table that holds k: the clusterer's, or the encoder's when the encoder owns the clusters."""
    from .pipeline import ENCODER_CLUSTERS

    clu = cfg.get("clusterer", {})
    return cfg.get("encoder", {}) if clu.get("type") == ENCODER_CLUSTERS else clu


def _check_export(mode, ds: ImageSet) -> None:
    """Refuse an impossible --export before any work is done."""
    if mode is None:
        return
    from .export import EXPORT_MODES

    if mode not in EXPORT_MODES:
        raise UserError(f"--export {mode!r}: choose one of {', '.join(EXPORT_MODES)}")
    if ds.paths is None:
        raise UserError(f"--export puts image files into clusters/<label>/, but {ds.source or 'this source'} is an "
                        "array with no files; export works for folder sources")


def _export(out, result: RunResult, mode: str) -> None:
    from .export import export_clusters

    ds = result.dataset
    paths = None
    if ds is not None and ds.paths is not None:
        where = {i: p for i, p in zip(ds.ids, ds.paths)}
        paths = [where[i] for i in result.ids]
    export_clusters(out, result.ids, result.labels, paths, mode)


def predict(model_dir, source, out=None, size=None, channels=None, image_key=None, label_key=None,
            layout: str = "auto", labels=None, weights=None, export: str | None = None) -> RunResult:
    """Assign the images of ``source`` to the clusters of a saved model, without refitting.

    ``weights`` points a pretrained-CNN model at its weights file when that file has moved (the weights
    must be the very ones the model was fitted with). ``export`` as in :func:`run`.
    """
    t0 = time.perf_counter()
    if export is not None and out is None:
        raise UserError("--export needs an output folder (--out)")
    pipe = Pipeline.load(model_dir)
    if weights is not None:
        if "weights" not in pipe.encoder.get_params(deep=False):
            raise UserError(f"--weights: this model's encoder ({pipe.encoder.component_name}) takes no weights file")
        pipe.encoder.set_params(weights=str(weights), pretrained=False)
    ds = load_source(source, size=size, channels=channels, labels=labels, image_key=image_key,
                     label_key=label_key, layout=layout)
    _check_export(export, ds)
    lab, emb = pipe.assign(ds)
    ids, y, skipped = list(ds.ids), ds.labels, list(ds.skipped)
    if ds.failed:
        keep = np.array([i not in ds.failed for i in range(len(ds))])
        skipped += [Skipped(ds.ids[i], r) for i, r in sorted(ds.failed.items())]
        ids = [i for i, kp in zip(ids, keep) if kp]
        lab, emb, y = lab[keep], emb[keep], (None if y is None else y[keep])
    metrics = evaluate(lab, y, emb)
    metrics["seconds"] = time.perf_counter() - t0
    cfg = {"name": pipe.name, **pipe.spec()}
    from .recipes import available

    outputs = available().get(pipe.name, {}).get("outputs")
    if outputs:  # the recipe's extra writers (e.g. submission.csv), so predict writes what run wrote
        cfg["outputs"] = list(outputs)
    result = RunResult(ids=ids, labels=lab, embedding=emb, metrics=metrics, pipeline=pipe, skipped=skipped,
                       true_labels=y, class_names=ds.class_names, recipe_name=pipe.name, config=cfg, seed=pipe.seed,
                       k=_k_of(pipe, lab), timings={"predict": metrics["seconds"]},
                       source=str(source), source_kind=ds.kind, dataset=ds)
    if out is not None:
        from .outputs import write_run

        write_run(out, result)
        if export is not None:
            _export(out, result, export)
    return result


def report(run_dir, out=None) -> Path:
    """Rebuild ``report.html`` from a run folder's saved outputs (nothing is refitted or re-encoded)."""
    from .report.html import build_report

    return build_report(run_dir, out)


def read_predictions(path) -> tuple[list[str], np.ndarray]:
    import csv

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such predictions file")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", "label"]:
        raise UserError(f"{path}: expected a CSV with header 'id,label' (as written by imclust run)")
    try:
        return [r[0] for r in rows[1:]], np.array([int(r[1]) for r in rows[1:]], dtype=np.int64)
    except (IndexError, ValueError):
        raise UserError(f"{path}: every row needs an id and a whole-number label") from None


def evaluate_files(predictions, labels, nmi_average: str = "arithmetic") -> dict:
    """Score a predictions CSV against a labels file (npy, IDX, CSV ``file,label`` or one label per line)."""
    ids, pred = read_predictions(predictions)
    y, _ = read_labels_file(labels, ids, str(predictions))
    return evaluate(pred, y, nmi_average=nmi_average)
