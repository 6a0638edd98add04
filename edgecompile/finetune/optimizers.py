"""Building the optimizers of the recovery harness from one config, with per-optimizer
default hyper-parameters (tuned on the digits recovery benchmark, ``bench/bench_finetune.py``),
and ``"auto"``: the optimizer the benchmark measured fastest for the model's kind."""
from __future__ import annotations

import torch
from torch import nn

from . import layers

from .fngd import FNGD
from .kfac import KFAC
from .twa import TWA

OPTIMIZERS = ("auto", "fngd", "adamw", "sgd", "kfac", "twa")

#: ``"auto"``: model kind -> optimizers in order of preference (the first that the run allows;
#: TWA needs 2 epochs or more), by time to the target accuracy in ``bench/bench_finetune.py``
#: (CPU, 1 thread, lr at the middle of each grid; seconds of training, epochs in brackets,
#: "—": not reached in the run):
#:
#: =============  ===========  ===========  ===========  ===========  ===========  ===========
#: task (kind)    adamw        sgd          kfac         fngd         twa          twa-shared
#: =============  ===========  ===========  ===========  ===========  ===========  ===========
#: digits-cnn     0.13-0.21    0.36 (2.91)  —            0.60 (2.45)  0.18 (1.45)  0.16-0.22
#: (conv)         (1.00)                                                           (1.45)
#: mnist1d-res    1.61-3.21    2.12 (2.48)  2.98 (0.79)  11.5 (6.00)  1.45 (2.32)  1.56-1.75
#: (conv)         (2.16)                                                           (2.32)
#: digits-tf      —            1.04 (4.23)  0.74-1.28    0.98-1.28    —            —
#: (sequence)                               (2.68)       (3.00)
#: reverse-s2s    —            —            3.05-3.46    15.0 (4.95)  —            —
#: (sequence)                               (1.95)
#: =============  ===========  ===========  ===========  ===========  ===========  ===========
#:
#: Ranges: the same configuration in two runs of the bench on a shared 2-core machine.  Conv:
#: TWA is at least as fast as AdamW on both tasks (within the noise on digits-cnn).  Sequence:
#: K-FAC alone reached both targets.  Dense (MLPs): no bench task; AdamW, the first-order
#: method that needs no tuning of its scale.
AUTO: dict[str, tuple[str, ...]] = {"conv": ("twa", "adamw"), "sequence": ("kfac",),
                                    "dense": ("adamw",)}

#: Default learning rate and damping per optimizer (``None``: not used).
DEFAULTS: dict[str, dict[str, float | None]] = {
    "fngd": {"lr": 0.1, "damping": 0.1},
    "adamw": {"lr": 1e-3, "damping": None},
    "sgd": {"lr": 0.05, "damping": None},
    "kfac": {"lr": 0.05, "damping": 1e-3},
    "twa": {"lr": 0.1, "damping": None},  # its own schedule from this lr: 0.3 diverged
}


def model_kind(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str:
    """``"conv"`` when convolutions hold most of the weights FNGD/K-FAC precondition,
    ``"sequence"`` when a Linear layer sees a sequence (``[N, T, d]``) or an embedding is
    present, else ``"dense"``; one forward pass on ``inputs`` (a couple of samples)."""
    hooked = [m for m in model.modules() if layers.is_supported(m)]
    conv = sum(m.weight.numel() for m in hooked if isinstance(m, (nn.Conv1d, nn.Conv2d)))
    if conv * 2 >= sum(m.weight.numel() for m in hooked) > 0:
        return "conv"
    seen = []
    handles = [m.register_forward_hook(lambda m, a, o: seen.append(a[0].dim() > 2))
               for m in hooked if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    if any(seen) or any(isinstance(m, nn.Embedding) for m in hooked):
        return "sequence"
    return "dense"


def resolve(name: str, model: nn.Module, inputs: tuple[torch.Tensor, ...],
            epochs: int) -> tuple[str, str]:
    """``(optimizer, why)``: ``name`` itself, or for ``"auto"`` the first :data:`AUTO` choice
    for the model's kind that a run of ``epochs`` epochs allows."""
    check_name(name)
    if name != "auto":
        return name, "chosen"
    kind = model_kind(model, inputs)
    choice = next(o for o in AUTO[kind] + ("adamw",) if o != "twa" or epochs >= 2)
    return choice, f"auto: {kind} model"


def check_name(name: str) -> str:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return name


def make(name: str, model: nn.Module, config) -> dict[str, torch.optim.Optimizer]:
    """The optimizers for ``config.optimizer``: ``{"main": …}`` plus ``"base"`` for TWA's
    warm-up phase (plain SGD with momentum, or ``config.twa_base``)."""
    if check_name(name) == "auto":
        raise ValueError("optimizers.make needs a concrete optimizer; resolve 'auto' first")
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
