"""Order-0 interleaved rANS: numpy-vectorized encoder and decoder (FORMAT.md, "rans").

A payload cuts its byte stream into groups (one frequency table each) and, independently, into
blocks; a symbol is coded with its group's table, so a block may switch tables at a group boundary.
A group is a contiguous run of the stream (per-tensor, per-byte-plane or per-channel tables) or,
with a class map, the rows (channels) of one class: rows whose histograms look alike share a table,
which codes per-channel-scaled weights 0.5-1.5 % below the per-tensor order-0 bound while keeping
the stream's lanes (decode speed) as they are.
A block interleaves its symbols over W lanes (symbol i goes to lane i mod W, each lane a 32-bit
state) that share one stream of 16-bit words, read in symbol order. That is the layout SIMD
decoders want (one vector of states, a contiguous word stream, contiguous output; see
``runtime/src/ecw_rans.c``), while blocks are independent, so both directions here run every lane
of every block of many payloads at once, one numpy operation per step: the step count is the
longest lane (<= ``LANE_STEPS``), not the tensor length. This is what makes a 20M-weight build
verifiable in Python in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import rans_tables as tables
from .errors import CorruptStream
from .format import (RANS_CLASSES, RANS_HEADER, RANS_L, RANS_MAX_CLASSES, RANS_MAX_LANE_SYMBOLS, RANS_MAX_LANES,
                     RANS_MAX_SCALE_BITS, RANS_SHUFFLE)

#: Symbols per lane in a full block: the numpy loops run at most this many steps; a block costs
#: 4 bytes of size plus 4 bytes of state per lane, about 3 of them wasted (the final state's
#: unused bits), so longer blocks are smaller.
LANE_STEPS = 16384
#: Fewest coded bytes per lane before the encoder doubles the lane count (up to 64: the C decoder's
#: SIMD steps want many lanes in flight, ~2 GB/s at 64 lanes against ~0.4 at 8). A lane costs ~2.75
#: bytes (its final state's unused bits), <= 0.62 % of 448 (a lane carries 448..896 bytes); 64
#: lanes from 28 KB coded.
MIN_LANE_BYTES = 448


@dataclass(frozen=True)
class RansPlan:
    """What to encode: the symbol stream (already in stream order) and its tables."""

    symbols: np.ndarray  # uint8, stream order (with classes: the rows of class 0, then class 1, ...)
    scale_bits: int
    freqs: np.ndarray  # (G, 256) int64, rows sum to 2**scale_bits
    lanes: int  # W, lanes interleaved in a block
    block: int  # symbols per block (the last block of a group may be shorter)
    shuffle: bool = False
    itemsize: int = 1
    knots: tuple | None = None  # per table: None (explicit) or (start, count, positions, values)
    est_size: int = 0  # payload bytes the planner expects
    classes: np.ndarray | None = None  # uint8 class (table) of every row, or None: contiguous groups


@dataclass(frozen=True)
class ParsedRans:
    """A validated payload, ready for ``decode_batch``."""

    scale_bits: int
    shuffle: bool
    itemsize: int
    freqs: np.ndarray
    lanes: int
    block: int
    n_symbols: int
    block_sizes: np.ndarray  # (blocks,) int64
    streams: np.ndarray  # uint8, the blocks' bytes concatenated
    classes: np.ndarray | None = None  # class of every row (FORMAT.md "rans", class map)


def group_lengths(n_symbols: int, n_groups: int, classes: np.ndarray | None = None) -> np.ndarray:
    """Symbols of every group: ``n / G`` each, or with a class map, the rows of each class."""
    if classes is None:
        return np.full(n_groups, n_symbols // n_groups, np.int64)
    return np.bincount(classes, minlength=n_groups).astype(np.int64) * (n_symbols // len(classes))


def block_layout(n_symbols: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of every block of the stream, as in FORMAT.md."""
    start = np.arange(0, n_symbols, block, dtype=np.int64)
    return start, np.minimum(block, n_symbols - start)


def class_map_bits(n_groups: int) -> int:
    """Bits per class-map entry: 1, 2 or 4 (entries never straddle a byte)."""
    return 1 if n_groups <= 2 else 2 if n_groups <= 4 else 4


