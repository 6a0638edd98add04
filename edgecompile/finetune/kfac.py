"""K-FAC baseline (Martens & Grosse 2015; convolutions after Grosse & Martens 2016, "KFC").

Per Linear/Conv layer (per group for grouped convolutions) the Fisher block is approximated by
``A ⊗ G`` with ``A = E_{i,t}[a aᵀ]`` (layer inputs, a trailing 1 for the bias) and
``G = (1/N) Σ_{i,t} g gᵀ`` (output gradients of the per-sample loss; ``t`` runs over
sequence positions / output pixels, which is KFC's spatial-homogeneity approximation).
Factors are running averages; every ``inverse_every`` steps they are inverted with factored
Tikhonov damping (``π`` balancing the two traces):

    A⁻¹ ← (A + π√λ I)⁻¹,   G⁻¹ ← (G + √λ/π I)⁻¹,   update  V = G⁻¹ ∇W A⁻¹,

rescaled by KL clipping (``ν = min(1, sqrt(κ / (lr² Σ V·∇W)))``, Ba et al. 2017).  Other
parameters (embeddings, norms) get SGD with momentum on the mean gradient.  Under DDP the
factors are averaged over ranks.  The loss is assumed to be the mean over the batch.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import ddp, layers


def _kfac_supported(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.weight.requires_grad


class KFAC(torch.optim.Optimizer):
    """Kronecker-factored approximate curvature for Linear/Conv1d/Conv2d layers.

    Parameters
    ----------
    model:
        The module to train (may be wrapped in DistributedDataParallel).
    lr, momentum, weight_decay:
        As in SGD (weight decay is L2, added to the preconditioned direction).
    damping:
        Tikhonov damping ``λ``.
    ema:
        Running-average decay of the factors.
    inverse_every:
        Steps between factor inversions.
    factor_every:
        Steps between factor updates (inputs/gradients are only captured on those steps).
    kl_clip:
        KL-clipping bound ``κ`` (``None`` disables it).
    fallback_lr:
        Learning rate for the parameters K-FAC does not precondition (default ``lr``).
    """

    def __init__(self, model: nn.Module, lr: float = 0.05, damping: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0, ema: float = 0.95,
                 inverse_every: int = 10, factor_every: int = 1, kl_clip: float | None = 1e-3,
                 fallback_lr: float | None = None):
        if damping <= 0:
            raise ValueError(f"KFAC damping must be > 0 (got {damping})")
        if inverse_every < 1 or factor_every < 1:
            raise ValueError("KFAC inverse_every and factor_every must be >= 1")
        params = [p for p in model.parameters() if p.requires_grad]
        defaults = dict(lr=lr, damping=damping, momentum=momentum, weight_decay=weight_decay,
                        fallback_lr=lr if fallback_lr is None else fallback_lr)
        super().__init__(params, defaults)
        self.ema, self.inverse_every, self.factor_every = ema, inverse_every, factor_every
        self.kl_clip = kl_clip
        self._layers = [(n, m) for n, m in model.named_modules() if _kfac_supported(m)]
        self.layer_names = [n for n, _ in self._layers]
        self._index = {id(m): i for i, (_, m) in enumerate(self._layers)}
        self._handles = [m.register_forward_hook(self._hook) for _, m in self._layers]
        self.steps = 0
        self.factors: dict[str, dict[str, torch.Tensor]] = {}
        self._inverses: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stats: dict[int, list] = {}

    def remove_hooks(self) -> None:
        """Detach K-FAC from the model (the optimizer is unusable afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, module, args, out):
        if (not torch.is_grad_enabled() or not out.requires_grad
                or self.steps % self.factor_every):
            return
        rows = layers.input_rows(module, args[0].detach())
        entry = [rows, None]
        self._stats.setdefault(self._index[id(module)], []).append(entry)
        n = out.shape[0]

        def grab(g, entry=entry):
            entry[1] = layers.grad_rows(module, g.detach()) * n

        out.register_hook(grab)

    def _update_factors(self) -> None:
        for i, calls in self._stats.items():
            if any(c[1] is None for c in calls):
                continue
            A = torch.cat([c[0] for c in calls], dim=2)
            dt = torch.promote_types(A.dtype, torch.float32)  # half/bf16 factors in fp32
            A = A.to(dt)
            D = torch.cat([c[1] for c in calls], dim=2).to(dt)
            n, _, t, _ = A.shape
            a_new = ddp.all_reduce_mean(torch.einsum("ngta,ngtb->gab", A, A) / (n * t))
            g_new = ddp.all_reduce_mean(torch.einsum("ngto,ngtp->gop", D, D) / n)
            name = self.layer_names[i]
            old = self.factors.get(name)
            if old is None:
                self.factors[name] = {"A": a_new, "G": g_new}
            else:
                old["A"].mul_(self.ema).add_(a_new, alpha=1 - self.ema)
                old["G"].mul_(self.ema).add_(g_new, alpha=1 - self.ema)
        self._stats = {}

    def _invert(self, damping: float) -> None:
        for name, f in self.factors.items():
            A, G = f["A"].double(), f["G"].double()
            ta = A.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
            tg = G.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
            pi = (ta / tg).sqrt().view(-1, 1, 1)
            root = math.sqrt(damping)
            eye_a = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
            eye_g = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
            a_inv = torch.linalg.inv(A + pi * root * eye_a)
            g_inv = torch.linalg.inv(G + root / pi * eye_g)
            dt = f["A"].dtype
            self._inverses[name] = (a_inv.to(dt), g_inv.to(dt))

    def _precondition(self) -> dict[int, torch.Tensor]:
        out, vg = {}, 0.0
        for name, module in self._layers:
            inv = self._inverses.get(name)
            w = module.weight
            if inv is None or w.grad is None:
                continue
            a_inv, g_inv = inv
            groups = a_inv.shape[0]
            grad = w.grad.reshape(groups, w.shape[0] // groups, -1).to(a_inv.dtype)
            bias = layers.has_bias(module) and module.bias.grad is not None
            if bias:
                grad = torch.cat([grad, module.bias.grad.view(groups, -1, 1).to(a_inv.dtype)], dim=2)
            v = g_inv @ grad @ a_inv
            vg += float((v * grad).sum())
            if bias:
                out[id(module.bias)] = v[..., -1].reshape(module.bias.shape)
                v = v[..., :-1]
            out[id(w)] = v.reshape(w.shape)
        lr = self.param_groups[0]["lr"]
        if self.kl_clip is not None and vg > 0:
            nu = min(1.0, math.sqrt(self.kl_clip / (lr * lr * vg)))
            out = {k: v * nu for k, v in out.items()}
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """Update factors (on factor steps), inverses (every ``inverse_every``), parameters."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        if self._stats:
            self._update_factors()
        if self.steps % self.inverse_every == 0 or len(self._inverses) < len(self.factors):
            self._invert(group["damping"])
        directions = self._precondition()
        for group in self.param_groups:
            layers.apply_directions(group, directions, self.state)
        self.steps += 1
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["kfac"] = {"steps": self.steps, "factors": self.factors,
                      "layer_names": list(self.layer_names)}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac", None)
        if extra is not None and list(extra["layer_names"]) != self.layer_names:
            raise ValueError("KFAC.load_state_dict: the saved state is for other layers; "
                             "load it into the same model")
        super().load_state_dict(state_dict)
        if extra is not None:
            device = self.param_groups[0]["params"][0].device
            self.steps = int(extra["steps"])
            self.factors = {k: {n: t.to(device) for n, t in f.items()}
                            for k, f in extra["factors"].items()}
            self._inverses = {}
