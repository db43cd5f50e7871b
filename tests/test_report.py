"""The HTML report: written by every run, rebuilt by ``imclust report``, self-contained, bounded in size,
and checked in a real headless Chromium (skipped, with the reason, only where Chromium is not installed)."""

from __future__ import annotations

import json
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imclust.cli import main
from imclust.data import ImageSet
from imclust.metrics import METRIC_HELP
from imclust.report import thumbs as thumbs_mod
from imclust.report.html import build_report

from _cdp import Chromium, find_chromium

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]
ALL_SECTIONS = ("run", "metrics", "map", "clusters", "confusion", "skipped")


# -- fixtures ------------------------------------------------------------------------------------------
def _folder(root: Path, labelled: bool) -> Path:
    """Three colours of 16x16 images (class subfolders when ``labelled``), a broken file and an odd name."""
    rng = np.random.RandomState(0)
    for c, col in enumerate(COLOURS):
        d = root / f"class{c}" if labelled else root
        d.mkdir(parents=True, exist_ok=True)
        for j in range(12):
            arr = np.clip(np.array(col)[None, None] + rng.randint(-15, 15, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"c{c}_img{j}.png")
    odd = (root / "class1" if labelled else root) / 'we<i>rd & "name" <script>.png'
    Image.fromarray(np.full((16, 16, 3), COLOURS[1], np.uint8)).save(odd)
    (root / "class0" if labelled else root).joinpath("broken.png").write_bytes(b"this is not a png")
    return root


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    from imclust.api import run

    base = tmp_path_factory.mktemp("rep_lab")
    src = _folder(base / "imgs", labelled=True)
    out = base / "run"
    run(str(src), out=str(out), seed=0)
    return out


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory):
    from imclust.api import run

    base = tmp_path_factory.mktemp("rep_unl")
    src = _folder(base / "imgs", labelled=False)
    out = base / "run"
    run(str(src), k="3", out=str(out), seed=0)
    return out


