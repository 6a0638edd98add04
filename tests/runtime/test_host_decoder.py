"""Python encoder -> C decoder, bit-exact on the host build (reference, scalar, AVX2 and widest SIMD paths)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ecw_harness import RUNTIME, expected_lines, run
from edgecompile.container import encode_container, kmeans_cluster, rans, read_container

LENGTHS = (1, 2, 127, 128, 129, 255, 65536)


def _symbols(rng, n: int, bits: int, dist: str) -> np.ndarray:
    hi = 1 << bits
    if dist == "single":
        return np.full(n, hi // 3, np.int64)
    if dist == "uniform":
        return rng.integers(0, hi, n)
    return np.minimum(rng.geometric(0.35, n) - 1, hi - 1)  # skewed


def matrix_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Bit widths x lengths x distributions, as int8/uint8 symbols, plus wider dtypes."""
    rng = np.random.default_rng(seed)
    out = {}
    for bits in (1, 2, 4, 6, 8):
        for n in LENGTHS:
            for dist in ("skewed", "uniform", "single"):
                s = _symbols(rng, n, bits, dist)
                dtype = np.int8 if bits == 8 and dist != "single" else np.uint8
                out[f"b{bits}_n{n}_{dist}"] = (s - (128 if dtype == np.int8 else 0)).astype(dtype)
    w = rng.normal(0, 0.05, (96, 70)).astype(np.float32)
    out["f32"] = w
    out["f16"] = w.astype(np.float16)
    out["f32_clustered"] = kmeans_cluster(w, 5, axis=None)
    out["i32"] = rng.integers(-5000, 5000, 300).astype(np.int32)
    out["i16"] = rng.integers(-300, 300, (7, 11)).astype(np.int16)
    out["u16"] = rng.integers(0, 60000, 129).astype(np.uint16)
    out["i64"] = rng.integers(-(2**40), 2**40, 33).astype(np.int64)
    return out


@pytest.mark.parametrize("codec", ["raw", "zstd", "rans", "lut", "best"])
def test_c_decodes_python_encoding_bit_exact(decoders, tmp_path, codec):
    tensors = matrix_tensors()
    if codec == "lut":  # lut only applies to <= 64 distinct values
        tensors = {k: v for k, v in tensors.items() if len(np.unique(v)) <= 64}
    forced = {} if codec == "best" else {k: codec for k in tensors}
    data, records = encode_container(tensors, codec_for=forced)
    assert all(r.codec == codec for r in records) or codec == "best"
    path = tmp_path / "m.ecw"
    path.write_bytes(data)
    for mode, tool in decoders.items():
        outdir = tmp_path / mode
        outdir.mkdir()
        rc, lines = run([*tool, str(path), str(outdir)])
        assert rc == 0, lines
        assert lines == expected_lines(tensors)
        for i, arr in enumerate(tensors.values()):
            assert (outdir / f"{i}.bin").read_bytes() == arr.tobytes()
    back = read_container(data).read_all()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()


def test_every_lane_count_and_path_matches_the_reference(decoders, tmp_path):
    """Blocks of 1..64 lanes (each SIMD width, scalar lanes, short last blocks, lanes left without a
    symbol), per-tensor and per-channel tables, strided (byte-plane) output: all paths agree."""
    rng = np.random.default_rng(3)
    t = {
        "wide": np.clip(np.round(rng.laplace(0, 12, (37, 4099))), -127, 127).astype(np.int8),
        "channels": (rng.integers(0, 4, (64, 3000)) * np.arange(1, 65)[:, None] % 251).astype(np.uint8),
        "f16": rng.normal(0, 1, 40_000).astype(np.float16),
    }
    lanes = {}
    for w in (1, 2, 3, 8, 16, 24, 32, 64):
        t[f"w{w}"] = np.clip(np.round(rng.laplace(0, 6, 5 * w * 7 + 3)), -127, 127).astype(np.int8)
        lanes[f"w{w}"] = w
    plans = {k: rans.plan(v.view(np.uint8).ravel(), 1)[0] for k, v in t.items() if k in lanes}
    data, recs = encode_container(t, codec_for={k: "rans" for k in t})
    # Re-encode the wN tensors with exactly N lanes and blocks of 7 steps (several blocks, the
    # last one short), by splicing payloads of the same container layout.
    forced = {k: rans.encode_batch([replace(p, lanes=lanes[k], block=7 * lanes[k])])[0] for k, p in plans.items()}
    assert all(f[3] == lanes[k] for k, f in forced.items())
    data = _splice(t, data, forced)
    assert read_container(data).read_all().keys() == t.keys()
    _decodes_everywhere(decoders, tmp_path / "lanes.ecw", data, t)
    widths = {data[r.offset + 3] for r in read_container(data).records if r.codec == "rans"}
    assert {1, 8, 16, 64} <= widths  # the encoder's own choices cover scalar and both SIMD widths


