"""Seed corpus for the libFuzzer target: small valid containers of every codec (kept in git).

The hex-named files beside the seeds are minimized fuzzer finds (<= 1 KiB each) that add
coverage; bench/fuzz_long.sh refreshes them.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from edgecompile.container import encode_container, kmeans_cluster, rans  # noqa: E402
from edgecompile.container.writer import _layout  # noqa: E402

rng = np.random.default_rng(7)
out = ROOT / "runtime" / "fuzz" / "corpus"
out.mkdir(parents=True, exist_ok=True)
w = rng.normal(0, 0.1, (8, 24)).astype(np.float32)
q = np.clip(np.round(w * 400), -127, 127).astype(np.int8)
seeds = {
    "rans_i8": ({"w": q}, "rans"), "rans_f32": ({"w": w}, "rans"), "lut_packed": ({"w": kmeans_cluster(w, 2)}, "lut"),
    "lut_rans": ({"w": np.repeat(kmeans_cluster(w, 3), 40)}, "lut"), "zstd": ({"w": q}, "zstd"),
    "raw": ({"w": q, "b": np.arange(5, dtype=np.int32)}, "raw"),
    "rans_lanes": ({"w": rng.integers(0, 7, 20000).astype(np.uint8)}, "rans"),
    # trained-like histograms: knot tables (one with a zero-weight hole around 0, as after pruning)
    "rans_knots": ({"w": np.clip(np.round(rng.laplace(0, 8, 3000)), -127, 127).astype(np.int8)}, "rans"),
    "rans_knots_pruned": ({"w": np.where(rng.random(3000) < 0.4, np.clip(np.round(rng.laplace(0, 30, 3000)), -127, 127),
                                         0).astype(np.int8)}, "rans"),
    # rows of three spreads: a class map (shared tables, rows written through the row cursor)
    "rans_classes": ({"w": np.clip(np.round(rng.laplace(0, np.array([1.0, 6.0, 30.0])[rng.integers(0, 3, 40)][:, None],
                                                        (40, 50))), -127, 127).astype(np.int8)}, "rans"),
}
# Blocks of 8 and 64 lanes (the AVX2 and AVX-512 steps), forced on small tensors so that an
# execution stays fast: the encoder itself gives 64 lanes only from 131072 symbols.
forced_lanes = {"rans_w8": 8, "rans_w64": 64}
for name, w in forced_lanes.items():
    seeds[name] = ({"w": rng.integers(0, 5, 40 * w + 3).astype(np.uint8)}, "rans")
# Tensors over 64 KiB (the harness used to skip them): 64 lanes chosen by the encoder itself, a zstd
# frame of 1 MiB and a lut of 128 KiB, each a few KiB on disk (skewed or repetitive values).
seeds["rans_large"] = ({"w": (rng.random(300_000) < 0.01).astype(np.uint8)}, "rans")
seeds["zstd_large"] = ({"w": np.repeat(np.arange(16, dtype=np.int8), 1 << 16)}, "zstd")
seeds["lut_large"] = ({"w": np.repeat(kmeans_cluster(rng.normal(0, 0.1, 256).astype(np.float32), 2), 128)}, "lut")
for name, (tensors, codec) in seeds.items():
    data, _ = encode_container(tensors, codec_for={k: codec for k in tensors})
    if name in forced_lanes:
        w = forced_lanes[name]
        plan = dataclasses.replace(rans.plan(tensors["w"], 1)[0], lanes=w, block=16 * w)
        data = _layout(tensors, {}, {}, {"w": ("rans", rans.encode_batch([plan])[0])})[0]
    # first byte 'E' (0x45) is odd: the harness also tries the input with its table CRC fixed
    (out / f"{name}.ecw").write_bytes(data)
print(sum(p.stat().st_size for p in out.iterdir()), "bytes")