def _noise_imageset(n: int, size: int = 32, seed: int = 0) -> ImageSet:
    """n RGB noise images: the worst case for compressing thumbnails."""
    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 256, (n, 3, size, size), dtype=np.uint8)

    def loader(idx):
        return arr[idx].astype(np.float32) / 255.0

    return ImageSet([f"img_{i:05d}.jpg" for i in range(n)], loader, (3, size, size), source="noise", kind="synthetic")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A 10,000-image run folder written by the real writers (thumbnails, montages, report)."""
    from imclust.io import write_json, write_npy
    from imclust.outputs import write_predictions, write_skipped
    from imclust.report.figures import cluster_montages

    out = tmp_path_factory.mktemp("rep_big")
    n, k = 10_000, 10
    ds = _noise_imageset(n)
    rng = np.random.RandomState(1)
    y = rng.randint(0, k, n)
    centres = rng.randn(k, 2) * 6
    m2 = (centres[y] + rng.randn(n, 2)).astype(np.float32)
    pred = np.where(rng.rand(n) < 0.9, y, rng.randint(0, k, n))
    write_predictions(out / "predictions.csv", ds.ids, pred)
    write_npy(out / "map2d.npy", m2)
    write_npy(out / "embedding.npy", m2)
    write_npy(out / "true_labels.npy", y.astype(np.int64))
    write_skipped(out / "skipped.csv", [])
    write_json(out / "metrics.json", {"acc": 0.9, "nmi": 0.8, "ari": 0.8, "purity": 0.9, "silhouette": 0.3,
                                      "calinski_harabasz": 100.0, "davies_bouldin": 1.0, "n": n, "k_found": k})
    write_json(out / "run.json", {"source": "noise", "source_kind": "synthetic", "n": n, "recipe": "test",
                                  "config": {"name": "test"}, "seed": 0, "k": k, "timings": {"load": 1.0},
                                  "versions": {}, "class_names": [f"class {c}" for c in range(k)], "n_skipped": 0})
    cluster_montages(ds, pred, m2, out / "montages")
    t = time.perf_counter()
    thumbs_mod.write_thumbnails(ds, out)
    build_report(out)
    return out, time.perf_counter() - t


# -- a strict well-formedness check ---------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.ids, self.tags = [], [], [], []
        self.external, self.scripts_with_src = [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        for key in ("src", "href"):
            v = a.get(key)
            if v is not None and not (v.startswith("data:") or v.startswith("#")):
                self.external.append(f"<{tag} {key}={v[:80]}>")
        if tag == "script" and "src" in a:
            self.scripts_with_src += 1
        if tag == "link":
            self.external.append(f"<link {a}>")
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.problems.append(f"end tag for void element {tag} at {self.getpos()}")
            return
        if not self.stack:
            self.problems.append(f"stray </{tag}> at {self.getpos()}")
            return
        top, pos = self.stack.pop()
        if top != tag:
            self.problems.append(f"</{tag}> at {self.getpos()} closes <{top}> opened at {pos}")


def check_html(text: str) -> _Checker:
    assert text.startswith("<!DOCTYPE html>")
    c = _Checker()
    c.feed(text)
    c.close()
    assert not c.problems, c.problems[:5]
    assert not c.stack, f"unclosed: {c.stack[:5]}"
    dup = {i for i in c.ids if c.ids.count(i) > 1}
    assert not dup, f"duplicate ids {dup}"
    assert not c.external, f"external references: {c.external[:5]}"
    assert c.scripts_with_src == 0
    assert not re.search(r"https?://", text), "the page mentions a network address"
    return c


def _section_ids(html_text: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)"', html_text))


# -- without a browser ----------------------------------------------------------------------------------
def test_run_writes_a_self_contained_report(labelled_run):
    text = (labelled_run / "report.html").read_text(encoding="utf-8")
    c = check_html(text)
    assert set(ALL_SECTIONS) <= _section_ids(text)
    metrics = json.loads((labelled_run / "metrics.json").read_text())
    for key in ("acc", "nmi", "ari", "purity", "silhouette", "calinski_harabasz", "davies_bouldin"):
        assert key in metrics
        assert f'data-metric="{key}"' in text
        assert __import__("html").escape(METRIC_HELP[key]) in text
    # every montage and the sprite sheet are embedded
    assert text.count("data:image/") >= 3 + 1
    assert c.tags.count("img") >= 3
    config = json.loads((labelled_run / "run.json").read_text())["config"]
    shown = __import__("html").unescape(re.search(r"<pre>(.*?)</pre>", text, re.S).group(1))
    assert json.loads(shown) == config  # the full configuration, exactly
    # the skipped file and its reason are listed, the odd file name is escaped
    assert "broken.png" in text
    data = json.loads(re.search(r'<script type="application/json" id="imclust-data">(.*?)</script>', text, re.S).group(1))
    assert 'class1/we<i>rd & "name" <script>.png' in data["ids"]
    assert text.count("<script") == 2  # the odd name cannot open a script


def test_report_rebuilds_from_saved_outputs_without_recomputing(labelled_run, tmp_path, monkeypatch, capsys):
    from imclust import pipeline
    from imclust.data import imageset

    run_dir = tmp_path / "copy"
    shutil.copytree(labelled_run, run_dir)
    before = (run_dir / "report.html").read_text(encoding="utf-8")
    (run_dir / "report.html").unlink()

    def boom(*a, **k):
        raise AssertionError("the report must not refit or decode images")

    monkeypatch.setattr(pipeline.Pipeline, "fit", boom)
    monkeypatch.setattr(pipeline.Pipeline, "load", boom)
    monkeypatch.setattr(imageset.ImageSet, "load", boom)
    assert main(["report", str(run_dir)]) == 0
    after = (run_dir / "report.html").read_text(encoding="utf-8")
    strip = lambda s: re.sub(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", s)  # noqa: E731
    assert strip(after) == strip(before)
    assert "report in" in capsys.readouterr().out


def test_report_of_an_unlabelled_run_has_no_label_sections(unlabelled_run):
    text = (unlabelled_run / "report.html").read_text(encoding="utf-8")
    check_html(text)
    ids = _section_ids(text)
    assert {"run", "metrics", "map", "clusters", "skipped"} <= ids
    assert "confusion" not in ids
    assert 'id="metrics-labels"' not in text and 'id="metrics-internal"' in text
    assert 'data-mode="label"' not in text
    assert "mostly" not in text
    data = json.loads(re.search(r'<script type="application/json" id="imclust-data">(.*?)</script>', text, re.S).group(1))
    assert "label" not in data and len(data["cluster"]) == len(data["ids"]) == 37


def test_report_command_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0]
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_a_report_failure_is_reported_and_the_run_kept(tmp_path, monkeypatch, capsys):
    import imclust.report.html as html_mod
    from imclust.api import run

    def broken(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(html_mod, "build_report", broken)
    x = np.random.RandomState(0).rand(40, 8, 8).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    run(str(tmp_path / "x.npy"), k="2", out=str(out))
    err = capsys.readouterr().err
    assert "could not build" in err and "simulated failure" in err and f"imclust report {out}" in err
    assert (out / "predictions.csv").exists() and not (out / "report.html").exists()
    monkeypatch.setenv("IMCLUST_DEBUG", "1")
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(str(tmp_path / "x.npy"), k="2", out=str(tmp_path / "run2"))


def test_thumbnails_are_capped_in_count_tile_and_bytes(tmp_path):
    ds = _noise_imageset(60, size=40)
    meta_path = thumbs_mod.write_thumbnails(ds, tmp_path, max_thumbs=25, budget_bytes=10**9)
    meta = json.loads(meta_path.read_text())
    assert meta["count"] == 25 and meta["n_points"] == 60
    assert meta["points"] == sorted(meta["points"]) and len(set(meta["points"])) == 25
    assert max(meta["tile_h"], meta["tile_w"]) == thumbs_mod.MAX_TILE  # 40 px images shrink to 32
    im = Image.open(tmp_path / meta["file"])
    assert im.width == meta["cols"] * meta["tile_w"] and im.height >= 25 // meta["cols"] * meta["tile_h"]
    # a tight byte budget shrinks the tiles and still ends under the budget
    small = json.loads(thumbs_mod.write_thumbnails(_noise_imageset(200, 32), tmp_path / "s", budget_bytes=60_000).read_text())
    assert small["tile_w"] < 32
    assert (tmp_path / "s" / small["file"]).stat().st_size <= 60_000
    # tiles keep the image: a constant image gives a constant tile of the same value
    flat = ImageSet(["a", "b"], lambda idx: np.full((len(idx), 1, 10, 20), 0.5, np.float32), (1, 10, 20))
    fm = json.loads(thumbs_mod.write_thumbnails(flat, tmp_path / "f").read_text())
    assert (fm["tile_h"], fm["tile_w"]) == (10, 20)
    arr = np.asarray(Image.open(tmp_path / "f" / fm["file"]))
    assert abs(int(arr[5, 10]) - 128) <= 2


def test_report_size_is_bounded_for_10000_images(big_run):
    out, seconds = big_run
    size = (out / "report.html").stat().st_size
    sprite = json.loads((out / "thumbs.json").read_text())
    assert sprite["count"] == 10_000 and sprite["points"] is None  # every point has its thumbnail
    assert (out / sprite["file"]).stat().st_size <= thumbs_mod.BUDGET_BYTES
    # sprite (<= 4 MiB) + montages (<= 6 MiB), base64 (4/3), plus the map data
    assert size < 15 * 1024 * 1024, f"report is {size / 2**20:.1f} MiB"
    check_html((out / "report.html").read_text(encoding="utf-8"))
    print(f"10,000 noise images: report {size / 2**20:.2f} MiB, sprite {sprite['tile_w']} px tiles, built in {seconds:.1f}s")


# -- in headless Chromium -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the report's browser tests "
                    "cannot run here")
    b = Chromium(exe, width=1280, height=900)
    yield b
    b.close()


def _open(browser, path: Path):
    browser.events.clear()
    browser.goto(path.resolve().as_uri())
    browser.eval("document.documentElement.style.scrollBehavior = 'auto'")
    browser.eval("new Promise(r => { const f = () => window.imclust && window.imclust.map && window.imclust.map.spriteReady() ? r(1) : setTimeout(f, 20); f(); })")


def _hover_point(browser, i):
    browser.eval(f"(() => {{ const p = window.imclust.map.screenPos({i}); window.scrollBy(0, p[1] - innerHeight / 2); }})()")
    x, y = browser.eval(f"window.imclust.map.screenPos({i})")
    browser.mouse_move(x + 40, y + 40)
    browser.mouse_move(x, y)
    browser.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return x, y


def _assert_loaded_cleanly(browser, page: Path):
    assert browser.errors() == []
    urls = browser.requests()
    assert all(u.startswith("data:") or u == page.resolve().as_uri() for u in urls), [u[:80] for u in urls]
    broken = browser.eval("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0


def test_browser_labelled_report(browser, labelled_run):
    page = labelled_run / "report.html"
    _open(browser, page)
    _assert_loaded_cleanly(browser, page)
    # every section is there and visible
    for sid in ALL_SECTIONS:
        h = browser.eval(f"(() => {{ const s = document.getElementById('{sid}'); return s ? s.getBoundingClientRect().height : -1; }})()")
        assert h > 40, f"section {sid} missing or empty ({h})"
    browser.screenshot(ARTIFACTS / "report_labelled_full.png", full_page=True)

    # hovering a metric shows its explanation
    browser.eval("document.querySelector('[data-metric=nmi]').scrollIntoView({block: 'center'})")
    x, y = browser.eval("(() => { const r = document.querySelector('[data-metric=nmi]').getBoundingClientRect(); return [r.left + 20, r.top + 10]; })()")
    vis = "getComputedStyle(document.querySelector('[data-metric=nmi] .help')).visibility"
    assert browser.eval(vis) == "hidden"
    browser.mouse_move(x, y)
    assert browser.eval(vis) == "visible"
    assert browser.eval("document.querySelector('[data-metric=nmi] .help').textContent") == METRIC_HELP["nmi"]

    # hovering a point shows its thumbnail (the right image: its colour), its id, cluster and class
    data = json.loads(browser.eval("document.getElementById('imclust-data').textContent"))
    for i in (0, len(data["ids"]) // 2, len(data["ids"]) - 1):
        x, y = _hover_point(browser, i)
        shown = browser.eval("document.getElementById('map-tip').getAttribute('data-index')")
        assert shown is not None, "no tooltip after hovering a point"
        j = int(shown)
        px, py = browser.eval(f"window.imclust.map.screenPos({j})")
        assert (px - x) ** 2 + (py - y) ** 2 <= 8 ** 2 + 1e-6  # the nearest point under the cursor
        assert browser.eval("document.querySelector('#map-tip .tid').textContent") == data["ids"][j]
        assert browser.eval("document.getElementById('map-tip').getAttribute('data-thumb')") == "1"
        rgb = browser.eval("Array.from(document.querySelector('#map-tip canvas').getContext('2d').getImageData(56, 56, 1, 1).data)")
        expected = COLOURS[data["label"][j]]
        assert all(abs(a - b) <= 40 for a, b in zip(rgb[:3], expected)), (rgb, expected, data["ids"][j])
        meta = browser.eval("document.querySelector('#map-tip .tmeta').textContent")
        assert f"cluster {data['cluster'][j]}" in meta and data["classNames"][data["label"][j]] in meta
    browser.screenshot(ARTIFACTS / "report_labelled_hover.png")

    # colour by true label: the legend lists the class names with their counts
    browser.eval("document.querySelector('#map-mode [data-mode=label]').click()")
    legend = browser.eval("Array.from(document.querySelectorAll('#map-legend .item')).map(e => e.textContent)")
    assert legend == [f"{name}{data['label'].count(c)}" for c, name in enumerate(data["classNames"])]
    assert browser.errors() == []


def test_browser_unlabelled_report(browser, unlabelled_run):
    page = unlabelled_run / "report.html"
    _open(browser, page)
    _assert_loaded_cleanly(browser, page)
    present = browser.eval("Array.from(document.querySelectorAll('section')).map(s => s.id)")
    assert present == ["run", "metrics", "map", "clusters", "skipped"]
    assert browser.eval("document.querySelector('[data-mode=label]')") is None
    _hover_point(browser, 3)
    assert browser.eval("document.getElementById('map-tip').getAttribute('data-thumb')") == "1"
    meta = browser.eval("document.querySelector('#map-tip .tmeta').textContent")
    assert meta.startswith("cluster ") and "class" not in meta
    browser.screenshot(ARTIFACTS / "report_unlabelled_full.png", full_page=True)


def test_browser_stays_responsive_at_10000_points(browser, big_run):
    out, _ = big_run
    page = out / "report.html"
    _open(browser, page)
    _assert_loaded_cleanly(browser, page)
    assert browser.eval("window.imclust.map.n") == 10_000
    draws = browser.eval("Array.from({length: 7}, () => window.imclust.map.redraw())")
    hit_ms = browser.eval("""(() => { const m = window.imclust.map, c = document.getElementById('map-canvas');
        const t = performance.now(); let found = 0;
        for (let k = 0; k < 2000; k++) { if (m.hitTest((k * 37) % c.clientWidth, (k * 53) % c.clientHeight) >= 0) found++; }
        return [(performance.now() - t) / 2000, found]; })()""")
    # generous bounds for a shared 2-core CPU with software rendering: a frame and a hover stay interactive
    assert float(np.median(draws)) < 250, draws
    assert hit_ms[0] < 2.0 and hit_ms[1] > 0, hit_ms
    _hover_point(browser, 1234)
    assert browser.eval("document.getElementById('map-tip').getAttribute('data-thumb')") == "1"
    browser.screenshot(ARTIFACTS / "report_10000_hover.png")
    print(f"10,000 points: redraw median {np.median(draws):.1f} ms, hover hit-test {hit_ms[0] * 1000:.1f} µs")


def _data_of(text: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="imclust-data">(.*?)</script>', text, re.S).group(1))


@pytest.fixture
def trained_run(labelled_run, tmp_path):
    """The labelled run plus what a trainable encoder writes: history, loss curve, reconstructions, a 3-D map."""
    from imclust.io import write_json
    from imclust.report.figures import loss_curve, recon_grid, scatter_3d

    run_dir = tmp_path / "trained"
    shutil.copytree(labelled_run, run_dir)
    hist = [{"epoch": i + 1, "loss": 1.0 / (i + 1), "lr": 1e-3} for i in range(6)]
    write_json(run_dir / "history.json", hist)
    loss_curve(hist, run_dir / "loss_curve.png")
    rng = np.random.RandomState(0)
    orig = rng.rand(5, 3, 16, 16).astype(np.float32)
    recon_grid(orig, np.clip(orig + 0.1 * rng.randn(*orig.shape), 0, 1), run_dir / "reconstructions.png")
    scatter_3d(rng.randn(30, 3), rng.randint(0, 3, 30), run_dir / "scatter_3d.png")
    build_report(run_dir)
    return run_dir


def test_training_figures_and_extra_figures_are_shown(trained_run, tmp_path):
    text = (trained_run / "report.html").read_text(encoding="utf-8")
    check_html(text)
    assert {"training", "figures"} <= _section_ids(text)
    training = re.search(r'<section id="training">(.*?)</section>', text, re.S).group(1)
    assert training.count("<img") == 2 and "Top row: original images" in training
    assert "1 → 0.16667" in training and "lr (last epoch)" in training
    figures = re.search(r'<section id="figures">(.*?)</section>', text, re.S).group(1)
    assert figures.count("<img") == 1 and "3-D" in figures
    # without loss_curve.png the curve is drawn from history.json
    (trained_run / "loss_curve.png").unlink()
    text = build_report(trained_run).read_text(encoding="utf-8")
    check_html(text)
    training = re.search(r'<section id="training">(.*?)</section>', text, re.S).group(1)
    assert "<svg" in training and training.count("<img") == 1
    points = re.search(r'<polyline[^>]* points="([^"]+)"', training).group(1).split()
    ys = [float(p.split(",")[1]) for p in points]
    assert len(points) == 6 and ys == sorted(ys)  # falling loss: y grows downwards on screen


def test_browser_training_section(browser, trained_run):
    page = trained_run / "report.html"
    _open(browser, page)
    _assert_loaded_cleanly(browser, page)
    present = browser.eval("Array.from(document.querySelectorAll('section')).map(s => s.id)")
    assert present == ["run", "metrics", "map", "clusters", "training", "confusion", "figures", "skipped"]
    browser.eval("document.getElementById('training').scrollIntoView()")
    browser.screenshot(ARTIFACTS / "report_training.png")


def test_map_sample_keeps_each_thumbnail_with_its_point(labelled_run, tmp_path, monkeypatch):
    import imclust.report.html as html_mod
    from imclust.data import load_source

    run_dir = tmp_path / "sampled"
    shutil.copytree(labelled_run, run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    ds = load_source(info["source"])
    import csv

    with open(run_dir / "predictions.csv", newline="") as fh:
        ids_all = [r[0] for r in list(csv.reader(fh))[1:]]
    where = {i: j for j, i in enumerate(ds.ids)}
    meta = json.loads(thumbs_mod.write_thumbnails(ds, run_dir, [where[i] for i in ids_all], max_thumbs=25).read_text())
    monkeypatch.setattr(html_mod, "MAX_MAP_POINTS", 20)
    text = build_report(run_dir).read_text(encoding="utf-8")
    check_html(text)
    data = _data_of(text)
    assert len(data["ids"]) == len(data["x"]) == 20
    assert "A random sample of 20 of the 37 images is drawn" in text
    t = data["thumbs"]
    assert 0 < len(t["points"]) == len(t["slots"]) <= 20
    for i, s in zip(t["points"], t["slots"]):
        assert ids_all[meta["points"][s]] == data["ids"][i]


def test_predict_output_gets_a_report(labelled_run, tmp_path):
    from imclust.api import predict

    src = _folder(tmp_path / "new", labelled=True)
    out = tmp_path / "pred"
    predict(labelled_run / "model", str(src), out=str(out))
    text = (out / "report.html").read_text(encoding="utf-8")
    check_html(text)
    assert {"run", "metrics", "map", "clusters", "skipped"} <= _section_ids(text)
    assert len(_data_of(text)["ids"]) == 37 and (out / "thumbs.json").exists()


# -- how k was chosen ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auto_k_run(tmp_path_factory):
    from imclust.api import run

    base = tmp_path_factory.mktemp("rep_autok")
    src = _folder(base / "imgs", labelled=True)
    out = base / "run"
    run(str(src), recipe="baseline", k="auto:2-6", out=str(out), seed=0)
    return out


def test_k_choice_section_is_built_from_k_selection_json(auto_k_run, tmp_path):
    text = (auto_k_run / "report.html").read_text(encoding="utf-8")
    check_html(text)
    sel = json.loads((auto_k_run / "k_selection.json").read_text())
    section = re.search(r'<section id="k-choice">(.*?)</section>', text, re.S).group(1)
    assert section.count('class="k-point"') == len(sel["candidates"]) == 5
    assert f'class="k-chosen" data-k="{sel["k"]}"' in section and f"chosen k={sel['k']}" in section
    assert f'class="k-runner-up" data-k="{sel["runner_up"]}"' in section
    # both criteria: their curves, their k on the axis and in the table, the rule that joins them
    assert 'class="k-reproduced"' in section and 'class="k-reproduced_reference"' in section
    assert f'class="k-k_stability" data-k="{sel["k_stability"]}"' in section
    assert f'class="k-k_reproduced" data-k="{sel["k_reproduced"]}"' in section
    assert (f"stability gap: {sel['k_stability']}; reproducible clusters: {sel['k_reproduced']}" in section
            and "geometric mean" in section)
    assert section.count("<tr><td>") >= len(sel["candidates"]) and "clusters reproduced</th>" in section
    # a folder written before the second criterion still gets its page, with the one criterion it has
    old_dir = tmp_path / "before"
    shutil.copytree(auto_k_run, old_dir)
    old = {key: v for key, v in sel.items() if key not in ("reproduced", "reproduced_reference", "k_stability", "k_reproduced")}
    (old_dir / "k_selection.json").write_text(json.dumps(old))
    section_old = re.search(r'<section id="k-choice">(.*?)</section>', build_report(old_dir).read_text(), re.S).group(1)
    assert f"chosen k={sel['k']}" in section_old and "k-reproduced" not in section_old and "geometric mean" not in section_old
    # the page is drawn from the folder's file alone: another curve in k_selection.json, another page
    run_dir = tmp_path / "copy"
    shutil.copytree(auto_k_run, run_dir)
    sel2 = {**sel, "k": 6, "runner_up": 2, "score": [0.1, 0.2, 0.3, 0.4, 0.5]}
    (run_dir / "k_selection.json").write_text(json.dumps(sel2))
    section2 = re.search(r'<section id="k-choice">(.*?)</section>', build_report(run_dir).read_text(), re.S).group(1)
    assert 'class="k-chosen" data-k="6"' in section2 and "chosen k=6" in section2
    # the cloud's reproducible-clusters share is fitted only where needed: its gaps are drawn as gaps
    gaps = [None, 0.99, None, 0.97, 0.5]
    (run_dir / "k_selection.json").write_text(json.dumps({**sel, "reproduced_reference": gaps}))
    section3 = re.search(r'<section id="k-choice">(.*?)</section>', build_report(run_dir).read_text(), re.S).group(1)
    assert section3.count('<polyline class="k-reproduced_reference"') == 1  # k 5 and 6 joined
    assert section3.count('<circle class="k-reproduced_reference"') == 1  # k 3 alone
    assert section3.count("<td>—</td>") == 2 and "<td>0.970</td>" in section3
    # criteria two-fold apart or more: the page says k is uncertain and names both ends; closer, it does not
    for k_stability, k_reproduced, uncertain in ((5, 2, True), (3, 5, False)):
        (run_dir / "k_selection.json").write_text(
            json.dumps({**sel, "k_stability": k_stability, "k_reproduced": k_reproduced}))
        section4 = re.search(r'<section id="k-choice">(.*?)</section>', build_report(run_dir).read_text(), re.S).group(1)
        assert ('class="warn k-uncertain"' in section4) == uncertain
        assert ("rerun with k = 2 or 5 (“Rerun with another k” gives the command)" in section4) == uncertain
    # every score below the weak mark: the page says the choice is weak
    for score, weak in (([0.05, 0.02, 0.09, 0.0, 0.01], True), ([0.05, 0.02, 0.11, 0.0, 0.01], False)):
        (run_dir / "k_selection.json").write_text(json.dumps({**sel, "score": score}))
        section5 = re.search(r'<section id="k-choice">(.*?)</section>', build_report(run_dir).read_text(), re.S).group(1)
        assert ("this choice of k is weak" in section5) == weak
    # the best score at the largest candidate: the page says finer groupings were not examined and how to look
    # further (twice the range, at most half the images); elsewhere, a tie with an earlier k included, it does not
    n = len((run_dir / "predictions.csv").read_text().splitlines()) - 1  # the images clustered
    for score, top in (([0.1, 0.2, 0.3, 0.4, 0.5], True), ([0.1, 0.5, 0.3, 0.4, 0.2], False),
                       ([0.5, 0.2, 0.3, 0.4, 0.5], False)):
        (run_dir / "k_selection.json").write_text(json.dumps({**sel, "score": score}))
        section6 = re.search(r'<section id="k-choice">(.*?)</section>', build_report(run_dir).read_text(), re.S).group(1)
        assert ('class="warn k-top"' in section6) == top
        assert (f"<code>--k auto:2-{min(n // 2, 12)}</code>" in section6) == top
    # a broken file is one clear error, not a traceback
    (run_dir / "k_selection.json").write_text(json.dumps({**sel, "score": [0.1]}))
    assert main(["report", str(run_dir)]) == 2
    (run_dir / "k_selection.json").write_text(json.dumps({**sel, "reproduced": [0.1]}))
    assert main(["report", str(run_dir)]) == 2


def test_browser_k_choice_section(browser, auto_k_run):
    page = auto_k_run / "report.html"
    _open(browser, page)
    _assert_loaded_cleanly(browser, page)
    sel = json.loads((auto_k_run / "k_selection.json").read_text())
    present = browser.eval("Array.from(document.querySelectorAll('section')).map(s => s.id)")
    assert present[:3] == ["run", "metrics", "k-choice"]
    assert browser.eval("document.getElementById('k-chart').getBoundingClientRect().width") > 300
    assert browser.eval("document.querySelectorAll('#k-chart .k-point').length") == len(sel["candidates"])
    # the chosen point is drawn where the score curve passes through it
    chosen = browser.eval("(() => { const c = document.querySelector('#k-chart .k-chosen'); return [c.getAttribute('data-k'), +c.getAttribute('cx'), +c.getAttribute('cy')]; })()")
    same = browser.eval(f"(() => {{ const p = document.querySelector('#k-chart .k-point[data-k=\"{sel['k']}\"]'); return [+p.getAttribute('cx'), +p.getAttribute('cy')]; }})()")
    assert int(chosen[0]) == sel["k"] and chosen[1:] == same
    # the rerun command starts with the runner-up and follows the k typed in
    code = "document.getElementById('k-rerun').textContent"
    assert f"--k {sel['runner_up']} --out" in browser.eval(code)
    browser.eval("(() => { const i = document.getElementById('k-rerun-k'); i.value = '5'; i.dispatchEvent(new Event('input')); })()")
    text = browser.eval(code)
    assert "--k 5 --out" in text and text.endswith("run-k5") and "{k}" not in text
    browser.eval("document.getElementById('k-choice').scrollIntoView()")
    browser.screenshot(ARTIFACTS / "report_k_choice.png")
    assert browser.errors() == []
