"""FNGD: inverse-free fast natural gradient descent (Ou, Zhu, Huang et al., 2024).

Per layer, with per-sample gradients ``U = [g_1 … g_N]`` of a mini-batch, the damped natural
gradient for the empirical Fisher is ``Δ = (UUᵀ/N + λI)⁻¹ ḡ``.  By the push-through identity
``Δ = U α`` with ``α = (UᵀU + NλI)⁻¹ 1``: a weighted sum of per-sample gradients that needs
only the ``N × N`` Gram matrix ``UᵀU``, computed from the layer's inputs and output gradients
(:mod:`edgecompile.finetune.layers`) without materializing any per-sample gradient.

FNGD solves for ``α`` while a sample is new (the first epoch, and every ``refresh_every``
epochs if set) and stores it per sample and per layer.  Later batches whose samples all have
a stored ``α`` reuse it: forward hooks scale each sample's output gradient by ``N αᵢ`` and
unscale the gradient flowing to the layer input, so the ordinary backward pass leaves
``Σ αᵢ gᵢ`` in ``weight.grad`` at the cost of a first-order step.

Conventions
-----------
* Dim 0 of every supported layer's input is the batch; ``sample_ids`` name its rows.
* ``reduction="mean"`` (default): the loss is the *mean* over the (local) batch, so autograd's
  output gradient for sample ``i`` is ``∇ℓᵢ / N`` and FNGD multiplies it by ``N`` to get the
  per-sample gradient ``gᵢ = ∇ℓᵢ``.  Use ``reduction="sum"`` for a summed loss.  Either way
  ``ḡ`` is the mean per-sample gradient and the update is ``p ← p − lr · Δ``.
* Under DDP (gradients averaged over ``W`` ranks), the Gram matrix and ``α`` are those of the
  global batch: inputs and output gradients are gathered from all ranks.
* Parameters outside Linear/Conv1d/Conv2d/Embedding layers (norms, free tensors), and layers
  whose hooks did not fire (called functionally), get SGD with momentum on the mean gradient,
  with learning rate ``fallback_lr`` (default: ``lr``).
* Momentum and (coupled, L2) weight decay act on the direction:
  ``d = Δ + wd·p;  buf = μ·buf + d;  p ← p − lr·buf``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from . import ddp, layers

log = logging.getLogger(__name__)


class FNGD(torch.optim.Optimizer):
    """Fast natural gradient descent with stored per-sample coefficients.

    Parameters
    ----------
    model:
        The module to train (may be wrapped in DistributedDataParallel).
    lr:
        Step size on the natural-gradient direction.
    damping:
        ``λ`` in ``(UUᵀ/N + λI)⁻¹``; must be positive.
    momentum, weight_decay:
        Heavy-ball momentum and L2 weight decay, applied to every parameter.
    refresh_every:
        Recompute a sample's ``α`` once it is this many epochs old (``None``: never, as in the
        paper: only in the first epoch).  Epochs are set with :meth:`set_epoch`.
    fallback_lr:
        Learning rate of the first-order update for unsupported parameters (default ``lr``).
    reduction:
        ``"mean"`` or ``"sum"``: how the training loss reduces over the batch.
    gram:
        ``"factor"`` (never form per-sample gradients) or ``"auto"`` (cheaper exact method per
        layer); see :func:`edgecompile.finetune.layers.gram`.

    Usage
    -----
    ::

        opt = FNGD(model, lr=0.05, damping=1e-3)
        for epoch in range(epochs):
            opt.set_epoch(epoch)
            for x, y, ids in loader:
                opt.set_batch(ids)          # before the forward pass
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()

    Without :meth:`set_batch`, every step solves for ``α`` and nothing is stored.
    """

    def __init__(self, model: nn.Module, lr: float = 0.05, damping: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0,
                 refresh_every: int | None = None, fallback_lr: float | None = None,
                 reduction: str = "mean", gram: str = "factor", max_gram_elems: int = 1 << 25):
        if damping <= 0:
            raise ValueError(f"FNGD damping must be > 0 (got {damping}); try 1e-3")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"FNGD reduction must be 'mean' or 'sum' (got {reduction!r})")
        if gram not in ("factor", "auto"):
            raise ValueError(f"FNGD gram must be 'factor' or 'auto' (got {gram!r})")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"FNGD refresh_every must be >= 1 or None (got {refresh_every})")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("FNGD: the model has no trainable parameters")
        defaults = dict(lr=lr, damping=damping, momentum=momentum, weight_decay=weight_decay,
                        fallback_lr=lr if fallback_lr is None else fallback_lr)
        super().__init__(params, defaults)
        self.reduction, self.gram_mode, self.max_gram_elems = reduction, gram, max_gram_elems
        self.refresh_every = refresh_every
        self._layers = [(name, m) for name, m in model.named_modules()
                        if layers.is_supported(m) and m.weight.requires_grad]
        self.layer_names = [name for name, _ in self._layers]
        self._index = {id(m): i for i, (_, m) in enumerate(self._layers)}
        self._handles = []
        for _, module in self._layers:
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook))
        device = params[0].device
        self.alpha = torch.full((0, len(self._layers)), float("nan"), dtype=torch.float64,
                                device=device)
        self.alpha_epoch = torch.full((0,), -1, dtype=torch.long, device=device)
        self.epoch = 0
        self._reset_batch()
        self._warned: set[str] = set()

    # ----------------------------------------------------------------- batch protocol
    def set_epoch(self, epoch: int) -> None:
        """Tell FNGD the current epoch (drives ``refresh_every``)."""
        self.epoch = int(epoch)

    def set_batch(self, sample_ids: torch.Tensor | Iterable[int]) -> None:
        """Name the dataset rows of the next forward pass (call before it).

        Decides whether this step solves for ``α`` (some sample has none, or a stale one)
        or reuses the stored ``α`` at first-order cost.
        """
        ids = torch.as_tensor(sample_ids, dtype=torch.long).to(self.alpha.device).reshape(-1)
        if ids.numel() == 0:
            raise ValueError("FNGD.set_batch: empty batch of sample ids")
        if int(ids.min()) < 0:
            raise ValueError("FNGD.set_batch: sample ids must be non-negative dataset indices")
        self._grow(int(ids.max()) + 1)
        stamp = self.alpha_epoch[ids]
        fresh = stamp >= 0
        if self.refresh_every is not None:
            fresh &= (self.epoch - stamp) < self.refresh_every
        reuse = torch.tensor(float(bool(fresh.all())), device=ids.device)
        if ddp.is_distributed():  # every rank must take the same branch (gathers in step)
            torch.distributed.all_reduce(reuse, op=torch.distributed.ReduceOp.MIN)
        self._reset_batch()
        self._ids = ids
        self._mode = "reuse" if bool(reuse) else "gram"
        if self._mode == "reuse":
            mult = self._multiplier(ids.numel()) * ddp.world_size()
            self._coef = self.alpha[ids] * mult  # [n, layers]

    def alpha_for(self, sample_ids: torch.Tensor) -> torch.Tensor:
        """Stored ``α`` of the given samples, ``[n, layers]`` (NaN where none yet)."""
        ids = torch.as_tensor(sample_ids, dtype=torch.long, device=self.alpha.device)
        return self.alpha[ids]

    def remove_hooks(self) -> None:
        """Detach FNGD from the model (the optimizer is unusable afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _grow(self, size: int) -> None:
        if size <= self.alpha.shape[0]:
            return
        extra = max(size, 2 * self.alpha.shape[0]) - self.alpha.shape[0]
        self.alpha = torch.cat([self.alpha, self.alpha.new_full((extra, self.alpha.shape[1]),
                                                                float("nan"))])
        self.alpha_epoch = torch.cat([self.alpha_epoch, self.alpha_epoch.new_full((extra,), -1)])

    def _multiplier(self, n: int) -> float:
        return float(n) if self.reduction == "mean" else 1.0

    def _reset_batch(self) -> None:
        self._mode = "gram"
        self._ids = None
        self._global_ids = None
        self._coef = None
        self._captures: dict[int, list] = {}
        self._scaled: set[int] = set()

    # ----------------------------------------------------------------- hooks
    def _active(self, x) -> bool:
        return torch.is_grad_enabled() and isinstance(x, torch.Tensor)

    def _batch_coef(self, layer: int, n: int) -> torch.Tensor | None:
        if self._coef is None:
            return None
        if n != self._coef.shape[0]:
            name = self.layer_names[layer]
            raise ValueError(f"FNGD: layer {name!r} saw a batch of {n} rows but set_batch got "
                             f"{self._coef.shape[0]} sample ids (dim 0 must be the batch)")
        coef = self._coef[:, layer]
        return None if bool(torch.isnan(coef).any()) else coef

    def _pre_hook(self, module, args):
        if self._mode != "reuse" or not args or not self._active(args[0]):
            return None
        x = args[0]
        coef = self._batch_coef(self._index[id(module)], x.shape[0])
        if coef is None or not x.requires_grad:
            return None
        # Undo the output scaling on the gradient sent to the input: per-sample scaling
        # commutes with a per-sample linear map.  Tiny |c| are clamped to keep 1/c finite;
        # their samples' weight contribution changes by at most eps relative.
        c = coef.to(x.dtype)
        floor = torch.finfo(x.dtype).eps * c.abs().max().clamp_min(torch.finfo(x.dtype).tiny)
        safe = torch.where(c.abs() < floor, torch.copysign(floor, c), c)
        shape = (-1,) + (1,) * (x.dim() - 1)
        inv = (1.0 / safe).view(shape)
        x = x.view_as(x)
        x.register_hook(lambda g: g * inv)
        return (x, *args[1:])

    def _post_hook(self, module, args, out):
        if not self._active(out) or not out.requires_grad:
            return None
        i = self._index[id(module)]
        if self._mode == "reuse":
            coef = self._batch_coef(i, out.shape[0])
            if coef is not None:
                scale = coef.to(out.dtype).view((-1,) + (1,) * (out.dim() - 1))
                out.register_hook(lambda g: g * scale)
                self._scaled.add(i)
            return None
        x = args[0]
        if isinstance(module, nn.Embedding):
            rows, idx = None, layers.input_rows(module, x.detach())
        else:
            rows, idx = layers.input_rows(module, x.detach()), None
        entry = [rows, idx, None]
        self._captures.setdefault(i, []).append(entry)
        mult = self._multiplier(out.shape[0])

        def grab(g, entry=entry, module=module):
            d = layers.grad_rows(module, g.detach()) * mult
            if entry[1] is not None and module.padding_idx is not None:
                d = d * (entry[1] != module.padding_idx).view(d.shape[0], 1, -1, 1).to(d.dtype)
            entry[2] = d

        out.register_hook(grab)
        return None

    # ----------------------------------------------------------------- step
    def _capture(self, i: int) -> layers.Capture | None:
        calls = self._captures.get(i, [])
        if not calls or any(c[2] is None for c in calls):
            return None
        D = torch.cat([c[2] for c in calls], dim=2)
        if calls[0][1] is not None:
            return layers.Capture(None, D, torch.cat([c[1] for c in calls], dim=1))
        return layers.Capture(torch.cat([c[0] for c in calls], dim=2), D)

    def _solve_layer(self, i: int, damping: float) -> dict[str, torch.Tensor] | None:
        cap = self._capture(i)
        if cap is None:
            return None
        module = self._layers[i][1]
        if ddp.is_distributed():
            D = ddp.gather_rows(cap.D.contiguous())[0]
            A = ddp.gather_rows(cap.A.contiguous())[0] if cap.A is not None else None
            idx = ddp.gather_rows(cap.idx.contiguous())[0] if cap.idx is not None else None
            cap = layers.Capture(A, D, idx)
        work = cap
        if cap.D.dtype in (torch.float16, torch.bfloat16):
            work = layers.Capture(None if cap.A is None else cap.A.float(), cap.D.float(), cap.idx)
        K = layers.gram(work, self.gram_mode, self.max_gram_elems)
        try:
            alpha = layers.damped_coefficients(K, damping)
        except FloatingPointError as err:
            raise FloatingPointError(f"FNGD layer {self.layer_names[i]!r}: {err}; lower the "
                                     "learning rate or raise the damping") from None
        if self._ids is not None:
            # Every rank stores the whole global batch's alpha: the next epoch deals the
            # samples to other ranks.
            self.alpha[self._global_ids, i] = alpha.to(self.alpha.device)
        step = layers.weighted_grad(module, work, alpha.to(work.D.dtype))
        return {id(getattr(module, k)): v for k, v in step.items()}

    @torch.no_grad()
    def step(self, closure=None):
        """Update the parameters from the last forward/backward pass."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        directions: dict[int, torch.Tensor] = {}
        if self._mode == "gram":
            if self._ids is not None:
                self._global_ids = ddp.gather_rows(self._ids)[0]
                self._grow(int(self._global_ids.max()) + 1)
            for i in range(len(self._layers)):
                solved = self._solve_layer(i, group["damping"])
                if solved is None:
                    self._warn_fallback(i)
                else:
                    directions.update(solved)
            if self._ids is not None:
                self.alpha_epoch[self._global_ids] = self.epoch
        else:
            for i, (_, module) in enumerate(self._layers):
                if i not in self._scaled:
                    self._warn_fallback(i)
                    continue
                for p in module.parameters(recurse=False):
                    if p.grad is not None:
                        directions[id(p)] = p.grad
        for group in self.param_groups:
            self._apply(group, directions)
        self._reset_batch()
        return loss

    def _apply(self, group: dict, directions: dict[int, torch.Tensor]) -> None:
        mu, wd = group["momentum"], group["weight_decay"]
        for p in group["params"]:
            d = directions.get(id(p))
            lr = group["lr"]
            if d is None:
                if p.grad is None:
                    continue
                d, lr = p.grad, group["fallback_lr"]
            d = d.to(p.dtype)
            if wd:
                d = d.add(p, alpha=wd)
            if mu:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(mu).add_(d)
                d = buf
            p.add_(d, alpha=-lr)

    def _warn_fallback(self, i: int) -> None:
        name = self.layer_names[i]
        if name not in self._warned:
            self._warned.add(name)
            log.info("FNGD: layer %r was not seen through its hooks this step "
                     "(called functionally?); it gets the first-order update", name)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["fngd"] = {"alpha": self.alpha.clone(), "alpha_epoch": self.alpha_epoch.clone(),
                      "epoch": self.epoch, "layer_names": list(self.layer_names)}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("fngd", None)
        if extra is not None and list(extra["layer_names"]) != self.layer_names:
            raise ValueError("FNGD.load_state_dict: the saved state is for layers "
                             f"{extra['layer_names'][:4]}…, this model has "
                             f"{self.layer_names[:4]}…; load it into the same model")
        super().load_state_dict(state_dict)
        if extra is None:
            return
        device = self.alpha.device
        self.alpha = extra["alpha"].to(device)
        self.alpha_epoch = extra["alpha_epoch"].to(device)
        self.epoch = int(extra["epoch"])
