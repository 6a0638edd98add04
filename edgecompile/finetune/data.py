"""Fine-tuning data: tensors in memory, index-aware batches, DDP sharding of global batches.

Every batch carries the dataset indices of its rows (FNGD stores its coefficients per
sample).  Under DDP each global batch is cut into equal contiguous slices, one per rank, so
``N`` ranks see exactly the global batch a single process would see.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ..errors import InputError


class FinetuneDataError(InputError, ValueError):
    """The fine-tuning data cannot be used (empty, mismatched, unreadable)."""


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.from_numpy(np.ascontiguousarray(x))
    except TypeError as err:
        raise FinetuneDataError(f"{what} must be a tensor or numpy array ({err})") from None


@dataclass(frozen=True)
class FinetuneData:
    """Inputs (one tensor per model input, dim 0 = samples), optional labels and eval split.

    Integer ``labels`` mean classification (cross-entropy), floating ``labels`` regression
    (MSE); without labels the loss is distillation from the teacher.
    """

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None = None
    eval_inputs: tuple[torch.Tensor, ...] | None = None
    eval_labels: torch.Tensor | None = None

    def __post_init__(self):
        _check_split(self.inputs, self.labels, "inputs")
        if self.eval_inputs is not None:
            _check_split(self.eval_inputs, self.eval_labels, "eval_inputs")
        elif self.eval_labels is not None:
            raise FinetuneDataError("eval_labels given without eval_inputs")

    @classmethod
    def from_arrays(cls, inputs, labels=None, eval_inputs=None, eval_labels=None) -> FinetuneData:
        """Build from tensors/arrays; ``inputs`` may be one array or a tuple of arrays."""

        def tup(x, what):
            if x is None:
                return None
            xs = x if isinstance(x, (tuple, list)) else (x,)
            return tuple(_as_tensor(v, what) for v in xs)

        lab = None if labels is None else _as_tensor(labels, "labels")
        ev_lab = None if eval_labels is None else _as_tensor(eval_labels, "eval_labels")
        return cls(tup(inputs, "inputs"), lab, tup(eval_inputs, "eval_inputs"), ev_lab)

    @classmethod
    def from_npz(cls, path: str | Path) -> FinetuneData:
        """Load ``x`` (or ``x0``, ``x1``… for several inputs), optional ``y``, ``x_eval``,
        ``y_eval`` from an ``.npz`` file (the ``--finetune DATA`` format)."""
        path = Path(path)
        if not path.is_file():
            raise FinetuneDataError(f"fine-tuning data file {path} does not exist")
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise FinetuneDataError(f"cannot read {path} as .npz: {err}") from None
        keys = set(z.files)

        def inputs(prefix):
            if prefix in keys:
                return z[prefix]
            many = sorted((k for k in keys if k.startswith(prefix) and k[len(prefix):].isdigit()),
                          key=lambda k: int(k[len(prefix):]))
            return tuple(z[k] for k in many) or None

        x = inputs("x")
        if x is None:
            raise FinetuneDataError(f"{path} has no 'x' array (found {sorted(keys)}); save "
                                    "inputs as x (or x0, x1, …) and labels as y")
        xe = inputs("x_eval")
        return cls.from_arrays(x, z["y"] if "y" in keys else None, xe,
                               z["y_eval"] if "y_eval" in keys else None)

    def __len__(self) -> int:
        return self.inputs[0].shape[0]

    @property
    def has_labels(self) -> bool:
        return self.labels is not None


def _check_split(inputs, labels, what: str) -> None:
    if not inputs:
        raise FinetuneDataError(f"{what}: no input arrays")
    n = inputs[0].shape[0] if inputs[0].dim() else 0
    if n == 0:
        raise FinetuneDataError(f"{what}: the fine-tuning data is empty (0 samples); give at "
                                "least one batch of inputs")
    for k, x in enumerate(inputs):
        if x.dim() == 0 or x.shape[0] != n:
            raise FinetuneDataError(f"{what}[{k}] has {x.shape[0] if x.dim() else 0} samples, "
                                    f"{what}[0] has {n}; all inputs need the same first dim")
    if labels is not None and labels.shape[0] != n:
        raise FinetuneDataError(f"{what}: {labels.shape[0]} labels for {n} samples")


@dataclass(frozen=True)
class Batch:
    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None
    ids: torch.Tensor


def batches(data: FinetuneData, batch_size: int, epoch: int, seed: int, device: torch.device,
            rank: int = 0, world: int = 1, shuffle: bool = True,
            fixed: bool = False, subset: torch.Tensor | None = None) -> Iterator[Batch]:
    """This rank's slices of the epoch's global batches.

    The permutation depends only on ``(seed, epoch)``, so every rank agrees on it.  ``fixed``:
    every epoch has the batches of epoch 0 (same samples together, on the same rank), only
    their order shuffled: FNGD's stored coefficients then meet the batch they were solved in.  The last
    global batch may be smaller (rounded down to a multiple of ``world``; the fewer than
    ``world`` samples left over change every epoch), so every sample is visited in the first
    epoch on one process.  ``batch_size`` is global and must divide by ``world``.  ``subset``:
    only these sample ids (TWA-v's split), in an order drawn the same way.
    """
    if batch_size % world:
        raise FinetuneDataError(f"batch size {batch_size} does not divide by the {world} "
                                "ranks; pick a multiple")
    n = len(data) if subset is None else len(subset)
    if n < world:
        raise FinetuneDataError(f"{n} samples cannot be split over {world} ranks")
    g = torch.Generator().manual_seed(seed * 1_000_003 + (0 if fixed else epoch))
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    if subset is not None:
        order = subset[order]
    spans, start = [], 0
    while n - start >= world:
        size = min(batch_size, (n - start) // world * world)
        spans.append((start, size // world))
        start += size
    if fixed and shuffle:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        spans = [spans[i] for i in torch.randperm(len(spans), generator=g).tolist()]
    for start, local in spans:
        ids = order[start + rank * local:start + (rank + 1) * local]
        labels = None if data.labels is None else data.labels[ids].to(device)
        yield Batch(tuple(x[ids].to(device) for x in data.inputs), labels, ids)


def eval_batches(inputs: tuple[torch.Tensor, ...], labels: torch.Tensor | None,
                 batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Sequential batches over an evaluation split (every row, in order)."""
    n = inputs[0].shape[0]
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        yield Batch(tuple(x[sl].to(device) for x in inputs),
                    None if labels is None else labels[sl].to(device), torch.arange(n)[sl])
