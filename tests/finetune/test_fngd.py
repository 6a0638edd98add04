"""FNGD against explicit damped natural gradient built from per-sample gradients."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.finetune.fngd import FNGD

from .models import batch_for, make
from .reference import (exact_ngd, layer_matrix, network_matrix, per_sample_grads, split_like,
                        split_network)

LAMBDA = 1e-2
MODELS = ["mlp", "cnn", "seq", "emb"]


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _take_step(model, opt, x, y, ids, plain_mean=False):
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt.set_batch(ids)
    losses = F.cross_entropy(model(x), y, reduction="none")
    loss = losses.mean() if plain_mean else opt.reduce(losses)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: before[k] - v.detach() for k, v in model.named_parameters()}


@pytest.mark.parametrize("gram", ["factor", "auto"])
@pytest.mark.parametrize("name", MODELS)
def test_first_epoch_step_is_exact_damped_ngd_per_layer(name, gram):
    model = make(name)
    x, y = batch_for(name, 10)
    grads = per_sample_grads(model, x, y)
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0, gram=gram,
               coefficients="layer", normalize="none")
    moved = _take_step(model, opt, x, y, torch.arange(10))
    for layer in opt.layer_names:
        want = split_like(exact_ngd(layer_matrix(grads, layer), LAMBDA), model, layer)
        for key, ref in want.items():
            assert _rel(moved[key], ref) < 1e-5, (name, key, _rel(moved[key], ref))


@pytest.mark.parametrize("name", MODELS)
def test_first_epoch_step_is_exact_damped_ngd_of_the_whole_network(name):
    """Shared coefficients: Δ = (UUᵀ/N + λI)⁻¹ ḡ with U stacking every layer's gradients."""
    model = make(name)
    x, y = batch_for(name, 10)
    grads = per_sample_grads(model, x, y)
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0, normalize="none")
    moved = _take_step(model, opt, x, y, torch.arange(10), plain_mean=True)
    want = split_network(exact_ngd(network_matrix(grads, opt.layer_names), LAMBDA), model,
                         opt.layer_names)
    for key, ref in want.items():
        assert _rel(moved[key], ref) < 1e-5, (name, key, _rel(moved[key], ref))


@pytest.mark.parametrize("normalize", ["mean", "norm"])
def test_normalization_only_rescales_the_exact_step(normalize):
    model, raw = make("cnn"), make("cnn")
    x, y = batch_for("cnn", 12)
    grads = per_sample_grads(model, x, y)
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0, normalize=normalize)
    moved = _take_step(model, opt, x, y, torch.arange(12))
    exact = _take_step(raw, FNGD(raw, lr=1.0, damping=LAMBDA, momentum=0.0, normalize="none"),
                       x, y, torch.arange(12))
    flat = torch.cat([moved[k].flatten() for k in exact])
    ref = torch.cat([exact[k].flatten() for k in exact])
    scale = float(flat @ ref / (ref @ ref))
    assert scale > 0 and _rel(flat, scale * ref) < 1e-8
    if normalize == "mean":
        assert float(opt.alpha_for(torch.arange(12)).sum()) == pytest.approx(1.0, rel=1e-12)
    else:
        gbar = network_matrix(grads, opt.layer_names).mean(0)
        assert float(flat.norm()) == pytest.approx(float(gbar.norm()), rel=1e-8)


@pytest.mark.parametrize("coefficients", ["shared", "layer"])
@pytest.mark.parametrize("name", MODELS)
def test_stored_alpha_reuse_is_weighted_sum_of_per_sample_grads(name, coefficients):
    model = make(name)
    x, y = batch_for(name, 8)
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0, coefficients=coefficients,
               reuse_clip=False, reuse_renormalize=False, check_every=None)
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
        c = alpha[:, 0 if coefficients == "shared" else j].to(U.dtype)
        for key, ref in split_like(U.T @ c, model, layer).items():
            assert _rel(moved[key], ref) < 1e-8, (name, key)
    # The batch was not re-solved: its alpha is unchanged.
    assert torch.equal(opt.alpha_for(perm), alpha)


