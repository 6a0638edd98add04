"""Model outputs as flat tuples of per-sample tensors, and the teacher's outputs cached once.

Both sides of distillation are flattened the same way: ``torch.utils._pytree.tree_leaves``
(tensors only) of whatever the model returns (a tensor, tuple, dict, transformers
``ModelOutput``), which is also the order ``torch.export`` and therefore the IR give the
outputs.  An output whose batch axis is not 0 (an LSTM state laid out ``[layers, B, h]``) is
moved to axis 0 first; the axis is found by running the teacher on two batch sizes.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .data import FinetuneDataError, eval_batches

log = logging.getLogger(__name__)

#: Default bound on the memory of cached teacher outputs (training and eval split together).
TEACHER_CACHE_BYTES = 2 << 30


def flatten_outputs(out) -> tuple[torch.Tensor, ...]:
    """The tensors of a model output, in ``tree_leaves`` order (non-tensor leaves dropped).

    A mapping type that pytree does not know (a ``ModelOutput`` subclass from a transformers
    version that does not register it) is opened by its values, in order, like a dict.
    """
    leaves = []
    for leaf in tree_leaves(out):
        if isinstance(leaf, torch.Tensor):
            leaves.append(leaf)
        elif isinstance(leaf, Mapping):
            leaves.extend(flatten_outputs(tuple(leaf.values())))
        elif isinstance(leaf, (tuple, list)):
            leaves.extend(flatten_outputs(tuple(leaf)))
    if not leaves:
        raise TypeError(f"cannot train on a model output of type {type(out).__name__} "
                        "(it holds no tensors)")
    return tuple(leaves)


def batch_first(outs: Sequence[torch.Tensor], axes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Each output with its batch axis moved to 0 (``axes[k]``: the batch axis of output k)."""
    return tuple(o if a == 0 else o.movedim(a, 0) for o, a in zip(outs, axes))


@torch.no_grad()
def find_batch_axes(model: nn.Module, inputs: Sequence[torch.Tensor],
                    n_outputs: int) -> tuple[int, ...]:
    """Per output, the axis whose size follows the batch: run on 2 and 3 samples, compare.

    Axis 0 when nothing tells them apart (fewer than 3 samples given, a model tied to one
    batch size, or an output whose shape does not depend on the batch).
    """
    if inputs[0].shape[0] < 3:
        return (0,) * n_outputs
    try:
        two = flatten_outputs(model(*(x[:2] for x in inputs)))
        three = flatten_outputs(model(*(x[:3] for x in inputs)))
    except (RuntimeError, ValueError, IndexError) as err:
        log.debug("batch axes not probed (%s): outputs read as batch-first", err)
        return (0,) * n_outputs
    axes = []
    for a, b in zip(two, three):
        moved = [d for d in range(min(a.dim(), b.dim())) if a.shape[d] == 2 and b.shape[d] == 3]
        axes.append(moved[0] if moved else 0)
    return tuple(axes)


@dataclass(frozen=True)
class OutputStats:
    """One teacher output over a data split: element variance and range, per-sample shape."""

    var: float
    lo: float
    hi: float
    sample_shape: tuple[int, ...]

    @property
    def in_unit_interval(self) -> bool:
        return self.lo >= 0.0 and self.hi <= 1.0


class _Moments:
    """Streaming sum, sum of squares, min and max in float64 (vectorized per batch)."""

    def __init__(self):
        self.n, self.s, self.ss = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, t: torch.Tensor) -> None:
        t64 = t.detach().to(torch.float64)
        self.n += t64.numel()
        self.s += float(t64.sum())
        self.ss += float(t64.square().sum())
        self.lo = min(self.lo, float(t64.min()))
        self.hi = max(self.hi, float(t64.max()))

    def var(self) -> float:
        mean = self.s / max(self.n, 1)
        return max(self.ss / max(self.n, 1) - mean * mean, 0.0)


class TeacherOutputs:
    """The teacher's outputs on one data split, computed once, kept on the CPU when they fit.

    The cache holds ``N × Σ_k (elements of output k per sample) × 4`` bytes for float32
    outputs: e.g. 300 images × 1000 logits = 1.2 MB, 300 sequences × 128 tokens × 384 dims =
    59 MB.  When that is more than ``cap_bytes`` the outputs are not kept and :meth:`get`
    runs the teacher on each batch instead (slower: one teacher forward per step).  Either
    way one full pass over the split runs at construction to measure :attr:`stats`.

    Parameters
    ----------
    teacher:
        The original model (eval mode, no gradients).
    inputs:
        The split's input tensors (dim 0 = samples).
    axes:
        Batch axis of every output (:func:`find_batch_axes`).
    batch_size, device:
        Batch size and device of the teacher's pass.
    cap_bytes:
        Most bytes the cache may take.
    """

    def __init__(self, teacher: nn.Module, inputs: tuple[torch.Tensor, ...], axes: Sequence[int],
                 batch_size: int, device: torch.device, cap_bytes: int = TEACHER_CACHE_BYTES):
        self.teacher, self.axes, self.device = teacher, tuple(axes), device
        n = inputs[0].shape[0]
        moments = [_Moments() for _ in axes]
        store: list[torch.Tensor] | None = None
        self.nbytes = 0
        with torch.no_grad():
            for b in eval_batches(inputs, None, batch_size, device):
                outs = self._run(b.inputs)
                if len(outs) != len(self.axes):
                    raise FinetuneDataError(f"the original model has {len(outs)} outputs, the "
                                            f"compressed one {len(self.axes)}: they must match "
                                            "one to one")
                if store is None:
                    self.nbytes = n * sum(o[0].numel() * o.element_size() for o in outs)
                    if self.nbytes <= cap_bytes:
                        store = [torch.empty((n, *o.shape[1:]), dtype=o.dtype) for o in outs]
                    else:
                        log.info("teacher outputs need %.1f MiB, over the cache cap of %.1f MiB: "
                                 "recomputed every step", self.nbytes / 2**20, cap_bytes / 2**20)
                        store = []
                for k, o in enumerate(outs):
                    moments[k].add(o)
                    if store:
                        store[k][b.ids] = o.to("cpu")
        self._store = tuple(store) if store else None
        self.stats = tuple(OutputStats(m.var(), m.lo, m.hi, tuple(o.shape[1:]))
                           for m, o in zip(moments, store or outs))

    @property
    def cached(self) -> bool:
        return self._store is not None

    def _run(self, inputs) -> tuple[torch.Tensor, ...]:
        outs = flatten_outputs(self.teacher(*inputs))
        return outs if len(outs) != len(self.axes) else batch_first(outs, self.axes)

    @torch.no_grad()
    def get(self, ids: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The outputs of samples ``ids`` (whose inputs are ``inputs``), on the device."""
        if self._store is None:
            return self._run(inputs)
        return tuple(s[ids].to(self.device, non_blocking=True) for s in self._store)
