"""``report.html``: one self-contained page per run, built only from the run's saved outputs.

:func:`build_report` reads ``run.json``, ``metrics.json``, ``predictions.csv``, ``map2d.npy``,
``true_labels.npy``, ``skipped.csv``, the thumbnail sprite (:mod:`.thumbs`), the montages and any figures an
encoder wrote (``reconstructions.png``, ``loss_curve.png``, ``history.json``, other top-level PNGs), the curve
``k_selection.json`` holds when k was chosen automatically, and
writes one HTML file: images as data URIs, CSS and JavaScript inline, nothing fetched from the network.
Nothing is recomputed except the aligned confusion matrix, a table count. ``imclust report RUN_DIR`` calls it.

Size stays bounded: the sprite sheet has its own cap (:mod:`.thumbs`), the map draws at most
:data:`MAX_MAP_POINTS` points, and embedded figures share a byte budget (large ones are re-encoded or
downscaled to fit).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import write_text
from ..kselect import DISAGREE, WEAK, criteria_disagree, scores_peak_at_top, scores_weak, wider_range
from ..metrics import METRIC_HELP, aligned_confusion

MAX_MAP_POINTS = 50_000
MONTAGE_BUDGET = 6 * 1024 * 1024
FIGURE_BUDGET = 3 * 1024 * 1024
MAX_SKIPPED_ROWS = 1000
KNOWN_FIGURES = {"scatter_clusters.png", "scatter_labels.png", "reconstructions.png", "loss_curve.png",
                 "thumbs.png"}
LABEL_METRICS = ("acc", "nmi", "ari", "purity")
INTERNAL_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")
METRIC_NAMES = {"acc": "ACC", "nmi": "NMI", "ari": "ARI", "purity": "Purity", "silhouette": "Silhouette",
                "calinski_harabasz": "Calinski–Harabasz", "davies_bouldin": "Davies–Bouldin"}
METRIC_HINT = {"acc": "higher is better", "nmi": "higher is better", "ari": "higher is better",
               "purity": "higher is better", "silhouette": "higher is better",
               "calinski_harabasz": "higher is better", "davies_bouldin": "lower is better"}
FIGURE_CAPTIONS = {"scatter_3d.png": "The embedding in 3-D, coloured by cluster or label.",
                   "embedding.gif": "The learned embedding after each training epoch."}
STAGE_NAMES = {"load": "load images", "encode": "encode (features)", "choose_k": "choose k", "cluster": "cluster",
               "predict": "predict"}

e = html.escape


def _asset(name: str) -> str:
    return resources.files("imclust.report").joinpath("assets", name).read_text(encoding="utf-8")


def _read_json(path: Path, default=None):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); rerun 'imclust run' to rewrite it") from None


def _read_csv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


def _last_frame_png(gif: bytes) -> bytes:
    from PIL import Image

    im = Image.open(io.BytesIO(gif))
    im.seek(getattr(im, "n_frames", 1) - 1)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return f"data:{_mime(data)};base64," + base64.b64encode(data).decode("ascii")


def fit_image(data: bytes, max_bytes: int) -> bytes:
    """The image, re-encoded (JPEG) and then downscaled as needed so it takes at most ``max_bytes``."""
    if len(data) <= max_bytes and len(data) <= 150_000:
        return data
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode not in ("RGB", "L"):
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im.convert("RGBA"), mask=im.convert("RGBA").split()[-1])
        im = bg
    best = data
    for _ in range(8):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        if len(buf.getvalue()) < len(best):
            best = buf.getvalue()
        if len(best) <= max_bytes:
            return best
        f = max(0.3, min(0.9, (max_bytes / len(best)) ** 0.5))
        im = im.resize((max(8, int(im.width * f)), max(8, int(im.height * f))), Image.BILINEAR)
    return best


def _fmt_metric(key: str, v) -> str:
    if v is None:
        return "—"
    if key == "calinski_harabasz":
        return f"{v:,.1f}"
    return f"{v:.3f}"


def _fmt_seconds(s: float) -> str:
    if s >= 120:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1000:.0f} ms"


def _kv(rows) -> str:
    return "<table class=\"kv\">" + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


class _Run:
    """Everything the page shows, read from a run folder."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such folder; give an output folder written by 'imclust run'")
        if not (run_dir / "run.json").exists():
            raise UserError(f"{run_dir}: not a run folder (no run.json); give an output folder written by 'imclust run'")
        self.info = _read_json(run_dir / "run.json", {})
        self.metrics = _read_json(run_dir / "metrics.json", {}) or {}
        rows = _read_csv(run_dir / "predictions.csv")
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", "label"]:
            raise UserError(f"{run_dir / 'predictions.csv'}: missing or without the header 'id,label'; rerun 'imclust run'")
        try:
            self.ids = [r[0] for r in rows[1:]]
            self.pred = np.array([int(r[1]) for r in rows[1:]], dtype=np.int64)
        except (IndexError, ValueError):
            raise UserError(f"{run_dir / 'predictions.csv'}: every row needs an id and a whole-number label") from None
        n = len(self.ids)
        self.y = None
        if (run_dir / "true_labels.npy").exists():
            self.y = np.load(run_dir / "true_labels.npy", allow_pickle=False)
            if len(self.y) != n:
                raise UserError(f"{run_dir / 'true_labels.npy'}: {len(self.y)} labels for {n} predictions; rerun 'imclust run'")
        self.map2d = None
        if (run_dir / "map2d.npy").exists():
            self.map2d = np.load(run_dir / "map2d.npy", allow_pickle=False).astype(np.float64)
            if self.map2d.ndim != 2 or len(self.map2d) != n or self.map2d.shape[1] < 2:
                raise UserError(f"{run_dir / 'map2d.npy'}: shape {self.map2d.shape} does not match {n} predictions; rerun 'imclust run'")
        self.emb_dim = None
        if (run_dir / "embedding.npy").exists():
            emb = np.load(run_dir / "embedding.npy", mmap_mode="r", allow_pickle=False)
            self.emb_dim = int(np.prod(emb.shape[1:])) if emb.ndim > 1 else 1
        self.class_names = self.info.get("class_names")
        skipped = _read_csv(run_dir / "skipped.csv")
        self.skipped = [(r[0], r[1] if len(r) > 1 else "") for r in skipped[1:]]
        self.history = _read_json(run_dir / "history.json")
        self.k_selection = _read_k_selection(run_dir / "k_selection.json")

    def class_name(self, v) -> str:
        names = self.class_names
        if names is not None and 0 <= int(v) < len(names):
            return str(names[int(v)])
        return str(v)