def pack_classes(classes: np.ndarray, n_groups: int) -> bytes:
    """The class map: one entry per row, least significant bits first."""
    b = class_map_bits(n_groups)
    bits = (classes[:, None] >> np.arange(b, dtype=np.uint8)) & 1
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def fit_classes(row_counts: np.ndarray, sizes: tuple[int, ...], iters: int = 8) -> dict[int, np.ndarray]:
    """Assign rows to shared tables, for each number of classes in ``sizes``: Lloyd iterations on
    code length.

    Starts from quantiles of the rows' own entropy (per-channel int8 weights differ mostly in
    spread), then alternates: table = pooled histogram of its rows; row -> the table that codes it
    in the fewest bits. Returns uint8 classes ``0..T-1`` (empty classes dropped) per size that
    keeps at least two classes. One-hot and code-length matrix products (BLAS): every size for a
    30k-row embedding in about half a second.
    """
    c = row_counts.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c / c.sum(axis=1, keepdims=True)
        h = -np.where(c > 0, p * np.log2(p), 0).sum(axis=1)
    rank = np.argsort(np.argsort(h, kind="stable"))
    out = {}
    for t in sizes:
        cls = np.minimum(rank * t // len(h), t - 1)
        for _ in range(iters):
            onehot = np.zeros((t, len(cls)), np.float32)
            onehot[cls, np.arange(len(cls))] = 1
            pooled = onehot @ c + 0.02
            new = np.argmax(c @ np.log2(pooled / pooled.sum(axis=1, keepdims=True)).T, axis=1)
            if np.array_equal(new, cls):
                break
            cls = new
        kept, cls = np.unique(cls, return_inverse=True)
        if len(kept) >= 2:
            out[t] = cls.astype(np.uint8)
    return out


def choose_layout(n_symbols: int, bits_per_symbol: float = 8.0) -> tuple[int, int]:
    """Lanes W (a power of two, 1..64) and block length for a stream of ``n_symbols`` that code to
    about ``bits_per_symbol`` each."""
    w = 1
    while w < RANS_MAX_LANES and n_symbols * bits_per_symbol / 8 >= 2 * w * MIN_LANE_BYTES:
        w *= 2
    return w, w * LANE_STEPS


def plan(symbols: np.ndarray, n_groups: int, *, shuffle: bool = False, itemsize: int = 1,
         classes: np.ndarray | None = None) -> tuple[RansPlan, int]:
    """Choose scale bits and layout for a stream cut into ``n_groups`` tables.

    ``symbols`` are in stream order; with ``classes`` (one per row of ``symbols.size /
    len(classes)`` symbols) they are in tensor order and the plan holds them grouped by class.
    Returns the plan and its estimated payload size in bytes (exact up to the lanes' final states).
    """
    symbols = np.ascontiguousarray(symbols, dtype=np.uint8)
    extra = 0
    if classes is not None:
        symbols = symbols.reshape(len(classes), -1)[np.argsort(classes, kind="stable")].reshape(-1)
        extra = 4 + -(-len(classes) * class_map_bits(n_groups) // 8)
    lens = group_lengths(symbols.size, n_groups, classes)
    counts = group_counts(symbols, lens)
    best = None
    for m in tables.choose_scale_bits(counts):
        freqs = tables.normalize_freqs(counts, m)
        coded = tables.coded_bits(counts, freqs, m).sum()
        size = RANS_HEADER.size + extra + tables.table_bytes(freqs).sum() + coded / 8
        if best is None or size < best[0]:
            best = (size, m, freqs, coded)
    size, m, freqs, coded = best
    w, block = choose_layout(symbols.size, coded / symbols.size)
    size += -(-symbols.size // block) * (4 + 3 * w) - 4  # block size fields + ~3 wasted bytes a lane
    plan = RansPlan(symbols, m, freqs, w, block, shuffle, itemsize, est_size=int(np.ceil(size)), classes=classes)
    return plan, plan.est_size


#: `group_counts` keys at most this many symbols at a time (8 bytes each): a bounded temporary
#: instead of 16 bytes a symbol of the whole stream (500 MB for a 32k x 256 fp32 embedding).
COUNT_CHUNK = 1 << 20


def size_floor(symbols: np.ndarray, n_groups: int) -> float:
    """A lower bound of ``plan(symbols, n_groups)``'s estimate (contiguous groups): the header, per
    table its 3 bytes of fields and a code of at least one bit per symbol it holds, and the groups'
    order-0 entropy (no table normalized to 2^M codes below it). Costs one pass of counting, not
    the table pricing."""
    counts = group_counts(symbols, group_lengths(symbols.size, n_groups)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = np.where(counts > 0, counts * np.log2(counts.sum(axis=1, keepdims=True) / counts), 0.0).sum()
    table_floor = 3 * n_groups + int((-(-(counts > 0).sum(axis=1) // 8)).sum())
    return RANS_HEADER.size + table_floor + bits / 8


def group_counts(symbols: np.ndarray, group_lens: np.ndarray) -> np.ndarray:
    """``(G, 256)`` symbol counts of the consecutive groups of ``symbols``."""
    g = len(group_lens)
    if g == 1:
        return np.bincount(symbols, minlength=256)[None]
    ends = np.cumsum(group_lens)
    starts = ends - group_lens
    out = np.zeros((g, 256), np.int64)
    for pos in range(0, symbols.size, COUNT_CHUNK):   # the stream in chunks, one bincount each
        end = min(symbols.size, pos + COUNT_CHUNK)
        g0, g1 = np.searchsorted(ends, [pos, end - 1], side="right")
        lens = np.minimum(ends[g0:g1 + 1], end) - np.maximum(starts[g0:g1 + 1], pos)
        keys = np.repeat(np.arange(g1 + 1 - g0, dtype=np.int64) * 256, lens) + symbols[pos:end]
        out[g0:g1 + 1] += np.bincount(keys, minlength=256 * (g1 + 1 - g0)).reshape(-1, 256)
    return out


#: Knot tables are tried for per-tensor, per-byte-plane and class-map tables (at most 16), not
#: per-channel ones: those are chosen for large tensors, where a table's bytes hardly matter, and
#: there are many of them.
KNOT_MAX_TABLES = RANS_MAX_CLASSES
#: Knot fits per batch (a container), the tables with the most bytes first: a fit costs ~10 ms, and
#: a 20M-parameter transformer has hundreds of bias and norm tables whose bytes nobody would see.
KNOT_MAX_FITS = 64


def with_knot_tables(plans: list[RansPlan]) -> list[RansPlan]:
    """``plans`` with knot tables wherever they are smaller than the explicit ones (rans_tables,
    "Knot tables"): for per-tensor or per-byte-plane tables that are >= ``KNOT_MIN_SHARE`` of
    their payload, the ``KNOT_MAX_FITS`` tables of most bytes first."""
    worth = []
    for k, p in enumerate(plans):
        if p.knots is None and len(p.freqs) <= KNOT_MAX_TABLES:
            t = tables.table_bytes(p.freqs)
            if t.sum() >= tables.KNOT_MIN_SHARE * p.est_size:
                worth += [(-int(b), k, g) for g, b in enumerate(t)]
    chosen: dict[int, list[int]] = {}
    for _, k, g in sorted(worth)[:KNOT_MAX_FITS]:
        chosen.setdefault(k, []).append(g)
    return [_with_knots(p, chosen[k]) if k in chosen else p for k, p in enumerate(plans)]


def _with_knots(p: RansPlan, groups: list[int]) -> RansPlan:
    """``p`` with knot tables at M = 12 for those of ``groups`` where that is smaller (knot tables
    cost about the same at any M, and a fine M codes skewed histograms better), or ``p`` itself."""
    m = RANS_MAX_SCALE_BITS
    n_groups = len(p.freqs)
    counts = group_counts(p.symbols, group_lengths(p.symbols.size, n_groups, p.classes))
    before = tables.table_bytes(p.freqs).sum() + tables.coded_bits(counts, p.freqs, p.scale_bits).sum() / 8
    freqs = tables.normalize_freqs(counts, m)
    explicit = tables.table_bytes(freqs) + tables.coded_bits(counts, freqs, m) / 8
    start, count = tables.windows(counts)
    knots: list = [None] * n_groups
    for g in groups:
        window = (start[g] + np.arange(count[g])) % 256
        fit = tables.fit_knots(counts[g, window], m, m + 2)
        if fit is None:
            continue
        row = np.zeros(256, np.int64)
        row[window] = tables.knot_freqs(int(count[g]), *fit, m)
        cost = tables.knot_table_bytes(*fit) + tables.coded_bits(counts[g : g + 1], row[None], m)[0] / 8
        if cost < explicit[g]:
            freqs[g], explicit[g], knots[g] = row, cost, (int(start[g]), int(count[g]), *fit)
    if all(k is None for k in knots) or explicit.sum() >= before:
        return p
    return replace(p, scale_bits=m, freqs=freqs, knots=tuple(knots))


@dataclass(frozen=True)
class _Lanes:
    """Every lane of a batch of payloads, block-major, lanes of a block in order."""

    start: np.ndarray  # global index of the lane's first symbol
    stride: np.ndarray  # W of its payload
    length: np.ndarray  # symbols in the lane
    bits: np.ndarray  # M of its payload
    block: np.ndarray  # global block index
    lead: np.ndarray  # the first lane of its block
    first: np.ndarray  # per block: its first lane
    width: np.ndarray  # per block: W
    block_start: np.ndarray  # per block: global index of its first symbol
    table: np.ndarray | None  # per symbol of the batch: global table index (int32); None if not asked


def _lanes(items: list, tables: bool = True) -> _Lanes:
    parts: dict[str, list] = {k: [] for k in ("start", "stride", "length", "bits", "width", "bstart")}
    offset = 0
    for it in items:
        n = it.symbols.size if isinstance(it, RansPlan) else it.n_symbols
        bstart, blen = block_layout(n, it.block)
        w = it.lanes
        i = np.arange(w)
        lane_len = np.maximum(blen[:, None] - i[None, :] + w - 1, 0) // w
        parts["start"].append((bstart[:, None] + i[None, :]).ravel() + offset)
        parts["length"].append(lane_len.ravel())
        parts["stride"].append(np.full(lane_len.size, w))
        parts["bits"].append(np.full(lane_len.size, it.scale_bits))
        parts["width"].append(np.full(len(bstart), w))
        parts["bstart"].append(bstart + offset)
        offset += n
    cat = {k: np.concatenate(v).astype(np.int64) for k, v in parts.items()}
    width = cat["width"]
    first = np.cumsum(width) - width
    block = np.repeat(np.arange(len(width)), width)
    return _Lanes(cat["start"], cat["stride"], cat["length"], cat["bits"], block, first[block], first,
                  width, cat["bstart"], _table_entries(items) if tables else None)


def _active_counts(length_desc: np.ndarray) -> np.ndarray:
    """For lanes sorted by length (descending): how many are still active at each step."""
    steps = int(length_desc[0]) if len(length_desc) else 0
    return len(length_desc) - np.searchsorted(length_desc[::-1], np.arange(steps), side="right")


def _table_entries(items: list, symbols: list[np.ndarray] | None = None) -> np.ndarray:
    """Per symbol of the batch: its global table index (``symbols`` None) or that index * 256 +
    the symbol; uint16 when every value fits (up to 256 tables with symbols), else int32. Filled
    group by group (groups are contiguous runs of the stream), so no per-symbol temporaries beyond
    the result: 2 or 4 bytes a symbol."""
    total = sum(it.symbols.size if isinstance(it, RansPlan) else it.n_symbols for it in items)
    scale = 1 if symbols is None else 256
    dtype = np.uint16 if sum(len(it.freqs) for it in items) * scale <= 1 << 16 else np.int32
    out = np.empty(total, dtype)
    pos = base = 0
    for k, it in enumerate(items):
        n, g = (it.symbols.size if isinstance(it, RansPlan) else it.n_symbols), len(it.freqs)
        dst = out[pos:pos + n]
        if it.classes is None:
            rows = dst.reshape(g, -1)
            rows[:] = ((base + np.arange(g, dtype=np.int64)) * scale)[:, None]
            if symbols is not None:
                rows += symbols[k].reshape(g, -1)
        else:
            lens = group_lengths(n, g, it.classes)
            for t, (a, b) in enumerate(zip(np.cumsum(lens) - lens, np.cumsum(lens))):
                dst[a:b] = (base + t) * scale
                if symbols is not None:
                    dst[a:b] += symbols[k][a:b]
        pos += n
        base += g
    return out


def encode_batch(plans: list[RansPlan]) -> list[bytes]:
    """Encode every plan's payload; all lanes of all plans advance together.

    Memory: 5 to 7 bytes a symbol of the batch (table entry, word, emit flag) plus the payloads.
    """
    if not plans:
        return []
    ln = _lanes(plans, tables=False)
    entry = _table_entries(plans, [p.symbols for p in plans])  # index into the flattened tables
    n_total = entry.size
    freqs = np.concatenate([p.freqs for p in plans]).astype(np.uint32)
    cum = (np.cumsum(freqs, axis=1) - freqs).astype(np.uint32)
    f_flat, c_flat = freqs.ravel(), cum.ravel()

    order = np.argsort(-ln.length, kind="stable")
    st, stride = ln.start[order], ln.stride[order]
    m_s = ln.bits[order].astype(np.uint32)
    top = (32 - m_s).astype(np.uint32)  # emit a word while x >= f * 2^(32 - M)
    x = np.full(len(order), RANS_L, dtype=np.uint32)
    word = np.zeros(n_total, np.uint16)  # the word shifted out before coding symbol k
    emit = np.zeros(n_total, bool)
    for t, n in reversed(list(enumerate(_active_counts(ln.length[order])))):
        idx = st[:n] + t * stride[:n]
        e = entry[idx]
        f = f_flat[e]
        xs = x[:n]
        out = (xs >> top[:n]) >= f
        word[idx] = xs.astype(np.uint16)
        emit[idx] = out
        xs = np.where(out, xs >> 16, xs)
        q, r = np.divmod(xs, f)
        x[:n] = (q << m_s[:n]) + r + c_flat[e]
    del entry
    # The decoder reads the words in symbol order, so a block's stream is its emitted words in order;
    # blocks are contiguous runs of the batch, so a block's words are one slice of `words`.
    ends = np.append(ln.block_start[1:], n_total)
    counts = np.array([np.count_nonzero(emit[a:b]) for a, b in zip(ln.block_start, ends)], np.int64)
    words = word[emit].astype("<u2", copy=False).view(np.uint8)
    del word, emit
    final = np.empty_like(x)
    final[order] = x
    states = final.astype("<u4").view(np.uint8)  # lanes block-major: a block's states are one slice
    word_end = np.cumsum(counts)

    payloads, b0 = [], 0
    for p in plans:
        g = len(p.freqs)
        k = -(-p.symbols.size // p.block)
        sizes = 4 * ln.width[b0:b0 + k] + 2 * counts[b0:b0 + k]
        flags = (RANS_SHUFFLE if p.shuffle else 0) | (RANS_CLASSES if p.classes is not None else 0)
        header = RANS_HEADER.pack(p.scale_bits, flags, p.itemsize, p.lanes, g, p.block)
        if p.classes is not None:
            header += len(p.classes).to_bytes(4, "little") + pack_classes(p.classes, g)
        # every block's size but the last: the payload's end implies it
        parts = [header, tables.serialize_tables(p.freqs, p.knots), sizes[:-1].astype("<u4").tobytes()]
        for b in range(b0, b0 + k):
            parts += [states[4 * ln.first[b]: 4 * (ln.first[b] + ln.width[b])],
                      words[2 * (word_end[b] - counts[b]): 2 * word_end[b]]]
        payloads.append(b"".join(parts))
        b0 += k
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
        raise CorruptStream(f"rans payload of {len(buf)} bytes is shorter than its {RANS_HEADER.size}-byte header")
    m, flags, isz, w, g, block = RANS_HEADER.unpack_from(buf, 0)
    n = n_symbols
    shuffle, has_classes = bool(flags & RANS_SHUFFLE), bool(flags & RANS_CLASSES)
    if not 1 <= m <= RANS_MAX_SCALE_BITS:
        raise CorruptStream(f"rans scale_bits {m} is outside 1..{RANS_MAX_SCALE_BITS}")
    if flags > 3 or (shuffle and has_classes) or (not shuffle and isz != 1) or (shuffle and isz != itemsize):
        raise CorruptStream(f"rans flags={flags} itemsize={isz} does not fit the tensor")
    if not 0 < n < 1 << 32:
        raise CorruptStream(f"rans streams hold 1..2^32 - 1 symbols, the entry implies {n}")
    if g == 0 or (n % g and not has_classes) or (shuffle and g % isz):
        raise CorruptStream(f"rans n_groups={g} does not divide {n} symbols into whole groups")
    if not 1 <= w <= RANS_MAX_LANES or not w <= block <= w * RANS_MAX_LANE_SYMBOLS:
        raise CorruptStream(f"rans lanes={w} and block={block} are outside 1..{RANS_MAX_LANES} and W..W*65536")
    pos, classes = RANS_HEADER.size, None
    if has_classes:
        if not 2 <= g <= RANS_MAX_CLASSES or len(buf) < pos + 4:
            raise CorruptStream(f"rans class map with {g} classes (2..{RANS_MAX_CLASSES}) or without its row count")
        rows = int(buf[pos : pos + 4].view("<u4")[0])
        b = class_map_bits(g)
        end = pos + 4 + -(-rows * b // 8)
        if rows == 0 or n % rows or end > len(buf):
            raise CorruptStream(f"rans class map of {rows} rows does not fit {n} symbols or the payload")
        bits = np.unpackbits(buf[pos + 4 : end], bitorder="little")[: rows * b].reshape(rows, b)
        classes = (bits.astype(np.uint8) << np.arange(b, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
        if np.any(np.bincount(classes, minlength=16)[:g] == 0) or classes.max() >= g:
            raise CorruptStream(f"rans class map leaves a class empty or names one past {g}")
        pos = end
    if 3 * g > len(buf) - pos:
        raise CorruptStream(f"rans payload too short for {g} tables")
    freqs, pos = tables.parse_tables(buf, pos, g, m)
    n_blocks = -(-n // block)
    if pos + 4 * (n_blocks - 1) > len(buf):
        raise CorruptStream(f"rans payload too short for {n_blocks} block sizes")
    sizes = buf[pos : pos + 4 * (n_blocks - 1)].view("<u4").astype(np.int64)
    pos += 4 * (n_blocks - 1)
    sizes = np.append(sizes, len(buf) - pos - int(sizes.sum()))  # the last block: the rest
    if np.any(sizes < 4 * w) or np.any((sizes - 4 * w) % 2):
        raise CorruptStream("rans block sizes do not add up to the payload")
    return ParsedRans(m, shuffle, isz, freqs, w, block, n, sizes, buf[pos:], classes)


def decode_batch(parsed: list[ParsedRans]) -> list[np.ndarray]:
    """Decode payloads to their symbol streams (uint8, stream order); all lanes step together.

    Raises
    ------
    CorruptStream
        A lane's initial state is below 2^16, or a block does not end with every lane at state
        2^16 and its words used up.
    """
    if not parsed:
        return []
    ln = _lanes(parsed)
    size = np.concatenate([p.block_sizes for p in parsed])
    stream = np.concatenate([p.streams for p in parsed] + [np.zeros(8, np.uint8)])
    off = np.cumsum(size) - size
    # One packed slot table per frequency table, 2^M entries each: sym | (f - 1) << 8 | c << 20.
    freqs = np.concatenate([p.freqs for p in parsed])
    cum = np.cumsum(freqs, axis=1) - freqs
    packed = np.arange(256, dtype=np.uint32) | ((freqs - 1).astype(np.uint32) << 8) | (cum.astype(np.uint32) << 20)
    slot_tab = np.repeat(packed.ravel(), np.maximum(freqs, 0).ravel())
    n_slots = freqs.sum(axis=1)
    slot_base = np.cumsum(n_slots) - n_slots  # per table
    n_total = len(ln.table)
    at = off[ln.block] + 4 * (np.arange(len(ln.start)) - ln.lead)
    x = stream[at[:, None] + np.arange(4)].astype(np.uint32)
    x = x[:, 0] | (x[:, 1] << 8) | (x[:, 2] << 16) | (x[:, 3] << 24)
    if np.any(x < RANS_L):
        raise CorruptStream("rans lane state below 2^16")
    ptr = off + 4 * ln.width
    m_s = ln.bits.astype(np.uint32)
    mask = ((1 << m_s) - 1).astype(np.uint32)
    out = np.empty(int(sum(p.n_symbols for p in parsed)), np.uint8)
    last = len(stream) - 2
    for t in range(int(ln.length.max())):
        active = t < ln.length
        idx = np.minimum(ln.start + t * ln.stride, n_total - 1)
        slot = x & mask
        e = slot_tab[slot_base[ln.table[idx]] + slot]
        out[idx[active]] = e[active]  # the low byte: the symbol
        f = ((e >> 8) & 0xFFF) + 1
        x = np.where(active, f * (x >> m_s) + slot - (e >> 20), x)
        need = active & (x < RANS_L)
        before = np.cumsum(need) - need  # reads by earlier lanes, all blocks
        pos = np.minimum(ptr[ln.block] + 2 * (before - before[ln.lead]), last)
        w = stream[pos].astype(np.uint32) | (stream[pos + 1].astype(np.uint32) << 8)
        x = np.where(need, (x << 16) | w, x)
        ptr += 2 * np.add.reduceat(need.astype(np.int64), ln.first)
    if np.any(x != RANS_L) or np.any(ptr != off + size):
        raise CorruptStream("rans block does not end with its lanes at the final state and its words used up")
    results, pos = [], 0
    for p in parsed:
        sym = out[pos : pos + p.n_symbols]
        if p.classes is not None:  # rows come grouped by class: put them back in row order
            rows = np.empty((len(p.classes), p.n_symbols // len(p.classes)), np.uint8)
            rows[np.argsort(p.classes, kind="stable")] = sym.reshape(len(p.classes), -1)
            sym = rows.reshape(-1)
        results.append(sym)
        pos += p.n_symbols
    return results
