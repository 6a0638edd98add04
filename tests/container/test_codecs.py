"""Round trips of every codec (Python), codec choice, and k-means clustering."""
from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgecompile.container import (ContainerError, CorruptStream, QuantInfo, UnknownCodec, encode_container, kmeans_cluster,
                                   read_container, write_container)
from edgecompile.container import format as fmt
from edgecompile.container import rans

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "float16", "float32", "int64", "bool", "float64"]


def _roundtrip(arrays: dict, codec: str | None) -> None:
    forced = {} if codec is None else {k: codec for k in arrays}
    data, records = encode_container(arrays, codec_for=forced)
    back = read_container(data).read_all()
    for (k, v), r in zip(arrays.items(), records):
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert back[k].tobytes() == v.tobytes()  # bit-exact, including NaN payloads and -0.0
        assert codec is None or r.codec == codec


@settings(max_examples=40, deadline=None)
@given(arr=hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=40)),
       codec=st.sampled_from(["raw", "zstd", "rans", None]))
def test_roundtrip_any_array(arr, codec):
    _roundtrip({"t": arr}, codec)


@pytest.mark.parametrize("codec", ["raw", "zstd", "rans", "lut"])
def test_bool_masks_round_trip_with_every_codec(codec):
    """A causal mask (bool) is stored as one byte an element and comes back as bool."""
    mask = np.tril(np.ones((1, 1, 33, 33), bool))
    _roundtrip({"mask": mask, "one": np.ones((1, 1, 1, 1), bool)}, codec)


def test_bool_tensor_holding_another_byte_is_corrupt():
    """A bool entry whose decoded bytes are not all 0 or 1 is rejected, not read as bool."""
    data, _ = encode_container({"m": np.array([0, 1, 2], np.uint8)}, codec_for={"m": "raw"})
    buf = bytearray(data)
    entry = fmt.HEADER.size
    dtype_at = entry + struct.calcsize("<QQQIIH")
    assert buf[dtype_at] == fmt.DTYPE_CODES["uint8"]
    buf[dtype_at] = fmt.DTYPE_CODES["bool"]
    meta_size = int.from_bytes(buf[12:16], "little")
    body = bytes(buf[fmt.HEADER.size : fmt.HEADER.size + fmt.ENTRY.size + meta_size])
    buf[28:32] = zlib.crc32(body, zlib.crc32(bytes(buf[:28]))).to_bytes(4, "little")
    with pytest.raises(CorruptStream, match="bool tensor holds byte 2"):
        read_container(bytes(buf)).read("m")


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(2, 40), row_len=st.integers(1, 60), n_classes=st.integers(2, 16), lanes=st.sampled_from([1, 3, 8, 16]),
       steps=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_roundtrip_class_maps(rows, row_len, n_classes, lanes, steps, seed):
    """Any class map (2..16 classes, any row order), lanes and short blocks, so that table switches
    fall anywhere in a block: the Python encoder and decoder agree."""
    rng = np.random.default_rng(seed)
    g = min(n_classes, rows)
    classes = rng.permutation(np.concatenate([np.arange(g), rng.integers(0, g, rows - g)])).astype(np.uint8)
    sym = (rng.integers(0, 5, (rows, row_len)) * (1 + classes[:, None])).astype(np.uint8).ravel()
    plan = rans.plan(sym, g, classes=classes)[0]
    plan = dataclasses.replace(plan, lanes=lanes, block=lanes * steps)
    (payload,) = rans.encode_batch([plan])
    assert np.array_equal(rans.decode_batch([rans.parse(payload, sym.size)])[0], sym)


