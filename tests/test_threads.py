"""The thread policy (imclust.threads), --threads on the commands that run torch, and torch-free runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imclust import threads
from imclust.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_policy(monkeypatch):
    """Leave torch, BLAS, the environment and the policy as they were."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch_before = torch.get_num_threads()
    blas_before = {p["user_api"]: p["num_threads"] for p in threadpool_info()}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", threads.ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_current", None)
    yield
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(var, None)  # set_threads wrote them; monkeypatch puts back any that existed
    torch.set_num_threads(torch_before)
    threadpool_limits(blas_before)


def test_default_is_the_usable_cores_or_the_environment(restore_policy, monkeypatch):
    assert threads.default_threads() == threads.usable_cores() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.default_threads() == 5
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(UserError, match="IMCLUST_THREADS"):
        threads.default_threads()


def test_set_threads_reaches_torch_blas_and_child_processes(restore_policy):
    import torch
    from threadpoolctl import threadpool_info

    assert threads.set_threads(1) == 1
    assert torch.get_num_threads() == 1 and threads.get_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    for bad in (0, -2, "x"):
        with pytest.raises(UserError, match="--threads"):
            threads.set_threads(bad)


def test_small_algebra_runs_on_one_blas_thread(restore_policy):
    from threadpoolctl import threadpool_info

    threads.set_threads(2)

    def blas_threads():
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    outside = blas_threads()
    with threads.blas_for(1e6):
        assert blas_threads() == {1}
    assert blas_threads() == outside
    with threads.blas_for(1e12):  # large products keep the policy's threads
        assert blas_threads() == outside


def _cli(*args):
    env = {"PYTHONPATH": str(REPO / "src"), "IMCLUST_QUIET": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "imclust", *args], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize("command", ["run", "predict", "embed"])
def test_commands_that_run_torch_take_threads(command):
    r = _cli(command, "--help")
    assert r.returncode == 0 and "--threads N" in r.stdout
    r = _cli(command, *(["x"] * (2 if command == "predict" else 1)), "--threads", "0")
    assert r.returncode == 2 and "--threads 0" in r.stderr and "Traceback" not in r.stderr


def test_recipe_without_a_network_runs_without_importing_torch(tmp_path):
    """Recipes without a network (hog-umap; the grey default trains one) never pay for importing torch (a second
    or more per process)."""
    code = ("import sys; from imclust.cli import main; "
            f"rc = main(['run', 'digits', '--recipe', 'hog-umap', '--out', {str(tmp_path / 'run')!r}, "
            "'--set', 'reducers.1.n_epochs=20', '--set', 'clusterer.n_init=1']); print('torch' in sys.modules); "
            "sys.exit(rc)")
    env = {"PYTHONPATH": str(REPO / "src"), "IMCLUST_QUIET": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "run" / "report.html").exists()
