"""The encoder's time and memory are bounded (issue 13, item 5): per-symbol temporaries of a few
bytes, counting in chunks, per-channel tables priced only when their size floor could win, and the
bytes exactly as before (the choices are unchanged: the floor is a true lower bound)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgecompile.container import encode_container, read_container
from edgecompile.container import codecs, rans


def _naive_counts(sym: np.ndarray, lens: np.ndarray) -> np.ndarray:
    ends = np.cumsum(lens)
    return np.stack([np.bincount(sym[e - n:e], minlength=256) for n, e in zip(lens, ends)])


@pytest.mark.parametrize("lens", [[5], [3, 7, 1, 9], [100] * 37, [1] * 300, [250, 1, 1, 250]])
def test_group_counts_in_chunks_equal_a_bincount_per_group(lens, monkeypatch):
    """Chunks of 64 symbols (groups straddle them, some groups are shorter than a chunk, some span
    several) count what one bincount per group counts."""
    monkeypatch.setattr(rans, "COUNT_CHUNK", 64)
    lens = np.array(lens)
    sym = np.random.default_rng(len(lens)).integers(0, 256, lens.sum()).astype(np.uint8)
    assert np.array_equal(rans.group_counts(sym, lens), _naive_counts(sym, lens))


@pytest.mark.parametrize("groups,spread", [(1, 3.0), (4, 0.5), (16, 8.0), (64, 40.0), (256, 2.0)])
def test_size_floor_never_exceeds_the_plan(groups, spread):
    """The floor that decides whether per-channel tables are priced at all is below the plan's
    own estimate (skipping on it changes no choice)."""
    rng = np.random.default_rng(groups)
    rows = np.clip(np.round(rng.laplace(0, spread * rng.uniform(0.5, 2.0, (groups, 1)), (groups, 2048))), -127, 127)
    sym = rows.astype(np.int8).view(np.uint8).ravel()
    _, est = rans.plan(sym, groups)
    assert rans.size_floor(sym, groups) <= est


@pytest.mark.parametrize("tables", [3, 300])
def test_batches_over_and_under_256_tables_round_trip(tables):
    """Table entries are uint16 up to 256 tables in a batch, int32 beyond: both decode exactly."""
    rng = np.random.default_rng(tables)
    w = np.clip(np.round(rng.laplace(0, rng.uniform(1, 30, (tables, 1)), (tables, 1024))), -127, 127).astype(np.int8)
    plan, _ = rans.plan(w.view(np.uint8).ravel(), tables)
    (payload,) = rans.encode_batch([plan])
    assert np.array_equal(rans.decode_batch([rans.parse(payload, w.size)])[0], w.view(np.uint8).ravel())


def test_encoding_a_large_float_tensor_takes_a_few_bytes_a_symbol():
    """A 2M-weight fp32 matrix (8M symbols, byte planes): the encoder's numpy allocations peak
    under 10 bytes a symbol, the tensor's own copies and the container included (measured 6.3;
    before: 31, with 16 bytes a symbol of counting keys, 8 of int64 word positions, a bool stream
    cast to int64, copies of the whole stream). The container still reads back bit-exactly."""
    w = (np.random.default_rng(0).standard_normal((2048, 1024)) * 0.05).astype(np.float32)
    tracemalloc.start()
    try:
        data, recs = encode_container({"w": w}, codecs=("raw", "zstd", "rans"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert recs[0].codec == "rans"
    assert peak < 10 * w.nbytes, peak / w.nbytes
    assert np.array_equal(read_container(data).read("w"), w)


def test_candidates_larger_than_rans_can_be_are_dropped():
    """raw and zstd payloads above `rans_bound` cannot win and are not kept while the batch codes."""
    w = (np.random.default_rng(1).standard_normal((256, 256)) * 0.05).astype(np.float32)
    cands = codecs.candidates(w, ("raw", "zstd", "rans"))
    bound = codecs.rans_bound(cands["rans"])
    (coded,) = codecs.finish([cands["rans"]])
    assert len(coded) <= bound < len(cands["raw"])
