"""Run folders, file accounting and input checks, one behaviour per test (the fuzz suite varies them)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imclust.cli import main
from imclust.errors import UserError


def call(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def grey_folder(root: Path, n=6, seed=0) -> Path:
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.zeros((12, 12), np.uint8)
        arr[:, (i % 2) * 6:(i % 2) * 6 + 6] = 220
        Image.fromarray(np.clip(arr + rng.randint(0, 20, arr.shape), 0, 255).astype(np.uint8)).save(root / f"p{i}.png")
    return root


def test_rerun_replaces_the_folder_and_keeps_the_earlier_as_prev(tmp_path):
    src = grey_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "2")[0] == 0
    first = json.loads((out / ".imclust-run.json").read_text())["run_id"]
    (src / "p0.png").unlink()
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "3")[0] == 0
    assert json.loads((out.with_name("out.prev") / ".imclust-run.json").read_text())["run_id"] == first
    assert len((out / "predictions.csv").read_text().splitlines()) == 6  # 5 images + header: nothing mixed in
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "2")[0] == 0
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temporary folders left


def test_out_is_checked_before_any_work(tmp_path):
    src = grey_folder(tmp_path / "src")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    cases = [
        (tmp_path / "afile", "is a file"),
        (tmp_path / "mine", "holds other files"),
        (tmp_path / "afile" / "sub", "is a file"),
        (src, "holds other files"),
    ]
    for out, msg in cases:
        code, _, err = call("run", src, "--out", out, "--recipe", "baseline", "--k", "2")
        assert code == 2 and msg in err, (out, err)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    code, _, err = call("run", src, "--out", tmp_path / "r", "--recipe", "ae3d", "--set",
                        f'encoder.checkpoint_dir="{tmp_path / "r" / "ckpt"}"')
    assert code == 2 and "lies inside --out" in err


def test_the_output_never_feeds_the_input(tmp_path, monkeypatch):
    src = grey_folder(tmp_path / "photos")
    monkeypatch.chdir(src)
    for _ in range(3):  # the default --out, runs/<name>, lies inside the source
        code, stdout, err = call("run", ".", "--recipe", "baseline", "--k", "2")
        assert code == 0, err
        ids = [r.split(",")[0] for r in (src / "runs" / "run" / "predictions.csv").read_text().splitlines()[1:]]
        assert ids == [f"p{i}.png" for i in range(6)]
    skipped = (src / "runs" / "run" / "skipped.csv").read_text()
    assert "runs/run/,this run's output folder" in skipped and "runs/run.prev/,this run's output folder" in skipped


def test_a_run_folder_from_elsewhere_is_skipped_and_cannot_be_a_source(tmp_path):
    src = grey_folder(tmp_path / "photos")
    assert call("run", src, "--out", src / "old", "--recipe", "baseline", "--k", "2")[0] == 0
    assert call("run", src, "--out", tmp_path / "new", "--recipe", "baseline", "--k", "2")[0] == 0
    assert "old/,imclust run folder" in (tmp_path / "new" / "skipped.csv").read_text()
    code, _, err = call("run", src / "old", "--out", tmp_path / "x", "--recipe", "baseline", "--k", "2")
    assert code == 2 and "imclust outputs" in err


def test_report_refuses_a_mixed_or_damaged_folder(tmp_path):
    src = grey_folder(tmp_path / "src")
    a, b = tmp_path / "a", tmp_path / "b"
    assert call("run", src, "--out", a, "--recipe", "baseline", "--k", "2")[0] == 0
    assert call("run", src, "--out", b, "--recipe", "baseline", "--k", "3")[0] == 0
    assert call("report", a)[0] == 0
    (a / "predictions.csv").write_bytes((b / "predictions.csv").read_bytes())
    code, _, err = call("report", a)
    assert code == 2 and "predictions.csv is not the file this run wrote" in err
    (a / "predictions.csv").unlink()
    assert "predictions.csv is missing" in call("report", a)[2]
    (b / "montages" / "montage_9.png").write_bytes((b / "montages" / "montage_0.png").read_bytes())
    assert "does not belong to the run" in call("report", b)[2]
    code, _, err = call("report", src)
    assert code == 2 and "not a run folder" in err


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path):
    src = grey_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "2")[0] == 0
    dead = 2**22 + 12345  # above the default pid range: no such process
    stale = tmp_path / f".out.imclust-tmp-{dead}-abcd1234"
    stale.mkdir()
    (stale / ".imclust-run.json").write_text(json.dumps({"complete": False}))
    (stale / "predictions.csv").write_text("half")
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "2")[0] == 0
    assert not stale.exists()
    assert sorted(os.listdir(tmp_path)) == ["out", "out.prev", "src"]


def test_export_move_never_loses_a_file(tmp_path):
    src = grey_folder(tmp_path / "src")
    names = sorted(p.name for p in src.iterdir())
    out = tmp_path / "out"
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "2", "--export", "move")[0] == 0
    assert sorted(p.name for p in (out / "clusters").rglob("*.png")) == names and not list(src.iterdir())
    grey_folder(src, seed=1)
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "2")[0] == 0  # the moved files go to .prev
    grey_folder(src, seed=2)
    code, _, err = call("run", src, "--out", out, "--recipe", "baseline", "--k", "2")
    assert code == 2 and "--export move" in err  # replacing out.prev would delete them: refused
    assert sorted(p.name for p in (tmp_path / "out.prev" / "clusters").rglob("*.png")) == names


def test_rerun_with_export_keeps_no_old_clusters(tmp_path):
    src = grey_folder(tmp_path / "src", n=8)
    out = tmp_path / "out"
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "3", "--export", "copy")[0] == 0
    for p in list(src.iterdir())[:3]:
        p.unlink()
    assert call("run", src, "--out", out, "--recipe", "baseline", "--k", "2", "--export", "copy")[0] == 0
    exported = sorted((out / "clusters").rglob("*.png"))
    assert len(exported) == 5 and {p.parent.name for p in exported} <= {"0", "1"}


def test_non_utf8_names_are_carried_escaped(tmp_path):
    src = grey_folder(tmp_path / "src")
    raw = os.fsencode(src) + b"/caf\xe9.png"
    with open(raw, "wb") as fh:
        fh.write((src / "p0.png").read_bytes())
    out = tmp_path / "out"
    code, stdout, err = call("run", src, "--out", out, "--recipe", "baseline", "--k", "2", "--export", "copy")
    assert code == 0, err
    text = (out / "predictions.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.png," in text
    assert os.path.exists(os.fsencode(out) + b"/clusters/" + next(
        d.name.encode() for d in (out / "clusters").iterdir() if d.is_dir() and any(
            os.fsencode(f) .endswith(b"caf\xe9.png") for f in os.listdir(os.fsencode(d)))) + b"/caf\xe9.png")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "caf\\\\xe9.png" in page  # the id inside the page's JSON (its backslash escaped)


def test_a_local_folder_wins_over_a_builtin(tmp_path, monkeypatch):
    grey_folder(tmp_path / "digits")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMCLUST_QUIET", "")
    code, stdout, err = call("run", "digits", "--out", tmp_path / "o", "--recipe", "baseline", "--k", "2")
    assert code == 0 and "6 images" in stdout and "not the builtin" in stdout and "not the builtin" in err
    code, stdout, _ = call("run", "builtin:digits", "--out", tmp_path / "o", "--recipe", "baseline", "--k", "10")
    assert code == 0 and "1797 images" in stdout


def test_identical_images_do_not_claim_a_perfect_silhouette(tmp_path):
    src = tmp_path / "same"
    src.mkdir()
    arr = (np.random.RandomState(0).rand(10, 10) * 255).astype(np.uint8)
    for i in range(8):
        Image.fromarray(arr).save(src / f"{i}.png")
    for k in ("auto", "3"):
        code, _, err = call("run", src, "--out", tmp_path / f"o{k}", "--recipe", "umap-gmm", "--k", k)
        assert code == 0, err
        m = json.loads((tmp_path / f"o{k}" / "metrics.json").read_text())
        assert m["silhouette"] is None, m
    assert json.loads((tmp_path / "oauto" / "run.json").read_text())["k"] == 1


def test_non_finite_features_name_the_stage():
    from imclust.pipeline import check_finite

    with pytest.raises(UserError, match="stage encode \\(autoencoder\\).*NaN or infinite"):
        check_finite(np.array([[1.0, np.inf], [0.0, 1.0]]), "encode (autoencoder)")
    with pytest.raises(UserError, match="too large to cluster"):
        check_finite(np.full((3, 2), 1e20), "reduce.0 (pca)")
    assert check_finite(np.ones((2, 2)), "x").dtype == np.float32


@pytest.mark.parametrize("bad", [np.inf, np.nan, 1e30])
def test_a_diverging_encoder_stops_with_a_message(tmp_path, monkeypatch, bad):
    """Features that blew up never reach faiss (which aborts the process on them): one line naming the stage."""
    from imclust.encoders.pixels import PixelEncoder

    real = PixelEncoder.fit_transform

    def diverged(self, ds, y=None):
        X = np.array(real(self, ds), dtype=np.float32)
        X[3, 0] = bad
        return X

    monkeypatch.setattr(PixelEncoder, "fit_transform", diverged)
    code, _, err = call("run", "digits", "--out", tmp_path / "o", "--recipe", "baseline", "--k", "10")
    assert code == 2 and "stage encode (pixels)" in err, err
    assert not (tmp_path / "o").exists()


def test_checkpoints_are_single_whole_files(tmp_path, one_torch_thread):
    from imclust.io import read_tensors

    np.save(tmp_path / "x.npy", (np.random.RandomState(0).rand(40, 8, 8) * 255).astype(np.uint8))
    ck = tmp_path / "ck"
    code, _, err = call("run", tmp_path / "x.npy", "--out", tmp_path / "o", "--recipe", "ae3d", "--k", "2",
                        "--set", "encoder.epochs=2", "--set", f'encoder.checkpoint_dir="{ck}"',
                        "--set", "encoder.checkpoint_every=1")
    assert code == 0, err
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_0001.safetensors", "epoch_0002.safetensors",
                                                    "history.json", "last.safetensors"]
    _, meta = read_tensors(ck / "last.safetensors")
    assert json.loads(meta["imclust_checkpoint"])["epoch"] == 2
    data = bytearray((ck / "last.safetensors").read_bytes())
    (ck / "last.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    code, _, err = call("run", tmp_path / "x.npy", "--out", tmp_path / "o", "--recipe", "ae3d", "--k", "2",
                        "--set", "encoder.epochs=3", "--set", f'encoder.checkpoint_dir="{ck}"',
                        "--set", "encoder.resume=true")
    assert code == 2 and "checkpoint is damaged" in err


def test_evaluate_refuses_swapped_binary_and_latin1_files(tmp_path):
    preds = tmp_path / "predictions.csv"
    preds.write_text("id,label\na.png,0\nb.png,1\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,cat\nb.png,dog\n")
    assert call("evaluate", preds, labels)[0] == 0
    code, _, err = call("evaluate", labels, preds)
    assert code == 2 and "give the predictions first" in err
    (tmp_path / "bin.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert "binary file" in call("evaluate", preds, tmp_path / "bin.csv")[2]
    (tmp_path / "l1.csv").write_bytes("file,label\na.png,caf\xe9\nb.png,th\xe9\n".encode("latin-1"))
    assert "not UTF-8" in call("evaluate", preds, tmp_path / "l1.csv")[2]
    (tmp_path / "semi.csv").write_text("file;label\na.png;cat\nb.png;dog\n")
    assert call("evaluate", preds, tmp_path / "semi.csv")[0] == 0


@pytest.mark.parametrize("assignment, message", [
    ("reducer.0.n_components=2", "did you mean 'reducers'"),
    ("reducers.0.n_component=2", "did you mean 'n_components'"),
    ("reducers.0.n_components=abc", "takes a number"),
    ("reducers.7.n_components=2", "no reducers.7"),
    ("clusterer.n_init=true", "takes a whole number"),
    ("seed=-1", "out of range"),
    ("encoder=5", "name an option of the encoder"),
    ("clusterer={type='kmean'}", "did you mean 'kmeans'"),
    ("clusterer={type='kmeans', n_iint=3}", "did you mean 'n_init'"),
    ("clusterer={type='pca'}", "'pca' is a reducer, not a clusterer"),
    ("clusterer.n_init.x=3", "clusterer.n_init is not a table of options"),
])
def test_set_is_checked_with_suggestions(assignment, message):
    from imclust.api import build_pipeline

    with pytest.raises(UserError, match=message.replace("(", "\\(")):
        build_pipeline("baseline", [assignment])


def test_set_reaches_into_a_table_option_the_recipe_leaves_out():
    from imclust.api import build_pipeline

    # the scan recipe names no [encoder.pretext] table; its options still take one, over the preset's
    pipe, cfg = build_pipeline("scan", ["encoder.pretext.epochs=7", "encoder.selflabel.epochs=0"])
    assert cfg["encoder"]["pretext"] == {"epochs": 7} and cfg["encoder"]["selflabel"] == {"epochs": 0}
    assert pipe.encoder.get_params()["pretext"] == {"epochs": 7}
    with pytest.raises(UserError, match="did you mean 'pretext'"):
        build_pipeline("scan", ["encoder.pretxt.epochs=7"])


def test_set_replaces_a_whole_part():
    from imclust.api import build_pipeline

    pipe, cfg = build_pipeline("baseline", ["clusterer={type='gmm', n_init=2}"])
    assert pipe.clusterer.component_name == "gmm" and pipe.clusterer.get_params()["n_init"] == 2
    assert cfg["clusterer"] == {"type": "gmm", "n_init": 2}  # the shipped clusterer's options are gone


def test_sizes_and_array_headers_are_checked_against_memory(tmp_path, monkeypatch):
    import imclust.resources as res

    monkeypatch.setattr(res, "available_memory", lambda: 50 * 2**20)
    np.save(tmp_path / "big.npy", np.zeros((200, 64, 64), np.float32))  # 3.1 MiB: fits
    from imclust.data import load_source

    assert len(load_source(tmp_path / "big.npy")) == 200
    with pytest.raises(UserError, match="needs .* of memory"):
        load_source(tmp_path / "big.npy", size=4096)
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 100, 100)}
    with open(tmp_path / "claims.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\x00" * 100)
    with pytest.raises(UserError, match="promises .* bytes"):
        load_source(tmp_path / "claims.npy")
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((3000, 64, 64), np.float32))  # 47 MiB in, ~50 KiB on disk
    monkeypatch.setattr(res, "available_memory", lambda: 20 * 2**20)
    with pytest.raises(UserError, match="needs .* of memory"):
        load_source(tmp_path / "bomb.npz")


def test_errors_are_one_line_unless_debugging(tmp_path, monkeypatch):
    code, _, err = call("run", tmp_path / "missing", "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and err.startswith("imclust: error:")
    monkeypatch.setenv("IMCLUST_DEBUG", "1")
    with pytest.raises(UserError, match="no such file or folder"):
        call("run", tmp_path / "missing", "--out", tmp_path / "o")


def test_an_unexpected_os_error_is_one_line(tmp_path, monkeypatch):
    import errno

    import imclust.outputs as outputs

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "embedding.npy"))

    monkeypatch.setattr(outputs, "write_npy", full)
    code, _, err = call("run", "digits", "--out", tmp_path / "o", "--recipe", "baseline", "--k", "10")
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "free some space" in err
    assert not (tmp_path / "o").exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".")]
