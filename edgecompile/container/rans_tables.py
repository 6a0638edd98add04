"""rANS frequency tables: normalization to 2^M, size estimates, (de)serialization.

A table is stored as ``start`` (u8), ``count - 1`` (u8), ``k`` (u8) and ``count`` Exp-Golomb-k codes
of the zigzagged differences between consecutive frequencies of the symbols ``start ..
start+count-1`` (mod 256), bit-packed; see ``runtime/FORMAT.md``, "rans". All functions work
on a stack of tables, shape ``(G, 256)``, without Python loops over symbols.
"""
from __future__ import annotations

import numpy as np

from .errors import CorruptStream
from .format import RANS_MAX_SCALE_BITS


def normalize_freqs(counts: np.ndarray, scale_bits: int) -> np.ndarray:
    """Quantize symbol counts to frequencies that sum to exactly ``2**scale_bits`` per table.

    Parameters
    ----------
    counts : np.ndarray
        ``(G, 256)`` non-negative symbol counts; every row has at least one non-zero count.
    scale_bits : int
        M; needs ``2**M >=`` the number of distinct symbols of every row.

    Returns
    -------
    np.ndarray
        ``(G, 256)`` int64 frequencies: ``> 0`` exactly where ``counts > 0``, rows summing to
        ``2**M``. Rounding takes largest remainders first; where rare symbols raised to 1 overshoot,
        the frequency whose decrement costs the fewest bits (``count * log2(f / (f - 1))``) gives.
    """
    counts = np.asarray(counts, dtype=np.int64)
    target = 1 << scale_bits
    present = counts > 0
    if np.any(present.sum(axis=1) > target):
        raise ValueError(f"scale_bits={scale_bits} is too small for the number of distinct symbols")
    total = counts.sum(axis=1, keepdims=True)
    exact = counts * target / total
    freqs = np.where(present, np.maximum(np.floor(exact).astype(np.int64), 1), 0)
    deficit = target - freqs.sum(axis=1)
    # Positive deficit: one extra unit for the `deficit` symbols with the largest remainders.
    remainder = np.where(present, exact - np.floor(exact), -1.0)
    rank = np.argsort(np.argsort(-remainder, axis=1, kind="stable"), axis=1, kind="stable")
    freqs += (rank < np.maximum(deficit, 0)[:, None]) & present
    deficit = target - freqs.sum(axis=1)
    rows = np.arange(len(freqs))
    while np.any(deficit < 0):
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = np.where(freqs > 1, counts * np.log2(freqs / np.maximum(freqs - 1, 1)), np.inf)
        pick = np.argmin(loss, axis=1)
        freqs[rows, pick] -= deficit < 0
        deficit = target - freqs.sum(axis=1)
    return freqs


def coded_bits(counts: np.ndarray, freqs: np.ndarray, scale_bits: int) -> np.ndarray:
    """Bits the rANS payload spends per table: ``sum(count * (M - log2 f))`` (ignoring lane ends)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(counts > 0, counts * (scale_bits - np.log2(np.maximum(freqs, 1))), 0.0)
    return per.sum(axis=1)


MAX_EG_K = 7  # Exp-Golomb order field of a table


def windows(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shortest cyclic symbol window per table holding every non-zero frequency: (start, count)."""
    nz = np.concatenate([freqs > 0, freqs > 0], axis=1)
    pos = np.arange(512)
    last_nz = np.maximum.accumulate(np.where(nz, pos, -1), axis=1)
    zero_run = np.minimum(pos - last_nz, 256)[:, 256:]  # zeros ending at each position
    end = np.argmax(zero_run, axis=1)
    run = zero_run[np.arange(len(freqs)), end]
    return (end + 1) % 256, 256 - run


