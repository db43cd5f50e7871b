"""The CLI end to end: outputs, predict, evaluate, and one clear line for every bad input."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imclust.cli import main

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    """Run the real CLI in a subprocess: returns (code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "IMCLUST_QUIET": "1"}
    p = subprocess.run([sys.executable, "-m", "imclust", *map(str, args)], capture_output=True, text=True, env=env)
    return p.returncode, p.stdout, p.stderr


def test_run_writes_outputs_and_prints_metrics(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "digits", "--out", str(out), "--k", "10"]) == 0
    text = capsys.readouterr().out
    assert "ACC=" in text and "NMI=" in text and "ARI=" in text
    for f in ("predictions.csv", "embedding.npy", "metrics.json", "skipped.csv", "run.json", "model/pipeline.json"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    assert {"acc", "nmi", "ari", "silhouette", "calinski_harabasz", "davies_bouldin"} <= set(m)
    rows = list(csv.reader(open(out / "predictions.csv")))
    assert rows[0] == ["id", "label"] and len(rows) == 1798
    assert np.load(out / "embedding.npy").shape[0] == 1797


def test_folder_run_predict_and_skipped(tmp_path, image_folder, capsys):
    (image_folder / "class1" / "broken.jpg").write_text("not a jpeg")
    out = tmp_path / "r"
    assert main(["run", str(image_folder), "--out", str(out), "--k", "3", "--recipe", "baseline"]) == 0
    rows = list(csv.reader(open(out / "predictions.csv")))
    assert rows[1][0] == "class0/img0.png"
    sk = list(csv.reader(open(out / "skipped.csv")))
    assert sk[0] == ["id", "reason"] and sk[1][0] == "class1/broken.jpg"
    assert "19 files seen: 18 clustered, 1 skipped (1 undecodable)" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["acc"] == 1.0  # three solid colours
    # predict on the same images reproduces the labels
    assert main(["predict", str(out), str(image_folder), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "predictions.csv").read_text() == (out / "predictions.csv").read_text()
    # evaluate a predictions file against a labels CSV
    lab = tmp_path / "lab.csv"
    lab.write_text("".join(f"{r[0]},{r[0].split('/')[0]}\n" for r in rows[1:]))
    capsys.readouterr()
    assert main(["evaluate", str(out / "predictions.csv"), str(lab), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"] == 1.0


def test_recipes_lists_baseline(capsys):
    assert main(["recipes"]) == 0
    assert "baseline" in capsys.readouterr().out


def _bad_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("text")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 3), np.uint8))
    nan = np.random.rand(4, 3, 3)
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "zero.npy", np.zeros((4, 0, 3), np.uint8))
    np.save(tmp_path / "lab.npy", np.arange(5))
    (tmp_path / "arrays" / "sub").mkdir(parents=True)
    np.savez(tmp_path / "arrays" / "sub" / "set.npz", x=np.zeros((4, 3, 3), np.uint8))
    (tmp_path / "arrays" / "notes.txt").write_text("x")
    return [
        (["run", tmp_path / "missing"], "no such file or folder"),
        (["run", tmp_path / "empty"], "no image files found"),
        (["run", tmp_path / "arrays"], f"it holds sub/set.npz, an array file that imclust reads on its own: "
                                       f"imclust run {tmp_path / 'arrays' / 'sub' / 'set.npz'}"),
        (["run", tmp_path / "junk"], "none of the 1 image files could be read"),
        (["run", "digits", "--k", "0"], "must be between 1"),
        (["run", "digits", "--k", "5000"], "must be between 1"),
        (["run", tmp_path / "d.npz", "--image-key", "images"], "no key 'images'"),
        (["run", tmp_path / "d.npz", "--labels", tmp_path / "lab.npy"], "5 labels but"),
        (["run", tmp_path / "nan.npy"], "NaN or inf"),
        (["run", tmp_path / "zero.npy"], "zero-size"),
        (["predict", tmp_path / "empty", "digits"], "not a saved imclust model"),
    ]


def test_bad_input_one_line_no_traceback(tmp_path):
    for args, msg in _bad_cases(tmp_path):
        code, out, err = cli(*args, "--out", tmp_path / "o")
        assert code == 2, (args, err)
        assert "Traceback" not in err, (args, err)
        lines = [l for l in err.strip().splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("imclust: error:"), (args, err)
        assert msg in lines[0], (args, lines[0])


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    import imclust.io as io_mod

    target = tmp_path / "x.json"
    io_mod.write_json(target, {"a": 1})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io_mod.os, "replace", boom)
    with pytest.raises(RuntimeError):
        io_mod.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_rerun_into_a_folder_clears_the_earlier_runs_figures(tmp_path, image_folder):
    out = tmp_path / "r"
    assert main(["run", "digits", "--out", str(out), "--k", "10", "--recipe", "baseline"]) == 0
    assert (out / "scatter_labels.png").exists() and (out / "montages" / "montage_9.png").exists()
    # the second run has no labels and 3 clusters: the first run's label figure and extra montages must go
    lone = tmp_path / "lone"
    lone.mkdir()
    for p in image_folder.rglob("*.png"):
        (lone / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    assert main(["run", str(lone), "--out", str(out), "--k", "3", "--recipe", "baseline"]) == 0
    assert not (out / "scatter_labels.png").exists()
    assert not (out / "true_labels.npy").exists()
    assert sorted(p.name for p in (out / "montages").iterdir()) == ["montage_0.png", "montage_1.png", "montage_2.png"]