K_CURVES = ("candidates", "score", "stability", "reference")
K_REPRODUCED_CURVES = ("reproduced", "reproduced_reference")  # absent from folders written before the second criterion
K_CURVE_COLOURS = {"stability": "#9aa3b2", "reference": "#c9a66b", "reproduced": "#2a9d5c",
                   "reproduced_reference": "#2a9d5c", "score": "#2f6fd6"}  # the chart's curves and its legend


def _read_k_selection(path: Path):
    sel = _read_json(path)
    if sel is None:
        return None
    keys = K_CURVES + tuple(key for key in K_REPRODUCED_CURVES if isinstance(sel, dict) and key in sel)
    lengths = {len(sel.get(key) or []) for key in keys} if isinstance(sel, dict) else set()
    if len(lengths) != 1 or not lengths.pop() or not isinstance(sel.get("k"), int):
        raise UserError(f"{path}: not the curve 'imclust run --k auto' writes (candidates, score, stability, "
                        "reference of one length, and k); rerun 'imclust run'")
    return sel


def _section(sid: str, title: str, lead: str, body: str) -> str:
    lead_html = f"<p class=\"lead\">{lead}</p>" if lead else ""
    return f"<section id=\"{sid}\"><h2>{e(title)}</h2>{lead_html}{body}</section>\n"


def _run_section(r: _Run) -> str:
    info, m = r.info, r.metrics
    cfg = info.get("config") or {}
    rows = [
        ("Source", f"<code>{e(str(info.get('source', '?')))}</code> ({e(str(info.get('source_kind', '')))})"),
        ("Images clustered", f"{len(r.ids):,}"),
        ("Skipped files", f"{len(r.skipped):,}" + (" (listed <a href=\"#skipped\">below</a>)" if r.skipped else "")),
        ("Recipe", f"<code>{e(str(info.get('recipe', '?')))}</code>"
                   + (f" — {e(str(cfg.get('description')))}" if cfg.get("description") else "")),
        ("Clusters (k)", e(str(info.get("k", "?"))) + (" — the encoder's own clusters"
                                                        if (cfg.get("clusterer") or {}).get("type") == "encoder" else "")
         + (" (chosen automatically: <a href=\"#k-choice\">how k was chosen</a>)" if info.get("k_selection") else "")),
        ("Seed", e(str(info.get("seed")))),
    ]
    if info.get("command"):
        rows.append(("Command", f"<code>{e(str(info['command']))}</code>"))
    if m.get("seconds") is not None:
        rows.append(("Total time", e(_fmt_seconds(float(m["seconds"])))))
    left = "<div><h3>What ran</h3>" + _kv(rows) + "</div>"

    timings = {k: float(v) for k, v in (info.get("timings") or {}).items() if isinstance(v, (int, float))}
    order = {"load": 0, "encode": 1, "choose_k": 2.5, "cluster": 3, "predict": 4}
    timings = dict(sorted(timings.items(), key=lambda kv: (order.get(kv[0], 2 if kv[0].startswith("reduce") else 5), kv[0])))
    tmax = max(timings.values(), default=0) or 1
    trs = []
    for k, v in timings.items():
        label = STAGE_NAMES.get(k) or re.sub(r"^reduce\.(\d+)\.(.*)$", r"reduce \1: \2", k)
        trs.append(f"<tr><td>{e(label)}</td><td class=\"num\">{e(_fmt_seconds(v))}</td>"
                   f"<td><span class=\"bar\" style=\"width:{max(2, int(200 * v / tmax))}px\"></span></td></tr>")
    timing = ("<table class=\"timing\">" + "".join(trs) + "</table>") if trs else "<p class=\"small\">no timings recorded</p>"
    vers = info.get("versions") or {}
    vtable = _kv((k, e(str(v))) for k, v in vers.items()) if vers else "<p class=\"small\">not recorded</p>"
    right = f"<div><h3>Time per stage</h3>{timing}<h3>Versions</h3>{vtable}</div>"
    conf = json.dumps(cfg, indent=2, sort_keys=False, default=str)
    body = (f"<div class=\"cols\">{left}{right}</div>"
            f"<details open><summary>Full configuration (the recipe after overrides)</summary><pre>{e(conf)}</pre></details>")
    return _section("run", "Run", "What was clustered, with which recipe and settings, and how long each stage took.", body)


