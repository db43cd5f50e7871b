"""Embedding heads: values, gradients (float64 gradcheck), stability at θ≈0 and θ≈π, Center Loss centres."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imclust.errors import UserError
from imclust.nn.heads import (
    head_names,
    TUTORIAL_WEIGHTS,
    ArcFaceHead,
    CenterCombinedHead,
    CenterLoss,
    CosFaceHead,
    make_head,
    optimizer_factory,
    spread_directions,
)
from imclust.nn.train import TrainConfig, Trainer, batch_indices


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=12, d=4, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.arange(n) % k
    return x, y


@pytest.mark.parametrize("name", head_names())
def test_every_head_gives_loss_and_logits(name):
    torch.manual_seed(0)
    head = make_head(name, 4, 3)
    x, y = _data(dtype=torch.float32)
    loss, logits = head(x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert logits.shape == (12, 3)
    assert head.logits(x).shape == (12, 3)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize("name", head_names())
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    kw = {"decouple": False} if "center" in name else {}
    head = make_head(name, 4, 3, **kw).double()
    x, y = _data()
    x.requires_grad_(True)
    params = tuple(p for p in head.parameters())
    assert torch.autograd.gradcheck(lambda x, *ps: head(x, y)[0], (x, *params), eps=1e-6, atol=1e-5)
    if "center" in name:
        # decoupled (the default): the features' and classifier's gradients are still those of the loss value;
        # only the centres get the unweighted Center Loss gradient (checked in test_tutorial_preset_and_weights)
        dec = make_head(name, 4, 3).double()
        dec.load_state_dict(head.state_dict())
        cls_params = tuple(dec.classifier.parameters())
        assert torch.autograd.gradcheck(lambda x, *ps: dec(x, y)[0], (x, *cls_params), eps=1e-6, atol=1e-5)


def test_arcface_matches_definition_and_acos_formulation():
    torch.manual_seed(1)
    m, s = 0.5, 10.0
    head = ArcFaceHead(3, 4, margin=m, scale=s).double()
    x, y = _data(n=16, d=3, k=4, seed=1)
    loss, logits = head(x, y)
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    theta = torch.acos(cos.clamp(-1, 1))
    ref = s * cos.clone()
    rows = torch.arange(len(y))
    th = theta[rows, y]
    ref[rows, y] = torch.where(th + m <= math.pi, s * torch.cos(th + m), s * (cos[rows, y] - m * math.sin(m)))
    assert torch.allclose(logits, ref, atol=1e-4)
    assert torch.allclose(loss, F.cross_entropy(ref, y), atol=1e-4)
    # no "divide cos by 10": the non-target logits are exactly s·cos θ
    mask = F.one_hot(y, 4).bool()
    assert torch.allclose(logits[~mask], s * cos[~mask], atol=1e-5)
    acos_head = ArcFaceHead(3, 4, margin=m, scale=s, formulation="acos").double()
    acos_head.load_state_dict(head.state_dict())
    assert torch.allclose(acos_head(x, y)[1], logits, atol=1e-8)


@pytest.mark.parametrize("formulation", ["identity", "acos"])
@pytest.mark.parametrize("easy", [False, True])
def test_arcface_stable_at_theta_zero_and_pi(formulation, easy):
    head = ArcFaceHead(2, 2, margin=0.5, scale=30.0, easy_margin=easy, formulation=formulation).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    # θ exactly 0 (feature on its class weight), θ exactly π (opposite), and 1e-9 away from both
    x = torch.tensor([[3.0, 0.0], [-2.0, 0.0], [1.0, 1e-9], [-1.0, 1e-9]], dtype=torch.float64, requires_grad=True)
    y = torch.zeros(4, dtype=torch.long)
    loss, logits = head(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    assert x.grad.abs().max() < 1e3
    # near 0 the target logit is s·cos(m) (up to the clamp: θ ≥ acos(1 - eps) ≈ 1.4e-3); near π it is the continuation s·(−1 − m·sin m) (or −s with easy margin)
    assert logits[0, 0].item() == pytest.approx(30 * math.cos(0.5), abs=0.05)
    far = -30.0 if easy else 30 * (-1 - 0.5 * math.sin(0.5))
    assert logits[1, 0].item() == pytest.approx(far, abs=0.05)


def test_arcface_target_logit_decreases_with_angle():
    head = ArcFaceHead(2, 2, margin=0.5, easy_margin=False).double()
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    t = head.target_logit(torch.cos(theta).clamp(-1 + 1e-6, 1 - 1e-6))
    assert (t[1:] <= t[:-1] + 1e-12).all()
    assert (t <= torch.cos(theta) + 1e-9).all()  # the margin never helps the target class


def test_cosface_values():
    head = CosFaceHead(3, 4, margin=0.35, scale=10).double()
    x, y = _data(n=8, d=3, k=4)
    _, logits = head(x, y)
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    ref = 10 * (cos - 0.35 * F.one_hot(y, 4))
    assert torch.allclose(logits, ref, atol=1e-6)
    assert torch.allclose(head.logits(x), 10 * cos, atol=1e-6)


def test_center_loss_forms():
    x = torch.tensor([[3.0, 4.0], [5, 6], [7, 8], [9, 8], [6, 5]])
    y = torch.tensor([0, 0, 1, 0, 1])
    cl = CenterLoss(2, 2, form="batch_count")
    with torch.no_grad():
        cl.centers.copy_(torch.tensor([[1.0, 1], [2, 2]]))
    d = torch.linalg.vector_norm(x - cl.centers[y], dim=1)
    # the tutorial's batch-count normalisation: class 0 has 3 samples, class 1 has 2
    assert cl(x, y).item() == pytest.approx((d[[0, 1, 3]].sum() / 3 + d[[2, 4]].sum() / 2).item(), rel=1e-6)
    cl_mean = CenterLoss(2, 2, form="mean")
    cl_mean.load_state_dict(cl.state_dict())
    assert cl_mean(x, y).item() == pytest.approx(0.5 * (d ** 2).mean().item(), rel=1e-6)
    # a feature sitting on its centre has a zero (not NaN) gradient in the tutorial form
    z = cl.centers[y].detach().clone().requires_grad_(True)
    cl(z, y).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().max() == 0


@pytest.mark.parametrize("form", ["mean", "batch_count"])
def test_centres_move_to_class_means_with_their_own_lr(form):
    """Fixed features: training the head moves the centres onto the class means."""
    rng = np.random.RandomState(0)
    means = rng.randn(3, 2) * 5
    y = np.repeat(np.arange(3), 40)
    X = (means[y] + rng.randn(len(y), 2) * 0.5).astype(np.float32)
    torch.manual_seed(0)
    head = make_head("softmax+center", 2, 3, center_form=form, center_lr=0.1)
    cfg = TrainConfig(epochs=60, batch_size=24, lr=1e-3, seed=0)
    trainer = Trainer({"head": head}, cfg, optimizer_factory=optimizer_factory)
    lrs = sorted(g["lr"] for g in trainer.optimizer.param_groups)
    assert lrs == [1e-3, 0.1]
    class_means = np.stack([X[y == c].mean(0) for c in range(3)])
    before = np.linalg.norm(head.center.centers.detach().numpy() - class_means, axis=1)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    trainer.fit(lambda idx, t: t.modules["head"](Xt[idx], yt[idx])[0], lambda e, g: batch_indices(len(X), 24, g))
    after = np.linalg.norm(head.center.centers.detach().numpy() - class_means, axis=1)
    assert (after < 0.05 * before).all(), (before, after)
    assert after.max() < 0.3


def test_tutorial_preset_and_weights():
    h = make_head("softmax+center", 2, 10)
    assert isinstance(h, CenterCombinedHead) and h.weights == TUTORIAL_WEIGHTS
    assert h.center.form == "batch_count"
    h2 = make_head("center", 2, 10)
    assert h2.weights == (1.0, 0.01) and h2.center.form == "mean"
    h3 = make_head("arcface+center", 2, 10, weights=(1.0, 0.1), center_form="mean")
    assert h3.weights == (1.0, 0.1) and h3.angular
    # the weighted combination is exactly a·CE + b·Center Loss
    torch.manual_seed(0)
    x, y = _data(n=10, d=2, k=10, dtype=torch.float32)
    loss, _ = h(x, y)
    ce, _ = h.classifier(x, y)
    assert loss.item() == pytest.approx(0.999 * ce.item() + 0.001 * h.center(x, y).item(), rel=1e-5)
    # decoupled: the centres' gradient is that of the unweighted Center Loss; the tutorial's coupling scales it
    for decouple, scale in ((True, 1.0), (False, 0.001)):
        hh = make_head("softmax+center", 2, 10, decouple=decouple)
        hh.load_state_dict(h.state_dict())
        hh(x, y)[0].backward()
        ref = h.center.centers.detach().clone().requires_grad_(True)
        CenterLoss(10, 2, form="batch_count")(x, y, centers=ref).backward()
        assert torch.allclose(hh.center.centers.grad, scale * ref.grad, atol=1e-7)


def test_bad_head_options():
    with pytest.raises(UserError, match="unknown head"):
        make_head("triplet", 2, 10)
    with pytest.raises(UserError, match="does not take"):
        make_head("softmax", 2, 10, margin=0.5)
    with pytest.raises(UserError, match="does not take"):
        make_head("arcface", 2, 10, center_lr=0.5)
    with pytest.raises(UserError, match="margin"):
        make_head("arcface", 2, 10, margin=3.0)
    with pytest.raises(UserError, match="class ids"):
        make_head("softmax", 2, 3)(torch.zeros(2, 2), torch.tensor([0, 5]))


@pytest.mark.parametrize("name", ["arcface", "cosface", "arcface+center"])
def test_margin_heads_stay_finite_under_bf16_autocast(name):
    """In bfloat16, 1 - 1e-6 rounds to 1; the heads compute cosines in float32 so θ = 0 stays finite."""
    torch.manual_seed(0)
    head = make_head(name, 2, 3)
    w = head.classifier.weight if hasattr(head, "classifier") else head.weight
    x = w.detach()[[0, 1, 2]].clone().mul(4).requires_grad_(True)  # each feature exactly on its class weight
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss, logits = head(x.to(torch.bfloat16), torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_set_margin_zero_is_plain_normalised_softmax():
    torch.manual_seed(0)
    head = ArcFaceHead(3, 4, margin=0.5, scale=10).double()
    x, y = _data(n=8, d=3, k=4)
    with_margin = head(x, y)[1]
    head.set_margin(0.0)
    _, logits = head(x, y)
    assert torch.allclose(logits, head.logits(x), atol=1e-6)
    head.set_margin(0.5)
    assert torch.allclose(head(x, y)[1], with_margin)


def _angles_deg(w):
    return torch.rad2deg(torch.atan2(w[:, 1], w[:, 0])).double()


@pytest.mark.parametrize("name", ["arcface", "cosface"])
@pytest.mark.parametrize("k", [3, 10])
def test_default_init_in_2d_spreads_class_directions_evenly(name, k):
    """The documented default (weight_init='auto' -> 'spread' in 2-D): unit weights 360/k degrees apart."""
    torch.manual_seed(0)
    head = make_head(name, 2, k)
    assert head.weight_init == "auto" and head.weight_init_ == "spread"
    w = head.weight.detach()
    assert torch.allclose(w.norm(dim=1), torch.ones(k), atol=1e-6)
    a = torch.sort(_angles_deg(w) % 360).values
    gaps = torch.diff(torch.cat([a, a[:1] + 360]))  # neighbours around the circle, wrapping
    assert torch.allclose(gaps, torch.full((k,), 360.0 / k, dtype=torch.float64), atol=1e-4)
    # the same after reset_parameters, and with center loss combined
    head.reset_parameters()
    assert torch.allclose(head.weight.detach(), w)
    combo = make_head(name + "+center", 2, k)
    assert torch.allclose(combo.classifier.weight.detach(), w)


def test_weight_init_auto_is_xavier_above_3_dims_and_xavier_can_be_asked_for():
    torch.manual_seed(0)
    assert ArcFaceHead(32, 10).weight_init_ == "xavier"
    assert ArcFaceHead(3, 10).weight_init_ == "spread"
    torch.manual_seed(0)
    a = ArcFaceHead(2, 10, weight_init="xavier").weight.detach()
    torch.manual_seed(0)
    b = torch.nn.init.xavier_uniform_(torch.empty(10, 2))
    assert torch.equal(a, b)
    with pytest.raises(UserError, match="weight_init"):
        ArcFaceHead(2, 10, weight_init="even")
    with pytest.raises(UserError, match="does not take"):
        make_head("softmax", 2, 10, weight_init="spread")


@pytest.mark.parametrize("n,dim", [(4, 3), (10, 3), (6, 3), (10, 16), (20, 8)])
def test_spread_directions_are_far_apart(n, dim):
    g = torch.Generator().manual_seed(0)
    v = spread_directions(n, dim, generator=g).double()
    assert v.shape == (n, dim)
    assert torch.allclose(v.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-6)
    cos = (v @ v.T)[~torch.eye(n, dtype=torch.bool)]
    if n <= dim + 1:  # regular simplex
        assert torch.allclose(cos, torch.full_like(cos, -1.0 / (n - 1)), atol=1e-5)
    elif (n, dim) == (6, 3):  # octahedron: nearest neighbours at 90 degrees
        assert cos.max() < 0.05
    else:
        # far better than random directions would be (their largest pairwise cosine is typically > 0.5)
        torch.manual_seed(0)
        r = F.normalize(torch.randn(n, dim, dtype=torch.float64), dim=1)
        assert cos.max() < (r @ r.T)[~torch.eye(n, dtype=torch.bool)].max() - 0.1
    if (n, dim) == (10, 3):  # Tammes problem: the best minimal angle for 10 points is about 64.7 degrees
        assert math.degrees(math.acos(cos.max())) > 60
