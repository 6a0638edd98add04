"""Order-0 interleaved-lane rANS: numpy-vectorized encoder and decoder (FORMAT.md, "rans").

A payload cuts its byte stream into groups (one frequency table each) and each group into lanes
(one rANS state and byte stream each). Lanes are independent, so both directions run all lanes
of one or many payloads at once, one numpy operation per step over every active lane: the step
count is the longest lane (<= ``LANE_SYMBOLS``), not the tensor length. This is what makes a
20M-weight build verifiable in Python in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rans_tables as tables
from .errors import CorruptStream
from .format import RANS_HEADER, RANS_L, RANS_MAX_LANE_SYMBOLS, RANS_MAX_SCALE_BITS

#: Symbols per lane the encoder aims for: a lane costs 8 bytes (final state + size), so longer
#: lanes are smaller, while the numpy loop runs at most this many steps. Measured (bench/
#: bench_codec.py sets, rans / H0 bound; C decode speed unchanged): 4096 -> 16384 took the pruned
#: digits CNN from 1.0172 to 1.0137 and the transformer from 1.0050 to 1.0037; 20M-symbol encode
#: ~1 s either way (fewer, longer vector steps).
LANE_SYMBOLS = 16384
#: Groups of at least this many symbols get a multiple of 4 lanes: the C fast path decodes lanes
#: 4 at a time and a leftover lane alone (about 3x slower per symbol). Cost: at most 3 extra
#: lanes of 8 bytes; measured +20 % C decode speed on a digits CNN (raising it to 16384 or 32768
#: cost 15-25 % decode speed on the digits CNN for 0.0005 of size).
FAST_GROUP_SYMBOLS = 8192
_SLOT_SPACE = 1 << RANS_MAX_SCALE_BITS  # per-table stride of the decoder's global slot space


@dataclass(frozen=True)
class RansPlan:
    """What to encode: the symbol stream (already in stream order) and its tables."""

    symbols: np.ndarray  # uint8, stream order
    scale_bits: int
    freqs: np.ndarray  # (G, 256) int64, rows sum to 2**scale_bits
    lanes: int  # per group
    shuffle: bool = False
    itemsize: int = 1


@dataclass(frozen=True)
class ParsedRans:
    """A validated payload, ready for ``decode_batch``."""

    scale_bits: int
    shuffle: bool
    itemsize: int
    freqs: np.ndarray
    lanes: int
    n_symbols: int
    lane_sizes: np.ndarray  # (G*P,) int64
    streams: np.ndarray  # uint8, the lanes' bytes concatenated


def lane_layout(n_symbols: int, n_groups: int, lanes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, length and group of every lane (group-major), as in FORMAT.md."""
    group_len = n_symbols // n_groups
    q, r = divmod(group_len, lanes)
    p = np.arange(lanes)
    length = np.where(p < r, q + 1, q)
    start = (np.arange(n_groups)[:, None] * group_len + (p * q + np.minimum(p, r))[None, :]).ravel()
    return start, np.tile(length, n_groups), np.repeat(np.arange(n_groups), lanes)