def _metric_card(key: str, v) -> str:
    name = METRIC_NAMES.get(key, key)
    help_ = METRIC_HELP.get(key, "")
    hint = METRIC_HINT.get(key, "")
    note = " (needs at least 2 clusters)" if v is None else ""
    return (f"<div class=\"metric\" tabindex=\"0\" data-metric=\"{e(key)}\" aria-label=\"{e(name)}: {e(help_)}\">"
            f"<div class=\"name\">{e(name)}<span class=\"q\" aria-hidden=\"true\">?</span></div>"
            f"<div class=\"value\">{e(_fmt_metric(key, v))}</div><div class=\"hint\">{e(hint + note)}</div>"
            f"<div class=\"help\" role=\"tooltip\">{e(help_)}</div></div>")


def _metrics_section(r: _Run) -> str:
    m = r.metrics
    parts = []
    has_labels = r.y is not None and any(k in m for k in LABEL_METRICS)
    if has_labels:
        cards = "".join(_metric_card(k, m.get(k)) for k in LABEL_METRICS if k in m)
        parts.append("<div class=\"metric-group\" id=\"metrics-labels\"><h3>Against the true labels</h3>"
                     "<p class=\"small\">The labels were used only to score the clusters, never to find them.</p>"
                     f"<div class=\"metric-cards\">{cards}</div></div>")
    internal = [k for k in INTERNAL_METRICS if k in m]
    if internal:
        cards = "".join(_metric_card(k, m.get(k)) for k in internal)
        parts.append("<div class=\"metric-group\" id=\"metrics-internal\"><h3>Without labels</h3>"
                     "<p class=\"small\">Computed from the embedding and the clusters alone.</p>"
                     f"<div class=\"metric-cards\">{cards}</div></div>")
    if not parts:
        parts.append("<p class=\"small\">This run recorded no metrics.</p>")
    lead = "Hover or focus a metric to see what it measures."
    if not has_labels:
        lead += " This run had no labels, so only the label-free measures exist."
    return _section("metrics", "Metrics", lead, "".join(parts))


def _k_axis(k_min: int, k_max: int, x0: float, x1: float):
    """k -> x pixel: logarithmic when the range spans more than a factor 12, else linear; and the ticks."""
    log = k_max / max(k_min, 1) > 12
    f = np.log if log else (lambda v: np.asarray(v, dtype=float))
    a, b = float(f(k_min)), float(f(k_max))
    b = b if b > a else a + 1

    def x(k):
        return x0 + (float(f(k)) - a) / (b - a) * (x1 - x0)

    nice = [1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000] if log else \
        list(range(k_min, k_max + 1, max(1, int(np.ceil((k_max - k_min) / 10)))))
    ticks = sorted({k_min, k_max, *[t for t in nice if k_min <= t <= k_max]})
    ticks = [t for i, t in enumerate(ticks) if i == 0 or x(t) - x(ticks[i - 1]) >= 22 or t == k_max]
    return x, ticks, log


def _runs_of_values(ks, values) -> list:
    """The (k, value) pairs of a curve, cut where a value is None (a candidate the curve was not fitted at)."""
    runs = [[]]
    for k, v in zip(ks, values):
        if v is None:
            runs.append([])
        else:
            runs[-1].append((k, float(v)))
    return [run for run in runs if run]


