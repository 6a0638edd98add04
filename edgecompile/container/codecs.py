"""Tensor codecs of the ``.ecw`` container: raw, zstd, rans and lut (FORMAT.md, "Payloads").

Encoding is split in two so that every rANS stream of a container is coded in one vectorized
batch: ``candidates`` returns, per codec, either finished payload bytes or a ``Pending`` (rANS
plans plus a function that wraps the coded streams), and ``finish`` completes the pending ones.
Decoding mirrors it: ``prepare`` validates a payload and returns a ``Pending`` whose rANS parts
``finish_decode`` decodes in one batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from . import rans
from .errors import CodecUnavailable, CorruptStream, UnknownCodec
from .format import LUT_HEADER, LUT_MAX_BITS, LUT_MAX_K

ZSTD_LEVEL = 19
_UINT = {1: np.uint8, 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


@dataclass(frozen=True)
class Pending:
    """Work waiting for a batched rANS pass: plans (encode) or parsed payloads (decode)."""

    parts: tuple
    finish: Callable[[list], object]  # receives the coded/decoded parts, in order


def _zstd():
    try:
        import zstandard
    except ImportError as exc:  # an MCU-side loader may not ship zstandard
        raise CodecUnavailable("codec 'zstd' needs the 'zstandard' package; pip install zstandard") from exc
    return zstandard


def to_stream(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Bytes of ``arr`` in rANS stream order: byte planes for multi-byte dtypes."""
    b = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    if arr.dtype.itemsize == 1:
        return b, False
    return np.ascontiguousarray(b.reshape(-1, arr.dtype.itemsize).T).reshape(-1), True


def from_stream(sym: np.ndarray, itemsize: int, shuffle: bool) -> np.ndarray:
    """Inverse of ``to_stream``: element bytes in memory order."""
    if not shuffle:
        return sym
    return np.ascontiguousarray(sym.reshape(itemsize, -1).T).reshape(-1)


PER_CHANNEL_MIN_SYMBOLS = 1024
#: At most this many per-channel tables are priced (an fp32 embedding of 32k rows would otherwise
#: price 128k byte-plane tables: the T5 encoder's fp32 container took 1,017 s, issue 13); past it
#: the class maps (<= 16 tables) already capture how rows differ.
PER_CHANNEL_MAX_TABLES = 4096
#: Per-channel tables must beat the best shared-table plan by this fraction: the decoder sets up a
#: table (2^M slots) per channel and steps out of its SIMD loop at every channel boundary.
PER_CHANNEL_MIN_GAIN = 0.01
#: Class maps are tried with 2, 4, 8 and 16 shared tables, for rows of at least this many symbols;
#: more tables must save this fraction over the best plan so far: every table switch costs the
#: decoder a table setup and a partial step (16 classes: ~1/3 slower than 4 on a 230k tensor).
CLASS_MIN_ROW = 16
CLASS_MIN_GAIN = 0.0025
ZSTD_MAX_BYTES_L19 = 1 << 20


def _channels(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) >= 2 and shape[0] > 1 else 1


