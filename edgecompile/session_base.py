"""What the ONNX and TFLite bundle sessions share: input checks, `run`, `latency`. numpy only, so it
ships in bundles beside the loaders (no torch, no runtime of the other backend)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


class BundleSessionBase:
    """A loaded bundle: `run(*arrays) -> list`, `inputs`, `outputs`, `latency(...)`.

    Subclasses set `inputs`/`outputs` and implement `_invoke(checked_arrays) -> list[np.ndarray]`.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    path: object

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Runs the model on positional inputs (converted to the declared dtypes)."""
        if len(arrays) != len(self.inputs):
            raise ValueError(f"bundle {self.path} takes {len(self.inputs)} inputs "
                             f"({', '.join(s.name for s in self.inputs)}), got {len(arrays)}")
        checked = []
        for spec, a in zip(self.inputs, arrays):
            a = np.ascontiguousarray(a, dtype=spec.dtype)
            if a.shape != spec.shape:
                raise ValueError(f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(a.shape)}")
            checked.append(a)
        return self._invoke(checked)

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError  # abstract: each backend's session implements it

    def latency(self, inputs: list[np.ndarray], repeats: int = 50, warmup: int = 3) -> float:
        """Median wall time of one `run` over `repeats` runs, in seconds (after `warmup` runs)."""
        for _ in range(warmup):
            self.run(*inputs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.run(*inputs)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, inputs={self.inputs}, outputs={self.outputs})"