def _k_chart(sel: dict) -> str:
    ks = [int(k) for k in sel["candidates"]]
    curves = {"score": sel["score"], "stability": sel["stability"], "reference": sel["reference"],
              **{key: sel[key] for key in K_REPRODUCED_CURVES if key in sel}}
    W, H, L, R, T, B = 680, 280, 48, 18, 18, 40
    x, ticks, logx = _k_axis(ks[0], ks[-1], L, W - R)
    vals = [float(v) for c in curves.values() for v in c if v is not None]
    lo, hi = np.floor(min(0.0, min(vals)) * 4) / 4, np.ceil(max(1.0, max(vals)) * 4) / 4

    def y(v):
        return T + (hi - float(v)) / (hi - lo) * (H - T - B)

    parts = [f"<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>"]
    for v in np.arange(lo, hi + 1e-9, 0.25):
        parts.append(f"<line x1=\"{L}\" x2=\"{W - R}\" y1=\"{y(v):.1f}\" y2=\"{y(v):.1f}\" stroke=\"#eceff3\"/>"
                     f"<text x=\"{L - 6}\" y=\"{y(v) + 4:.1f}\" font-size=\"11\" fill=\"#5b6475\" text-anchor=\"end\">{v:.2f}</text>")
    for t in ticks:
        parts.append(f"<line x1=\"{x(t):.1f}\" x2=\"{x(t):.1f}\" y1=\"{H - B}\" y2=\"{H - B + 4}\" stroke=\"#5b6475\"/>"
                     f"<text x=\"{x(t):.1f}\" y=\"{H - B + 16}\" font-size=\"11\" fill=\"#5b6475\" text-anchor=\"middle\">{t}</text>")
    parts.append(f"<text x=\"{(L + W - R) / 2:.0f}\" y=\"{H - 6}\" font-size=\"12\" fill=\"#5b6475\" text-anchor=\"middle\">"
                 f"k (number of clusters{', log scale' if logx else ''})</text>")
    styles = {"stability": "stroke-dasharray=\"5 4\" stroke-width=\"1.5\"",
              "reference": "stroke-dasharray=\"2 3\" stroke-width=\"1.5\"",
              "reproduced": "stroke-width=\"1.5\"",
              "reproduced_reference": "stroke-opacity=\".5\" stroke-dasharray=\"2 3\" stroke-width=\"1.5\"",
              "score": "stroke-width=\"2.5\""}
    for name in ("stability", "reference", *(key for key in K_REPRODUCED_CURVES if key in curves), "score"):
        for run in _runs_of_values(ks, curves[name]):  # a curve fitted only where needed is drawn where it was
            if len(run) == 1:
                (k, v), = run
                parts.append(f"<circle class=\"k-{name}\" cx=\"{x(k):.1f}\" cy=\"{y(v):.1f}\" r=\"2.5\" "
                             f"fill=\"{K_CURVE_COLOURS[name]}\" fill-opacity=\".5\"/>")
                continue
            pts = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in run)
            parts.append(f"<polyline class=\"k-{name}\" fill=\"none\" stroke=\"{K_CURVE_COLOURS[name]}\" {styles[name]} "
                         f"points=\"{pts}\"/>")
    best = max(float(v) for v in curves["score"])
    if best > 0:
        ty = y(sel.get("plateau", 0.95) * best)
        parts.append(f"<line x1=\"{L}\" x2=\"{W - R}\" y1=\"{ty:.1f}\" y2=\"{ty:.1f}\" stroke=\"#2f6fd6\" stroke-opacity=\".45\" "
                     f"stroke-dasharray=\"6 3\"/><text x=\"{W - R}\" y=\"{ty - 4:.1f}\" font-size=\"11\" fill=\"#2f6fd6\" "
                     f"text-anchor=\"end\">{100 * sel.get('plateau', 0.95):.0f} % of the best score</text>")
    kept = curves.get("reproduced") or [None] * len(ks)
    for k, sc, st, rf, kp in zip(ks, curves["score"], curves["stability"], curves["reference"], kept):
        tip = f"k={k}: score {float(sc):.3f} (stability {float(st):.3f}, reference {float(rf):.3f})" + (
            "" if kp is None else f"; clusters reproduced {float(kp):.3f}")
        parts.append(f"<circle class=\"k-point\" data-k=\"{k}\" cx=\"{x(k):.1f}\" cy=\"{y(sc):.1f}\" r=\"3.5\" fill=\"#2f6fd6\">"
                     f"<title>{e(tip)}</title></circle>")
    for key, label in (("k_stability", "gap"), ("k_reproduced", "reproduced")):
        k = sel.get(key)
        if isinstance(k, int) and ks[0] <= k <= ks[-1]:
            parts.append(f"<path class=\"k-{key}\" data-k=\"{k}\" d=\"M{x(k):.1f},{H - B - 1} l-5,-8 h10 z\" "
                         f"fill=\"#5b6475\"><title>{e(f'k={k} by the {label} criterion')}</title></path>")
    score_of = dict(zip(ks, curves["score"]))
    for key, label, fill in (("runner_up", "runner-up", "#fff"), ("k", "chosen", "#d62728")):
        k = sel.get(key)
        if k is None or k not in score_of:
            continue
        cx, cy = x(k), y(score_of[k])
        anchor = "end" if cx > W - 120 else "start"
        dx = -9 if anchor == "end" else 9
        parts.append(f"<circle class=\"k-{label}\" data-k=\"{k}\" cx=\"{cx:.1f}\" cy=\"{cy:.1f}\" r=\"7\" fill=\"{fill}\" "
                     f"stroke=\"#d62728\" stroke-width=\"2.5\"/><text x=\"{cx + dx:.1f}\" y=\"{cy - 10:.1f}\" font-size=\"12\" "
                     f"font-weight=\"600\" fill=\"#d62728\" text-anchor=\"{anchor}\">{label} k={k}</text>")
    return (f"<svg id=\"k-chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" "
            f"aria-label=\"score of each candidate k\">{''.join(parts)}</svg>")


