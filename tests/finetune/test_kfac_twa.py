"""K-FAC factors/step against explicit formulas; TWA subspace training on a small model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.finetune.kfac import KFAC
from edgecompile.finetune.twa import TWA, reestimate_batchnorm

from .models import batch_for, make


def test_kfac_step_matches_explicit_kronecker_solve():
    model = make("mlp")
    x, y = batch_for("mlp", 12)
    opt = KFAC(model, lr=1.0, damping=1e-2, momentum=0.0, kl_clip=None)
    acts = {}
    h = model.fc2.register_forward_hook(lambda m, a, o: acts.update(a=a[0].detach(), o=o))
    out = model(x)
    h.remove()
    acts["o"].retain_grad()
    F.cross_entropy(out, y).backward()
    a = torch.cat([acts["a"], torch.ones(12, 1, dtype=x.dtype)], 1)
    g = acts["o"].grad * 12                       # per-sample output gradients
    A, G = a.T @ a / 12, g.T @ g / 12
    pi = ((A.trace() / A.shape[0]) / (G.trace() / G.shape[0])).sqrt()
    r = 1e-2 ** 0.5
    grad = torch.cat([model.fc2.weight.grad, model.fc2.bias.grad[:, None]], 1)
    want = torch.linalg.solve(G + r / pi * torch.eye(3, dtype=x.dtype), grad)
    want = want @ torch.linalg.inv(A + pi * r * torch.eye(9, dtype=x.dtype))
    w0, b0 = model.fc2.weight.detach().clone(), model.fc2.bias.detach().clone()
    opt.step()
    torch.testing.assert_close(w0 - model.fc2.weight.detach(), want[:, :-1],
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b0 - model.fc2.bias.detach(), want[:, -1], rtol=1e-5, atol=1e-7)


def test_kfac_grouped_conv_factors_are_per_group():
    model = make("cnn")
    x, y = batch_for("cnn", 6)
    opt = KFAC(model, lr=0.1)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    A, G = opt.factors["conv2"]["A"], opt.factors["conv2"]["G"]
    assert A.shape == (2, 2 * 9 + 1, 2 * 9 + 1) and G.shape == (2, 2, 2)
    assert opt.factors["fc"]["A"].shape == (1, 36, 36)   # no bias column


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return float(F.cross_entropy(model(x), y).detach())


def test_twa_trains_only_inside_the_checkpoint_span():
    model = make("mlp")
    x, y = batch_for("mlp", 64)
    sgd = torch.optim.SGD(model.parameters(), lr=0.2)
    twa = TWA(model.parameters(), lr=0.5, momentum=0.5)
    for _ in range(6):
        _train(model, sgd, x, y, 5)
        twa.collect()
    W = torch.stack(twa.checkpoints, 1)
    mean = W.mean(1)
    k = twa.build_subspace()
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.testing.assert_close(flat, mean)                     # starts at the average
    assert torch.allclose(twa.basis.T @ twa.basis, torch.eye(k, dtype=W.dtype), atol=1e-12)
    before = float(F.cross_entropy(model(x), y).detach())
    after = _train(model, twa, x, y, 30)
    assert after < before
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    coef = torch.linalg.lstsq(W, flat[:, None]).solution
    assert float((W @ coef).squeeze(1).sub(flat).norm()) < 1e-8 * float(flat.norm())


def test_twa_needs_checkpoints_and_subspace():
    model = nn.Linear(3, 2)
    twa = TWA(model.parameters())
    twa.collect()
    try:
        twa.build_subspace()
    except ValueError as err:
        assert "at least 2 checkpoints" in str(err)
    else:
        raise AssertionError("one checkpoint must be refused")


def test_twa_per_layer_bases_are_orthonormal_and_keep_each_tensor_in_its_span():
    model = make("mlp")
    x, y = batch_for("mlp", 64)
    sgd = torch.optim.SGD(model.parameters(), lr=0.2)
    twa = TWA(model.parameters(), lr=0.5, momentum=0.5, per_layer=True)
    snaps = []
    for _ in range(5):
        _train(model, sgd, x, y, 4)
        twa.collect()
        snaps.append([p.detach().clone() for p in model.parameters()])
    k = twa.build_subspace()
    assert k == sum(b.shape[1] for b in twa.basis) and len(twa.basis) == len(snaps[0])
    for P in twa.basis:
        assert torch.allclose(P.T @ P, torch.eye(P.shape[1], dtype=P.dtype), atol=1e-12)
    for p, *cks in zip(model.parameters(), *snaps):  # starts at each tensor's average
        torch.testing.assert_close(p.detach(), torch.stack(cks).mean(0))
    before = float(F.cross_entropy(model(x), y).detach())
    assert _train(model, twa, x, y, 30) < before
    for i, p in enumerate(model.parameters()):
        W = torch.stack([s[i].reshape(-1) for s in snaps], 1)
        coef = torch.linalg.lstsq(W, p.detach().reshape(-1, 1)).solution
        assert float((W @ coef).squeeze(1).sub(p.detach().reshape(-1)).norm()) < \
            1e-8 * float(p.detach().norm())


def test_batchnorm_reestimation_recomputes_the_running_mean():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    x = torch.randn(48, 3, dtype=torch.float64) * 2 + 1
    model.eval()
    assert reestimate_batchnorm(model, [(x[i:i + 16],) for i in range(0, 48, 16)])
    assert not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean(0))
    assert int(model[1].num_batches_tracked) == 3
    assert not reestimate_batchnorm(nn.Linear(2, 2), [(x,)])  # nothing to do
