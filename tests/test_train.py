"""The shared training loop: determinism, checkpoints, exact resume, NaN handling, config checks."""

import numpy as np
import pytest
import torch
from torch import nn

from imclust.errors import UserError
from imclust.nn.train import TrainConfig, Trainer, TrainingDiverged, batch_indices


def _data(n=64, d=12, seed=0):
    return np.random.RandomState(seed).rand(n, d).astype(np.float32)


def _net():
    return nn.Sequential(nn.Linear(12, 6), nn.Dropout(0.2), nn.ReLU(), nn.Linear(6, 12))


def test_resume_equals_uninterrupted(tmp_path):
    X = _data()
    base = dict(epochs=4, batch_size=16, lr=1e-2, seed=3, checkpoint_every=1)
    # uninterrupted
    torch.manual_seed(0)
    net_a = _net()
    cfg_a = TrainConfig(**base, checkpoint_dir=str(tmp_path / "a"))
    tr_a = Trainer({"net": net_a}, cfg_a)
    step = lambda idx, t: ((t.modules["net"](t.to_device(X[idx])) - t.to_device(X[idx])) ** 2).mean()
    mk = lambda e, g: batch_indices(len(X), 16, g)
    hist_a = tr_a.fit(step, mk)
    # interrupted after 2 epochs, then resumed in a fresh trainer with freshly initialised weights
    torch.manual_seed(0)
    net_b = _net()
    tr_b = Trainer({"net": net_b}, TrainConfig(**{**base, "epochs": 2}, checkpoint_dir=str(tmp_path / "b")))
    tr_b.fit(step, mk)
    torch.manual_seed(99)
    net_c = _net()
    tr_c = Trainer({"net": net_c}, TrainConfig(**base, checkpoint_dir=str(tmp_path / "b"), resume=True))
    hist_c = tr_c.fit(step, mk)
    assert tr_c.epoch == 4
    for (k, va), vc in zip(net_a.state_dict().items(), net_c.state_dict().values()):
        assert torch.equal(va, vc), k
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_c]
    assert (tmp_path / "a" / "epoch_0001.safetensors").exists()
    assert (tmp_path / "a" / "history.json").exists()


def test_loss_decreases_and_same_seed_same_result():
    X = _data()
    cfg = TrainConfig(epochs=5, batch_size=16, lr=1e-2, seed=1)
    step = lambda idx, t: ((t.modules["net"](t.to_device(X[idx])) - t.to_device(X[idx])) ** 2).mean()
    mk = lambda e, g: batch_indices(len(X), 16, g)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        net = _net()
        h = Trainer({"net": net}, cfg).fit(step, mk)
        results.append([r["loss"] for r in h])
    assert results[0] == results[1]
    assert results[0][-1] < results[0][0]


def test_resume_with_changed_config_is_refused(tmp_path):
    X = _data()
    step = lambda idx, t: ((t.modules["net"](t.to_device(X[idx])) - t.to_device(X[idx])) ** 2).mean()
    mk = lambda e, g: batch_indices(len(X), 16, g)
    Trainer({"net": _net()}, TrainConfig(epochs=1, lr=1e-2, checkpoint_dir=str(tmp_path))).fit(step, mk)
    with pytest.raises(UserError, match="configuration changed.*lr"):
        Trainer({"net": _net()}, TrainConfig(epochs=2, lr=5e-2, checkpoint_dir=str(tmp_path), resume=True)).fit(step, mk)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    X = _data()
    calls = {"n": 0}

    def step(idx, t):
        calls["n"] += 1
        loss = ((t.modules["net"](t.to_device(X[idx])) - t.to_device(X[idx])) ** 2).mean()
        return loss * float("nan") if t.epoch >= 2 else loss

    mk = lambda e, g: batch_indices(len(X), 16, g)
    tr = Trainer({"net": _net()}, TrainConfig(epochs=5, lr=1e-2, checkpoint_dir=str(tmp_path), checkpoint_every=1))
    with pytest.raises(TrainingDiverged, match="nan at epoch 3.*epoch 2"):
        tr.fit(step, mk)
    import json

    from imclust.io import read_tensors

    _, meta = read_tensors(tmp_path / "last.safetensors")  # weights and state in one file
    assert json.loads(meta["imclust_checkpoint"])["epoch"] == 2


def test_bf16_channels_last_runs():
    X = np.random.RandomState(0).rand(8, 1, 8, 8).astype(np.float32)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    tr = Trainer({"net": net}, TrainConfig(epochs=1, precision="bf16", channels_last=True))
    step = lambda idx, t: ((t.modules["net"](t.to_device(X[idx])).float() - t.to_device(X[idx])) ** 2).mean()
    h = tr.fit(step, lambda e, g: batch_indices(len(X), 4, g))
    assert np.isfinite(h[0]["loss"])


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native):
    """`auto` must not choose bf16 on a CPU without native bf16 (there it emulates every convolution and runs
    several times slower than fp32); the Trainer trains, and its checkpoints record, the precision it resolved."""
    from imclust.nn import train as train_mod

    monkeypatch.setattr(train_mod, "cpu_computes_bf16", lambda: native)
    want = "bf16" if native else "fp32"
    assert train_mod.resolve_precision("auto", torch.device("cpu")) == want
    assert train_mod.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert train_mod.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for by name: kept
    seen = []

    def step(idx, t):
        out = t.modules["net"](t.to_device(X[idx]))
        seen.append(out.dtype)
        return ((out.float() - t.to_device(X[idx])) ** 2).mean()

    X = np.random.RandomState(0).rand(8, 1, 8, 8).astype(np.float32)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    tr = Trainer({"net": net}, TrainConfig(epochs=1, precision="auto"))
    assert tr.config.precision == want and tr.fingerprint["train"]["precision"] == want
    tr.fit(step, lambda e, g: batch_indices(len(X), 4, g))
    assert set(seen) == {torch.bfloat16 if native else torch.float32}


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        Trainer({"net": _net()}, TrainConfig(epochs=1, precision="fp16"))


@pytest.mark.parametrize("onednn, flags, want", [
    (True, "fpu sse avx2 avx512f avx512_vnni", False),  # AVX-512 without BF16: oneDNN says yes, but emulates
    (True, "fpu avx512f avx512_bf16", True),
    (True, "fpu amx_bf16 amx_tile", True),
    (False, "fpu avx512f avx512_bf16", False),
    (True, None, True),  # the flags cannot be read (not Linux): oneDNN's word stands
])
def test_cpu_bf16_needs_the_instructions_not_only_onednns_word(monkeypatch, tmp_path, onednn, flags, want):
    from imclust.nn import train as train_mod

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    info = tmp_path / "cpuinfo"
    if flags is not None:
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert train_mod.cpu_computes_bf16(str(info)) is want