def _k_section(r: _Run) -> str:
    sel = r.k_selection
    if sel is None:
        return ""
    k, runner_up = int(sel["k"]), sel.get("runner_up")
    ks = [int(v) for v in sel["candidates"]]
    both = all(key in sel for key in K_REPRODUCED_CURVES) and isinstance(sel.get("k_stability"), int) \
        and isinstance(sel.get("k_reproduced"), int)
    plateau = f"{100 * sel.get('plateau', 0.95):.0f} %"
    lead = (f"k was not given, so it was chosen from the embedding, between {sel.get('k_min', ks[0])} and "
            f"{sel.get('k_max', ks[-1])}, without reading any labels. For each candidate k, k-means was fitted on "
            f"{sel.get('repeats', '?')} random subsamples of {int(sel.get('sample_size', 0)):,} images"
            + (f" (on their {int(sel['dims'])} leading principal components)" if sel.get("dims") else "")
            + " and the fits were compared "
            "(stability: 1 means the same clusters every time); the same was done on a cloud of points without clusters "
            "(reference). The score, the stability gap, is stability minus reference, "
            "smoothed over neighbouring k: how much more reproducible the groups are than in a cloud with none. ")
    if both:
        lead += (f"By this criterion k is the smallest whose score reaches {plateau} of the best: the coarsest "
                 f"well-supported k. A second criterion cut {int(sel.get('halved_sample_size', 0)):,} images in random "
                 f"halves {int(sel.get('halvings', 3))} times and fitted k-means on each half: a cluster is reproduced when the "
                 f"other half keeps {100 * sel.get('together', 0.7):.0f} % of its pairs of images together, and its k is "
                 f"the largest at which {100 * sel.get('reproduced_share', 0.95):.0f} % of the clusters are reproduced "
                 "(and not on the cloud, which is fitted only where needed: from the largest such k down until one it "
                 "does not reproduce): the finest k whose every group stands on its own. The two err in opposite "
                 "directions, so the chosen k is the candidate nearest to their geometric mean (triangles on the axis "
                 "mark each criterion's k). The runner-up is the best score clearly apart from it.")
    else:
        lead += (f"The chosen k is the smallest whose score reaches {plateau} of the best; the runner-up is the best "
                 "score clearly apart from it.")
    score_of = dict(zip(ks, sel["score"]))
    rows = [("Chosen k", f"<b>{k}</b> (score {float(score_of[k]):.3f})")]
    if both:
        rows.append(("By each criterion", f"stability gap: {int(sel['k_stability'])}; reproducible clusters: "
                     f"{int(sel['k_reproduced'])}"))
    if runner_up is not None:
        rows.append(("Runner-up", f"{int(runner_up)} (score {float(score_of[int(runner_up)]):.3f})"))
    rows.append(("Candidates", f"{len(ks)}: " + e(", ".join(str(v) for v in ks))))
    if sel.get("seconds") is not None:
        rows.append(("Time to choose", e(_fmt_seconds(float(sel["seconds"])))))
    warn = ""
    if scores_weak(sel["score"]):
        warn = ("<p class=\"warn\">No k gave groups clearly more reproducible than a cloud without clusters (every score "
                f"is below {WEAK}): the embedding shows no clear groups, so this choice of k is weak. Try the runner-up or "
                "a k you expect.</p>")
    if both and criteria_disagree(int(sel["k_stability"]), int(sel["k_reproduced"])):
        lo, hi = sorted((int(sel["k_stability"]), int(sel["k_reproduced"])))
        warn += (f"<p class=\"warn k-uncertain\">The two criteria disagree by {DISAGREE:g}× or more ({lo} and {hi}): "
                 "the embedding holds groups at more than one scale (for example objects and their categories), so the "
                 f"chosen k, between them, is uncertain. If you know the grain you want, rerun with k = {lo} or {hi}"
                 + (" (“Rerun with another k” gives the command)" if "{k}" in str(sel.get("rerun", "")) else "")
                 + " and compare the montages.</p>")
    if scores_peak_at_top(sel["score"]):
        wider = wider_range(int(sel.get("k_min", ks[0])), int(sel.get("k_max", ks[-1])), len(r.ids))
        warn += (f"<p class=\"warn k-top\">The score is highest at the largest candidate (k = {ks[-1]}): groupings "
                 "finer than that were not examined, and the curve does not show where the score stops rising"
                 + (f". To look further, rerun with <code>--k {wider}</code>.</p>" if wider else ".</p>"))
    legend = (f"<p class=\"small k-legend\"><span style=\"color:{K_CURVE_COLOURS['score']}\">━ score</span> · "
              f"<span style=\"color:{K_CURVE_COLOURS['stability']}\">╌ stability on the embedding</span> · "
              f"<span style=\"color:{K_CURVE_COLOURS['reference']}\">┈ stability on the reference</span>"
              + (f" · <span style=\"color:{K_CURVE_COLOURS['reproduced']}\">━ clusters reproduced</span> · "
                 f"<span style=\"color:{K_CURVE_COLOURS['reproduced_reference']};opacity:.6\">┈ on the reference</span>" if both else "")
              + " · hover a point for its values</p>")
    extra_head = "<th>clusters reproduced</th><th>on the reference</th>" if both else ""
    extra = list(zip(sel["reproduced"], sel["reproduced_reference"])) if both else [None] * len(ks)
    table = ("<details><summary>All candidates</summary><table class=\"list\"><tr><th>k</th><th>score</th>"
             f"<th>stability</th><th>reference</th>{extra_head}</tr>" + "".join(
                 f"<tr><td>{kk}</td><td>{float(sc):.3f}</td><td>{float(st):.3f}</td><td>{float(rf):.3f}</td>"
                 + ("" if ex is None else "".join(f"<td>{'—' if v is None else f'{float(v):.3f}'}</td>" for v in ex))
                 + "</tr>"
                 for kk, sc, st, rf, ex in zip(ks, sel["score"], sel["stability"], sel["reference"], extra))
             + "</table></details>")
    rerun = ""
    template = sel.get("rerun")
    if isinstance(template, str) and "{k}" in template:
        other = int(runner_up) if runner_up is not None else k
        hi = max(int(sel.get("k_max", ks[-1])), other)
        rerun = ("<h3>Rerun with another k</h3><div class=\"rerun\"><label>k = <input type=\"number\" id=\"k-rerun-k\" "
                 f"min=\"1\" max=\"{max(hi, len(r.ids))}\" value=\"{other}\"></label>"
                 f"<button type=\"button\" class=\"plain\" id=\"k-rerun-copy\">Copy</button></div>"
                 f"<pre><code id=\"k-rerun\" data-template=\"{e(template)}\">{e(template.replace('{k}', str(other)))}</code></pre>")
    body = f"<div class=\"cols\"><div>{_k_chart(sel)}{legend}</div><div>{_kv(rows)}{rerun}</div></div>{warn}{table}"
    return _section("k-choice", "How k was chosen", e(lead), body)


