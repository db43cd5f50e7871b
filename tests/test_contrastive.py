"""Contrastive and SCAN losses against hand-computed cases, neighbour mining against brute force, the backbones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imclust.nn.contrastive import entropy, mine_neighbours, nt_xent, scan_loss, self_label_loss
from imclust.nn.contrastive_nets import ProjectionHead, make_backbone


# -- NT-Xent -----------------------------------------------------------------------------------------------------
def test_nt_xent_orthogonal_pairs_by_hand():
    # views a0=b0=(1,0), a1=b1=(0,1); t=1. Each view's positive has similarity 1 and its two negatives (the
    # views of the other image) similarity 0, so every term is -log(e / (e + 2)).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert nt_xent(z, z.clone(), temperature=1.0).item() == pytest.approx(math.log((math.e + 2) / math.e), abs=1e-6)


def test_nt_xent_general_case_matches_an_explicit_sum():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    t = 0.5
    views = [v / v.norm() for v in list(z1) + list(z2)]
    n = len(views)
    total = 0.0
    for i in range(n):
        pos = (i + 3) % n
        num = math.exp(float(views[i] @ views[pos]) / t)
        den = sum(math.exp(float(views[i] @ views[j]) / t) for j in range(n) if j != i)
        total += -math.log(num / den)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / n, rel=1e-5)


def test_nt_xent_prefers_matching_views_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    matched = nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g), 0.2)
    shuffled = nt_xent(z, z[torch.randperm(8, generator=g)], 0.2)
    assert matched < shuffled
    z1 = z.clone().requires_grad_(True)
    nt_xent(z1, z.flip(0), 0.2).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


# -- SCAN --------------------------------------------------------------------------------------------------------
def test_scan_loss_tiny_case_by_hand():
    a = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (1/2, 1/2) and (3/4, 1/4)
    nb = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # q = (3/4, 1/4) for both
    total, consistency, ent = scan_loss(a, nb, entropy_weight=2.0)
    dot1, dot2 = 0.5 * 0.75 + 0.5 * 0.25, 0.75 * 0.75 + 0.25 * 0.25
    want_consistency = -(math.log(dot1) + math.log(dot2)) / 2
    mean_p = (0.625, 0.375)
    want_entropy = -(mean_p[0] * math.log(mean_p[0]) + mean_p[1] * math.log(mean_p[1]))
    assert consistency.item() == pytest.approx(want_consistency, abs=1e-6)
    assert ent.item() == pytest.approx(want_entropy, abs=1e-6)
    assert total.item() == pytest.approx(want_consistency - 2.0 * want_entropy, abs=1e-6)


def test_scan_loss_gradient_by_hand_and_finite_differences():
    # one anchor with logits (x, 0) and a neighbour fixed at q = (1, 0) (very large logit gap), no entropy term:
    # loss = -log p_0 = log(1 + e^-x), so d loss / dx = -1 / (1 + e^x).
    x = torch.tensor([[0.3, 0.0]], requires_grad=True)
    nb = torch.tensor([[50.0, 0.0]])
    total, _, _ = scan_loss(x, nb, entropy_weight=0.0)
    total.backward()
    assert x.grad[0, 0].item() == pytest.approx(-1 / (1 + math.exp(0.3)), abs=1e-6)
    assert x.grad[0, 1].item() == pytest.approx(1 / (1 + math.exp(0.3)), abs=1e-6)

    # the whole loss (consistency and entropy, through both inputs) against finite differences, in float64
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)

    def f(a, b):
        p, q = torch.softmax(a, 1), torch.softmax(b, 1)
        cons = -torch.log((p * q).sum(1)).mean()
        m = p.mean(0)
        return cons + 5.0 * (m * m.log()).sum()

    total, _, _ = scan_loss(a.float(), b.float(), entropy_weight=5.0)
    assert total.item() == pytest.approx(f(a, b).item(), rel=1e-5)
    assert torch.autograd.gradcheck(f, (a, b))
    ga, gb = torch.autograd.grad(scan_loss(a, b, 5.0)[0], (a, b))
    wa, wb = torch.autograd.grad(f(a, b), (a, b))
    assert torch.allclose(ga.double(), wa, atol=1e-5) and torch.allclose(gb.double(), wb, atol=1e-5)


def test_scan_loss_entropy_term_penalises_one_cluster():
    one = torch.tensor([[5.0, 0.0, 0.0]] * 6)
    spread = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]] * 2)
    assert scan_loss(spread, spread, 5.0)[0] < scan_loss(one, one, 5.0)[0]
    assert entropy(torch.full((4,), 0.25)).item() == pytest.approx(math.log(4), abs=1e-6)


def test_self_label_loss_uses_only_confident_images_and_balances_classes():
    weak = torch.tensor([[10.0, 0.0], [10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.1, 0.0]])
    strong = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-5.0, 5.0]])
    loss, n = self_label_loss(weak, strong, threshold=0.99, balance=True)
    assert n == 4  # the last image is not confident
    ce0 = math.log(1 + math.exp(-1.0))  # images 0-2 towards class 0
    ce1 = math.log(1 + math.exp(-2.0))  # image 3 towards class 1
    w0, w1 = 1 / 3, 1.0
    mean_w = (w0 + w1) / 2
    w0, w1 = w0 / mean_w, w1 / mean_w
    want = (3 * w0 * ce0 + w1 * ce1) / (3 * w0 + w1)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    plain, _ = self_label_loss(weak, strong, threshold=0.99, balance=False)
    assert plain.item() == pytest.approx((3 * ce0 + ce1) / 4, abs=1e-5)
    none, n0 = self_label_loss(torch.zeros(3, 2), strong[:3], threshold=0.99)
    assert n0 == 0 and none.item() == 0.0


# -- neighbours --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_mined_neighbours_equal_brute_force(backend):
    rng = np.random.RandomState(0)
    X = rng.randn(300, 12).astype(np.float32)
    got = mine_neighbours(X, 7, backend=backend)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sim = Xn @ Xn.T
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1, kind="stable")[:, :7]
    assert got.shape == (300, 7) and got.dtype == np.int64
    assert np.array_equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mined_neighbours_on_the_gpu_equal_the_cpu_reference():
    X = np.random.RandomState(1).randn(5000, 32).astype(np.float32)
    gpu, cpu = mine_neighbours(X, 10, backend="torch", device="cuda"), mine_neighbours(X, 10, backend="torch")
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    rows = np.arange(len(X))[:, None]
    # the same neighbours up to near-ties, whose order rounding may swap: compare their similarities
    assert (gpu != rows).all()
    np.testing.assert_allclose((Xn[rows] * Xn[gpu]).sum(-1), (Xn[rows] * Xn[cpu]).sum(-1), atol=1e-5)


def test_mined_neighbours_never_include_the_row_itself_even_with_duplicates():
    X = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 groups of 4 identical rows
    nb = mine_neighbours(X, 3)
    for i in range(12):
        assert i not in nb[i]
        assert set(nb[i]) == set(range(4 * (i // 4), 4 * (i // 4) + 4)) - {i}
    with pytest.raises(ValueError):
        mine_neighbours(X, 12)


# -- networks ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,ch,size", [("convnet", 1, 28), ("convnet", 3, 64), ("resnet18", 3, 32), ("resnet10", 1, 16)])
def test_backbones_shapes(arch, ch, size):
    net = make_backbone(arch, ch, 8)
    out = net(torch.rand(2, ch, size, size))
    assert out.shape == (2, net.out_dim)
    assert ProjectionHead(net.out_dim, 16, 4)(out).shape == (2, 4)


def test_resnet18_is_the_published_size_at_width_64():
    net = make_backbone("resnet18", 3, 64)
    n_params = sum(p.numel() for p in net.parameters())
    assert net.out_dim == 512 and 11.0e6 < n_params < 11.3e6  # CIFAR ResNet-18 without its classifier: ~11.17 M


# -- DDP ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nt_xent_under_two_processes_sees_the_whole_batch(tmp_path):
    """gloo, 2 processes, each holding half of the batch: the same loss as one process over the whole batch,
    and each process's gradient is the whole-batch gradient times the world size (DDP then averages the
    parameter gradients, which gives the one-process gradient). The SimCLR encoder trains under DDP."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO / "src"), IMCLUST_QUIET="1", OMP_NUM_THREADS="1")
    worker = str(REPO / "tests" / "ddp_contrastive_worker.py")
    one = subprocess.run([sys.executable, worker, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker,
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert np.allclose(np.load(tmp_path / "2" / "loss.npy"), np.load(tmp_path / "1" / "loss.npy"), atol=1e-6)
    assert np.allclose(np.load(tmp_path / "2" / "grads.npy"), 2 * np.load(tmp_path / "1" / "grads.npy"), atol=1e-6)
    feats = np.load(tmp_path / "2" / "features.npy")
    assert feats.shape == np.load(tmp_path / "1" / "features.npy").shape and np.isfinite(feats).all()