def _rans_plan(sym: np.ndarray, shuffle: bool, itemsize: int, channels: int) -> rans.RansPlan:
    """Smallest of per-tensor (or per-byte-plane), class-map and per-channel tables."""
    base = itemsize if shuffle else 1
    best = rans.plan(sym, base, shuffle=shuffle, itemsize=itemsize)
    if channels >= 4 and not shuffle and sym.size >= CLASS_MIN_ROW * channels:
        row_counts = rans.group_counts(sym, np.full(channels, sym.size // channels))
        for classes in rans.fit_classes(row_counts, tuple(t for t in (2, 4, 8, 16) if t <= channels // 2)).values():
            alt = rans.plan(sym, int(classes.max()) + 1, classes=classes)
            if alt[1] < (1 - CLASS_MIN_GAIN) * best[1]:
                best = alt
    # A table costs tens of bytes: per-channel tables only pay off with enough symbols per channel
    # (and pricing 30k tables of an embedding would cost seconds for nothing).
    # Priced only when their size floor could win (pricing 4096 tables at every M costs seconds).
    if (1 < channels <= PER_CHANNEL_MAX_TABLES // base and sym.size >= PER_CHANNEL_MIN_SYMBOLS * channels
            and rans.size_floor(sym, base * channels) < (1 - PER_CHANNEL_MIN_GAIN) * best[1]):
        alt = rans.plan(sym, base * channels, shuffle=shuffle, itemsize=itemsize)
        if alt[1] < (1 - PER_CHANNEL_MIN_GAIN) * best[1]:
            best = alt
    return best[0]


def lut_split(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Codebook (sorted unique element bit patterns) and uint8 indices, or None if > 64 values.

    Compares bit patterns, so -0.0 and NaN payloads survive exactly. Costs O(n log k): the
    codebook is guessed from a sample and grown only by the elements it misses.
    """
    bits = np.ascontiguousarray(arr).reshape(-1).view(_UINT[arr.dtype.itemsize])
    book = np.unique(bits[:4096])
    while len(book) <= LUT_MAX_K:
        idx = np.minimum(np.searchsorted(book, bits), len(book) - 1)
        miss = book[idx] != bits
        if not miss.any():
            return book, idx.astype(np.uint8)
        book = np.union1d(book, np.unique(bits[miss][: 64 * 1024]))
    return None


def _pack(idx: np.ndarray, nbits: int) -> bytes:
    planes = (idx[:, None] >> np.arange(nbits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def _unpack(buf: np.ndarray, n: int, nbits: int) -> np.ndarray:
    padded = np.concatenate([buf, np.zeros(2, np.uint8)]).astype(np.uint16)
    pos = np.arange(n, dtype=np.int64) * nbits
    byte = pos >> 3
    word = padded[byte] | (padded[byte + 1] << 8)
    return ((word >> (pos & 7).astype(np.uint16)) & ((1 << nbits) - 1)).astype(np.uint8)


def candidates(arr: np.ndarray, allowed: tuple[str, ...], zstd_level: int = ZSTD_LEVEL
               ) -> dict[str, bytes | memoryview | Pending]:
    """Payload (or pending rANS work) of every allowed codec that applies to ``arr``; the raw
    payload is a view of ``arr``'s bytes (no copy)."""
    raw = memoryview(np.ascontiguousarray(arr)).cast("B")
    out: dict[str, bytes | memoryview | Pending] = {}
    if "raw" in allowed:
        out["raw"] = raw
    if arr.size == 0:
        return out
    if "zstd" in allowed:
        # level 19 costs ~1 s per MB; past ZSTD_MAX_BYTES_L19 a faster level keeps 20M-parameter builds
        # under a minute (rANS wins on int8 weights of that size anyway)
        level = zstd_level if len(raw) <= ZSTD_MAX_BYTES_L19 else min(zstd_level, 9)
        out["zstd"] = _zstd().ZstdCompressor(level=level).compress(raw)
    if "rans" in allowed:
        sym, shuffle = to_stream(arr)
        plan = _rans_plan(sym, shuffle, arr.dtype.itemsize, _channels(arr.shape))
        out["rans"] = Pending((plan,), lambda coded: coded[0])
    if "lut" in allowed:
        split = lut_split(arr)
        if split is not None:
            book, idx = split
            k = len(book)
            nbits = max(1, math.ceil(math.log2(k)))
            head = book.astype(book.dtype.newbyteorder("<")).tobytes()
            packed = LUT_HEADER.pack(nbits, 0, k) + head + _pack(idx, nbits)
            plan = _rans_plan(idx, False, 1, _channels(arr.shape))
            index_head = LUT_HEADER.pack(nbits, 2, k) + head

            def finish(coded: list, packed=packed, index_head=index_head) -> bytes:
                with_rans = index_head + coded[0]
                return with_rans if len(with_rans) < len(packed) else packed

            out["lut"] = Pending((plan,), finish)
    return out


def rans_bound(pending: Pending) -> int:
    """Bytes a finished "rans" candidate cannot exceed: the planner's estimate (exact up to the
    lanes' final states, FORMAT.md) plus 4 bytes a lane."""
    plan = pending.parts[0]
    lanes = -(-plan.symbols.size // plan.block) * plan.lanes
    return plan.est_size + 4 * lanes + 64


def finish(pendings: list[Pending]) -> list[bytes]:
    """Code every pending rANS plan in one batch and wrap each result."""
    plans = [p for pend in pendings for p in pend.parts]
    coded = rans.encode_batch(rans.with_knot_tables(plans)) if plans else []
    results, i = [], 0
    for pend in pendings:
        k = len(pend.parts)
        results.append(pend.finish(coded[i : i + k]))
        i += k
    return results


def prepare(codec: str, payload: memoryview, dtype: np.dtype, count: int) -> np.ndarray | Pending:
    """Validate ``payload`` and decode it, or return pending rANS work; bytes come out as uint8.

    Parameters
    ----------
    codec : str
        Codec name from the entry.
    payload : memoryview
        The payload bytes.
    dtype : np.dtype
        Element type; ``count`` elements of it make the decoded tensor.
    """
    isz = dtype.itemsize
    size = count * isz
    if codec == "raw":
        return np.frombuffer(payload, np.uint8)
    if codec == "zstd":
        zstd = _zstd()
        try:
            # the frame header's content size decides what `decompress` allocates: check it first
            # (one changed header byte can claim exabytes: MemoryError instead of an error)
            declared = zstd.get_frame_parameters(bytes(payload[:18])).content_size
            if declared not in (size, zstd.CONTENTSIZE_UNKNOWN):
                raise CorruptStream(f"zstd frame declares {declared} bytes, the entry {size}")
            data = zstd.ZstdDecompressor().decompress(bytes(payload), max_output_size=size)
        except zstd.ZstdError as exc:
            raise CorruptStream(f"zstd payload does not decode: {exc}") from exc
        if len(data) != size:
            raise CorruptStream(f"zstd payload decodes to {len(data)} bytes, expected {size}")
        return np.frombuffer(data, np.uint8)
    if codec == "rans":
        parsed = rans.parse(payload, size, itemsize=isz if isz > 1 else None)
        return Pending((parsed,), lambda sym: from_stream(sym[0], isz, parsed.shuffle))
    if codec == "lut":
        return _prepare_lut(np.frombuffer(payload, np.uint8), isz, count)
    raise UnknownCodec(f"unknown codec {codec!r}")


def _prepare_lut(buf: np.ndarray, isz: int, count: int) -> np.ndarray | Pending:
    if len(buf) < LUT_HEADER.size:
        raise CorruptStream("lut payload shorter than its 4-byte header")
    nbits, index_codec, k = LUT_HEADER.unpack_from(buf, 0)
    if not (1 <= nbits <= LUT_MAX_BITS and 1 <= k <= min(LUT_MAX_K, 1 << nbits)) or index_codec not in (0, 2):
        raise CorruptStream(f"lut header bits={nbits} k={k} index_codec={index_codec} is invalid")
    pos = LUT_HEADER.size + k * isz
    if pos > len(buf):
        raise CorruptStream("lut codebook runs past the payload")
    book = buf[LUT_HEADER.size : pos].view(_UINT[isz])

    def expand(idx: np.ndarray) -> np.ndarray:
        if idx.size and int(idx.max()) >= k:
            raise CorruptStream(f"lut index {int(idx.max())} is outside the codebook of {k}")
        return book[idx].view(np.uint8)

    if index_codec == 0:
        if len(buf) - pos != -(-count * nbits // 8):
            raise CorruptStream(f"lut packed indices take {len(buf) - pos} bytes, expected {-(-count * nbits // 8)}")
        return expand(_unpack(buf[pos:], count, nbits))
    parsed = rans.parse(buf[pos:], count)
    return Pending((parsed,), lambda sym: expand(sym[0]))


def finish_decode(pendings: list[Pending]) -> list[np.ndarray]:
    """Decode every pending rANS payload in one batch and finish each tensor."""
    parts = [p for pend in pendings for p in pend.parts]
    decoded = rans.decode_batch(parts)
    results, i = [], 0
    for pend in pendings:
        k = len(pend.parts)
        results.append(pend.finish(decoded[i : i + k]))
        i += k
    return results
