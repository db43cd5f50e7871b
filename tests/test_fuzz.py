"""Fuzzing the CLI with generated hostile input (Hypothesis).

Every case is generated, not listed: folder trees of valid, truncated, hidden, oddly named, unsupported and
special entries; labels files; ``--set`` assignments; array files; damaged model folders; option values;
failures injected at random writes. For every case: no traceback (``main`` returns 0 or 2, and a 2 comes
with exactly one ``imclust: error:`` line), the file accounting holds (files seen = images clustered + rows
of skipped.csv, each bad file with the right reason), and an existing ``--out`` is either untouched or
wholly replaced (the earlier run kept as ``OUT.prev``). The slow part kills a short training run with
SIGKILL at random moments.

Cases are derandomized (the same every run, so CI is stable); ``IMCLUST_FUZZ_SEED=N`` draws a fresh set and
``IMCLUST_FUZZ_SCALE=K`` multiplies the number of cases, for a longer hunt.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from imclust.cli import main
from imclust.io import printable

REPO = Path(__file__).resolve().parents[1]
SCALE = max(1, int(os.environ.get("IMCLUST_FUZZ_SCALE", "1")))
FUZZ_SEED = os.environ.get("IMCLUST_FUZZ_SEED")


def fuzz(n: int):
    """Hypothesis settings for ``n`` cases (times IMCLUST_FUZZ_SCALE), derandomized unless IMCLUST_FUZZ_SEED."""
    s = settings(max_examples=n * SCALE, deadline=None, derandomize=FUZZ_SEED is None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                        HealthCheck.data_too_large, HealthCheck.large_base_example])

    def deco(fn):
        fn = s(fn)
        return seed(int(FUZZ_SEED))(fn) if FUZZ_SEED is not None else fn

    return deco


@contextlib.contextmanager
def scratch():
    d = Path(tempfile.mkdtemp(prefix="imclust-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def call(*argv) -> tuple[int, str, str]:
    """``imclust ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's refusal of a malformed command line
            code = e.code
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(code: int, err: str, allowed=(0, 2)) -> None:
    event(f"exit {code} {err.strip()[-70:]}")
    assert "Traceback" not in err, err
    assert code in allowed, (code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code == 0:
        assert not lines, err  # quiet mode: a successful run prints nothing on stderr (no warnings)
    else:
        assert len(lines) == 1 and lines[0].startswith("imclust: error:"), err


def tree_digest(root: Path) -> dict[str, str]:
    """Every file below ``root`` (links as their target) with its SHA-256: to compare a folder before/after."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = os.path.relpath(p, root)
            if p.is_symlink():
                out[rel] = "->" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(out: Path) -> list[str]:
    return [n for n in os.listdir(out.parent) if ".imclust-tmp-" in n or ".imclust-old-" in n]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


# ---------------------------------------------------------------------------------------------------------
# image files
# ---------------------------------------------------------------------------------------------------------
FORMATS = {"png": "PNG", "jpg": "JPEG", "jfif": "JPEG", "jpe": "JPEG", "gif": "GIF", "bmp": "BMP",
           "webp": "WEBP", "tif": "TIFF"}
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82", "GIF": b";"}


def image_bytes(fmt: str, mode: str, size: tuple[int, int], seed_: int) -> bytes:
    rng = np.random.RandomState(seed_)
    arr = (rng.rand(size[1], size[0], 3) * 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if mode == "P" or fmt == "GIF":
        im = im.convert("P")
    elif mode != "RGB":
        im = im.convert(mode)
    if fmt == "JPEG" and im.mode not in ("L", "RGB", "CMYK"):
        im = im.convert("RGB")
    if fmt == "BMP" and im.mode not in ("1", "L", "P", "RGB", "RGBA"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, fmt, **({"progressive": True} if fmt == "JPEG" and seed_ % 3 == 0 else {}))
    return buf.getvalue()


image_spec = st.tuples(st.sampled_from(sorted(FORMATS)), st.sampled_from(["RGB", "L", "RGBA", "P"]),
                       st.tuples(st.integers(6, 20), st.integers(6, 20)), st.integers(0, 10**6))

# An entry: (folder, kind, parameters). Kinds and what the run must make of them:
#   image: clustered | truncated: skipped 'truncated' or 'undecodable' | empty: 'empty file'
#   notimage: 'undecodable' | unsupported: 'unsupported (image) type' | hidden: 'hidden file'
#   nonutf8: clustered, its id escaped | fifo: 'not a regular file' | dangling: 'broken symlink'
#   loop: 'symlink loop' (a link to the root) | hiddendir: one 'hidden folder' row | runfolder: one
#   'imclust run folder' row | linkdir (root only): a link to b/c, whose entries are seen twice
FOLDERS = ("", "a/", "b/c/")
entry = st.one_of(
    st.tuples(st.sampled_from(FOLDERS), st.just("image"), image_spec),
    st.tuples(st.sampled_from(FOLDERS), st.just("truncated"),
              st.tuples(st.sampled_from(["jpg", "png", "gif", "bmp", "webp", "tif"]), st.floats(0.05, 0.8),
                        st.booleans(), st.integers(0, 10**6))),
    st.tuples(st.sampled_from(FOLDERS), st.sampled_from(["empty", "notimage", "hidden", "nonutf8", "fifo",
                                                          "dangling", "loop", "hiddendir", "runfolder"]),
              image_spec),
    st.tuples(st.sampled_from(FOLDERS), st.just("unsupported"), st.sampled_from([".txt", ".svg", ".heic", ".csv", ""])),
)

SKIP_CATEGORY = {"empty": {"empty file"}, "notimage": {"undecodable"}, "hidden": {"hidden file"},
                 "fifo": {"not a regular file"}, "dangling": {"broken symlink"}, "loop": {"symlink loop"},
                 "hiddendir": {"hidden folder"}, "runfolder": {"imclust run folder"},
                 "truncated": {"truncated", "undecodable"}, "unsupported": {"unsupported type", "unsupported image type"}}


def build_tree(root: Path, entries, link_bc: bool) -> tuple[dict[str, set | None], int]:
    """Make the entries under ``root``; returns {expected id: allowed skip categories, or None for 'clustered'}
    and the number of entries the scan must see."""
    from imclust.data.sources import reason_category  # noqa: F401  (the categories tested are its output)

    expect: dict[str, set | None] = {}
    for d in FOLDERS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for n, (folder, kind, spec) in enumerate(entries):
        where = root / folder
        name = f"e{n}"
        if kind == "image":
            ext, mode, size, s = spec
            (where / f"{name}.{ext}").write_bytes(image_bytes(FORMATS[ext], mode, size, s))
            expect[f"{folder}{name}.{ext}"] = None
        elif kind == "truncated":
            ext, frac, marker, s = spec
            data = image_bytes(FORMATS[ext], "RGB", (16, 16), s)
            cut = data[: max(8, int(len(data) * frac))] + (END_MARKERS.get(FORMATS[ext], b"") if marker else b"")
            (where / f"{name}.{ext}").write_bytes(cut)
            expect[f"{folder}{name}.{ext}"] = SKIP_CATEGORY[kind]
        elif kind == "unsupported":
            (where / f"{name}{spec}").write_text("not a picture")
            expect[f"{folder}{name}{spec}"] = SKIP_CATEGORY[kind]
        elif kind == "empty":
            (where / f"{name}.png").write_bytes(b"")
            expect[f"{folder}{name}.png"] = SKIP_CATEGORY[kind]
        elif kind == "notimage":
            (where / f"{name}.jpg").write_bytes(b"this is not an image file, whatever its name says " * 3)
            expect[f"{folder}{name}.jpg"] = SKIP_CATEGORY[kind]
        elif kind == "hidden":
            (where / f".{name}.png").write_bytes(image_bytes("PNG", "RGB", (8, 8), spec[3]))
            expect[f"{folder}.{name}.png"] = SKIP_CATEGORY[kind]
        elif kind == "nonutf8":
            raw = os.fsencode(where) + b"/" + name.encode() + b"\xff\xfe.png"
            with open(raw, "wb") as fh:
                fh.write(image_bytes("PNG", "RGB", (10, 10), spec[3]))
            expect[printable(f"{folder}{name}" + os.fsdecode(b"\xff\xfe") + ".png")] = None
        elif kind == "fifo":
            os.mkfifo(where / f"{name}.png")
            expect[f"{folder}{name}.png"] = SKIP_CATEGORY[kind]
        elif kind == "dangling":
            os.symlink(where / f"{name}-missing.png", where / f"{name}.png")
            expect[f"{folder}{name}.png"] = SKIP_CATEGORY[kind]
        elif kind == "loop":
            os.symlink(root.absolute(), where / name)
            expect[f"{folder}{name}/"] = SKIP_CATEGORY[kind]
        elif kind == "hiddendir":
            (where / f".{name}").mkdir()
            (where / f".{name}" / "x.png").write_bytes(image_bytes("PNG", "RGB", (8, 8), spec[3]))
            expect[f"{folder}.{name}/"] = SKIP_CATEGORY[kind]
        elif kind == "runfolder":
            (where / name).mkdir()
            (where / name / ".imclust-run.json").write_text("{}")
            (where / name / "montage.png").write_bytes(image_bytes("PNG", "RGB", (8, 8), spec[3]))
            expect[f"{folder}{name}/"] = SKIP_CATEGORY[kind]
    if link_bc:
        os.symlink((root / "b" / "c").absolute(), root / "lnk")
        for key, val in list(expect.items()):
            if key.startswith("b/c/"):
                expect["lnk/" + key[len("b/c/"):]] = val
    return expect, len(expect)


OUT_STATES = ("absent", "previous", "empty", "file", "foreign")
image_entry = st.tuples(st.sampled_from(FOLDERS), st.just("image"), image_spec)


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """A finished run folder, copied in as the 'earlier run' an --out may hold."""
    from conftest import write_image_folder

    base = tmp_path_factory.mktemp("prev")
    src = write_image_folder(base / "imgs", k=2, n_per=3, size=8)
    code, _, err = call("run", src, "--out", base / "run", "--recipe", "baseline", "--k", "2")
    assert code == 0, err
    return base / "run"


def prepare_out(out: Path, state: str, previous: Path) -> None:
    if state == "empty":
        out.mkdir()
    elif state == "previous":
        shutil.copytree(previous, out, symlinks=True)
    elif state == "file":
        out.write_text("a file in the way")
    elif state == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("someone's files")


def check_out_after(out: Path, state: str, before: dict, code: int) -> None:
    """An existing --out is either untouched (failure) or wholly replaced, the earlier run kept as .prev."""
    from imclust.rundir import verify

    assert not leftovers(out), leftovers(out)
    if code != 0:
        if state == "absent":
            assert not os.path.lexists(out)
        elif state == "file":
            assert out.read_text() == "a file in the way"
        else:
            assert tree_digest(out) == before
        return
    verify(out)  # complete: every file is the one the new run listed, nothing else mixed in
    if state == "previous":
        assert tree_digest(out.with_name(out.name + ".prev")) == before
    else:
        assert not os.path.lexists(out.with_name(out.name + ".prev"))


@pytest.mark.parametrize("out_state", OUT_STATES)
@fuzz(10)
@given(images=st.lists(image_entry, min_size=1, max_size=5), entries=st.lists(entry, max_size=10), link_bc=st.booleans(),
       out_inside=st.booleans(), order=st.randoms(use_true_random=False))
def test_folder_trees_are_fully_accounted_for(previous_run, out_state, images, entries, link_bc, out_inside, order):
    entries = images + entries
    order.shuffle(entries)
    with scratch() as tmp:
        root = tmp / "photos"
        root.mkdir()
        expect, n_seen = build_tree(root, entries, link_bc)
        out = (root / "out") if out_inside else (tmp / "out")
        prepare_out(out, out_state, previous_run)
        before = tree_digest(out) if out.is_dir() else None
        if out_inside and out_state != "absent":  # the scan must leave the output folder out, as one row
            expect["out/" if out.is_dir() else "out"] = {"this run's output folder"} if out.is_dir() else {"unsupported type"}
            n_seen += 1
        code, stdout, err = call("run", root, "--out", out, "--recipe", "baseline", "--k", "2", "--seed", "0")
        assert_clean_exit(code, err)
        n_good = sum(v is None for v in expect.values())
        if out_state in ("file", "foreign"):
            assert code == 2 and "--out" in err
        elif n_good < 2:
            assert code == 2, err
        else:
            assert code == 0, err
            pred = {r[0] for r in read_csv(out / "predictions.csv")}
            skipped = {r[0]: r[1] for r in read_csv(out / "skipped.csv")}
            run = json.loads((out / "run.json").read_text())
            assert run["n_seen"] == n_seen == len(pred) + len(skipped), (run["n_seen"], n_seen, pred, skipped)
            assert set(pred) | set(skipped) == set(expect), (set(expect) ^ (set(pred) | set(skipped)))
            from imclust.data.sources import reason_category

            for key, allowed in expect.items():
                if allowed is None:
                    assert key in pred, (key, skipped.get(key))
                else:
                    assert key in skipped and reason_category(skipped[key]) in allowed, (key, skipped.get(key))
            assert f"{n_seen} files seen: {len(pred)} clustered" in stdout
        check_out_after(out, out_state, before, code)


# ---------------------------------------------------------------------------------------------------------
# labels files
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def six_images(tmp_path_factory):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path_factory.mktemp("six") / "imgs", k=2, n_per=3, size=8)
    for p in (root / "class1").iterdir():  # file names unique across folders, so rows may name files alone
        p.rename(p.with_name("b" + p.name))
    (root / "class0" / "bad.png").write_bytes(b"not a png")  # skipped: a row naming it is not an error
    return root


label_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F, blacklist_characters=",;|\t\"\r\n\x85"),
                     min_size=1, max_size=6).filter(lambda t: t.strip())
DEFECTS = ("none", "empty-label", "missing-row", "duplicate", "unknown-id", "empty-id", "blank-line", "ragged")


@fuzz(60)
@given(delim=st.sampled_from([",", ";", "\t", "|"]), header=st.booleans(), by_name=st.booleans(),
       labels=st.one_of(st.lists(label_text, min_size=6, max_size=6), st.lists(st.integers(-3, 20).map(str), min_size=6, max_size=6)),
       defect=st.sampled_from(DEFECTS), which=st.integers(0, 5), skipped_row=st.booleans(),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "binary"]), order=st.randoms(use_true_random=False))
def test_labels_files_are_read_strictly(six_images, delim, header, by_name, labels, defect, which, skipped_row,
                                        encoding, order):
    from imclust.data import load_source
    from imclust.errors import UserError

    ids = load_source(six_images).ids
    keep = [(Path(i).name if by_name else i, lab) for i, lab in zip(ids, labels)]
    if defect == "empty-label":
        keep[which] = (keep[which][0], " ")
    elif defect == "missing-row":
        del keep[which]
    elif defect == "duplicate":
        keep.append((keep[which][0], keep[which][1] + "x"))
    elif defect == "unknown-id":
        keep.append(("nosuch.png", "1"))
    elif defect == "empty-id":
        keep.append(("", "1"))
    if skipped_row:
        keep.append(("class0/bad.png", "1"))
    order.shuffle(keep)
    lines = ([f"file{delim}label"] if header else []) + [f"{a}{delim}{b}" for a, b in keep]
    if defect == "blank-line":
        lines.insert(len(lines) // 2, "")
    elif defect == "ragged":
        lines[-1] += f"{delim}extra"
    text = "\n".join(lines) + "\n"
    valid_text = defect == "none"
    if encoding == "binary":
        data, valid_text = b"\x00\x01PK\x03" + os.urandom(40), False
    elif encoding == "latin-1":
        try:
            data = text.encode("latin-1")
        except UnicodeEncodeError:
            data = text.encode("utf-8")
        valid_text = valid_text and data.decode("utf-8", "replace") == text
    else:
        data = text.encode(encoding)
    with scratch() as tmp:
        path = tmp / "labels.csv"
        path.write_bytes(data)
        try:
            ds = load_source(six_images, labels=path)
        except UserError as e:
            event("refused: " + str(e).split(":", 1)[-1].split("(")[0].split(";")[0][:50])
            assert "\n" not in str(e)
            assert not valid_text, (str(e), text)
            return
        event("accepted")
        assert valid_text, text
        given = dict(keep)
        values = [given[Path(i).name if by_name else i].strip() for i in ids]
        try:
            expected = [str(int(v)) for v in values]
        except ValueError:
            expected = values
        got = [ds.class_names[v] if ds.class_names else str(v) for v in ds.labels]
        assert got == expected


# ---------------------------------------------------------------------------------------------------------
# --set
# ---------------------------------------------------------------------------------------------------------
def _recipes():
    from imclust.recipes import available

    return sorted(available())


def typo(word: str, data) -> str:
    i = data.draw(st.integers(0, max(0, len(word) - 1)))
    op = data.draw(st.sampled_from(["drop", "double", "swap", "plural"]))
    if op == "drop" and len(word) > 3:
        return word[:i] + word[i + 1:]
    if op == "double":
        return word[:i] + word[i] + word[i:]
    if op == "swap" and len(word) > 2:
        j = min(i + 1, len(word) - 1)
        return word[:i] + word[j] + word[i] + word[j + 1:] if i != j else word + "x"
    return word + "s" if not word.endswith("s") else word[:-1]


VALUES = ["5", "0", "-3", "2.5", "1e9", "nan", "inf", "true", "abc", '"abc"', "[1, 2]", "{a = 1}", "", "0.95"]


@fuzz(40)
@given(data=st.data())
def test_set_assignments_are_checked_before_any_work(data):
    from imclust.api import build_pipeline
    from imclust.errors import UserError
    from imclust.recipes import load_recipe

    name = data.draw(st.sampled_from(_recipes()))
    recipe = load_recipe(name)
    parts = [("encoder", recipe["encoder"])] + [(f"reducers.{i}", r) for i, r in enumerate(recipe.get("reducers", []))]
    parts.append(("clusterer", recipe["clusterer"]))
    part, spec = data.draw(st.sampled_from(parts))
    options = [o for o in spec if o != "type"] or ["type"]
    option = data.draw(st.sampled_from(options))
    mangle = data.draw(st.sampled_from(["none", "part", "option", "index", "none"]))
    key_part, key_opt = part, option
    if mangle == "part":
        key_part = typo(part.split(".")[0], data) + (part[part.index("."):] if "." in part else "")
    elif mangle == "option":
        key_opt = typo(option, data)
    elif mangle == "index":
        key_part = "reducers.9"
    shipped = spec.get(option)
    as_toml = ("true" if shipped else "false") if isinstance(shipped, bool) else json.dumps(shipped)
    value = data.draw(st.sampled_from([as_toml] + VALUES)) if data.draw(st.booleans()) else as_toml
    assignment = f"{key_part}.{key_opt}={value}"
    real_parts = {p for p, _ in parts}
    try:
        pipe, _ = build_pipeline(name, [assignment], seed=0)
    except UserError as e:
        msg = str(e)
        event("refused: " + msg.split(":", 1)[-1][:40])
        assert "\n" not in msg and (msg.startswith("--set") or msg.startswith("recipe")), msg
        if key_part not in real_parts and key_part.split(".")[0] != "reducers":
            assert "no part" in msg and "did you mean" in msg, msg
        if key_part == "reducers.9":
            assert "no reducers.9" in msg, msg
        if key_opt != option and "has no option" in msg and len(option) > 4:
            assert "did you mean" in msg, msg
        return
    # accepted: a real part, an option its component has, a value of a kind it takes
    from imclust.base import component_class

    event("accepted")
    assert key_part in real_parts, assignment
    chosen = dict(pipe.parts())[key_part]
    assert key_opt == "type" or key_opt in component_class(chosen.component_name)._get_param_names(), assignment
    if value in ("abc", "nan", "inf") and isinstance(spec.get(option), (int, float)) and key_opt == option:
        raise AssertionError(f"{assignment}: a number option took {value!r}")


FIT_RECIPES = ("baseline", "digits-kmeans", "ae3d")
SLOW_OPTIONS = ("epoch", "iter", "n_init", "batch")  # big values of these only cost time


@fuzz(20)
@given(data=st.data())
def test_set_values_of_the_right_type_fit_or_are_refused(tiny_labelled, data):
    """Values of the right type but any size: the fit succeeds or says which --set it could not use."""
    from imclust.recipes import load_recipe

    name = data.draw(st.sampled_from(FIT_RECIPES))
    recipe = load_recipe(name)
    parts = [("encoder", recipe["encoder"])] + [(f"reducers.{i}", r) for i, r in enumerate(recipe.get("reducers", []))]
    parts.append(("clusterer", recipe["clusterer"]))
    numeric = [(p, o) for p, spec in parts for o, v in spec.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and p + "." + o != "encoder.epochs"]
    assume(numeric)
    part, option = data.draw(st.sampled_from(numeric))
    slow = any(w in option for w in SLOW_OPTIONS)
    value = data.draw(st.sampled_from([0, 1, 2, 3, -1, 0.5, 1e-9] + ([] if slow else [10**6, 1e6])))
    sets = [f"{part}.{option}={value}"] + (["encoder.epochs=1"] if name == "ae3d" else [])
    with scratch() as tmp:
        argv = ["run", tiny_labelled, "--recipe", name, "--k", "3", "--out", tmp / "o"]
        for a in sets:
            argv += ["--set", a]
        code, _, err = call(*argv)
        assert_clean_exit(code, err)  # a refusal is one line: the part's own message, or one naming the --set


# ---------------------------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------------------------
@fuzz(30)
@given(dtype=st.sampled_from(["uint8", "float32", "int16", "float64", "bool", "complex64", "<U3", "object"]),
       shape=st.one_of(st.tuples(st.integers(2, 12), st.integers(1, 9), st.integers(1, 9)).map(list),
                       st.tuples(st.integers(2, 12), st.sampled_from([1, 3, 4]), st.integers(1, 9), st.integers(1, 9)).map(list),
                       st.lists(st.integers(0, 9), min_size=0, max_size=5)), special=st.sampled_from(["none", "nan", "inf", "neg", "big", "none"]),
       container=st.sampled_from(["npy", "npz", "npz-nokey", "npy"]),
       damage=st.sampled_from(["none", "truncate", "flip-header", "huge-shape", "none"]),
       where=st.floats(0.0, 1.0))
def test_array_files_load_or_are_refused(dtype, shape, special, container, damage, where):
    rng = np.random.RandomState(0)
    if dtype == "object":
        arr = np.empty(tuple(shape), dtype=object)
    elif dtype == "<U3":
        arr = np.full(tuple(shape), "ab", dtype="<U3")
    else:
        arr = (rng.rand(*shape) * 255).astype(dtype) if shape else np.array(3, dtype=dtype)
        if arr.size and special != "none" and arr.dtype.kind == "f":
            arr.flat[0] = {"nan": np.nan, "inf": np.inf, "neg": -5.0, "big": 1e30}[special]
    with scratch() as tmp:
        path = tmp / ("x.npy" if container == "npy" else "x.npz")
        if container == "npy":
            np.save(path, arr, allow_pickle=True)
        else:
            np.savez(path, **({"x": arr} if container == "npz" else {"pixels": arr}))
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[: int(len(data) * where)]
        elif damage == "flip-header" and data:
            i = int(min(len(data) - 1, 128) * where)
            data[i] ^= 0x5A
        elif damage == "huge-shape" and container == "npy":
            text = data[:128].decode("latin-1").replace("'shape': (", "'shape': (99999999999, ", 1)
            data[:128] = text.encode("latin-1")[:128]
        path.write_bytes(bytes(data))
        code, _, err = call("run", path, "--out", tmp / "out", "--recipe", "baseline", "--k", "2")
        assert_clean_exit(code, err)
        ok_shape = len(shape) in (3, 4) and all(shape) and shape[0] >= 2
        if code == 0:
            assert damage in ("none", "flip-header") and container != "npz-nokey" and ok_shape
            rows = read_csv(tmp / "out" / "predictions.csv")
            assert len(rows) == shape[0]


# ---------------------------------------------------------------------------------------------------------
# damaged model folders
# ---------------------------------------------------------------------------------------------------------
@fuzz(20)
@given(target=st.sampled_from(["model/state.safetensors", "model/pipeline.json"]),
       damage=st.sampled_from(["delete", "truncate", "flip", "garbage", "json-types", "swap-state", "empty"]),
       where=st.floats(0.0, 0.99))
def test_damaged_models_are_refused(previous_run, target, damage, where):
    with scratch() as tmp:
        run = tmp / "run"
        shutil.copytree(previous_run, run, symlinks=True)
        p = run / target
        data = bytearray(p.read_bytes())
        if damage == "delete":
            p.unlink()
        elif damage == "truncate":
            p.write_bytes(bytes(data[: int(len(data) * where)]))
        elif damage == "flip":
            data[min(len(data) - 1, int(len(data) * where))] ^= 0x21
            p.write_bytes(bytes(data))
        elif damage == "garbage":
            p.write_bytes(os.urandom(int(200 * where) + 1))
        elif damage == "empty":
            p.write_bytes(b"")
        elif damage == "json-types":
            meta = json.loads((run / "model" / "pipeline.json").read_text())
            meta["parts"] = [] if where < 0.3 else {"encoder": {"spec": 5}} if where < 0.6 else {"x": None}
            (run / "model" / "pipeline.json").write_text(json.dumps(meta))
        elif damage == "swap-state":  # a state file from another model: same names, other numbers
            from imclust.io import load_tensors, save_tensors

            state = {k: np.asarray(v) * 0 + 1 for k, v in load_tensors(run / "model" / "state.safetensors").items()}
            save_tensors(run / "model" / "state.safetensors", state)
        code, _, err = call("predict", run, previous_run.parent / "imgs", "--out", tmp / "p")
        assert_clean_exit(code, err)
        assert code == 2, "a damaged model was used"
        assert not (tmp / "p").exists()


# ---------------------------------------------------------------------------------------------------------
# option values
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_labelled(tmp_path_factory):
    x, y = (np.random.RandomState(0).rand(24, 8, 8) * 255).astype(np.uint8), np.arange(24) % 3
    path = tmp_path_factory.mktemp("tiny") / "t.npz"
    np.savez(path, x=x, y=y)
    return path


OPTION_VALUES = {
    "--seed": ["-1", "0", "5", str(2**32), str(2**63), "abc"],
    "--k": ["0", "1", "2", "auto", "abc", "-1", "1000", "2.5"],
    "--size": ["0", "-1", "1", "8", "100000", "abc"],
    "--epochs": ["-1", "0", "1", "2", "nan", "abc"],
    "--batch-size": ["0", "-1", "1", "5", str(10**9), "x"],
    "--lr": ["0", "-1", "nan", "inf", "0.01", "1e9"],
    "--dim": ["0", "1", "2", "3", "5000", "-2"],
    "--test-size": ["0", "0.5", "1", "-0.1", "nan", "2"],
    "--margin": ["-1", "0", "0.5", "nan", "inf"],
    "--scale": ["-1", "0", "30", "nan", "inf"],
    "--augment-shift": ["-1", "0", "1", "100"],
}


@fuzz(25)
@given(cmd=st.sampled_from(["run", "embed"]), opts=st.dictionaries(
    st.sampled_from(sorted(OPTION_VALUES)), st.integers(0, 5), max_size=3))
def test_option_values_never_crash(tiny_labelled, cmd, opts):
    run_only = {"--k"}
    embed_only = {"--epochs", "--batch-size", "--lr", "--dim", "--test-size", "--margin", "--scale", "--augment-shift"}
    argv = [cmd, tiny_labelled]
    for k, i in opts.items():
        if (cmd == "run" and k in embed_only) or (cmd == "embed" and k in run_only):
            continue
        choices = OPTION_VALUES[k]
        argv += [k, choices[i % len(choices)]]
    argv += ["--recipe", "baseline"] if cmd == "run" else ["--no-plot"] + ([] if "--epochs" in opts else ["--epochs", "1"])
    with scratch() as tmp:
        argv += ["--out", tmp / "o"]
        code, _, err = call(*argv)  # a malformed number is argparse's one-line refusal
        assert_clean_exit(code, err)


# ---------------------------------------------------------------------------------------------------------
# failures injected at random writes: the old --out stays whole
# ---------------------------------------------------------------------------------------------------------
@fuzz(25)
@given(nth=st.integers(1, 25), kind=st.sampled_from(["disk-full", "permission", "interrupt"]),
       command=st.sampled_from(["run", "predict", "embed"]))
def test_a_failed_run_leaves_the_old_folder_whole(previous_run, tiny_labelled, monkeypatch, nth, kind, command):
    import imclust.io as io_mod

    real = io_mod._atomic_write_bytes
    calls = {"n": 0}

    def failing(path, data):
        calls["n"] += 1
        if calls["n"] == nth:
            if kind == "interrupt":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC if kind == "disk-full" else errno.EACCES,
                          os.strerror(errno.ENOSPC if kind == "disk-full" else errno.EACCES), str(path))
        return real(path, data)

    with scratch() as tmp:
        out = tmp / "out"
        shutil.copytree(previous_run, out, symlinks=True)
        before = tree_digest(out)
        src = previous_run.parent / "imgs"
        argv = {"run": ["run", src, "--recipe", "baseline", "--k", "2"], "predict": ["predict", previous_run, src],
                "embed": ["embed", tiny_labelled, "--epochs", "1", "--no-plot"]}[command]
        with monkeypatch.context() as m:
            m.setattr(io_mod, "_atomic_write_bytes", failing)
            code, _, err = call(*argv, "--out", out)
        if calls["n"] < nth:
            assert code == 0, err
        elif kind == "interrupt":
            assert code == 130 and "interrupted" in err
        else:
            assert_clean_exit(code, err)
            assert code == 2 and ("No space left" in err or "Permission denied" in err), err
        check_out_after(out, "previous", before, code)


def test_unreadable_entries_are_listed(tmp_path):
    """Permissions stop only a user without root's file capabilities: as root the scan runs under setpriv with
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped."""
    from conftest import write_image_folder

    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root and setpriv (util-linux) is missing: permissions cannot be tested")
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    root = write_image_folder(tmp_path / "imgs", k=2, n_per=2, size=8)
    (root / "locked").mkdir()
    (root / "locked" / "x.png").write_bytes((root / "class0" / "img0.png").read_bytes())
    (root / "class1" / "secret.png").write_bytes((root / "class0" / "img0.png").read_bytes())
    os.chmod(root / "locked", 0)
    os.chmod(root / "class1" / "secret.png", 0)
    code = ("import json,sys; from imclust.data.sources import load_folder_source; "
            "ds = load_folder_source(sys.argv[1]); print(json.dumps({s.id: s.reason for s in ds.skipped}))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "IMCLUST_QUIET": "1"}
    p = subprocess.run(prefix + [sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env)
    os.chmod(root / "locked", 0o755)
    assert p.returncode == 0, p.stderr
    reasons = json.loads(p.stdout)
    assert reasons == {"class1/secret.png": "unreadable (permission)", "locked/": "unreadable folder (permission)"}


# ---------------------------------------------------------------------------------------------------------
# kill -9 at random moments of a short training run (slow: each case starts Python and torch)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_leaves_old_or_new_and_whole_checkpoints(tmp_path):
    from imclust.rundir import verify

    rng = np.random.RandomState(int(FUZZ_SEED or 0))
    np.save(tmp_path / "x.npy", (rng.rand(300, 8, 8) * 255).astype(np.uint8))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "IMCLUST_QUIET": "1", "OMP_NUM_THREADS": "1"}
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"

    def argv(resume: bool):
        return [sys.executable, "-m", "imclust", "run", str(tmp_path / "x.npy"), "--recipe", "ae3d", "--k", "3",
                "--out", str(out), "--set", "encoder.epochs=40", "--set", f"encoder.checkpoint_dir=\"{ckpt}\"",
                "--set", "encoder.checkpoint_every=1", "--set", f"encoder.resume={'true' if resume else 'false'}"]

    first = subprocess.run(argv(False), capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    t_full, outcomes = None, []
    for trial in range(4 * SCALE):
        before = tree_digest(out)
        t0 = time.monotonic()
        p = subprocess.Popen(argv(True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        delay = rng.uniform(0.5, t_full or 8.0)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        if t_full is None and p.returncode == 0:
            t_full = time.monotonic() - t0
        outcomes.append("finished" if p.returncode == 0 else "killed")
        # the output folder: the old run, untouched, or a complete new one
        if tree_digest(out) != before:
            verify(out)
        # every checkpoint file is whole: its weights and its state load together
        from imclust.io import read_tensors

        for f in ckpt.glob("*.safetensors"):
            arrays, meta = read_tensors(f, "checkpoint")
            assert "imclust_checkpoint" in meta and json.loads(meta["imclust_checkpoint"])["epoch"] >= 1
        shutil.rmtree(ckpt, ignore_errors=True) if trial % 2 else None  # half the time: train from scratch
    assert "killed" in outcomes, outcomes  # at least one run died part-way
    # SIGTERM (kill's default) is caught: the unfinished folder is removed on the way out
    shutil.rmtree(ckpt, ignore_errors=True)
    before = tree_digest(out)
    # a folder that a SIGKILLed trial left stays until a later run reaches its output stage and sweeps it; a
    # run stopped before that stage cannot have swept it, so only what this run adds counts against it
    left_before = set(leftovers(out))
    p = subprocess.Popen(argv(True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    time.sleep(rng.uniform(0.5 * (t_full or 8.0), t_full or 8.0))
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate()
    assert p.returncode in (0, 143, -signal.SIGTERM), err
    if p.returncode == 143:
        assert b"terminated" in err and tree_digest(out) == before and set(leftovers(out)) <= left_before
    last = subprocess.run(argv(True), capture_output=True, text=True, env=env, timeout=600)
    assert last.returncode == 0, last.stderr
    verify(out)
    assert not leftovers(out)  # what the killed runs left beside --out is gone
    assert not [n for n in os.listdir(ckpt) if n.endswith(".tmp")]  # and half-written checkpoint files