def _window_values(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window start, count and the zigzag deltas of the window's frequencies, ``(G, 256)``."""
    start, count = windows(freqs)
    sym = (start[:, None] + np.arange(256)) % 256
    f = np.take_along_axis(freqs, sym, axis=1)
    d = f - np.concatenate([np.zeros((len(f), 1), f.dtype), f[:, :-1]], axis=1)
    z = np.where(d >= 0, 2 * d, -2 * d - 1)
    return start, count, np.where(np.arange(256) < count[:, None], z, -1)


def _bit_length(v: np.ndarray) -> np.ndarray:
    return np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1


def _best_k(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exp-Golomb order minimizing each table's bits, and those bits; ``z < 0`` marks padding."""
    ks = np.arange(MAX_EG_K + 1)
    nb = _bit_length(z[:, None, :] + (1 << ks)[None, :, None])
    bits = np.where(z[:, None, :] >= 0, 2 * nb - ks[None, :, None] - 1, 0).sum(axis=2)
    k = np.argmin(bits, axis=1)
    return k, bits[np.arange(len(z)), k]


def table_bytes(freqs: np.ndarray) -> np.ndarray:
    """Serialized size in bytes of each table."""
    _, _, z = _window_values(freqs)
    _, bits = _best_k(z)
    return 3 + (bits + 7) // 8


def serialize_tables(freqs: np.ndarray) -> bytes:
    """Serialize a stack of tables (FORMAT.md: start, count - 1, k, Exp-Golomb-k deltas)."""
    freqs = np.asarray(freqs, dtype=np.int64)
    start, count, z = _window_values(freqs)
    k, bits = _best_k(z)
    out = bytearray()
    for t in range(len(freqs)):  # one iteration per table, vectorized within
        zt = z[t, : count[t]]
        v = zt + (1 << k[t])
        nb = _bit_length(v)
        length = 2 * nb - k[t] - 1
        first = np.cumsum(length) - length
        stream = np.zeros(int(length.sum()), np.uint8)
        # Code: (nb - k - 1) zeros, then v's nb bits, most significant first.
        lead = nb - k[t] - 1
        owner = np.repeat(np.arange(len(v)), nb)
        j = np.arange(len(owner)) - np.repeat(np.cumsum(nb) - nb, nb)  # bit index within v, MSB first
        stream[np.repeat(first + lead, nb) + j] = (v[owner] >> (nb[owner] - 1 - j)) & 1
        out += bytes([int(start[t]), int(count[t]) - 1, int(k[t])])
        out += np.packbits(stream, bitorder="little").tobytes()
    return bytes(out)


def parse_tables(buf: np.ndarray, pos: int, n_tables: int, scale_bits: int) -> tuple[np.ndarray, int]:
    """Parse ``n_tables`` tables from ``buf[pos:]``.

    Returns
    -------
    (np.ndarray, int)
        ``(n_tables, 256)`` int64 frequencies and the position after the last table.

    Raises
    ------
    CorruptStream
        A table runs past the buffer, has an Exp-Golomb code longer than 16 bits of prefix, a
        frequency above 2^M, or does not sum to exactly 2^M.
    """
    target = 1 << scale_bits
    out = np.zeros((n_tables, 256), dtype=np.int64)
    end = len(buf)
    for t in range(n_tables):
        if pos + 3 > end:
            raise CorruptStream(f"rans table {t} runs past the payload")
        start, count, k = int(buf[pos]), int(buf[pos + 1]) + 1, int(buf[pos + 2])
        if k > MAX_EG_K:
            raise CorruptStream(f"rans table {t} has Exp-Golomb order {k} > {MAX_EG_K}")
        pos += 3
        # A code is at most 2 * 16 + k bits; read that much (or what is left) as bits.
        bits = np.unpackbits(buf[pos : min(end, pos + count * (33 + k) // 8 + 8)], bitorder="little").tolist()
        i, prev, total, values = 0, 0, 0, []
        for _ in range(count):
            n = 0
            while i + n < len(bits) and bits[i + n] == 0 and n <= 16:
                n += 1
            if n > 16 or i + 2 * n + k + 1 > len(bits):
                raise CorruptStream(f"rans table {t} runs past the payload or has an overlong code")
            v = 0
            for b in bits[i + n : i + 2 * n + k + 1]:
                v = (v << 1) | b
            i += 2 * n + k + 1
            z = v - (1 << k)
            prev += (z >> 1) if z % 2 == 0 else -((z + 1) >> 1)
            if not 0 <= prev <= target:
                raise CorruptStream(f"rans table {t} has frequency {prev} outside 0..2^{scale_bits}")
            total += prev
            values.append(prev)
        if total != target:
            raise CorruptStream(f"rans table {t} sums to {total}, not 2^{scale_bits}")
        out[t, (start + np.arange(count)) % 256] = values
        pos += (i + 7) // 8
    return out, pos


def choose_scale_bits(counts: np.ndarray) -> list[int]:
    """Candidate M values for these tables: from the fewest bits that fit every symbol to 14."""
    distinct = int((counts > 0).sum(axis=1).max())
    low = max(1, int(np.ceil(np.log2(max(distinct, 2)))))
    n = int(counts.sum(axis=1).max())
    high = min(14, RANS_MAX_SCALE_BITS, max(low, int(np.ceil(np.log2(max(n, 2)))) + 2))
    return list(range(low, high + 1))