def _map_data(r: _Run, thumbs) -> dict:
    n = len(r.ids)
    sel = np.arange(n)
    if n > MAX_MAP_POINTS:
        sel = np.sort(np.random.RandomState(0).choice(n, MAX_MAP_POINTS, replace=False))
    data: dict = {"cluster": r.pred[sel].tolist(), "ids": [r.ids[i] for i in sel]}
    if r.map2d is not None:
        xy = r.map2d[sel, :2]
        scale = float(np.abs(xy).max()) or 1.0
        digits = max(0, int(4 - np.floor(np.log10(scale))))
        data["x"] = [round(float(v), digits) for v in xy[:, 0]]
        data["y"] = [round(float(v), digits) for v in xy[:, 1]]
    if r.y is not None:
        data["label"] = [int(v) for v in r.y[sel]]
        data["classNames"] = [str(c) for c in r.class_names] if r.class_names else None
    if thumbs is not None and r.map2d is not None:
        meta, img = thumbs
        if int(meta.get("n_points", -1)) == n:
            pts = meta.get("points")
            if len(sel) != n:  # re-index tiles onto the drawn sample
                slot = {int(p): j for j, p in enumerate(pts)} if pts is not None else None
                keep = [(i, (slot.get(int(p)) if slot is not None else int(p))) for i, p in enumerate(sel)]
                keep = [(i, s) for i, s in keep if s is not None]
                # tiles stay where they are in the sheet: map drawn index -> original tile slot
                pts_new = [i for i, _ in keep]
                slots = [s for _, s in keep]
            else:
                pts_new, slots = pts, None
            data["thumbs"] = {"uri": data_uri(img), "tw": int(meta["tile_w"]), "th": int(meta["tile_h"]),
                              "cols": int(meta["cols"]), "count": int(meta["count"]), "points": pts_new,
                              "slots": slots}
    return data


def _map_section(r: _Run, data: dict, n_drawn: int) -> str:
    if r.map2d is None:
        return _section("map", "Map of the embedding", "",
                        "<p class=\"small\">This run saved no 2-D map (<code>map2d.npy</code>), so there is nothing to draw.</p>")
    dim = r.emb_dim
    made = r.info.get("map") or {}
    if dim is None or dim <= 2:
        how = "by the 2-D embedding the clusters were found in"
    elif made.get("method") == "umap":
        how = (f"by a 2-D UMAP layout of the {dim}-dimensional embedding the clusters were found in "
               f"(imclust's UMAP: {made.get('n_neighbors')} neighbours, min_dist {made.get('min_dist')}, "
               f"{made.get('n_epochs')} epochs, made in "
               f"{float(made.get('seconds', 0)):.1f} s), so groups apart in the embedding are apart here; "
               "distances between far-apart groups are not to scale")
        if made.get("placed"):
            how += (f"; {made['laid_out']:,} images were laid out and the other {made['placed']:,} placed at the "
                    "weighted mean of their 10 nearest laid-out images")
    else:
        how = (f"by the first two principal components of the {dim}-dimensional embedding the clusters were found in; "
               "groups that overlap on this flat view may still be apart in the full embedding")
    lead = (f"Each dot is one image, placed {how}. Nearby dots are images the method finds similar. "
            "Hover a dot to see the image and its id; scroll to zoom, drag to pan, double-click to reset; "
            "click a legend entry to highlight it.")
    if n_drawn < len(r.ids):
        lead += f" A random sample of {n_drawn:,} of the {len(r.ids):,} images is drawn."
    if "thumbs" not in data:
        lead += " This run saved no thumbnails, so hovering shows ids only."
    buttons = "<button type=\"button\" data-mode=\"cluster\" class=\"on\">cluster</button>"
    if r.y is not None:
        buttons += "<button type=\"button\" data-mode=\"label\">true label</button>"
    controls = (f"<div class=\"map-controls\"><span>Colour by</span><div class=\"seg\" id=\"map-mode\">{buttons}</div>"
                "<button type=\"button\" class=\"plain\" id=\"map-reset\">Reset view</button></div>")
    box = ("<div class=\"map-wrap\"><div class=\"map-box\"><canvas id=\"map-canvas\" aria-label=\"2-D map of the images\"></canvas>"
           "<div id=\"map-tip\"><canvas width=\"112\" height=\"112\"></canvas><div class=\"tid\"></div><div class=\"tmeta\"></div></div>"
           "</div><div class=\"legend\" id=\"map-legend\"></div></div>")
    return _section("map", "Map of the embedding", e(lead), controls + box)


