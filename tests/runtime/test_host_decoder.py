"""Python encoder -> C decoder, bit-exact on the host build (reference and fast path)."""
from __future__ import annotations

import numpy as np
import pytest

from ecw_harness import RUNTIME, expected_lines, run
from edgecompile.container import encode_container, kmeans_cluster, read_container

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
def test_c_decodes_python_encoding_bit_exact(host_tool, tmp_path, codec):
    tensors = matrix_tensors()
    if codec == "lut":  # lut only applies to <= 64 distinct values
        tensors = {k: v for k, v in tensors.items() if len(np.unique(v)) <= 64}
    forced = {} if codec == "best" else {k: codec for k in tensors}
    data, records = encode_container(tensors, codec_for=forced)
    assert all(r.codec == codec for r in records) or codec == "best"
    path = tmp_path / "m.ecw"
    path.write_bytes(data)
    for ref in (["--ref"], []):
        outdir = tmp_path / ("ref" if ref else "fast")
        outdir.mkdir()
        rc, lines = run([str(host_tool), *ref, str(path), str(outdir)])
        assert rc == 0, lines
        assert lines == expected_lines(tensors)
        for i, arr in enumerate(tensors.values()):
            assert (outdir / f"{i}.bin").read_bytes() == arr.tobytes()
    back = read_container(data).read_all()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()


def test_fast_path_matches_reference_on_many_lanes(host_tool, tmp_path):
    """A tensor long enough for many 4-lane batches plus leftover lanes, per-tensor and per-channel."""
    rng = np.random.default_rng(3)
    t = {
        "wide": np.clip(np.round(rng.laplace(0, 12, (37, 4099))), -127, 127).astype(np.int8),
        "channels": (rng.integers(0, 4, (64, 3000)) * np.arange(1, 65)[:, None] % 251).astype(np.uint8),
    }
    data, recs = encode_container(t, codec_for={"wide": "rans", "channels": "rans"})
    path = tmp_path / "lanes.ecw"
    path.write_bytes(data)
    outs = []
    for ref in (["--ref"], []):
        rc, lines = run([str(host_tool), *ref, str(path)])
        assert rc == 0
        outs.append(lines)
    assert outs[0] == outs[1] == expected_lines(t)


def test_golden_vectors(host_tool):
    """Files kept in the repo: C and Python decode them to the recorded hashes."""
    golden = sorted((RUNTIME / "tests" / "golden").glob("*.ecw"))
    assert golden, "golden vectors missing: python runtime/tests/make_golden.py"
    for path in golden:
        want = path.with_suffix(".expected").read_text().splitlines()
        for ref in (["--ref"], []):
            rc, lines = run([str(host_tool), *ref, str(path)])
            assert lines == want, path.name
        arrays = read_container(path).read_all()
        assert expected_lines(arrays) == [ln for ln in want if "CODEC_UNAVAILABLE" not in ln]


def test_fast_path_two_byte_renormalization(host_tool, tmp_path):
    """One dominant symbol and rare ones: M >= 14 and frequency-1 symbols leave x < 2^15 after a
    step, so the branch-free renormalization takes its 2-byte case (and 0 and 1) in every lane."""
    rng = np.random.default_rng(5)
    a = np.zeros(200_003, np.uint8)
    hit = rng.choice(a.size, 3000, replace=False)
    a[hit] = rng.integers(1, 256, hit.size)
    t = {"sparse": a, "sparse_i16": a[:100_000].astype(np.int16) * 129}
    data, recs = encode_container(t, codec_for={k: "rans" for k in t})
    assert data[recs[0].offset] >= 14  # scale bits M of the payload header
    path = tmp_path / "sparse.ecw"
    path.write_bytes(data)
    outs = [run([str(host_tool), *ref, str(path)]) for ref in (["--ref"], [])]
    assert outs[0] == outs[1] == (0, expected_lines(t))
