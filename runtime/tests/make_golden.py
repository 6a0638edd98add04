"""Regenerate runtime/tests/golden/: a small container with every codec and its expected hashes.

Run from the repository root: ``.venv/bin/python runtime/tests/make_golden.py``. The files are kept
in the repository so that a change to the encoder or the format shows up as a diff.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
from ecw_harness import expected_lines  # noqa: E402
from edgecompile.container import QuantInfo, encode_container, kmeans_cluster, rans, read_container  # noqa: E402
from edgecompile.container.writer import _layout  # noqa: E402

GOLDEN = ROOT / "runtime" / "tests" / "golden"


def golden_tensors() -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(20240601)
    w = rng.normal(0, 0.1, (16, 40)).astype(np.float32)
    q = np.clip(np.round(w / (np.abs(w).max(1, keepdims=True) / 127)), -127, 127).astype(np.int8)
    tensors = {
        "conv.weight": q.reshape(16, 10, 2, 2),
        "conv.bias": rng.integers(-900, 900, 16).astype(np.int32),
        "fc.weight": np.clip(np.round(rng.laplace(0, 9, (8, 300))), -127, 127).astype(np.int8),
        "fc.float": w[:4],
        "fc.clustered": kmeans_cluster(w, 3),
        "mask": (rng.random(200) < 0.2).astype(np.uint8),
        "embed": np.tile(np.arange(-8, 8, dtype=np.int8), 64).reshape(32, 32),
        # 2^17 pruned weights: a block of 32 lanes (two AVX-512 vectors) in about 20 KB
        "pruned": np.where(rng.random(1 << 17) < 0.1, np.clip(np.round(rng.laplace(0, 20, 1 << 17)), -127, 127),
                           0).astype(np.int8).reshape(256, 512),
    }
    # rows of three spreads: a class map with shared tables (rans flags bit 1)
    spread = np.array([2.0, 9.0, 40.0])[rng.integers(0, 3, 96)]
    tensors["rows"] = np.clip(np.round(rng.laplace(0, spread[:, None], (96, 200))), -127, 127).astype(np.int8)
    codecs = {"rows": "rans", "conv.weight": "rans", "conv.bias": "raw", "fc.weight": "rans", "fc.float": "rans",
              "fc.clustered": "lut", "mask": "lut", "embed": "zstd", "pruned": "rans"}
    quant = {"conv.weight": QuantInfo(np.abs(w).max(1) / 127, np.zeros(16, np.int32), axis=0),
             "fc.weight": QuantInfo(np.array([0.01], np.float32), np.array([3], np.int32))}
    return tensors, codecs, quant


def main() -> None:
    tensors, codecs, quant = golden_tensors()
    data, _ = encode_container(tensors, quant, codec_for=codecs, layouts={"conv.weight": "oihw"})
    # "rows" is too small for the encoder to pick a class map (it wants 64 lanes a group): force one
    # with 3 classes (2-bit entries, 96 rows) and 8 lanes, as a payload spliced into the same layout.
    sym = tensors["rows"].view(np.uint8)
    classes = rans.fit_classes(rans.group_counts(sym.ravel(), np.full(96, 200)), (3,))[3]
    plan = dataclasses.replace(rans.plan(sym.ravel(), 3, classes=classes)[0], lanes=8, block=8 * 512)
    chosen = {r.name: (r.codec, data[r.offset : r.offset + r.encoded_size]) for r in read_container(data).records}
    chosen["rows"] = ("rans", rans.encode_batch([plan])[0])
    data = _layout(tensors, quant, {"conv.weight": "oihw"}, chosen)[0]
    GOLDEN.mkdir(parents=True, exist_ok=True)
    (GOLDEN / "golden.ecw").write_bytes(data)
    (GOLDEN / "golden.expected").write_text("\n".join(expected_lines(tensors)) + "\n")
    print(f"golden.ecw: {len(data)} bytes")


if __name__ == "__main__":
    main()
