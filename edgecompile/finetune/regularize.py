"""Compression-aware training: a differentiable low-rank penalty on the weights the low-rank pass
would factorize (`--finetune ... --regularize erank:λ | nuclear:λ`).

The survey's third family (Ou, Chen, Zhu, Liu, "Low Rank Optimization for Efficient Deep
Learning", compression-aware training): train so that the weights become low-rank, then factorize
them; the factorization then discards little and recovery has little to recover.

- ``erank:λ``: λ times the mean over layers of erank(W)/full rank, with erank = exp(H(s/Σs)) the
  effective rank (Roy & Vetterli 2007) of the weight's singular values s (both channel unfoldings
  of a k×k conv, which set its Tucker-2 ranks). Scale-free, so it shapes the spectrum without
  shrinking the weights; each term lies in (0, 1], so λ is comparable across models.
- ``nuclear:λ``: λ times the mean over layers of ‖W‖_* / ‖W‖_F / sqrt(full rank) (the nuclear
  norm, made scale-free and put in (0, 1] the same way: a plain ‖W‖_* would mostly shrink weights
  that a following norm layer or BN fold undoes).

Gradients flow through ``torch.linalg.svdvals``. The penalty's gradient is added to each weight's
``.grad`` by the loss's backward; with FNGD it enters as a first-order term (FNGD's natural-gradient
solve covers the data loss).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError

KINDS = ("erank", "nuclear")


class RegularizerSpecError(InputError, ValueError):
    """A --regularize spec that cannot be understood."""


@dataclass(frozen=True)
class Regularizer:
    kind: str
    weight: float
    min_params: int = 1024         # smaller weights are not factorized by the pass: left alone

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RegularizerSpecError(f"unknown --regularize kind {self.kind!r}; use erank:λ or nuclear:λ")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise RegularizerSpecError(f"--regularize {self.kind}:{self.weight}: the weight λ must be >= 0")


_RE = re.compile(r"^\s*([a-z]+)\s*:\s*([0-9.eE+-]+)\s*$")


def parse_regularizer(text: str | None) -> Regularizer | None:
    """``erank:0.1`` | ``nuclear:0.05`` | None / ``none`` (no penalty)."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    m = _RE.match(text.lower())
    if not m:
        raise RegularizerSpecError(f"bad --regularize spec {text!r}; use erank:λ or nuclear:λ (e.g. erank:0.1)")
    try:
        weight = float(m.group(2))
    except ValueError:
        raise RegularizerSpecError(f"bad --regularize spec {text!r}: {m.group(2)!r} is not a number") from None
    return Regularizer(m.group(1), weight)


def _unfoldings(w: torch.Tensor) -> list[torch.Tensor]:
    """The matrices whose ranks the pass chooses: [out, in·k] (and [in, out·k] for a k×k conv)."""
    if w.dim() <= 2:
        return [w if w.dim() == 2 else w.reshape(1, -1)]
    o, i = w.shape[:2]
    x = w.reshape(o, i, -1)
    mats = [x.reshape(o, -1)]
    if x.shape[2] > 1:
        mats.append(x.transpose(0, 1).reshape(i, -1))
    return mats


def erank(m: torch.Tensor) -> torch.Tensor:
    """Differentiable effective rank exp(H(s/Σs))."""
    s = torch.linalg.svdvals(m)
    p = s / s.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def nuclear_ratio(m: torch.Tensor) -> torch.Tensor:
    """‖m‖_* / (‖m‖_F · sqrt(full rank)), in (0, 1]; 1/sqrt(full) for rank 1."""
    s = torch.linalg.svdvals(m)
    return s.sum() / (s.square().sum().sqrt().clamp_min(1e-12) * math.sqrt(min(m.shape)))


def targets(module: nn.Module, reg: Regularizer) -> list[tuple[str, nn.Parameter]]:
    """The weights to penalize: every trainable parameter of 2+ dims with at least `min_params`
    values (the layer weights the low-rank pass considers; biases and norms are 1-D)."""
    return [(n, p) for n, p in module.named_parameters()
            if p.requires_grad and p.dim() >= 2 and p.numel() >= reg.min_params]


def penalty(params: list[torch.Tensor], reg: Regularizer) -> torch.Tensor:
    """λ · mean over weights (and their unfoldings) of the normalized erank or nuclear ratio."""
    terms = []
    for w in params:
        for m in _unfoldings(w):
            m = m.float()
            terms.append(erank(m) / min(m.shape) if reg.kind == "erank" else nuclear_ratio(m))
    if not terms:
        return torch.zeros(())
    return reg.weight * torch.stack(terms).mean()
