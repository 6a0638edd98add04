"""FNGD's forward/backward hooks on the supported layers.

Modes (set per batch by :class:`~edgecompile.finetune.fngd.FNGD`):

``"capture"``
    Record each layer's input rows and, on the backward pass, its per-sample output gradients
    (the layer's matrix form, :mod:`edgecompile.finetune.layers`), for the Gram matrix.
``"reuse"`` (per-layer coefficients only)
    Scale each sample's output gradient by its stored coefficient (times ``N`` for a mean
    loss) and unscale the gradient flowing to the layer input, so the ordinary backward pass
    leaves ``Σ cᵢ gᵢ`` in the layer's ``.grad``.
``"off"``
    No hooks attached at all (shared coefficients reuse through the reweighted loss).
"""
from __future__ import annotations

import torch
from torch import nn

from . import layers


class LayerHooks:
    """Hooks on every supported layer of ``model`` whose weight is trainable."""

    def __init__(self, model: nn.Module, reduction: str):
        self.layers = [(name, m) for name, m in model.named_modules()
                       if layers.is_supported(m) and m.weight.requires_grad]
        self.names = [name for name, _ in self.layers]
        self._index = {id(m): i for i, (_, m) in enumerate(self.layers)}
        self.reduction = reduction
        self.mode = "capture"
        self._handles: list = []
        self._reuse_hooks = False
        self._coef = None
        self.reset()

    # ----------------------------------------------------------------- attach / mode
    def attach(self, reuse_hooks: bool) -> None:
        """Register the hooks (``reuse_hooks``: also the input pre-hook of ``"reuse"``)."""
        self._reuse_hooks = reuse_hooks
        if self._handles:
            return
        for _, module in self.layers:
            if reuse_hooks:
                self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def set_mode(self, mode: str, coef: torch.Tensor | None = None, scale: int = 1) -> None:
        """``"capture"``, ``"reuse"`` (with ``coef`` ``[n, layers]``, times ``scale``, which
        DDP's gradient averaging divides out) or ``"off"``."""
        self.reset()
        self.mode = mode
        if mode == "off":
            self.detach()
            return
        if not self._handles:
            self.attach(self._reuse_hooks)
        if mode == "reuse":
            mult = float(coef.shape[0]) if self.reduction == "mean" else 1.0
            self._coef = coef * (mult * scale)

    def reset(self) -> None:
        self._captures: dict[int, list] = {}
        self.scaled: set[int] = set()
        if self.mode != "reuse":
            self._coef = None

    # ----------------------------------------------------------------- hooks
    @staticmethod
    def _active(x) -> bool:
        return torch.is_grad_enabled() and isinstance(x, torch.Tensor)

    def _batch_coef(self, layer: int, n: int) -> torch.Tensor | None:
        if n != self._coef.shape[0]:
            raise ValueError(f"FNGD: layer {self.names[layer]!r} saw a batch of {n} rows but "
                             f"set_batch got {self._coef.shape[0]} sample ids (dim 0 must be "
                             "the batch)")
        coef = self._coef[:, layer]
        return None if bool(torch.isnan(coef).any()) else coef

    def _pre_hook(self, module, args):
        if self.mode != "reuse" or not args or not self._active(args[0]):
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
        inv = (1.0 / safe).view((-1,) + (1,) * (x.dim() - 1))
        x = x.view_as(x)
        x.register_hook(lambda g: g * inv)
        return (x, *args[1:])

    def _post_hook(self, module, args, out):
        if self.mode == "off" or not self._active(out) or not out.requires_grad:
            return None
        i = self._index[id(module)]
        if self.mode == "reuse":
            coef = self._batch_coef(i, out.shape[0])
            if coef is not None:
                scale = coef.to(out.dtype).view((-1,) + (1,) * (out.dim() - 1))
                out.register_hook(lambda g: g * scale)
                self.scaled.add(i)
            return None
        x = args[0]
        if isinstance(module, nn.Embedding):
            rows, idx = None, layers.input_rows(module, x.detach())
        elif isinstance(module, nn.Linear):
            rows, idx = layers.input_rows(module, x.detach()), None
        else:  # a convolution keeps its input: its rows are formed only if needed (gram)
            rows, idx = x.detach(), None
        entry = [rows, idx, None]
        self._captures.setdefault(i, []).append(entry)
        mult = float(out.shape[0]) if self.reduction == "mean" else 1.0

        def grab(g, entry=entry, module=module):
            d = layers.grad_rows(module, g.detach()) * mult
            if entry[1] is not None and module.padding_idx is not None:
                d = d * (entry[1] != module.padding_idx).view(d.shape[0], 1, -1, 1).to(d.dtype)
            entry[2] = d

        out.register_hook(grab)
        return None

    def capture(self, i: int) -> layers.Capture | None:
        """Layer ``i``'s matrix form for this batch (``None`` if its hooks did not fire)."""
        calls = self._captures.get(i, [])
        if not calls or any(c[2] is None for c in calls):
            return None
        def cat(k, dim):  # no copy for the usual single call
            return calls[0][k] if len(calls) == 1 else torch.cat([c[k] for c in calls], dim)

        D = cat(2, 2)
        if calls[0][1] is not None:
            return layers.Capture(None, D, cat(1, 1))
        module = self.layers[i][1]
        if isinstance(module, nn.Linear):
            return layers.Capture(cat(0, 2), D)
        if len(calls) == 1:
            return layers.Capture(None, D, x=calls[0][0], module=module)
        # shared convolution: the calls' rows side by side along t
        return layers.Capture(torch.cat([layers.input_rows(module, c[0]) for c in calls], 2), D)
