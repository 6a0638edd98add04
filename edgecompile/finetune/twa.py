"""Trainable Weight Averaging (Li et al., "Trainable Weight Averaging: A General Approach for
Subspace Training", ICLR 2024, and its journal version with layer-wise coefficients).

The weights ``w_1 … w_K`` seen along a training trajectory span a small subspace that holds
good solutions.  TWA orthonormalizes them (``P``, a ``D × K`` basis), starts from their
average ``w̄ = P β₀`` (SWA's point, exactly in the span) and trains only the coefficients
``β``: the gradient of ``β`` is the projected gradient ``Pᵀ ∇w`` and the weights are ``w = P β``.
Checkpoints that are (almost) linearly dependent are dropped from the basis.

``per_layer=True`` (the journal version) gives every parameter tensor its own basis and
coefficients (``w_l = P_l β_l``): the same checkpoints, ``K`` times more trainable scalars per
layer, still a subspace of their span per layer.

The basis is split across DDP ranks, as the official code does: each rank owns an equal slice of
the flat weight vector (tensors may straddle ranks) and alone keeps that slice of every
checkpoint and of ``P`` (``D × K / world`` floats per rank).  One step then costs one all-reduce
of the projected gradient (``K`` floats, or ``Σ K_l`` for ``per_layer``) and one all-gather of
the slices (``D (W-1) / W`` floats received), less than DDP's own gradient all-reduce.  Owning
whole tensors instead (balanced by size) padded every rank's share to the largest one's: on the
digits CNN, whose largest tensor holds most weights, TWA's traffic was 2.8× DDP's all-reduce
at world 4 (`bench/bench_finetune_ddp.py`).

The orthonormal basis comes from the ``K × K`` Gram matrix of the checkpoints (summed over
ranks): ``P = W V Λ^-½`` for its eigenpairs above ``rank_tol²·λ_max``, repeated once on ``P``
(the second pass restores orthonormality to rounding, as CholeskyQR2 does).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from . import ddp

log = logging.getLogger(__name__)


def _slices(sizes: list[int], world: int, rank: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(slice length, this rank's pieces): the flat weight vector (tensors in order) cut into
    `world` equal slices; a piece ``(tensor, a, b)`` is the part ``[a, b)`` of that tensor's flat
    values inside this rank's slice (empty pieces kept, so every rank lists every tensor)."""
    chunk = -(-sum(sizes) // world)
    lo, hi = rank * chunk, (rank + 1) * chunk
    pieces, start = [], 0
    for t, n in enumerate(sizes):
        a, b = min(max(lo - start, 0), n), min(max(hi - start, 0), n)
        pieces.append((t, a, max(a, b)))
        start += n
    return chunk, pieces


def _orthonormal(W: torch.Tensor, tol: float, reduce) -> torch.Tensor:
    """An orthonormal basis of the columns of ``W`` (rows possibly split over ranks:
    ``reduce`` sums a ``K × K`` matrix over them)."""
    P = W
    for second in (False, True):
        G = reduce(P.T.to(torch.float64) @ P.to(torch.float64))
        evals, V = torch.linalg.eigh(0.5 * (G + G.T))
        keep = evals > (tol ** 2 if not second else 1e-3) * evals.max().clamp_min(1e-300)
        P = P @ (V[:, keep] / evals[keep].sqrt()).to(P.dtype)
    return P


class TWA(torch.optim.Optimizer):
    """Subspace training on the span of collected checkpoints.

    Parameters
    ----------
    params:
        The trainable parameters (all of them define the weight vector).
    lr, momentum, weight_decay:
        SGD on the coefficients ``β`` (weight decay on ``β`` equals weight decay on ``w``
        since ``P`` is orthonormal).
    rank_tol:
        Directions whose singular value is below ``rank_tol`` times the largest are dropped
        (at least ``√eps`` of the parameters' dtype).
    per_layer:
        One basis and coefficient vector per parameter tensor (journal version).

    Usage
    -----
    Train normally, calling :meth:`collect` along the way; then :meth:`build_subspace` and use
    ``step()`` like any optimizer.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 0.0, rank_tol: float = 1e-6,
                 per_layer: bool = False):
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("TWA: no trainable parameters")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.rank_tol, self.per_layer = rank_tol, per_layer
        self.chunk, self.pieces = _slices([p.numel() for p in params], ddp.world_size(), ddp.rank())
        self.checkpoints: list[torch.Tensor] = []
        #: ``[D_mine, K]`` (shared coefficients) or one ``[D_l ∩ mine, K_l]`` per tensor.
        self.basis: torch.Tensor | list[torch.Tensor] | None = None
        self.coef: torch.Tensor | list[torch.Tensor] | None = None
        self.momentum_buffer: torch.Tensor | list[torch.Tensor] | None = None

    @property
    def _params(self) -> list[torch.nn.Parameter]:
        return self.param_groups[0]["params"]

    def _flat_mine(self, grads: bool = False) -> torch.Tensor:
        """This rank's slice of the flat weights (or of their gradients, 0 where there is none)."""
        parts = []
        for t, a, b in self.pieces:
            p = self._params[t]
            v = p.detach() if not grads else p.grad if p.grad is not None else torch.zeros_like(p)
            parts.append(v.reshape(-1)[a:b])
        return torch.cat(parts)

    @torch.no_grad()
    def collect(self) -> None:
        """Snapshot the current weights (this rank's tensors) as one checkpoint."""
        if self.basis is not None:
            raise RuntimeError("TWA.collect: the subspace is already built")
        self.checkpoints.append(self._flat_mine().clone())

    @property
    def dim(self) -> int:
        """Trainable coefficients (summed over layers and ranks for ``per_layer``)."""
        if self.basis is None:
            return 0
        if not self.per_layer:
            return self.basis.shape[1]
        return sum(b.shape[1] for b in self.basis)      # every rank holds every tensor's K_l

    @torch.no_grad()
    def build_subspace(self) -> int:
        """Orthonormalize the checkpoints, move the weights to their average.

        Returns
        -------
        int
            The subspace dimension kept (summed over layers for ``per_layer``).
        """
        if len(self.checkpoints) < 2:
            raise ValueError(f"TWA needs at least 2 checkpoints to build a subspace "
                             f"(got {len(self.checkpoints)}); call collect() more often")
        W = torch.stack(self.checkpoints, dim=1)
        mean = W.mean(dim=1)
        tol = max(self.rank_tol, torch.finfo(W.dtype).eps ** 0.5)
        if self.per_layer:     # every tensor in order on every rank (its rows here may be none)
            self.basis, start = [], 0
            for _, a, b in self.pieces:
                self.basis.append(_orthonormal(W[start:start + b - a], tol, ddp.all_reduce).contiguous())
                start += b - a
            self.coef = self._sum_over_ranks([P.T @ m for P, m in zip(self.basis, self._split(mean))])
        else:
            self.basis = _orthonormal(W, tol, ddp.all_reduce).contiguous()
            self.coef = ddp.all_reduce(self.basis.T @ mean)
        self.momentum_buffer = None
        self.checkpoints = []
        self._write_weights()
        k = self.dim
        log.info("TWA: subspace of dimension %d from %d checkpoints", k, W.shape[1])
        return k

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """This rank's slice cut into its per-tensor pieces."""
        return list(torch.split(flat, [b - a for _, a, b in self.pieces]))

    @staticmethod
    def _sum_over_ranks(vs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each vector summed over ranks, in one all-reduce."""
        flat = ddp.all_reduce(torch.cat(vs)) if vs else None
        return list(torch.split(flat, [v.numel() for v in vs])) if vs else []

    def _write_weights(self) -> None:
        """``w = P β`` on this rank's slice, then every rank gets every slice (one all-gather;
        on one process the slice is the whole vector)."""
        if self.per_layer:
            flat = torch.cat([P @ c for P, c in zip(self.basis, self.coef)])
        else:
            flat = self.basis @ self.coef
        if ddp.is_distributed():
            world = ddp.world_size()
            padded = torch.cat([flat, flat.new_zeros(self.chunk - flat.numel())])
            parts = [torch.empty_like(padded) for _ in range(world)]
            torch.distributed.all_gather(parts, padded)
            ddp.traffic.all_gather(padded.numel() * padded.element_size(), world)
            flat = torch.cat(parts)
        start = 0
        for p in self._params:
            p.copy_(flat[start:start + p.numel()].view_as(p))
            start += p.numel()

    @torch.no_grad()
    def step(self, closure=None):
        """One SGD step on ``β`` with the projected gradient ``Pᵀ∇w``."""
        if self.basis is None:
            raise RuntimeError("TWA.step: call build_subspace() after collecting checkpoints")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        flat = self._flat_mine(grads=True)
        if self.per_layer:
            ds = self._sum_over_ranks([P.T @ g.to(P.dtype) for P, g in zip(self.basis, self._split(flat))])
            bufs = self.momentum_buffer or [None] * len(ds)
            self.momentum_buffer = [self._update(group, c, d, b)
                                    for c, d, b in zip(self.coef, ds, bufs)]
        else:
            d = ddp.all_reduce(self.basis.T @ flat.to(self.basis.dtype))
            self.momentum_buffer = self._update(group, self.coef, d, self.momentum_buffer)
        self._write_weights()
        return loss

    @staticmethod
    def _update(group: dict, coef: torch.Tensor, d: torch.Tensor,
                buf: torch.Tensor | None) -> torch.Tensor | None:
        """SGD with momentum on one coefficient vector, in place; returns the buffer."""
        if group["weight_decay"]:
            d = d + group["weight_decay"] * coef
        if group["momentum"]:
            buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
            d = buf
        coef -= group["lr"] * d
        return buf

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["twa"] = {"checkpoints": list(self.checkpoints), "basis": self.basis,
                     "coef": self.coef, "momentum_buffer": self.momentum_buffer}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("twa", None)
        super().load_state_dict(state_dict)
        if extra is None:
            return
        device = self._params[0].device

        def to(t):
            if isinstance(t, list):
                return [x.to(device) for x in t]
            return None if t is None else t.to(device)

        self.checkpoints = [to(c) for c in extra["checkpoints"]]
        self.basis, self.coef = to(extra["basis"]), to(extra["coef"])
        self.momentum_buffer = to(extra["momentum_buffer"])


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, inputs: Iterable[tuple[torch.Tensor, ...]]) -> bool:
    """Recompute every batch norm's running statistics with the current weights, as the
    official TWA and SWA code do after moving the weights to an average: reset, then a
    cumulative average over ``inputs`` in training mode (averaged over DDP ranks).

    Returns whether the model has any batch norm (``False``: nothing ran).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return False
    was, momenta = model.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for batch in inputs:
        model(*batch)
    for m, mom in zip(norms, momenta):
        m.momentum = mom
        if ddp.is_distributed():
            ddp.all_reduce_mean(m.running_mean)
            ddp.all_reduce_mean(m.running_var)
    model.train(was)
    return True
