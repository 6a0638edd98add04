"""Trainable Weight Averaging (Li et al., "Trainable Weight Averaging: A General Approach for
Subspace Training", ICLR 2024).

After a short normal training phase the weights ``w_1 … w_K`` seen along the way span a small
subspace that holds good solutions.  TWA orthonormalizes them (``P = qr([w_1 … w_K]).Q``, a
``D × K`` basis), starts from their average ``w̄ = P β₀`` (``β₀ = Pᵀ w̄``: SWA's point, exactly
in the span) and trains only the ``K`` coefficients ``β``: the gradient of ``β`` is the
projected gradient ``Pᵀ ∇w``, and the weights are ``w = P β``.  Checkpoints that are (almost)
linearly dependent are dropped from the basis.

Memory is ``D × K`` floats for the basis.  Under DDP every rank holds identical checkpoints
(DDP keeps the replicas equal) and averaged gradients, so the subspace steps agree.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

log = logging.getLogger(__name__)


class TWA(torch.optim.Optimizer):
    """Subspace training on the span of collected checkpoints.

    Parameters
    ----------
    params:
        The trainable parameters (all of them define the flattened weight vector).
    lr, momentum, weight_decay:
        SGD on the coefficients ``β`` (weight decay on ``β`` equals weight decay on ``w``
        since ``P`` is orthonormal).
    rank_tol:
        Columns whose QR pivot is below ``rank_tol`` times the largest are dropped.

    Usage
    -----
    Train normally, calling :meth:`collect` a few times; then :meth:`build_subspace` and use
    ``step()`` like any optimizer.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 0.0, rank_tol: float = 1e-6):
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("TWA: no trainable parameters")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.rank_tol = rank_tol
        self.checkpoints: list[torch.Tensor] = []
        self.basis: torch.Tensor | None = None
        self.coef: torch.Tensor | None = None
        self.momentum_buffer: torch.Tensor | None = None

    @property
    def _params(self) -> list[torch.nn.Parameter]:
        return self.param_groups[0]["params"]

    @torch.no_grad()
    def collect(self) -> None:
        """Snapshot the current weights as one checkpoint."""
        if self.basis is not None:
            raise RuntimeError("TWA.collect: the subspace is already built")
        self.checkpoints.append(parameters_to_vector(self._params).detach().clone())

    @torch.no_grad()
    def build_subspace(self) -> int:
        """Orthonormalize the checkpoints, move the weights to their average.

        Returns
        -------
        int
            The subspace dimension kept.
        """
        if len(self.checkpoints) < 2:
            raise ValueError(f"TWA needs at least 2 checkpoints to build a subspace "
                             f"(got {len(self.checkpoints)}); call collect() more often")
        W = torch.stack(self.checkpoints, dim=1)
        mean = W.mean(dim=1)
        work = W.double() if W.dtype != torch.float64 else W
        q, r = torch.linalg.qr(work)
        pivots = r.diagonal().abs()
        keep = pivots > self.rank_tol * pivots.max()
        self.basis = q[:, keep].to(W.dtype).contiguous()
        self.coef = self.basis.T @ mean
        self.momentum_buffer = None
        self.checkpoints = []
        vector_to_parameters(self.basis @ self.coef, self._params)
        log.info("TWA: subspace of dimension %d from %d checkpoints", self.basis.shape[1],
                 W.shape[1])
        return self.basis.shape[1]

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
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self._params])
        d = self.basis.T @ grad.to(self.basis.dtype)
        if group["weight_decay"]:
            d = d + group["weight_decay"] * self.coef
        if group["momentum"]:
            if self.momentum_buffer is None:
                self.momentum_buffer = d.clone()
            else:
                self.momentum_buffer.mul_(group["momentum"]).add_(d)
            d = self.momentum_buffer
        self.coef -= group["lr"] * d
        vector_to_parameters(self.basis @ self.coef, self._params)
        return loss

    @torch.no_grad()
    def sync_from_params(self) -> None:
        """Re-read ``β`` from the weights after an outside edit (e.g. masks re-applied)."""
        if self.basis is not None:
            self.coef = self.basis.T @ parameters_to_vector(self._params).to(self.basis.dtype)

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
            return None if t is None else t.to(device)

        self.checkpoints = [to(c) for c in extra["checkpoints"]]
        self.basis, self.coef = to(extra["basis"]), to(extra["coef"])
        self.momentum_buffer = to(extra["momentum_buffer"])
