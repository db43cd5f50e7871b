"""The library's front door: one function per CLI command, so everything the CLI does is one call away."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import components  # noqa: F401  (registers every component)
from .data import ImageSet, Skipped, load_source, read_labels_file
from .errors import UserError
from .kselect import is_auto, parse_auto
from .metrics import evaluate
from .pipeline import Pipeline, n_distinct_rows
from .progress import log
from .recipes import apply_override, check_recipe, check_seed, choose_default, load_recipe
from .rundir import check_out


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


K_FORMS = "give a whole number, 'auto' or 'auto:MIN-MAX' (for example auto:2-30)"


def resolve_k(k, ds: ImageSet) -> int | str:
    """--k as given ('auto' and 'auto:MIN-MAX' are checked against the number of images); else the number
    of classes when evaluation labels exist (only their count is read); else auto."""
    if k is None:
        if ds.labels is not None:
            n_classes = len(np.unique(ds.labels))
            log(f"k={n_classes}: the number of classes in the evaluation labels (pass --k to choose another)")
            return n_classes
        return "auto"
    if isinstance(k, str):
        if is_auto(k):
            parse_auto(k, len(ds))  # a bad range fails here, before any work
            return k.strip().lower()
        try:
            k = int(k)
        except ValueError:
            raise UserError(f"--k {k!r}: {K_FORMS}") from None
    if isinstance(k, bool) or not hasattr(k, "__index__"):
        raise UserError(f"--k {k!r}: {K_FORMS}")
    if k < 1 or k > len(ds):
        raise UserError(f"--k {k}: must be between 1 and the number of images ({len(ds)})")
    return int(k)


def check_k(k) -> None:
    """Refuse a malformed --k before any work (its upper bound, the number of images, is checked after loading)."""
    if k is None or (isinstance(k, str) and is_auto(k)):
        return  # an auto range is checked against the number of images once they are loaded
    try:
        value = int(k) if isinstance(k, str) else k
    except ValueError:
        raise UserError(f"--k {k!r}: {K_FORMS}") from None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise UserError(f"--k {k!r}: {K_FORMS}")
    if value < 1:
        raise UserError(f"--k {value}: must be between 1 and the number of images")


_ENCODER_FLAGS = {"weights": "--weights", "pretrained": "--pretrained", "cache": "--feature-cache",
                 "cache_dir": "--feature-cache"}


def _apply_encoder_options(cfg: dict, opts: dict) -> None:
    """Put --weights, --pretrained and --feature-cache into the recipe's encoder. In a ``views`` encoder they
    go to its pretrained views; with several, the feature cache goes to each and weights are refused with the
    ``--set`` that gives one view its weights."""
    from .base import component_class

    encoder, etype = cfg["encoder"], cfg["encoder"].get("type")
    views = encoder.get("views") if etype == "views" and isinstance(encoder.get("views"), dict) else {}
    # a trained view's own "cache" is its pretext network's, not the feature cache: only pretrained views take these
    pretrained = [name for name, spec in sorted(views.items()) if isinstance(spec, dict) and spec.get("type") == "pretrained"]
    if len(pretrained) > 1 and any(k in opts for k in ("weights", "pretrained")):
        flag = ", ".join(dict.fromkeys(_ENCODER_FLAGS[k] for k in opts if k in ("weights", "pretrained")))
        raise UserError(f"{flag}: recipe {cfg['name']!r} has several pretrained views ({', '.join(pretrained)}); "
                        "give one its weights with --set encoder.views.NAME.weights=PATH "
                        "--set encoder.views.NAME.pretrained=false")
    targets = [views[name] for name in pretrained] or [encoder]
    cls = component_class(targets[0].get("type"))
    valid = cls._get_param_names() if cls is not None else []
    bad = [_ENCODER_FLAGS.get(k, k) for k in opts if k not in valid]
    if bad:
        raise UserError(f"{', '.join(dict.fromkeys(bad))}: recipe {cfg['name']!r} uses the {etype!r} encoder, "
                        "which takes no such option; use a recipe with a pretrained CNN (e.g. --recipe vgg-kmeans)")
    for spec in targets:
        spec.update(opts)
        if opts.get("weights") and "pretrained" not in opts and spec.get("pretrained"):
            spec["pretrained"] = False  # --weights replaces the weights the recipe would load


def build_pipeline(recipe: str | None = None, overrides=(), seed: int | None = 0,
                   encoder_options: dict | None = None) -> tuple[Pipeline, dict]:
    """The recipe's pipeline. ``seed=None`` takes the recipe's own ``seed`` (else 0); ``encoder_options``
    (from --weights, --pretrained, --feature-cache) go into the encoder, or into a views encoder's pretrained
    views, and must be options it has (:func:`_apply_encoder_options`)."""
    cfg = load_recipe(recipe)
    for o in overrides:
        apply_override(cfg, o)
    check_recipe(cfg)
    opts = {k: v for k, v in (encoder_options or {}).items() if v is not None}
    if opts:
        _apply_encoder_options(cfg, opts)
    if seed is None:
        seed = cfg.get("seed", 0)
    seed = check_seed(seed)
    spec = {"encoder": cfg["encoder"], "reducers": cfg.get("reducers", []), "clusterer": cfg["clusterer"]}
    return Pipeline.from_spec(spec, name=cfg["name"], seed=seed), cfg


def fit_pipeline(pipe: Pipeline, ds: ImageSet, k, overrides=()) -> Pipeline:
    """Fit with ``k`` clusters (given to the clusterer, or to the encoder when it owns the clusters); ``k='auto'``
    or ``'auto:MIN-MAX'`` lets that part choose k (its choice lands in ``n_clusters_``; :mod:`.kselect`).

    A part that fails on an option the user set (``--set reducers.1.n_neighbors=1``: the library raises
    ValueError) gives one line naming that ``--set``; the same error with the recipe's own options is a bug
    and propagates."""
    pipe.set_k(k)
    try:
        return pipe.fit(ds)
    except UserError:
        raise  # already says what is wrong
    except (ValueError, TypeError, IndexError, ArithmeticError, RuntimeError, AssertionError) as e:
        stage = getattr(pipe, "stage_", None)
        mine = [o.strip() for o in overrides if stage and o.strip().startswith(stage + ".")]
        if not mine:
            raise
        raise UserError(f"{stage} failed with what you set (--set {', --set '.join(mine)}): "
                        f"{' '.join(str(e).split())[:300]}") from None


def run(source, recipe: str | None = None, k=None, out=None, seed: int | None = None, labels=None, overrides=(),
        size=None, channels=None, image_key=None, label_key=None, layout: str = "auto",
        nmi_average: str = "arithmetic", encoder_options: dict | None = None,
        export: str | None = None, weightless: bool = False) -> RunResult:
    """Load ``source``, fit the recipe's pipeline, evaluate, and (with ``out``) write every output.

    ``k``: a number; ``"auto"`` or ``"auto:MIN-MAX"`` (k chosen on the embedding between MIN and MAX, see
    :mod:`imclust.kselect`); or ``None`` (the recipe's k, else the number of classes when labels exist, else auto).
    ``seed=None`` uses the recipe's seed (0 when it names none). ``export`` (copy, symlink or move) puts a
    folder's files into ``out/clusters/<label>/`` after everything else is written. With no recipe named,
    grey and colour images each get their pretrained-feature default when its weights are installed
    (``imclust[photos]``), else the default that needs no weights; ``weightless=True`` asks for the latter even
    when the weights are installed (:func:`imclust.recipes.choose_default`).
    """
    t0 = time.perf_counter()
    if export is not None and out is None:
        raise UserError("--export needs an output folder (--out)")
    if seed is not None:
        seed = check_seed(seed)
    check_k(k)
    _check_export_mode(export)
    out = None if out is None else check_out(out, sources=[source, labels])
    ds = load_source(source, size=size, channels=channels, labels=labels, image_key=image_key,
                     label_key=label_key, layout=layout, exclude=_excluded(out))
    load_s = time.perf_counter() - t0
    log(f"loaded {ds}")
    _check_export(export, ds)
    if recipe is None:
        recipe, why = choose_default(ds.channels, weightless)
        if why:
            log(why)
    elif weightless:
        raise UserError(f"--weightless chooses the default recipe that needs no pretrained weights; it cannot be "
                        f"combined with --recipe {recipe} (drop one of the two)")
    pipe, cfg = build_pipeline(recipe, overrides, seed, encoder_options)
    seed = pipe.seed
    if out is not None:
        check_out(out, inner=_inner_paths(pipe), expected_bytes=_expected_bytes(ds, export))
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
    fit_pipeline(pipe, ds, k, overrides)
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
    features = getattr(pipe, "features_", None)
    if features is not None and n_distinct_rows(features, 2) < 2 and metrics.get("silhouette") is not None:
        # every image gave the same features: any spread in the embedding was made up by a reducer
        metrics.update(silhouette=None, calinski_harabasz=None, davies_bouldin=None)
        log("all images give the same features: cluster-quality scores are not defined")
    timings = {"load": load_s, **pipe.timings_}
    metrics["seconds"] = time.perf_counter() - t0
    result = RunResult(ids=ids, labels=labels_pred, embedding=emb, metrics=metrics, pipeline=pipe, skipped=skipped,
                       true_labels=y, class_names=ds.class_names, recipe_name=cfg["name"], config=cfg, seed=seed,
                       k=_k_of(pipe, labels_pred), timings=timings, source=str(source), source_kind=ds.kind,
                       dataset=ds)
    if out is not None:
        _write_once(out, result, export, kind="run")
    return result


def _write_once(out, result: RunResult, export, kind: str) -> None:
    """Write the outputs; under torchrun every rank holds the same result and rank 0 writes it."""
    from .nn.launch import barrier, is_main

    if is_main():
        write_outputs(out, result, export, kind=kind)
    barrier()


def _k_part(cfg: dict) -> dict:
    """The recipe table that holds k: the clusterer's, or the encoder's when the encoder owns the clusters."""
    from .pipeline import ENCODER_CLUSTERS

    clu = cfg.get("clusterer", {})
    return cfg.get("encoder", {}) if clu.get("type") == ENCODER_CLUSTERS else clu


def _excluded(out) -> list:
    """What a source scan must not read: the output folder and the earlier run kept beside it."""
    from .rundir import prev_of

    return [] if out is None else [out, prev_of(out)]


def _inner_paths(pipe: Pipeline) -> list[tuple[str, str]]:
    """Folders a component writes while it runs; they must lie outside the output folder, which is replaced."""
    params = pipe.encoder.get_params(deep=False)
    return [(f"encoder.{name}", params[name]) for name in ("checkpoint_dir", "cache_dir") if params.get(name)]


def _expected_bytes(ds: ImageSet, export: str | None) -> int:
    """A generous estimate of what the outputs take on disk: figures and the page, per-image rows and
    thumbnails, and the files themselves when --export copies them."""
    import os

    need = 64 * 2**20 + 2048 * len(ds)
    if export == "copy" and ds.paths is not None:
        need += sum(os.path.getsize(p) for p in ds.paths if os.path.exists(p))
    return need


def write_outputs(out, result: RunResult, export: str | None, kind: str, extra=None) -> None:
    """Write a command's outputs into a fresh folder that replaces ``out`` only when everything is written
    (:mod:`imclust.rundir`); ``extra(folder)`` adds files of its own (embed's figures). Copies and links of
    --export are made inside it; --export move runs after the swap, so no user file ever sits in a folder
    that a failure would delete."""
    from .outputs import write_run
    from .rundir import RunFolder

    with RunFolder(out, kind, export=export) as folder:
        write_run(folder, result, final=out)
        if extra is not None:
            extra(folder)
        if export in ("copy", "symlink"):
            _export(folder, result, export)
    if export == "move":
        _export(out, result, export)


def _check_export_mode(mode) -> None:
    from .export import EXPORT_MODES

    if mode is not None and mode not in EXPORT_MODES:
        raise UserError(f"--export {mode!r}: choose one of {', '.join(EXPORT_MODES)}")


def _check_export(mode, ds: ImageSet) -> None:
    """Refuse an impossible --export before any work is done."""
    if mode is None:
        return
    _check_export_mode(mode)
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
    _check_export_mode(export)
    out = None if out is None else check_out(out, sources=[source, labels, model_dir])
    pipe = Pipeline.load(model_dir)
    if weights is not None:
        if "weights" not in pipe.encoder.get_params(deep=False):
            raise UserError(f"--weights: this model's encoder ({pipe.encoder.component_name}) takes no weights file")
        pipe.encoder.set_params(weights=str(weights), pretrained=False)
    ds = load_source(source, size=size, channels=channels, labels=labels, image_key=image_key,
                     label_key=label_key, layout=layout, exclude=_excluded(out))
    if out is not None:
        check_out(out, expected_bytes=_expected_bytes(ds, export))
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
        _write_once(out, result, export, kind="predict")
    return result


def report(run_dir, out=None) -> Path:
    """Rebuild ``report.html`` from a run folder's saved outputs (nothing is refitted or re-encoded); a folder
    that was damaged or mixes two runs' files is refused."""
    from .report.html import build_report

    return build_report(run_dir, out, check=True)


def read_predictions(path) -> tuple[list[str], np.ndarray]:
    """The ``id,label`` rows of a predictions CSV written by ``imclust run`` or ``predict``."""
    import csv
    import io

    from .data.labels import read_text

    path = Path(path)
    text = read_text(path, "predictions file")
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if r]
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", "label"]:
        raise UserError(f"{path}: expected a CSV with header 'id,label' (as written by imclust run); if this is the "
                        "labels file, give the predictions first: imclust evaluate PREDICTIONS LABELS")
    ids, labels, first = [], [], {}
    for n, r in enumerate(rows[1:], start=2):
        if len(r) != 2 or not r[0].strip():
            raise UserError(f"{path}, line {n}: expected 'id,label'")
        try:
            labels.append(int(r[1]))
        except ValueError:
            raise UserError(f"{path}, line {n}: the label {r[1]!r} is not a whole number; if this is the labels "
                            "file, give the predictions first: imclust evaluate PREDICTIONS LABELS") from None
        if r[0] in first:
            raise UserError(f"{path}: {r[0]!r} appears twice (lines {first[r[0]]} and {n})")
        first[r[0]] = n
        ids.append(r[0])
    if not ids:
        raise UserError(f"{path}: no predictions (only a header)")
    return ids, np.array(labels, dtype=np.int64)


def evaluate_files(predictions, labels, nmi_average: str = "arithmetic") -> dict:
    """Score a predictions CSV against a labels file (npy, IDX, CSV ``file,label`` or one label per line)."""
    ids, pred = read_predictions(predictions)
    y, _ = read_labels_file(labels, ids, str(predictions))
    return evaluate(pred, y, nmi_average=nmi_average)