def _decodes_everywhere(decoders: dict, path, data: bytes, tensors: dict) -> None:
    """Every C decoder path and the Python reader give back ``tensors`` bit-exact."""
    path.write_bytes(data)
    for tool in decoders.values():
        assert run([*tool, str(path)]) == (0, expected_lines(tensors))
    back = read_container(data).read_all()
    assert all(back[k].tobytes() == v.tobytes() for k, v in tensors.items())


def _splice(tensors: dict, data: bytes, payloads: dict[str, bytes]) -> bytes:
    """``data`` with the rans payloads of some tensors replaced (the writer's layout step)."""
    from edgecompile.container.writer import _layout

    chosen = {r.name: (r.codec, payloads.get(r.name, data[r.offset : r.offset + r.encoded_size]))
              for r in read_container(data).records}
    return _layout(tensors, {}, {}, chosen)[0]


def test_golden_vectors(decoders):
    """Files kept in the repo: C and Python decode them to the recorded hashes."""
    golden = sorted((RUNTIME / "tests" / "golden").glob("*.ecw"))
    assert golden, "golden vectors missing: python runtime/tests/make_golden.py"
    for path in golden:
        want = path.with_suffix(".expected").read_text().splitlines()
        for tool in decoders.values():
            rc, lines = run([*tool, str(path)])
            assert lines == want, path.name
        arrays = read_container(path).read_all()
        assert expected_lines(arrays) == [ln for ln in want if "CODEC_UNAVAILABLE" not in ln]


def test_sparse_tensor_renormalizes_rarely(decoders, tmp_path):
    """One dominant symbol and rare ones: most steps read no word, a few lanes read one, and the
    fast paths run out of unchecked bytes long before the symbols end (the padded-copy tail
    finishes)."""
    rng = np.random.default_rng(5)
    a = np.zeros(200_003, np.uint8)
    hit = rng.choice(a.size, 3000, replace=False)
    a[hit] = rng.integers(1, 256, hit.size)
    t = {"sparse": a, "sparse_i16": a[:100_000].astype(np.int16) * 129}
    data, recs = encode_container(t, codec_for={k: "rans" for k in t})
    path = tmp_path / "sparse.ecw"
    path.write_bytes(data)
    for tool in decoders.values():
        assert run([*tool, str(path)]) == (0, expected_lines(t))


def _knot_plan(symbols: np.ndarray, m: int, start: int, count: int, pos, val) -> rans.RansPlan:
    """A one-table plan whose table is the given knots (FORMAT.md "rans", knot tables)."""
    from edgecompile.container import rans_tables

    pos, val = np.asarray(pos, np.int64), np.asarray(val, np.int64)
    f = rans_tables.knot_freqs(count, pos, val, m)
    freqs = np.zeros((1, 256), np.int64)
    freqs[0, (start + np.arange(count)) % 256] = f
    w, block = rans.choose_layout(symbols.size)
    return rans.RansPlan(symbols, m, freqs, w, block, knots=((start, count, pos, val),))


def test_knot_tables_decode_on_every_path(decoders, tmp_path):
    """Knot tables as the encoder picks them (small trained-like tensors) and hand-made edge cases:
    a one-symbol window, a zero-weight segment (absent symbols inside the window), the largest
    weights, a remainder that takes from the largest frequency, M = 1."""
    rng = np.random.default_rng(11)
    t = {
        "laplace": np.clip(np.round(rng.laplace(0, 9, (24, 100))), -127, 127).astype(np.int8),
        "pruned": np.where(rng.random(5000) < 0.3, np.clip(np.round(rng.laplace(0, 30, 5000)), -127, 127),
                           0).astype(np.int8),
        "single": np.full(300, 7, np.uint8),
        "hole": np.where(rng.random(4000) < 0.5, rng.integers(0, 4, 4000), rng.integers(20, 30, 4000)).astype(np.uint8),
        "big": rng.integers(250, 256, 70_000).astype(np.uint8),
        "m1": rng.integers(3, 5, 1000).astype(np.uint8),
    }
    data, _ = encode_container(t, codec_for={k: "rans" for k in t})
    chosen = {r.name: data[r.offset + 14] for r in read_container(data).records}  # mode byte of table 0
    assert chosen["laplace"] & 0x80 and chosen["pruned"] & 0x80
    sym = {k: v.view(np.uint8).ravel() for k, v in t.items()}
    forced = {
        "single": _knot_plan(sym["single"], 4, 7, 1, [0], [9]),
        "hole": _knot_plan(sym["hole"], 12, 0, 30, [0, 3, 4, 19, 20, 29], [900, 1100, 0, 0, 500, 700]),
        "big": _knot_plan(sym["big"], 12, 250, 6, [0, 1, 5], [65535, 65535, 1]),
        "m1": _knot_plan(sym["m1"], 1, 3, 2, [0, 1], [1, 1]),
    }
    payloads = {k: rans.encode_batch([p])[0] for k, p in forced.items()}
    assert all(p[14] & 0x80 for p in payloads.values())
    data = _splice(t, data, payloads)
    _decodes_everywhere(decoders, tmp_path / "knots.ecw", data, t)