def test_shared_reuse_attaches_no_hooks_and_needs_reduce():
    model = make("mlp")
    x, y = batch_for("mlp", 6)
    opt = FNGD(model, lr=0.1, damping=LAMBDA, check_every=None)
    _take_step(model, opt, x, y, torch.arange(6))
    opt.set_batch(torch.arange(6))
    assert opt.reusing
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="opt.reduce"):
        opt.step()


def test_refresh_every_recomputes_alpha():
    model = make("mlp")
    x, y = batch_for("mlp", 6)
    opt = FNGD(model, lr=0.5, damping=LAMBDA, refresh_every=2, check_every=None)
    _take_step(model, opt, x, y, torch.arange(6))
    first = opt.alpha_for(torch.arange(6)).clone()
    opt.set_epoch(1)
    _take_step(model, opt, x, y, torch.arange(6))
    assert torch.equal(opt.alpha_for(torch.arange(6)), first)
    opt.set_epoch(2)
    _take_step(model, opt, x, y, torch.arange(6))
    assert not torch.equal(opt.alpha_for(torch.arange(6)), first)
    assert (opt.alpha_epoch[:6] == 2).all()


def test_unsupported_params_get_sgd_on_their_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,))
    losses = F.cross_entropy(model(x), y, reduction="none")
    g_ln = torch.autograd.grad(losses.mean(), model[1].weight)[0]
    w0 = model[1].weight.detach().clone()
    opt = FNGD(model, lr=1.0, damping=LAMBDA, momentum=0.0, fallback_lr=0.3,
               reuse_clip=False, reuse_renormalize=False, check_every=None)
    _take_step(model, opt, x, y, torch.arange(6))
    torch.testing.assert_close(model[1].weight.detach(), w0 - 0.3 * g_ln)
    # Reuse: the same stored weights as every other layer, still at fallback_lr.
    c = opt.alpha_for(torch.arange(6))[:, 0].to(x.dtype)
    losses = F.cross_entropy(model(x), y, reduction="none")
    g_ln = torch.autograd.grad((losses * c).sum(), model[1].weight)[0]
    w0 = model[1].weight.detach().clone()
    opt.set_epoch(1)
    _take_step(model, opt, x, y, torch.arange(6))
    torch.testing.assert_close(model[1].weight.detach(), w0 - 0.3 * g_ln)


def test_reuse_clips_and_renormalizes_the_stored_coefficients():
    model = make("mlp")
    x, y = batch_for("mlp", 8)
    opt = FNGD(model, lr=0.0, damping=1e-4, momentum=0.0, check_every=None)
    _take_step(model, opt, x, y, torch.arange(8))
    raw = opt.alpha_for(torch.arange(8))[:, 0]
    assert (raw < 0).any()  # small damping: some samples get a negative weight
    part = torch.tensor([6, 1, 3])
    opt.set_epoch(1)
    opt.set_batch(part)
    assert opt.reusing
    want = raw[part].clamp_min(0)
    torch.testing.assert_close(opt._weights, want / want.sum())


def test_drift_check_compares_a_fresh_solve_and_resolves_when_it_drops():
    model = make("mlp")
    x, y = batch_for("mlp", 8)
    # min_alignment above 1: every check finds the stored coefficients stale.
    opt = FNGD(model, lr=0.5, damping=LAMBDA, check_every=2, min_alignment=1.5)
    _take_step(model, opt, x, y, torch.arange(8))
    opt.set_epoch(1)
    _take_step(model, opt, x[:4], y[:4], torch.arange(4))  # the first reused step: a check
    assert len(opt.alignment) == 1 and opt.resolves == 1
    epoch, cos, sgd = opt.alignment[0]
    assert epoch == 1 and -1.0 <= cos <= 1.0 and -1.0 <= sgd <= 1.0
    # Dropped: only the checked batch keeps (fresh) coefficients; nothing is reused in this
    # epoch and the next (back-off 2^0 epochs), then reuse is tried again.
    assert (opt.alpha_epoch[:4] == 1).all() and (opt.alpha_epoch[4:8] == -1).all()
    for epoch in (1, 2):
        opt.set_epoch(epoch)
        _take_step(model, opt, x, y, torch.arange(8))
        assert not opt.hooks.mode == "off" and len(opt.alignment) == 1
    opt.set_epoch(3)
    opt.set_batch(torch.arange(8))
    assert opt.reusing  # the second reused step: no check