def plan(symbols: np.ndarray, n_groups: int, *, shuffle: bool = False, itemsize: int = 1) -> tuple[RansPlan, int]:
    """Choose scale bits and lane count for a stream cut into ``n_groups`` tables.

    Returns the plan and its estimated payload size in bytes (exact up to the lane ends).
    """
    symbols = np.ascontiguousarray(symbols, dtype=np.uint8)
    n = symbols.size
    group_len = n // n_groups
    counts = np.bincount(
        (np.repeat(np.arange(n_groups), group_len) * 256 + symbols).astype(np.int64) if n_groups > 1 else symbols,
        minlength=256 * n_groups,
    ).reshape(n_groups, 256)
    lanes = max(1, -(-group_len // LANE_SYMBOLS))
    if group_len >= FAST_GROUP_SYMBOLS:
        lanes = -(-lanes // 4) * 4
    best = None
    for m in tables.choose_scale_bits(counts):
        freqs = tables.normalize_freqs(counts, m)
        size = RANS_HEADER.size + tables.table_bytes(freqs).sum() + coded_bits_total(counts, freqs, m) / 8
        if best is None or size < best[0]:
            best = (size, m, freqs)
    size, m, freqs = best
    size += 8 * n_groups * lanes
    return RansPlan(symbols, m, freqs, lanes, shuffle, itemsize), int(np.ceil(size))


def coded_bits_total(counts: np.ndarray, freqs: np.ndarray, m: int) -> float:
    return float(tables.coded_bits(counts, freqs, m).sum())


def _active_counts(length_desc: np.ndarray) -> np.ndarray:
    """For lanes sorted by length (descending): how many are still active at each step."""
    steps = int(length_desc[0]) if len(length_desc) else 0
    return len(length_desc) - np.searchsorted(length_desc[::-1], np.arange(steps), side="right")


def encode_batch(plans: list[RansPlan]) -> list[bytes]:
    """Encode every plan's payload; all lanes of all plans advance together."""
    starts, lengths, tids, bits = [], [], [], []
    offset, table_base = 0, 0
    for p in plans:
        s, ln, g = lane_layout(p.symbols.size, len(p.freqs), p.lanes)
        starts.append(s + offset)
        lengths.append(ln)
        tids.append(g + table_base)
        bits.append(np.full(len(s), p.scale_bits))
        offset += p.symbols.size
        table_base += len(p.freqs)
    symbols = np.concatenate([p.symbols for p in plans])
    freqs = np.concatenate([p.freqs for p in plans]).astype(np.uint32)
    cum = (np.cumsum(freqs, axis=1) - freqs).astype(np.uint32)
    start, length, tid, m = (np.concatenate(a) for a in (starts, lengths, tids, bits))

    order = np.argsort(-length, kind="stable")
    st, ln, m_s = start[order], length[order], m[order].astype(np.uint32)
    base = (tid[order] * 256).astype(np.int64)
    x_max_unit = ((RANS_L >> m_s) << 8).astype(np.uint32)  # x_max = unit * f, at most 2^31
    f_flat, c_flat = freqs.ravel(), cum.ravel()
    active = _active_counts(ln)
    steps, n_lanes = len(active), len(order)
    x = np.full(n_lanes, RANS_L, dtype=np.uint32)
    low = np.zeros((steps, n_lanes), np.uint8)  # first byte shifted out at a step
    high = np.zeros((steps, n_lanes), np.uint8)  # second byte
    emitted = np.zeros((steps, n_lanes), np.uint8)
    for t in range(steps - 1, -1, -1):
        n = active[t]
        xs = x[:n]
        idx = base[:n] + symbols[st[:n] + t]
        f = f_flat[idx]
        x_max = x_max_unit[:n] * f
        # Renormalize: shift out bytes until x < x_max (at most 2 since M <= 15).
        m1 = xs >= x_max
        low[t, :n] = xs
        xs = np.where(m1, xs >> 8, xs)
        m2 = xs >= x_max
        high[t, :n] = xs
        xs = np.where(m2, xs >> 8, xs)
        emitted[t, :n] = m1.view(np.uint8) + m2.view(np.uint8)
        q, r = np.divmod(xs, f)
        x[:n] = (q << m_s[:n]) + r + c_flat[idx]
    # The decoder reads, after symbol t, the byte shifted out last first.
    first = np.where(emitted == 2, high, low)
    pair = np.stack([first, low], axis=2).transpose(1, 0, 2)
    keep = np.stack([emitted >= 1, emitted == 2], axis=2).transpose(1, 0, 2)
    body = pair[keep]  # sorted-lane-major, then step, then byte
    body_len = keep.sum(axis=(1, 2))

    inv = np.empty_like(order)
    inv[order] = np.arange(n_lanes)
    lane_size = (body_len[inv] + 4).astype(np.int64)  # original lane order
    lane_off = np.cumsum(lane_size) - lane_size
    out = np.empty(int(lane_size.sum()), np.uint8)
    state = x[inv].astype("<u4").view(np.uint8).reshape(-1, 4)
    out[(lane_off[:, None] + np.arange(4)).ravel()] = state.ravel()
    body_start_sorted = np.cumsum(body_len) - body_len
    dest = np.repeat(lane_off[order] + 4 - body_start_sorted, body_len) + np.arange(len(body))
    out[dest] = body

    payloads, lane0 = [], 0
    for p in plans:
        k = len(p.freqs) * p.lanes
        sizes = lane_size[lane0 : lane0 + k]
        lo = int(lane_off[lane0]) if k else 0
        hi = lo + int(sizes.sum())
        header = RANS_HEADER.pack(p.scale_bits, int(p.shuffle), p.itemsize, 0, len(p.freqs), p.lanes, p.symbols.size)
        payloads.append(header + tables.serialize_tables(p.freqs) + sizes.astype("<u4").tobytes() + out[lo:hi].tobytes())
        lane0 += k
    return payloads


def parse(payload: bytes | memoryview | np.ndarray, n_symbols: int, *, itemsize: int | None = None) -> ParsedRans:
    """Validate a rans payload (every field, before any allocation sized by it).

    Parameters
    ----------
    payload : bytes-like
        The payload.
    n_symbols : int
        Stream length the container entry implies.
    itemsize : int or None
        Element size the entry's dtype implies (None: the payload must not shuffle).
    """
    buf = np.frombuffer(payload, dtype=np.uint8)
    if len(buf) < RANS_HEADER.size:
        raise CorruptStream(f"rans payload of {len(buf)} bytes is shorter than its 16-byte header")
    m, shuffle, isz, reserved, g, p, n = RANS_HEADER.unpack_from(buf, 0)
    if not 1 <= m <= RANS_MAX_SCALE_BITS:
        raise CorruptStream(f"rans scale_bits {m} is outside 1..{RANS_MAX_SCALE_BITS}")
    if reserved or shuffle > 1 or (shuffle == 0 and isz != 1) or (shuffle and isz != itemsize):
        raise CorruptStream(f"rans shuffle={shuffle} itemsize={isz} does not fit the tensor")
    if n != n_symbols or n == 0:
        raise CorruptStream(f"rans payload has {n} symbols, the entry implies {n_symbols}")
    if g == 0 or n % g or (shuffle and g % isz):
        raise CorruptStream(f"rans n_groups={g} does not divide {n} symbols into whole groups")
    group_len = n // g
    if p == 0 or p > group_len or -(-group_len // p) > RANS_MAX_LANE_SYMBOLS:
        raise CorruptStream(f"rans lanes={p} do not fit groups of {group_len} symbols")
    if 3 * g > len(buf) - RANS_HEADER.size:
        raise CorruptStream(f"rans payload too short for {g} tables")
    freqs, pos = tables.parse_tables(buf, RANS_HEADER.size, g, m)
    n_lanes = g * p
    if pos + 4 * n_lanes > len(buf):
        raise CorruptStream(f"rans payload too short for {n_lanes} lane sizes")
    sizes = buf[pos : pos + 4 * n_lanes].view("<u4").astype(np.int64)
    pos += 4 * n_lanes
    if np.any(sizes < 4) or int(sizes.sum()) != len(buf) - pos:
        raise CorruptStream("rans lane sizes do not add up to the payload")
    return ParsedRans(m, bool(shuffle), isz, freqs, p, n, sizes, buf[pos:])


def decode_batch(parsed: list[ParsedRans]) -> list[np.ndarray]:
    """Decode payloads to their symbol streams (uint8, stream order); all lanes step together.

    Raises
    ------
    CorruptStream
        A lane's initial state is out of range, or a lane does not end exactly at state 2^23
        with its bytes used up.
    """
    if not parsed:
        return []
    starts, lengths, tids, bits, sizes = [], [], [], [], []
    offset, table_base = 0, 0
    for p in parsed:
        s, ln, g = lane_layout(p.n_symbols, len(p.freqs), p.lanes)
        starts.append(s + offset)
        lengths.append(ln)
        tids.append(g + table_base)
        bits.append(np.full(len(s), p.scale_bits))
        sizes.append(p.lane_sizes)
        offset += p.n_symbols
        table_base += len(p.freqs)
    start, length, tid, m, size = (np.concatenate(a) for a in (starts, lengths, tids, bits, sizes))
    steps = int(length.max())
    # Pad so that a corrupt lane overrunning by up to 2 bytes a step stays inside the array.
    stream = np.concatenate([p.streams for p in parsed] + [np.zeros(2 * steps + 8, np.uint8)])
    lane_off = np.cumsum(size) - size

    # Flattened tables, zero frequencies dropped: entry e covers global slots
    # [cum_g[e], cum_g[e] + f[e]) where table t occupies [t * 2^15, t * 2^15 + 2^M).
    freqs = np.concatenate([p.freqs for p in parsed])
    cum = np.cumsum(freqs, axis=1) - freqs
    present = freqs > 0
    t_idx, sym = np.nonzero(present)
    f_e = freqs[present].astype(np.uint32)
    c_e = cum[present].astype(np.uint32)
    cum_g = t_idx.astype(np.int64) * _SLOT_SPACE + c_e
    sym_e = sym.astype(np.uint8)

    order = np.argsort(-length, kind="stable")
    st, m_s = start[order], m[order].astype(np.uint32)
    slot_base = tid[order].astype(np.int64) * _SLOT_SPACE
    mask = ((1 << m_s) - 1).astype(np.uint32)
    off = lane_off[order]
    x = stream[(off[:, None] + np.arange(4))].astype(np.uint32)
    x = x[:, 0] | (x[:, 1] << 8) | (x[:, 2] << 16) | (x[:, 3] << 24)
    if np.any((x < RANS_L) | (x >= 1 << 31)):
        raise CorruptStream("rans lane state out of range [2^23, 2^31)")
    ptr = off + 4
    out = np.empty(offset, np.uint8)
    for t, n in enumerate(_active_counts(length[order])):
        xs = x[:n]
        slot = xs & mask[:n]
        e = np.searchsorted(cum_g, slot_base[:n] + slot, side="right") - 1
        out[st[:n] + t] = sym_e[e]
        xs = f_e[e] * (xs >> m_s[:n]) + slot - c_e[e]
        for _ in range(2):  # x >= 2^8 after a step, so two bytes always restore x >= 2^23
            need = xs < RANS_L
            xs = np.where(need, (xs << 8) | stream[ptr[:n]], xs)
            ptr[:n] += need
        x[:n] = xs
    if np.any(x != RANS_L) or np.any(ptr != off + size[order]):
        raise CorruptStream("rans lane does not end at its final state with its bytes used up")
    results, pos = [], 0
    for p in parsed:
        results.append(out[pos : pos + p.n_symbols])
        pos += p.n_symbols
    return results
