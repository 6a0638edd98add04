"""Seeded mutation fuzzing of the Python readers: every input must end in a documented error or
read back exactly what was written.

Run: ``.venv/bin/python bench/bench_fuzz_readers.py --n 1000000`` (prints a table; ``--json`` too).

Targets (seed files written by the library's own writers, from small IR graphs and tensors):

* ``container``: ``read_container(b).read_all()`` on mutated ``.ecw`` files of every codec (raw,
  zstd, rans, lut), dtype and quantization, one tensor over 64 KiB. Half the inputs get their
  header CRC recomputed after mutating (structure-aware: the table's checks and the codecs are
  reached, not only the CRC). Documented: `ContainerError`.
* ``manifest``: `read_manifest` on mutated ``manifest.json`` bytes, and on JSON-aware mutations (a
  field replaced by a value of another type, a field removed). Documented: `BundleError`.
* ``onnx-model`` / ``tflite-model``: `load_bundle` then one `run`, and `inspect_bundle`, on bundles
  whose model file is mutated, the manifest's ``model_sha256`` removed (so the runtimes' own
  parsers are reached; with it every change is caught by the checksum). Documented: `CorruptError`
  (`BundleError`, `ContainerError`) and `BackendRuntimeError` (the runtime refuses an operator)
  from the loader, `BundleError` from inspect. These run in a worker process, so a crash of a
  runtime's native code is counted instead of ending the bench.

Counts per target: inputs, rejected with a documented error, accepted, ``accepted-wrong``
(accepted, CRC not forged, but what was read differs from what was written: names, dtypes,
shapes, layouts, quantization or data), ``undocumented`` (any other exception: the first few are
printed with their mutation seed), ``slow`` (over ``--slow-ms``), ``crashes`` (worker died).
Model-file targets also count ``accepted-changed``: a mutated model without a checksum that loads
and runs (ONNX and TFLite files have no checksum of their own; bundles carry ``model_sha256``).

Measured 2026-12-05 (``--n 1000000 --model-n 1000 --jobs 2``, 2 shared cores at load ~7):
container 1,000,000 inputs, 943,171 rejected, 56,829 accepted (bytes the reader never reads, or a
forged table with the same contents), 0 accepted-wrong, 0 undocumented, 123 over 1 s (scheduling
under that load: the slowest of 1,500 mutations of the largest seed alone takes 0.10 s); manifest
100,000: 0 undocumented, 0 accepted-wrong; ONNX model 1,000 and TFLite model 1,000: 0 undocumented,
0 crashes, 0 accepted-changed. Before the fixes it found: 92 MemoryError in 20,000 zstd-header
mutations, UnicodeDecodeError / TypeError from onnxruntime on ONNX strings, IndexError on TFLite
buffer indices.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgecompile.container import ContainerError, QuantInfo, encode_container, read_container  # noqa: E402
from edgecompile.container import format as fmt  # noqa: E402

INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 32, 1 << 62, (1 << 64) - 1, 16, 64, 4096, 65536]


# -- mutations ------------------------------------------------------------------------------------

def mutate(data: bytes, rng: random.Random, hot: int | None = None) -> bytes:
    """1-4 random edits: bit flips, bytes and little-endian ints set to interesting values, inserts,
    deletes, truncation, block copies. `hot`: half the edits fall in data[:hot] (a header)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(b)
        if n == 0:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            continue
        pos = rng.randrange(min(hot, n)) if hot and rng.random() < 0.5 else rng.randrange(n)
        op = rng.randrange(8)
        if op == 0:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2:
            width = rng.choice((2, 4, 8))
            v = rng.choice(INTERESTING) + rng.choice((-1, 0, 0, 1))
            b[pos:pos + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
        elif op == 3:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 4:
            del b[pos:pos + rng.randint(1, 64)]
        elif op == 5:
            del b[pos:]
        elif op == 6:
            src = rng.randrange(n)
            k = rng.randint(1, 64)
            b[pos:pos + k] = b[src:src + k]
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(b)


def forge_crc(data: bytes) -> bytes:
    """The container with its header/table CRC recomputed (when the header is still readable)."""
    if len(data) < fmt.HEADER.size:
        return data
    h = dict(zip((f for f, _ in fmt.HEADER_FIELDS), fmt.HEADER.unpack_from(data)))
    end = fmt.HEADER.size + fmt.ENTRY.size * h["n_tensors"] + h["meta_size"]
    if end > len(data):
        return data
    crc = zlib.crc32(data[fmt.HEADER.size:end], zlib.crc32(data[:28]))
    i = [f for f, _ in fmt.HEADER_FIELDS].index("meta_crc32")
    off = struct.calcsize("<" + "".join(c for _, c in fmt.HEADER_FIELDS[:i]))
    return data[:off] + struct.pack("<I", crc) + data[off + 4:]


# -- seeds ----------------------------------------------------------------------------------------

def container_seeds() -> list[tuple[bytes, dict]]:
    rng = np.random.default_rng(0)
    q8 = lambda w: np.clip(np.round(w * 40), -127, 127).astype(np.int8)  # noqa: E731
    # (tensors, quant, codecs, weight): the Python rANS/lut decoders step once per symbol, so most
    # inputs use small tensors; the one over 64 KiB (the C fuzz target's old limit) comes 1 in 100.
    sets = [
        ({"w": q8(rng.standard_normal((8, 16))), "b": rng.integers(-1000, 1000, 8).astype(np.int32)},
         {"w": QuantInfo(np.full(8, 0.02, np.float32), np.zeros(8, np.int32), 0)}, ("rans",), 30),
        ({"big": q8(rng.standard_normal((300, 256))), "f": rng.standard_normal((8, 8)).astype(np.float32)},
         {"big": QuantInfo(np.array([0.01], np.float32), np.array([0], np.int32), None)}, ("rans", "raw"), 1),
        ({"z": rng.standard_normal((64, 64)).astype(np.float32), "h": rng.standard_normal(50).astype(np.float16)},
         {}, ("zstd",), 30),
        ({"l": (rng.integers(-3, 4, (4, 16)) * 17).astype(np.int8), "m": np.array([True, False, True])},
         {}, ("lut", "raw"), 20),
        ({"r": rng.integers(0, 255, (4, 4, 3)).astype(np.uint8), "i64": np.arange(7, dtype=np.int64)}, {}, ("raw",),
         19),
    ]
    out = []
    for tensors, quant, codecs, weight in sets:
        data, _ = encode_container(tensors, quant, codecs=codecs)
        out += [(data, _contents(read_container(data)))] * weight
    return out


def _contents(reader) -> dict:
    got = {}
    for name, arr in reader.read_all().items():
        r, q = reader.record(name), reader.quant(name)
        got[name] = (r.dtype, r.shape, r.layout, arr.tobytes(),
                     None if q is None else (q.scale.tobytes(), q.zero_point.tobytes(), q.axis))
    return got


def tiny_graph():
    """conv + relu + flatten + linear on [1, 3, 8, 8]: the seed bundles (also tests/test_readers_total.py)."""
    from edgecompile.ir import Graph, infer_shapes

    rng = np.random.default_rng(0)
    g = Graph("tiny")
    x = g.add_input("x", (1, 3, 8, 8))
    w = g.add_const("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = g.add_const("conv.bias", rng.standard_normal(4).astype(np.float32))
    h = g.add_node("conv", [x, w, b], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1},
                   name="conv").output
    h = g.add_node("relu", [h], name="act").output
    h = g.add_node("reshape", [h], {"shape": [1, 256]}, name="flat").output
    fw = g.add_const("fc.weight", rng.standard_normal((5, 256)).astype(np.float32))
    g.outputs = [g.add_node("linear", [h, fw], name="fc").output]
    infer_shapes(g)
    return g


def write_seed_bundle(out: Path, backend: str) -> None:
    from edgecompile.build import BuildConfig, _write_bundle
    from edgecompile.targets import load_target

    out.mkdir(parents=True)
    _write_bundle(out, tiny_graph(), load_target("rpi4"), backend, BuildConfig())
    shutil.rmtree(out / "python")
    shutil.rmtree(out / "runtime", ignore_errors=True)


# -- targets --------------------------------------------------------------------------------------

def fuzz_container(n: int, seed: int, slow_ms: float, counts: Counter, examples: list, start: int = 0) -> None:
    seeds = container_seeds()
    for i in range(start, start + n):
        rng = random.Random(seed * 1_000_003 + i)
        data, want = seeds[rng.randrange(len(seeds))]
        hot = fmt.HEADER.size + fmt.ENTRY.size * len(want) + 64
        bad = mutate(data, rng, hot)
        forged = rng.random() < 0.5
        if forged:
            bad = forge_crc(bad)
        t0 = time.perf_counter()
        try:
            got = _contents(read_container(bad))
        except ContainerError:
            counts["rejected"] += 1
        except Exception as e:  # anything else is a reader bug: counted and shown
            counts["undocumented"] += 1
            if len(examples) < 5:
                examples.append(f"container #{i}: {type(e).__name__}: {e}")
        else:
            counts["accepted"] += 1
            if not forged and got != want and bad != data:
                counts["accepted-wrong"] += 1
                if len(examples) < 5:
                    examples.append(f"container #{i}: accepted with different contents")
        counts["slow"] += (time.perf_counter() - t0) * 1e3 > slow_ms
        counts["inputs"] += 1


def _container_worker(start: int, n: int, seed: int, slow_ms: float, conn) -> None:
    counts, examples = Counter(), []
    fuzz_container(n, seed, slow_ms, counts, examples, start)
    conn.send((counts, examples))
    conn.close()


def fuzz_container_jobs(n: int, jobs: int, seed: int, slow_ms: float, counts: Counter, examples: list) -> None:
    """`fuzz_container` over `jobs` processes (input i is the same whatever the split)."""
    if jobs <= 1:
        fuzz_container(n, seed, slow_ms, counts, examples)
        return
    ctx = mp.get_context("spawn")
    step = -(-n // jobs)
    procs = []
    for start in range(0, n, step):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_container_worker, args=(start, min(step, n - start), seed, slow_ms, child))
        p.start()
        child.close()
        procs.append((p, parent, min(step, n - start)))
    for p, parent, k in procs:
        try:
            c, ex = parent.recv()
            counts.update(c)
            examples.extend(ex[: max(0, 5 - len(examples))])
        except EOFError:
            counts["crashes"] += 1
            counts["inputs"] += k
        p.join()


def fuzz_manifest(n: int, seed: int, slow_ms: float, counts: Counter, examples: list, base: dict) -> None:
    from edgecompile.bundle import BundleError, read_manifest

    raw = json.dumps(base).encode()
    values = [None, True, 0, -1, 99, 1.5, "", "x", "../x", "/etc/passwd", [], {}, ["a"], {"a": 1}, "a" * 1000]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "manifest.json"
        for i in range(n):
            rng = random.Random(seed * 1_000_003 + i)
            if rng.random() < 0.5:
                data = mutate(raw, rng)
            else:
                m = dict(base)
                key = rng.choice(sorted(m) + ["extra"])
                if rng.random() < 0.2:
                    m.pop(key, None)
                else:
                    m[key] = rng.choice(values)
                data = json.dumps(m).encode()
            path.write_bytes(data)
            t0 = time.perf_counter()
            try:
                m = read_manifest(d)
            except BundleError:
                counts["rejected"] += 1
            except Exception as e:
                counts["undocumented"] += 1
                if len(examples) < 5:
                    examples.append(f"manifest #{i}: {type(e).__name__}: {e}")
            else:
                counts["accepted"] += 1
                ok = (m.get("version") == 1 and all(isinstance(m[k], str) for k in ("backend", "model", "weights")))
                counts["accepted-wrong"] += not ok
            counts["slow"] += (time.perf_counter() - t0) * 1e3 > slow_ms
            counts["inputs"] += 1


def _model_worker(backend: str, start: int, n: int, seed: int, slow_ms: float, conn) -> None:
    """Runs in a child process (native crashes stay there); sends back (counts, examples)."""
    from edgecompile.bundle.check import inspect_bundle
    from edgecompile.errors import CorruptError
    from edgecompile.bundle import load_bundle
    from edgecompile.bundle import BackendRuntimeError, BundleError

    counts, examples = Counter(), []
    with tempfile.TemporaryDirectory() as d:
        seed_dir = Path(d) / "seed"
        write_seed_bundle(seed_dir, backend)
        man = json.loads((seed_dir / "manifest.json").read_text())
        man.pop("model_sha256")
        (seed_dir / "manifest.json").write_text(json.dumps(man))
        model_path = seed_dir / man["model"]
        model = model_path.read_bytes()
        x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
        (want,) = load_bundle(seed_dir, threads=1).run(x)
        for i in range(start, start + n):
            rng = random.Random(seed * 1_000_003 + i)
            bad = mutate(model, rng, hot=64)
            model_path.write_bytes(bad)
            t0 = time.perf_counter()
            try:
                (got,) = load_bundle(seed_dir, threads=1).run(x)
            except (CorruptError, BackendRuntimeError):
                counts["rejected"] += 1
            except Exception as e:
                counts["undocumented"] += 1
                if len(examples) < 5:
                    examples.append(f"{backend}-model #{i} (loader): {type(e).__name__}: {str(e)[:200]}")
            else:
                counts["accepted"] += 1
                same = got.shape == want.shape and np.array_equal(got, want, equal_nan=True)
                counts["accepted-changed"] += not same
            try:
                inspect_bundle(seed_dir)
            except BundleError:
                pass
            except Exception as e:
                counts["undocumented"] += 1
                if len(examples) < 5:
                    examples.append(f"{backend}-model #{i} (inspect): {type(e).__name__}: {str(e)[:200]}")
            counts["slow"] += (time.perf_counter() - t0) * 1e3 > slow_ms
            counts["inputs"] += 1
    conn.send((counts, examples))
    conn.close()


def fuzz_model(backend: str, n: int, seed: int, slow_ms: float, counts: Counter, examples: list,
               chunk: int = 500) -> None:
    ctx = mp.get_context("spawn")
    for start in range(0, n, chunk):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_model_worker, args=(backend, start, min(chunk, n - start), seed, slow_ms, child))
        p.start()
        child.close()
        try:
            c, ex = parent.recv()
            counts.update(c)
            examples.extend(ex[: max(0, 5 - len(examples))])
        except EOFError:               # the worker died: a native crash somewhere in this chunk
            counts["crashes"] += 1
            counts["inputs"] += min(chunk, n - start)
        p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="container mutations (the other targets scale from it)")
    ap.add_argument("--manifest-n", type=int, default=None, help="[n/10]")
    ap.add_argument("--model-n", type=int, default=None, help="per model backend [n/200]")
    ap.add_argument("--jobs", type=int, default=1, help="processes for the container target")
    ap.add_argument("--targets", default="container,manifest,onnx-model,tflite-model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slow-ms", type=float, default=1000.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        write_seed_bundle(Path(d) / "b", "onnx")
        base_manifest = json.loads((Path(d) / "b" / "manifest.json").read_text())
    plan = [("container", args.n), ("manifest", args.manifest_n if args.manifest_n is not None else args.n // 10),
            ("onnx-model", args.model_n if args.model_n is not None else args.n // 200),
            ("tflite-model", args.model_n if args.model_n is not None else args.n // 200)]
    results = {}
    for name, n in plan:
        if name not in args.targets.split(","):
            continue
        counts, examples = Counter(), []
        t0 = time.perf_counter()
        try:
            if name == "container":
                fuzz_container_jobs(n, args.jobs, args.seed, args.slow_ms, counts, examples)
            elif name == "manifest":
                fuzz_manifest(n, args.seed, args.slow_ms, counts, examples, base_manifest)
            else:
                fuzz_model(name.split("-")[0], n, args.seed, args.slow_ms, counts, examples)
        except Exception:
            examples.append(traceback.format_exc())
        results[name] = dict(counts, seconds=round(time.perf_counter() - t0, 1), examples=examples)
    cols = ["inputs", "rejected", "accepted", "accepted-wrong", "accepted-changed", "undocumented", "slow", "crashes",
            "seconds"]
    rows = [["target"] + cols] + [[name] + [str(r.get(c, 0)) for c in cols] for name, r in results.items()]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.rjust(w) if k else v.ljust(w) for k, (v, w) in enumerate(zip(row, widths))))
    for name, r in results.items():
        for ex in r["examples"]:
            print(f"  {name}: {ex}")
    if args.json:
        print(json.dumps(results, default=str))
    bad = sum(r.get("undocumented", 0) + r.get("accepted-wrong", 0) + r.get("crashes", 0) for r in results.values())
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