@settings(max_examples=40, deadline=None)
@given(values=hnp.arrays(np.float32, st.integers(1, 64), unique=True, elements=st.floats(-4, 4, width=32)),
       n=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_roundtrip_lut(values, n, seed):
    arr = values[np.random.default_rng(seed).integers(0, len(values), n)]
    _roundtrip({"t": arr}, "lut")


def test_rans_close_to_entropy_and_smaller_than_zstd_on_large_bells():
    rng = np.random.default_rng(1)
    q = np.clip(np.round(rng.normal(0, 25, (256, 1024))), -127, 127).astype(np.int8)
    data, rec = encode_container({"w": q}, codecs=("rans",))
    counts = np.bincount(q.view(np.uint8).ravel(), minlength=256)
    p = counts[counts > 0] / q.size
    bound = -(p * np.log2(p)).sum() * q.size / 8
    assert rec[0].encoded_size <= 1.01 * bound
    zdata, zrec = encode_container({"w": q}, codecs=("zstd",))
    assert rec[0].encoded_size < zrec[0].encoded_size


def test_smallest_codec_wins_and_lut_applies_only_to_few_values():
    rng = np.random.default_rng(2)
    few = rng.choice(np.array([-1.5, 0.0, 0.25, 3.0], np.float32), 5000)
    many = rng.normal(size=5000).astype(np.float32)
    data, recs = encode_container({"few": few, "many": many})
    by = {r.name: r for r in recs}
    assert by["few"].codec == "lut" and by["few"].encoded_size < 5000 // 3
    with pytest.raises(ContainerError, match="lut"):
        encode_container({"many": many}, codec_for={"many": "lut"})
    with pytest.raises(UnknownCodec):
        encode_container({"many": many}, codecs=("brotli",))


def test_write_is_atomic_and_keeps_order_and_quant(tmp_path):
    q = QuantInfo(np.array([0.5, 0.25], np.float32), np.array([0, 3], np.int32), axis=0)
    arrays = {"b": np.arange(6, dtype=np.int8).reshape(2, 3), "a": np.ones(3, np.float32)}
    path = tmp_path / "w.ecw"
    recs = write_container(path, arrays, quant={"b": q}, layouts={"b": "oi"})
    assert [p.name for p in tmp_path.iterdir()] == ["w.ecw"]  # no temporary left behind
    r = read_container(path)
    assert r.names == ["b", "a"] and r.quant("b") == q and r.quant("a") is None
    assert r.records == recs and r.records[0].layout == "oi"
    r.verify()
    assert all(rec.offset % 16 == 0 for rec in r.records)


def test_per_channel_tables_chosen_when_channels_differ():
    rng = np.random.default_rng(4)
    # channel c uses only symbols {4c, 4c+1}: per-channel tables cost ~1 bit/symbol, one table ~5
    w = (rng.integers(0, 2, (32, 4096)) + 4 * np.arange(32)[:, None]).astype(np.uint8)
    sym = w.ravel()
    plan, est = rans.plan(sym, 32)
    payload = rans.encode_batch([plan])[0]
    data, recs = encode_container({"w": w}, codecs=("rans",))
    assert recs[0].encoded_size == len(payload) <= 32 * 4096 / 8 * 1.05


def test_class_map_shares_tables_between_rows_of_alike_spread():
    """Rows of three spreads (per-channel scales of trained weights): the encoder picks a class map
    that puts each spread in its own class and codes below the per-tensor order-0 bound."""
    rng = np.random.default_rng(6)
    kind = rng.integers(0, 3, 256)
    w = np.clip(np.round(rng.laplace(0, np.array([2.0, 8.0, 32.0])[kind][:, None], (256, 512))), -127, 127)
    w = w.astype(np.int8)
    data, recs = encode_container({"w": w}, codecs=("rans",))
    payload = data[recs[0].offset : recs[0].offset + recs[0].encoded_size]
    parsed = rans.parse(payload, w.size)
    assert parsed.classes is not None and len(parsed.freqs) >= 3
    assert all(len(set(parsed.classes[kind == k])) == 1 for k in range(3))  # one class per spread
    c = np.bincount(w.view(np.uint8).ravel(), minlength=256)
    p = c[c > 0] / w.size
    assert recs[0].encoded_size < 0.95 * -(p * np.log2(p)).sum() * w.size / 8
    assert np.array_equal(read_container(data).read("w"), w)


def test_rans_python_speed_scales_with_lanes_not_length():
    """20M symbols would take 20M Python steps without lanes; here steps <= LANE_STEPS."""
    n = 3 * rans.LANE_STEPS * 64 + 5
    sym = np.random.default_rng(5).integers(0, 16, n).astype(np.uint8)
    plan, est = rans.plan(sym, 1)
    assert (plan.lanes, plan.block) == (64, 64 * rans.LANE_STEPS)
    (payload,) = rans.encode_batch([plan])
    assert abs(len(payload) - est) <= 2 * 4 * 64  # exact up to the final states of 4 blocks of 64 lanes
    parsed = rans.parse(payload, n)
    starts, lengths = rans.block_layout(n, parsed.block)
    assert len(starts) == 4 and lengths.max() == parsed.block and lengths[-1] == 5
    assert np.array_equal(rans.decode_batch([parsed])[0], sym)


def test_rans_lane_count_grows_with_the_group():
    """Lanes cost ~3 bytes each: a lane carries 448..896 coded bytes (MIN_LANE_BYTES), 64 lanes (the
    widest SIMD step) from 28 KB; low-entropy groups get fewer lanes for as many symbols."""
    assert [rans.choose_layout(n)[0] for n in (1, 895, 896, 4096, 16384, 28671, 28672, 10**7)] == [1, 1, 2, 8, 32, 32,
                                                                                                   64, 64]
    assert rans.choose_layout(28672, 2.0)[0] == 16


def test_rans_corrupt_words_are_caught_in_python():
    """A flipped bit in the words or a lane state makes a lane miss its final state: CorruptStream."""
    sym = np.clip(np.round(np.random.default_rng(1).laplace(0, 9, 70_000)), -127, 127).astype(np.int8).view(np.uint8)
    plan, _ = rans.plan(sym, 1)
    payload = bytearray(rans.encode_batch([plan])[0])
    for at in (len(payload) - 2, len(payload) // 2, len(payload) - 4 * plan.lanes - 300):
        bad = bytearray(payload)
        bad[at] ^= 0x40
        with pytest.raises(CorruptStream):
            rans.decode_batch([rans.parse(bytes(bad), sym.size)])


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("bits", [1, 3, 6])
def test_kmeans_cluster(axis, bits):
    rng = np.random.default_rng(6)
    w = rng.normal(0, 1, (24, 50)).astype(np.float32)
    out = kmeans_cluster(w, bits, axis=axis)
    assert out.shape == w.shape and out.dtype == w.dtype
    slices = [out] if axis is None else [np.take(out, i, axis=axis) for i in range(w.shape[axis])]
    assert max(len(np.unique(s)) for s in slices) <= 2**bits
    # Lloyd's optimum beats the uniform grid it starts from (error relative to the weights' std)
    err = np.sqrt(np.mean((out - w) ** 2)) / w.std()
    assert err < {1: 0.65, 3: 0.2, 6: 0.03}[bits]
    if axis is None:  # each centroid is its cluster's mean: the sum is kept
        assert abs(out.sum() - w.sum()) < 1e-3 * np.abs(w).sum()