def test_drift_cosine_is_one_for_an_unchanged_model():
    model = make("mlp")
    x, y = batch_for("mlp", 8)
    opt = FNGD(model, lr=0.0, damping=LAMBDA, momentum=0.0, check_every=1,
               reuse_clip=False, reuse_renormalize=False)
    _take_step(model, opt, x, y, torch.arange(8))
    opt.set_epoch(1)
    _take_step(model, opt, x, y, torch.arange(8))  # lr 0: same model, same batch
    assert opt.alignment[0][1] == pytest.approx(1.0, abs=1e-9) and opt.resolves == 0


@pytest.mark.parametrize("coefficients", ["shared", "layer"])
def test_momentum_weight_decay_and_state_roundtrip(coefficients):
    model = make("mlp")
    x, y = batch_for("mlp", 8)
    kw = dict(lr=0.1, damping=LAMBDA, momentum=0.9, weight_decay=1e-2, coefficients=coefficients,
              check_every=None)
    opt = FNGD(model, **kw)
    _take_step(model, opt, x, y, torch.arange(8))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # as a checkpoint would: no shared tensors
    buffer.seek(0)
    saved = torch.load(buffer)
    twin = make("mlp")
    twin.load_state_dict(model.state_dict())
    opt2 = FNGD(twin, **kw)
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
    with pytest.raises(ValueError, match="normalize must be one of mean, norm, none"):
        FNGD(model, normalize="max")
    with pytest.raises(ValueError, match="ddp_solve must be one of local, global"):
        FNGD(model, ddp_solve="ring")
    with pytest.raises(ValueError, match="check_every must be >= 1 or None"):
        FNGD(model, check_every=0)
    opt = FNGD(model, coefficients="layer", check_every=None)
    with pytest.raises(ValueError, match="empty batch"):
        opt.set_batch([])
    x, y = batch_for("mlp", 4)
    _take_step(model, opt, x, y, torch.arange(4))
    opt.set_batch(torch.arange(3))
    with pytest.raises(ValueError, match="saw a batch of 4 rows but set_batch got 3"):
        model(x)
    shared_model = make("mlp")
    shared = FNGD(shared_model, check_every=None)
    _take_step(shared_model, shared, x, y, torch.arange(4))
    shared.set_batch(torch.arange(3))
    with pytest.raises(ValueError, match="4 per-sample losses but set_batch got 3"):
        shared.reduce(F.cross_entropy(shared_model(x), y, reduction="none"))
    with pytest.raises(ValueError, match="coefficients=layer"):
        FNGD(make("mlp")).load_state_dict(opt.state_dict())
    other = make("cnn")
    with pytest.raises(ValueError, match="same model"):
        FNGD(other).load_state_dict(opt.state_dict())


def test_zero_gradients_give_finite_coefficients():
    """A student equal to its teacher (fine-tuning an uncompressed model): every per-sample
    gradient is zero, so the Gram matrix is zero; the coefficients must stay finite (they were
    inf and NaN, and the first step turned every weight into NaN)."""
    from edgecompile.finetune.layers import damped_coefficients, normalize_coefficients

    K = torch.zeros(6, 6)
    alpha = damped_coefficients(K, 0.1)
    for mode in ("mean", "norm", "none"):
        assert bool(torch.isfinite(normalize_coefficients(alpha, K, mode)).all()), mode
