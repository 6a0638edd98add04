"""Building the optimizers of the recovery harness from one config, with per-optimizer
default hyper-parameters (tuned on the digits recovery benchmark, ``bench/bench_finetune.py``)."""
from __future__ import annotations

import torch
from torch import nn

from .fngd import FNGD
from .kfac import KFAC
from .twa import TWA

OPTIMIZERS = ("fngd", "adamw", "sgd", "kfac", "twa")

#: Default learning rate and damping per optimizer (``None``: not used).
DEFAULTS: dict[str, dict[str, float | None]] = {
    "fngd": {"lr": 0.1, "damping": 0.1},
    "adamw": {"lr": 1e-3, "damping": None},
    "sgd": {"lr": 0.05, "damping": None},
    "kfac": {"lr": 0.05, "damping": 1e-3},
    "twa": {"lr": 0.5, "damping": None},
}


def check_name(name: str) -> str:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return name


def make(name: str, model: nn.Module, config) -> dict[str, torch.optim.Optimizer]:
    """The optimizers for ``config.optimizer``: ``{"main": …}`` plus ``"base"`` for TWA's
    warm-up phase (plain SGD with momentum, or ``config.twa_base``)."""
    check_name(name)
    lr = config.lr if config.lr is not None else DEFAULTS[name]["lr"]
    damping = config.damping if config.damping is not None else DEFAULTS[name]["damping"]
    params = [p for p in model.parameters() if p.requires_grad]
    mu, wd = config.momentum, config.weight_decay
    if name == "fngd":
        return {"main": FNGD(model, lr=lr, damping=damping, momentum=mu, weight_decay=wd,
                             refresh_every=config.alpha_refresh_every,
                             fallback_lr=config.fallback_lr, gram=config.fngd_gram,
                             coefficients=config.fngd_coefficients,
                             normalize=config.fngd_normalize,
                             check_every=config.fngd_check_every,
                             min_alignment=config.fngd_min_alignment,
                             reuse_clip=config.fngd_reuse_clip,
                             reuse_renormalize=config.fngd_reuse_renormalize,
                             ddp_solve=config.fngd_ddp_solve)}
    if name == "kfac":
        return {"main": KFAC(model, lr=lr, damping=damping, momentum=mu, weight_decay=wd,
                             ema=config.kfac_ema, inverse_every=config.kfac_inverse_every,
                             kl_clip=config.kfac_kl_clip, fallback_lr=config.fallback_lr)}
    if name == "adamw":
        return {"main": torch.optim.AdamW(params, lr=lr, weight_decay=wd)}
    if name == "sgd":
        return {"main": torch.optim.SGD(params, lr=lr, momentum=mu, weight_decay=wd)}
    if config.twa_base == "twa":
        raise ValueError("twa_base must be a plain optimizer (sgd, adamw, fngd, kfac), not twa")
    base = make(check_name(config.twa_base), model, _with_lr(config, None))["main"]
    return {"main": TWA(params, lr=lr, momentum=mu, weight_decay=wd,
                        per_layer=config.twa_per_layer), "base": base}


def _with_lr(config, lr):
    from dataclasses import replace
    return replace(config, lr=lr, damping=None)
