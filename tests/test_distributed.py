"""Distributed training in the shared loop: sharding helpers, and real 2-process CPU runs (gloo, torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imclust.nn import distributed as ddp

from conftest import REPO, blobs_images


def test_shard_batches_splits_each_batch_and_keeps_step_counts_equal():
    batches = [np.arange(0, 16), np.arange(16, 32), np.arange(32, 33)]  # the last is too small to split in two
    r0 = ddp.shard_batches(batches, 0, 2)
    r1 = ddp.shard_batches(batches, 1, 2)
    assert len(r0) == len(r1) == 2
    assert np.array_equal(np.sort(np.concatenate(r0 + r1)), np.arange(32))
    assert all(len(a) == 8 for a in r0 + r1)
    # non-index batches go round-robin, truncated to a multiple of the world size
    objs = [("a", 1), ("b", 2), ("c", 3)]
    assert ddp.shard_batches(objs, 0, 2) == [("a", 1)] and ddp.shard_batches(objs, 1, 2) == [("b", 2)]
    assert ddp.shard_batches(batches, 0, 1) is batches


def test_rank_batches_and_interleave_reassemble_rows():
    n, bs, w = 23, 5, 3
    batches = [np.arange(s, min(s + bs, n)) for s in range(0, n, bs)]
    parts = [np.concatenate(ddp.rank_batches(batches, r, w)).astype(np.float32)[:, None] for r in range(w)]
    assert np.array_equal(ddp._interleave(parts, bs, n)[:, 0], np.arange(n, dtype=np.float32))


def test_single_process_helpers_are_identities():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert not ddp.is_distributed() and ddp.rank() == 0 and ddp.world_size() == 1
    assert ddp.gather_rows(a, 2, 3) is a and ddp.all_gather_rows(a, 2, 3) is a
    assert ddp.broadcast_array(a) is a and ddp.mean_scalar(2.5) == 2.5


def test_is_main_follows_torchrun_rank_before_a_process_group_exists(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not ddp.is_main() and ddp.world_size() == 1  # helpers stay single-process until init
    monkeypatch.setenv("RANK", "0")
    assert ddp.is_main()


def test_world_size_without_torchrun_is_a_clear_error(monkeypatch):
    from imclust.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for v in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(UserError, match="start distributed runs with torchrun"):
        ddp.init_from_env()


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO / "src"), IMCLUST_QUIET="1", OMP_NUM_THREADS="1")
    return env


def _why(stderr: str) -> str:
    """The lines of a failed launch that say why (a rank's own error comes long before torchrun's summary)."""
    keys = ("Error", "error", "abort", "Abort", "terminate", "what()", "OMP", "Traceback")
    return "\n".join([ln for ln in stderr.splitlines() if any(k in ln for k in keys)][:40]) + "\n...\n" + stderr[-1500:]


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path):
    """gloo, 2 processes: the same pseudo-labels as one process with the same seed, and the same training
    result of the shared loop (half a batch per rank, gradients averaged)."""
    worker = str(REPO / "tests" / "ddp_worker.py")
    single = subprocess.run([sys.executable, worker, str(tmp_path)], capture_output=True, text=True, env=_env(), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(_torchrun(worker, str(tmp_path)), capture_output=True, text=True, env=_env(), timeout=300)
    assert multi.returncode == 0, _why(multi.stderr)
    one, two = tmp_path / "1", tmp_path / "2"
    labels = np.load(one / "pseudo_labels.npy")
    assert len(np.unique(labels)) > 1
    assert np.array_equal(labels, np.load(two / "pseudo_labels.npy"))
    assert np.array_equal(labels, np.load(tmp_path / "rank1_pseudo_labels.npy"))  # broadcast to rank 1 too
    # (the features after the epoch's training differ: BatchNorm statistics are per rank on CPU)
    assert np.load(two / "features.npy").shape == np.load(one / "features.npy").shape
    np.testing.assert_allclose(np.load(one / "trainer_weights.npy"), np.load(two / "trainer_weights.npy"),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.load(one / "trainer_loss.npy"), np.load(two / "trainer_loss.npy"), rtol=1e-4)
    assert (two / "ckpt" / "last.safetensors").exists() and (two / "ckpt" / "history.json").exists()
    assert json.loads((one / "records.json").read_text()) == [{"3": "rank 0: bad file"}]
    assert json.loads((two / "records.json").read_text()) == [{"3": "rank 0: bad file"}, {"13": "rank 1: bad file"}]


@pytest.mark.slow
def test_torchrun_imclust_run_cli(tmp_path):
    """``torchrun --nproc_per_node=2 -m imclust run``: rank 0 writes the outputs; the result after one epoch
    carries the same pseudo-labels as a single-process run."""
    X, _ = blobs_images(n_per=20, k=3, size=12)
    np.save(tmp_path / "x.npy", X)
    opts = ["run", str(tmp_path / "x.npy"), "--recipe", "deepcluster", "--k", "3", "--set", "encoder.epochs=1",
            "--set", "encoder.width=4", "--set", "encoder.feat_dim=16", "--set", "encoder.k_train=6",
            "--set", "encoder.batch_size=16", "--set", "encoder.flip=false"]
    single = subprocess.run([sys.executable, "-m", "imclust", *opts, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(_torchrun("-m", "imclust", *opts, "--out", str(tmp_path / "two")),
                           capture_output=True, text=True, env=_env(), timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout.count("outputs in") == 1  # printed by rank 0 only
    from imclust import components  # noqa: F401  (registers the components a saved model names)
    from imclust.pipeline import Pipeline

    a = Pipeline.load(tmp_path / "one" / "model").encoder.pseudo_labels_
    b = Pipeline.load(tmp_path / "two" / "model").encoder.pseudo_labels_
    assert len(a) == 60 and np.array_equal(a, b)


@pytest.mark.slow
def test_torchrun_shares_pretrained_feature_extraction(tmp_path):
    """A recipe with nothing to train under ``torchrun --nproc_per_node=2``: each process encodes its share of
    the batches, and the gathered features, the clusters and the skipped file equal a single-process run."""
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", k=2, n_per=5, size=20)
    good = (root / "class0" / "img0.png").read_bytes()
    (root / "class1" / "broken.png").write_bytes(good[: len(good) // 2])  # skipped when the folder is listed
    # 10 readable images in batches of 4: three batches, two for rank 0 (6 images) and one for rank 1
    opts = ["run", str(root), "--recipe", "cnn-kmeans", "--k", "2", "--seed", "1",
            "--set", "encoder.backbone='resnet18'", "--set", "encoder.layer='layer2'", "--set", "encoder.size=32",
            "--set", "encoder.workers=0", "--set", "encoder.cache=false", "--set", "encoder.batch_size=4"]
    single = subprocess.run([sys.executable, "-m", "imclust", *opts, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    loud = {**_env(), "IMCLUST_QUIET": "0"}  # rank 0 says how many images it encoded (rank 1 stays quiet)
    multi = subprocess.run(_torchrun("-m", "imclust", *opts, "--out", str(tmp_path / "two")),
                           capture_output=True, text=True, env=loud, timeout=300)
    assert multi.returncode == 0, _why(multi.stderr)
    assert "features: 6 images" in multi.stderr  # its share: batches 0 and 2, not all 10 images
    one, two = tmp_path / "one", tmp_path / "two"
    assert np.load(one / "embedding.npy").shape == (10, 128)
    np.testing.assert_allclose(np.load(two / "embedding.npy"), np.load(one / "embedding.npy"), rtol=1e-5, atol=1e-6)
    assert (two / "predictions.csv").read_text() == (one / "predictions.csv").read_text()
    assert "broken.png" in (two / "skipped.csv").read_text()
    assert (two / "skipped.csv").read_text() == (one / "skipped.csv").read_text()
    # predict under torchrun: shared the same way, written once, the fitted clusters reproduced
    again = subprocess.run(_torchrun("-m", "imclust", "predict", str(two), str(root), "--out", str(tmp_path / "p")),
                           capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0, _why(again.stderr)
    assert again.stdout.count("outputs in") == 1
    assert (tmp_path / "p" / "predictions.csv").read_text() == (one / "predictions.csv").read_text()


def test_all_gather_json_single_process_is_a_list_of_one():
    assert ddp.all_gather_json({"3": "bad file"}) == [{"3": "bad file"}]
