"""Compression-aware training: the penalties are the effective rank / nuclear ratio the pass's rank
selection reads, they are differentiable, and training with them lowers the weights' effective rank."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.build import BuildConfig, BuildError, validate
from edgecompile.finetune import FinetuneData, RecoverConfig, recover
from edgecompile.finetune.regularize import (Regularizer, RegularizerSpecError, erank, nuclear_ratio,
                                             parse_regularizer, penalty, targets)
from edgecompile.passes.lowrank.rank import effective_rank
from edgecompile.targets import load_target


def test_erank_and_nuclear_match_the_numpy_definitions():
    torch.manual_seed(0)
    m = torch.randn(12, 7, dtype=torch.float64)
    s = np.linalg.svd(m.numpy(), compute_uv=False)
    assert float(erank(m)) == pytest.approx(effective_rank(s), rel=1e-9)
    assert float(nuclear_ratio(m)) == pytest.approx(s.sum() / np.sqrt((s ** 2).sum() * 7), rel=1e-9)
    assert float(nuclear_ratio(torch.outer(torch.ones(5), torch.ones(4)))) == pytest.approx(0.5)


def test_parse():
    assert parse_regularizer("erank:0.1") == Regularizer("erank", 0.1)
    assert parse_regularizer("nuclear:2") == Regularizer("nuclear", 2.0)
    assert parse_regularizer(None) is None and parse_regularizer("none") is None
    for bad in ("erank", "l1:0.1", "erank:-1", "erank:x"):
        with pytest.raises(RegularizerSpecError):
            parse_regularizer(bad)


@pytest.mark.parametrize("kind", ["erank", "nuclear"])
def test_penalty_descent_lowers_the_rank_measure(kind):
    """Gradient steps on the penalty alone lower it, for a linear and a 3x3 conv weight (both of
    whose channel unfoldings count)."""
    torch.manual_seed(0)
    ws = [nn.Parameter(torch.randn(32, 48)), nn.Parameter(torch.randn(16, 8, 3, 3))]
    reg = Regularizer(kind, 1.0, min_params=0)
    opt = torch.optim.Adam(ws, 1e-2)
    first = float(penalty(ws, reg).detach())
    for _ in range(100):
        loss = penalty(ws, reg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(penalty(ws, reg)) < 0.8 * first
    s = np.linalg.svd(ws[0].detach().numpy(), compute_uv=False)
    assert effective_rank(s) < 0.8 * 32


def test_recover_with_the_penalty_trains_lower_rank_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g)
    y = (x[:, :4] @ torch.randn(4, 4, generator=g)).argmax(1)
    data = FinetuneData.from_arrays(x, y)
    erank_of = {}
    for spec in (None, "erank:0.5"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
        recover(net, data, RecoverConfig(optimizer="adamw", epochs=8, batch_size=32, lr=1e-2, device="cpu", regularize=spec))
        erank_of[spec] = effective_rank(np.linalg.svd(net[0].weight.detach().numpy(), compute_uv=False))
    assert targets(net, Regularizer("erank", 1.0)) and len(targets(net, Regularizer("erank", 1.0))) == 1
    assert erank_of["erank:0.5"] < 0.9 * erank_of[None]


def test_build_needs_training_data_for_the_penalty():
    with pytest.raises(BuildError, match="--finetune"):
        validate(BuildConfig(quant="int8", regularize="erank:0.1"), load_target("rpi4"))
    with pytest.raises(RegularizerSpecError):
        validate(BuildConfig(quant="int8", regularize="erank", finetune="calib"), load_target("rpi4"))