def _clusters_section(r: _Run) -> str:
    clusters, counts = np.unique(r.pred, return_counts=True)
    n = len(r.pred)
    montage_dir = r.dir / "montages"
    files = {int(c): montage_dir / f"montage_{int(c)}.png" for c in clusters}
    present = {c: p for c, p in files.items() if p.exists()}
    per = max(20_000, MONTAGE_BUDGET // max(1, len(present)))
    bars = "".join(f"<div data-cluster=\"{int(c)}\" style=\"height:{max(3, int(60 * k / counts.max()))}px\" "
                   f"title=\"cluster {int(c)}: {int(k):,} images\"></div>" for c, k in zip(clusters, counts))
    cards = []
    for c, k in zip(clusters, counts):
        c = int(c)
        meta = f"{int(k):,} images · {100 * k / n:.1f}%"
        if r.y is not None:
            vals, cnt = np.unique(r.y[r.pred == c], return_counts=True)
            top = int(np.argmax(cnt))
            meta += f" · mostly <b>{e(r.class_name(vals[top]))}</b> ({100 * cnt[top] / k:.0f}%)"
        img = ""
        if c in present:
            img = f"<img alt=\"sample images of cluster {c}\" src=\"{data_uri(fit_image(present[c].read_bytes(), per))}\">"
        btn = f"<button type=\"button\" class=\"plain\" data-show-cluster=\"{c}\">show on map</button>" if r.map2d is not None else ""
        cards.append(f"<div class=\"montage\" data-cluster-card=\"{c}\"><h3><span class=\"sw\" data-cluster-swatch=\"{c}\"></span>"
                     f"Cluster {c}</h3><div class=\"meta\">{meta}</div>{img}{btn}</div>")
    lead = f"{len(clusters)} clusters. The bars show their sizes."
    if present:
        lead += " Each montage shows images of one cluster, those nearest to its centre first."
    else:
        lead += " This run saved no montages (no images were available to draw)."
    body = f"<div class=\"sizes\" aria-hidden=\"true\">{bars}</div><div class=\"montages\">{''.join(cards)}</div>"
    return _section("clusters", "Clusters", e(lead), body)


def _svg_curve(history: list) -> str:
    pts = [(h.get("epoch", i + 1), h.get("loss")) for i, h in enumerate(history) if isinstance(h, dict)]
    pts = [(float(x), float(y)) for x, y in pts if isinstance(y, (int, float)) and np.isfinite(y)]
    if len(pts) < 2:
        return ""
    xs, ys = zip(*pts)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    y1 = y1 if y1 > y0 else y0 + 1
    x1 = x1 if x1 > x0 else x0 + 1
    W, H, P = 520, 220, 40
    poly = " ".join(f"{P + (x - x0) / (x1 - x0) * (W - 2 * P):.1f},{H - P - (y - y0) / (y1 - y0) * (H - 2 * P):.1f}" for x, y in pts)
    return (f"<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"training loss per epoch\">"
            f"<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>"
            f"<polyline fill=\"none\" stroke=\"#2f6fd6\" stroke-width=\"2\" points=\"{poly}\"/>"
            f"<text x=\"{P}\" y=\"{H - 12}\" font-size=\"12\" fill=\"#5b6475\">epoch {x0:g}</text>"
            f"<text x=\"{W - P}\" y=\"{H - 12}\" font-size=\"12\" fill=\"#5b6475\" text-anchor=\"end\">epoch {x1:g}</text>"
            f"<text x=\"4\" y=\"{P - 8}\" font-size=\"12\" fill=\"#5b6475\">loss {y1:.4g}</text>"
            f"<text x=\"4\" y=\"{H - P + 4}\" font-size=\"12\" fill=\"#5b6475\">{y0:.4g}</text></svg>")


def _training_section(r: _Run) -> str:
    figs = []
    rec = r.dir / "reconstructions.png"
    if rec.exists():
        figs.append(f"<figure class=\"recon\"><img alt=\"originals and reconstructions\" src=\"{data_uri(fit_image(rec.read_bytes(), FIGURE_BUDGET // 2))}\">"
                    "<figcaption>Top row: original images. Bottom row: the autoencoder's reconstructions of them. "
                    "Close copies mean the code kept what the images contain.</figcaption></figure>")
    lc = r.dir / "loss_curve.png"
    hist = r.history if isinstance(r.history, list) else None
    if lc.exists():
        figs.append(f"<figure><img alt=\"training loss per epoch\" src=\"{data_uri(fit_image(lc.read_bytes(), FIGURE_BUDGET // 2))}\">"
                    "<figcaption>Training loss per epoch; a curve that flattens means training converged.</figcaption></figure>")
    elif hist and _svg_curve(hist):
        figs.append(f"<figure>{_svg_curve(hist)}<figcaption>Training loss per epoch (from history.json).</figcaption></figure>")
    if not figs and not hist:
        return ""
    body = f"<div class=\"figs\">{''.join(figs)}</div>"
    if hist:
        last = hist[-1] if isinstance(hist[-1], dict) else {}
        first = hist[0] if isinstance(hist[0], dict) else {}
        rows = [("Epochs", f"{len(hist):,}")]
        if isinstance(first.get("loss"), (int, float)) and isinstance(last.get("loss"), (int, float)):
            rows.append(("Loss, first → last epoch", f"{first['loss']:.5g} → {last['loss']:.5g}"))
        for k, v in last.items():
            if k not in ("epoch", "loss") and isinstance(v, (int, float, str)):
                rows.append((f"{k} (last epoch)", e(f"{v:.5g}" if isinstance(v, float) else str(v))))
        body += "<h3>Training history</h3>" + _kv(rows)
    return _section("training", "Training", "The encoder was trained on these images; these show how it learned.", body)


def _confusion_section(r: _Run) -> str:
    if r.y is None:
        return ""
    table, classes, clusters = aligned_confusion(r.y, r.pred)
    k = min(len(classes), len(clusters))
    head = "<tr><th class=\"row\">class \\ cluster</th>" + "".join(f"<th>{int(c)}</th>" for c in clusters) + "<th>images</th></tr>"
    rows = []
    for i, cl in enumerate(classes):
        tot = int(table[i].sum()) or 1
        cells = []
        for j, c in enumerate(clusters):
            v = int(table[i, j])
            a = v / tot
            style = f" style=\"background:rgba(47,111,214,{a:.3f});color:{'#fff' if a > 0.55 else 'inherit'}\"" if v else ""
            cls = " class=\"diag\"" if i == j and j < k else ""
            tip = f"{v:,} of the {tot:,} images of {r.class_name(cl)} ({100 * a:.1f}%) are in cluster {int(c)}"
            cells.append(f"<td{cls}{style} title=\"{e(tip)}\">{v if v else ''}</td>")
        rows.append(f"<tr><th class=\"row\">{e(r.class_name(cl))}</th>{''.join(cells)}<td>{tot:,}</td></tr>")
    body = f"<div class=\"cm-wrap\"><table class=\"cm\">{head}{''.join(rows)}</table></div>"
    lead = ("Rows are the true classes, columns the clusters. Columns are ordered by the Hungarian matching, so each "
            "class's matched cluster sits on the outlined diagonal; the share of images on it is ACC. Shading is the "
            "share of the row.")
    if len(clusters) > len(classes):
        lead += " Clusters beyond the number of classes are unmatched and follow at the right."
    return _section("confusion", "Confusion matrix", e(lead), body)


def _figures_section(r: _Run) -> str:
    extra = sorted(p for p in [*r.dir.glob("*.png"), *r.dir.glob("*.gif")]
                   if p.name not in KNOWN_FIGURES and not p.name.startswith("."))
    if not extra:
        return ""
    per = max(50_000, FIGURE_BUDGET // len(extra))
    figs = []
    for p in extra:
        cap = FIGURE_CAPTIONS.get(p.name, p.name)
        data = p.read_bytes()
        if p.suffix == ".gif" and len(data) > per:  # re-encoding would drop the animation: show its last frame
            cap += f" (last frame; the animation, {len(data) / 2**20:.1f} MiB, is {p.name} beside this page)"
            data = fit_image(_last_frame_png(data), per)
        else:
            data = fit_image(data, per) if p.suffix != ".gif" else data
        figs.append(f"<figure><img alt=\"{e(p.name)}\" src=\"{data_uri(data)}\">"
                    f"<figcaption>{e(cap)}</figcaption></figure>")
    return _section("figures", "More figures", "Other figures this run wrote.", f"<div class=\"figs\">{''.join(figs)}</div>")


def _skipped_section(r: _Run) -> str:
    if not r.skipped:
        return _section("skipped", "Skipped files", "", "<p class=\"ok\">No files were skipped: every input image was read.</p>")
    rows = "".join(f"<tr><td>{e(i)}</td><td>{e(reason)}</td></tr>" for i, reason in r.skipped[:MAX_SKIPPED_ROWS])
    more = ""
    if len(r.skipped) > MAX_SKIPPED_ROWS:
        more = f"<p class=\"small\">…and {len(r.skipped) - MAX_SKIPPED_ROWS:,} more, all listed in <code>skipped.csv</code>.</p>"
    lead = f"{len(r.skipped):,} file(s) could not be read and were left out of the clustering."
    return _section("skipped", "Skipped files", e(lead),
                    f"<table class=\"list\"><tr><th>file</th><th>why it was skipped</th></tr>{rows}</table>{more}")


def _json_script(obj) -> str:
    txt = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return txt.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report(run_dir) -> str:
    """The report page of ``run_dir`` as one HTML string."""
    from .thumbs import read_thumbnails

    r = _Run(Path(run_dir))
    thumbs = read_thumbnails(r.dir)
    data = _map_data(r, thumbs)
    n_drawn = len(data["cluster"])
    info = r.info
    sections = [
        ("run", "Run", _run_section(r)),
        ("metrics", "Metrics", _metrics_section(r)),
        ("k-choice", "How k was chosen", _k_section(r)),
        ("map", "Map", _map_section(r, data, n_drawn)),
        ("clusters", "Clusters", _clusters_section(r)),
        ("training", "Training", _training_section(r)),
        ("confusion", "Confusion matrix", _confusion_section(r)),
        ("figures", "More figures", _figures_section(r)),
        ("skipped", "Skipped files", _skipped_section(r)),
    ]
    sections = [s for s in sections if s[2]]
    nav = "".join(f"<a href=\"#{sid}\">{e(t)}</a>" for sid, t, _ in sections)
    src = str(info.get("source", "?"))
    sub = (f"<code>{e(src)}</code> · {len(r.ids):,} images · {len(np.unique(r.pred)) if len(r.pred) else 0} clusters · "
           f"recipe <code>{e(str(info.get('recipe', '?')))}</code>")
    if r.y is not None and r.metrics.get("acc") is not None:
        sub += f" · ACC {r.metrics['acc']:.3f}"
    title = f"imclust report: {Path(src.rstrip('/')).name or src}"
    built = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>{_asset('report.css')}</style></head>\n<body>"
        f"<header class=\"top\"><h1>{e(title)}</h1><p class=\"sub\">{sub}</p><nav class=\"sections\">{nav}</nav></header>\n"
        f"<main>{''.join(s for _, _, s in sections)}</main>"
        f"<footer>Built by imclust {e(str((info.get('versions') or {}).get('imclust', '')))} on {built} from the files in this run's folder. "
        "Rebuild with <code>imclust report RUN_DIR</code>.</footer>\n"
        f"<script type=\"application/json\" id=\"imclust-data\">{_json_script(data)}</script>\n"
        f"<script>{_asset('report.js')}</script>\n</body></html>\n"
    )


def build_report(run_dir, out=None, check: bool = False) -> Path:
    """Write ``report.html`` (or ``out``) for the run in ``run_dir``; returns its path.

    With ``check`` (``imclust report``) the folder is first checked against the file list its run left
    (:func:`imclust.rundir.verify`): a damaged folder, or one that mixes two runs' files, is refused.
    Without it (a run building its own page, or a caller that added figures) the files are taken as they are.
    """
    run_dir = Path(run_dir)
    if check:
        from ..io import remove_stale_temps
        from ..rundir import verify

        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a folder; give an output folder written by 'imclust run'")
        verify(run_dir)
        remove_stale_temps(run_dir)  # a page that a killed 'imclust report' was writing
    page = render_report(run_dir)
    target = Path(out) if out is not None else run_dir / "report.html"
    if target.is_dir():
        raise UserError(f"--out {target}: is a folder; give the path of the page to write (e.g. {target / 'report.html'})")
    return write_text(target, page)
