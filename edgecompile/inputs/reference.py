"""The PyTorch reference and the bundle run on the same sample sets, every output kept.

Samples are tuples of arrays (one per model input, samples on axis 0); a static-batch graph runs
them in its batch size, the last partial batch padded and cut back so that every sample counts.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .samples import Samples
from .model import LoadedModel, tensor_leaves

log = logging.getLogger(__name__)


def _padded_batches(samples: Samples, batch: int):
    """(inputs, valid rows) for consecutive batches of the graph's static size; the last partial
    batch is padded with copies of its last sample so that every sample is verified."""
    n = len(samples[0])
    for i in range(0, n, batch):
        xs = [a[i:i + batch] for a in samples]
        k = len(xs[0])
        if k < batch:
            xs = [np.concatenate([x, np.repeat(x[-1:], batch - k, axis=0)]) for x in xs]
        yield xs, k


def reference_outputs(loaded: LoadedModel, samples: Samples, batch: int) -> list[np.ndarray]:
    """Every output of the PyTorch model on every sample: in chunks of 64 when the model takes any
    batch size (eager models usually do), else in the graph's static batch size."""
    n = len(samples[0])

    def run(xs) -> list[np.ndarray]:
        return [t.detach().float().numpy() for t in tensor_leaves(loaded.module(*[torch.from_numpy(x) for x in xs]))]

    with torch.no_grad():
        try:
            parts = [run([a[i:min(i + 64, n)] for a in samples]) for i in range(0, n, 64)]
            if all(p[0].shape[0] == min(64, n - 64 * j) for j, p in enumerate(parts)):
                return [np.concatenate(o) for o in zip(*parts)]
        except Exception:  # a model tied to its example batch size
            log.debug("reference model rejects other batch sizes; running batch %d", batch)
        parts = [[o[:k] for o in run(xs)] for xs, k in _padded_batches(samples, batch)]
    return [np.concatenate(o) for o in zip(*parts)]


def bundle_outputs(session, samples: Samples, batch: int) -> list[np.ndarray]:
    parts = [[o[:k] for o in session.run(*xs)] for xs, k in _padded_batches(samples, batch)]
    return [np.concatenate(o) for o in zip(*parts)]
