"""Sample sets for calibration, fine-tuning and verification.

A `Samples` is a tuple with one array per model input, samples stacked on axis 0 (each sample
shaped like the graph input without its batch axis). `batches` cuts it into the graph's static
batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..ir import Graph
from ..ir.analysis import total_macs
from ..errors import InputError

log = logging.getLogger(__name__)

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


def split_data(loaded, graph: Graph, *, calib_path: Path | None, max_eval: int | None,
               seed: int = 0) -> tuple[Samples, Samples, np.ndarray | None, str]:
    """Calibration and held-back evaluation samples, their labels and a note on where they come from:
    the ``--calib`` file (its last 20 % held back), the factory's data (`loaded.data`), or synthetic.
    The user's eval set is used whole unless `max_eval` (``--max-eval``) caps it (the note says so)."""
    if calib_path is not None:
        samples, labels = load_samples(Path(calib_path), graph)
        n = len(samples[0])
        cut = max(1, int(0.8 * n)) if n > 1 else 1
        calib = tuple(a[:cut] for a in samples)
        evals = tuple(a[cut:] for a in samples) if n > 1 else calib
        lab = labels[cut:] if labels is not None and n > 1 else None
        note = (f"held-back 20% of {calib_path}" if n > 1 else
                f"the one sample of {calib_path}, also used for calibration (not held back: give more samples)")
    elif "calib" in loaded.data:
        calib = as_samples(graph, loaded.data["calib"], "the factory's data['calib']")
        evals = as_samples(graph, loaded.data.get("eval", calib), "the factory's data['eval']")
        lab, note = loaded.data.get("labels"), "the factory's held-back evaluation data"
    else:
        calib = synthesize_samples(graph, 128, seed=seed)
        log.warning("no calibration data given (--calib); using random inputs, fidelity figures are weak")
        # Our own random inputs: ~4e10 MACs of verification (at least 32 samples) is plenty.
        macs = total_macs(graph) // max(graph.inputs[0].shape[0], 1) if graph.inputs else 0
        cap = int(min(128, max(32, 4e10 // max(macs, 1))))
        return calib, _limit(calib, cap), None, f"{cap} random inputs (no --calib given)"
    n_eval = len(evals[0])
    if max_eval is not None and n_eval > max_eval:
        note += f" (capped by --max-eval at {max_eval} of {n_eval} samples)"
        evals, lab = _limit(evals, max_eval), _limit_labels(lab, max_eval)
    if lab is not None and len(lab) < len(evals[0]):
        raise DataError(f"{len(lab)} labels for {len(evals[0])} evaluation samples; give one label per sample")
    return calib, evals, None if lab is None else np.asarray(lab), note


def _limit(s: Samples, cap: int) -> Samples:
    return tuple(a[:cap] for a in s)


def _limit_labels(labels, cap: int):
    return None if labels is None else np.asarray(labels)[:cap]