def test_random_knot_tables_agree_with_python(decoders, tmp_path):
    """Random knot tables (any window, gaps, weights 0..65535, M 8..12), each used to code symbols
    drawn from its own frequencies: the C table arithmetic (stepped interpolation, reciprocal
    division, remainder) gives Python's frequencies, or the payload would not decode."""
    from edgecompile.container import rans_tables

    rng = np.random.default_rng(12)
    t, payloads = {}, {}
    while len(t) < 60:
        m = int(rng.integers(8, 13))
        count = int(rng.integers(1, 257))
        pos = np.unique(np.concatenate([[0, count - 1], rng.integers(0, count, int(rng.integers(0, 12)))]))
        val = rng.choice([0, 1, 7, 300, 4095, 65535], len(pos)) * (rng.random(len(pos)) < 0.8)
        val = np.where(rng.random(len(pos)) < 0.5, val, rng.integers(0, 65536, len(pos)))
        f = rans_tables.knot_freqs(count, pos, val, m)
        if f is None or np.count_nonzero(f) > (1 << m):
            continue
        start = int(rng.integers(0, 256))
        sym = ((start + rng.choice(count, 300, p=f / f.sum())) % 256).astype(np.uint8)
        name = f"k{len(t)}"
        t[name] = sym
        payloads[name] = rans.encode_batch([_knot_plan(sym, m, start, count, pos, val)])[0]
    data, _ = encode_container(t, codec_for={k: "rans" for k in t})
    _decodes_everywhere(decoders, tmp_path / "random_knots.ecw", _splice(t, data, payloads), t)


def test_class_maps_decode_on_every_path(decoders, tmp_path):
    """Class maps (rows sharing G = 2..16 tables): as the encoder picks them for rows of different
    spreads (int8 weights and lut indices), and forced with 1-, 2- and 4-bit entries, an odd row
    count (map padding), several blocks per group with a short last one, and 8/16/64 lanes (the SIMD
    paths stage their output through the row cursor)."""
    rng = np.random.default_rng(21)
    spread = np.array([1.5, 6.0, 25.0, 60.0])[rng.integers(0, 4, 1001)]
    t = {  # large enough for groups of 64 lanes (the encoder's condition for a class map)
        "spreads": np.clip(np.round(rng.laplace(0, spread[:301, None], (301, 600))), -127, 127).astype(np.int8),
        "lut_rows": kmeans_cluster(rng.laplace(0, spread[:, None], (1001, 256)).astype(np.float32), 4),
    }
    for g, w in ((2, 8), (3, 16), (16, 64), (5, 1)):
        rows = 7 * g + 3
        cls = np.concatenate([np.arange(g), rng.integers(0, g, rows - g)]).astype(np.uint8)
        t[f"g{g}"] = np.clip(np.round(rng.laplace(0, 1 + 4 * cls[:, None], (rows, 40 * w + 1))), -127, 127).astype(np.int8)
    data, _ = encode_container(t, codec_for={"lut_rows": "lut"} | {k: "rans" for k in t if k != "lut_rows"})
    recs = {r.name: r for r in read_container(data).records}
    assert data[recs["spreads"].offset + 1] == 2  # the encoder's own pick: a class map
    lut = recs["lut_rows"].offset
    k = int.from_bytes(data[lut + 2 : lut + 4], "little")
    assert data[lut + 1] == 2 and data[lut + 4 + 4 * k + 1] == 2  # lut header, codebook, then rans flags
    forced = {}
    for g, w in ((2, 8), (3, 16), (16, 64), (5, 1)):
        a = t[f"g{g}"]
        cls = np.unique(np.round(np.abs(a.astype(float)).mean(1)), return_inverse=True)[1].astype(np.uint8)
        cls = np.minimum(cls, g - 1)
        cls[:g] = np.arange(g)  # every class non-empty
        p = rans.plan(a.view(np.uint8).ravel(), g, classes=cls)[0]
        forced[f"g{g}"] = rans.encode_batch([replace(p, lanes=w, block=7 * w)])[0]
        assert forced[f"g{g}"][1] == 2 and forced[f"g{g}"][3] == w
    data = _splice(t, data, forced)
    _decodes_everywhere(decoders, tmp_path / "classes.ecw", data, t)


def test_crc32_matches_zlib_at_every_length_and_offset(decoders, tmp_path):
    """ecw_crc32 against zlib: lengths 0..600 and 64 KiB + 7 from every start offset 0..200 (the
    carry-less multiplication path from 64 bytes, its 16-byte rest, the table tail), every build."""
    import zlib

    rng = np.random.default_rng(31)
    for size in (0, 1, 63, 64, 79, 80, 600, 65543):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path = tmp_path / f"crc{size}.bin"
        path.write_bytes(data)
        want = [f"{zlib.crc32(data[k:]):08x}" for k in range(min(size, 200) + 1)]
        for name in ("fast", "scalar", "mcu"):
            assert run([decoders[name][0], "--crc32", str(path)]) == (0, want), (name, size)
