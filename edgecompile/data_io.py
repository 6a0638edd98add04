"""Sample sets for calibration, fine-tuning and verification.

A `Samples` is a tuple with one array per model input, samples stacked on axis 0 (each sample
shaped like the graph input without its batch axis). `batches` cuts it into the graph's static
batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .ir import Graph
from .errors import InputError

Samples = tuple[np.ndarray, ...]


class DataError(InputError, ValueError):
    """Sample data that does not fit the model (names the input, expected and actual shapes)."""


def _coerce(graph: Graph, arrays: list[np.ndarray], source: str) -> Samples:
    if len(arrays) != len(graph.inputs):
        raise DataError(f"{source}: {len(arrays)} arrays for a model with {len(graph.inputs)} inputs "
                        f"({', '.join(v.name for v in graph.inputs)})")
    out = []
    for v, a in zip(graph.inputs, arrays):
        a = np.asarray(a)
        want = tuple(v.shape[1:])
        if a.shape[1:] != want:
            if a.shape == want:  # a single sample
                a = a[None]
            else:
                raise DataError(f"{source}: input {v.name!r} needs samples shaped {list(want)}, got "
                                f"{list(a.shape[1:])} (array {list(a.shape)})")
        out.append(a.astype(v.dtype, copy=False))
    n = {len(a) for a in out}
    if len(n) != 1 or 0 in n:
        raise DataError(f"{source}: inputs have different or zero sample counts {sorted(n)}")
    return tuple(out)


def check_npz(path: Path, what: str) -> None:
    """Raises `DataError` unless `path` is a readable .npz holding at least one input array (checked
    before the model is loaded; the arrays are matched to the model's inputs by `load_samples`)."""
    if not path.is_file():
        raise DataError(f"{what} {path}: no such file; give an .npz of model inputs")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = [k for k in z.files if k not in ("labels", "y")]
            # read every array now: object arrays (pickles), headers claiming more data than the
            # file holds, and NaN are found before the model is loaded
            bad = [k for k in keys if (a := z[k]).dtype.kind in "fc" and not np.isfinite(a).all()]
    except Exception as e:   # zipfile, numpy, OS and allocation errors: not an .npz of arrays
        raise DataError(f"{what} {path} is not a readable .npz file ({type(e).__name__}: {e}); save it with "
                        "numpy.savez") from None
    if not keys:
        raise DataError(f"{what} {path} holds no input arrays (only labels, or nothing); save the inputs "
                        "with numpy.savez")
    if bad:
        raise DataError(f"{what} {path}: array {bad[0]!r} holds inf or NaN; give finite model inputs")


def load_samples(path: Path, graph: Graph) -> tuple[Samples, np.ndarray | None]:
    """Reads an .npz: arrays named like the graph inputs (or arr_0, arr_1, ...), optional `labels`."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file: {e}") from e
    keys = [k for k in z.files if k not in ("labels", "y")]
    names = [v.name for v in graph.inputs]
    if all(n in z.files for n in names):
        arrays = [z[n] for n in names]
    else:
        arrays = [z[k] for k in sorted(keys)]
    labels = z["labels"] if "labels" in z.files else (z["y"] if "y" in z.files else None)
    return _coerce(graph, arrays, str(path)), labels


def synthesize_samples(graph: Graph, n: int, seed: int = 0) -> Samples:
    """Random inputs shaped like the graph's: normal floats; integer ids below the table they index."""
    rng = np.random.default_rng(seed)
    out = []
    for v in graph.inputs:
        shape = (n,) + tuple(v.shape[1:])
        if v.dtype.startswith("float"):
            out.append(rng.standard_normal(shape).astype(v.dtype))
            continue
        high = 2
        for node, i in v.uses:
            if node.op == "gather" and i == 1 and node.input(0).is_const:
                high = node.input(0).shape[node.attrs["axis"]]
        out.append(rng.integers(0, high, shape).astype(v.dtype))
    return tuple(out)


def batches(samples: Samples, batch: int, limit: int | None = None) -> Iterator[list[np.ndarray]]:
    """Consecutive full batches (the graph's static batch size); a remainder is dropped."""
    n = len(samples[0])
    if n < batch:
        raise DataError(f"{n} samples are fewer than the model's batch size {batch}")
    count = 0
    for i in range(0, n - batch + 1, batch):
        if limit is not None and count >= limit:
            return
        yield [a[i:i + batch] for a in samples]
        count += 1


def as_samples(graph: Graph, arrays, source: str = "data") -> Samples:
    return _coerce(graph, list(arrays), source)
