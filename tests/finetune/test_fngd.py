"""FNGD against explicit damped natural gradient built from per-sample gradients."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.finetune.fngd import FNGD

from .models import batch_for, make
from .reference import exact_ngd, layer_matrix, per_sample_grads, split_like

LAMBDA = 1e-2
MODELS = ["mlp", "cnn", "seq", "emb"]


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _take_step(model, opt, x, y, ids):
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt.set_batch(ids)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: before[k] - v.detach() for k, v in model.named_parameters()}


@pytest.mark.parametrize("gram", ["factor", "auto"])
@pytest.mark.parametrize("name", MODELS)
def test_first_epoch_step_is_exact_damped_ngd(name, gram):
    model = make(name)
    x, y = batch_for(name, 10)
    grads = per_sample_grads(model, x, y)
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0, gram=gram)
    moved = _take_step(model, opt, x, y, torch.arange(10))
    for layer in opt.layer_names:
        want = split_like(exact_ngd(layer_matrix(grads, layer), LAMBDA), model, layer)
        for key, ref in want.items():
            assert _rel(moved[key], ref) < 1e-5, (name, key, _rel(moved[key], ref))


@pytest.mark.parametrize("name", MODELS)
def test_stored_alpha_reuse_is_weighted_sum_of_per_sample_grads(name):
    model = make(name)
    x, y = batch_for(name, 8)
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0)
    _take_step(model, opt, x, y, torch.arange(8))
    # Second epoch: same samples, another order and half-batches -> reuse mode.
    opt.set_epoch(1)
    perm = torch.tensor([5, 2, 7, 0])
    alpha = opt.alpha_for(perm)
    assert torch.isfinite(alpha).all()
    grads = per_sample_grads(model, x[perm], y[perm])
    moved = _take_step(model, opt, x[perm], y[perm], perm)
    for j, layer in enumerate(opt.layer_names):
        U = layer_matrix(grads, layer)
        want = split_like(U.T @ alpha[:, j].to(U.dtype), model, layer)
        for key, ref in want.items():
            assert _rel(moved[key], ref) < 1e-8, (name, key)
    # The batch was not re-solved: its alpha is unchanged.
    assert torch.equal(opt.alpha_for(perm), alpha)


def test_refresh_every_recomputes_alpha():
    model = make("mlp")
    x, y = batch_for("mlp", 6)
    opt = FNGD(model, lr=0.5, damping=LAMBDA, refresh_every=2)
    _take_step(model, opt, x, y, torch.arange(6))
    first = opt.alpha_for(torch.arange(6)).clone()
    opt.set_epoch(1)
    _take_step(model, opt, x, y, torch.arange(6))
    assert torch.equal(opt.alpha_for(torch.arange(6)), first)
    opt.set_epoch(2)
    _take_step(model, opt, x, y, torch.arange(6))
    assert not torch.equal(opt.alpha_for(torch.arange(6)), first)
    assert (opt.alpha_epoch[:6] == 2).all()


def test_unsupported_params_get_sgd_on_mean_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,))
    loss = F.cross_entropy(model(x), y)
    g_ln = torch.autograd.grad(loss, model[1].weight)[0]
    w0 = model[1].weight.detach().clone()
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0, fallback_lr=0.3)
    _take_step(model, opt, x, y, torch.arange(6))
    torch.testing.assert_close(model[1].weight.detach(), w0 - 0.3 * g_ln)


def test_momentum_weight_decay_and_state_roundtrip():
    model = make("mlp")
    x, y = batch_for("mlp", 8)
    opt = FNGD(model, lr=0.1, damping=LAMBDA, momentum=0.9, weight_decay=1e-2)
    _take_step(model, opt, x, y, torch.arange(8))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # as a checkpoint would: no shared tensors
    buffer.seek(0)
    saved = torch.load(buffer)
    twin = make("mlp")
    twin.load_state_dict(model.state_dict())
    opt2 = FNGD(twin, lr=0.1, damping=LAMBDA, momentum=0.9, weight_decay=1e-2)
    opt2.load_state_dict(saved)
    for o, m in ((opt, model), (opt2, twin)):
        o.set_epoch(1)
        _take_step(m, o, x, y, torch.arange(8))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt2.alpha, opt.alpha)


def test_bad_arguments_are_clear():
    model = make("mlp")
    with pytest.raises(ValueError, match="damping must be > 0"):
        FNGD(model, damping=0.0)
    opt = FNGD(model)
    with pytest.raises(ValueError, match="empty batch"):
        opt.set_batch([])
    x, y = batch_for("mlp", 4)
    _take_step(model, opt, x, y, torch.arange(4))
    opt.set_batch(torch.arange(3))
    with pytest.raises(ValueError, match="saw a batch of 4 rows but set_batch got 3"):
        model(x)
    other = make("cnn")
    with pytest.raises(ValueError, match="same model"):
        FNGD(other).load_state_dict(opt.state_dict())
