"""rANS frequency tables: normalization to 2^M, size estimates, knot fitting, (de)serialization.

A table is ``start`` (u8), ``count - 1`` (u8), a mode byte and bit-packed Exp-Golomb codes: either
the zigzagged differences between consecutive frequencies of the window ``start .. start+count-1``
(mod 256; explicit table) or a few knots whose interpolated weights the decoder scales to 2^M (knot
table); see ``runtime/FORMAT.md``, "rans". Explicit tables are handled as a stack, shape
``(G, 256)``, without Python loops over symbols; the knot search is vectorized per window position.
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
    order = np.argsort(-remainder, axis=1, kind="stable")
    rank = np.empty_like(order)                      # the inverse permutation: one sort, not two
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
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
    """Bits of each integer ``v >= 1`` (1 for ``v < 1``), exact below 2^53 (frexp's exponent)."""
    return np.frexp(np.maximum(v, 1).astype(np.float64))[1].astype(np.int64)


#: `_best_k` prices this many tables at a time (8 orders x 256 symbols each): bounded temporaries
#: for the 4096 per-channel tables of a large tensor.
BEST_K_CHUNK = 256


def _best_k(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exp-Golomb order minimizing each table's bits, and those bits; ``z < 0`` marks padding."""
    ks = np.arange(MAX_EG_K + 1)
    k = np.empty(len(z), np.int64)
    best = np.empty(len(z), np.int64)
    for a in range(0, len(z), BEST_K_CHUNK):
        zc = z[a:a + BEST_K_CHUNK]
        nb = _bit_length(zc[:, None, :] + (1 << ks)[None, :, None])
        bits = np.where(zc[:, None, :] >= 0, 2 * nb - ks[None, :, None] - 1, 0).sum(axis=2)
        k[a:a + BEST_K_CHUNK] = np.argmin(bits, axis=1)
        best[a:a + BEST_K_CHUNK] = bits[np.arange(len(zc)), k[a:a + BEST_K_CHUNK]]
    return k, best


def table_bytes(freqs: np.ndarray) -> np.ndarray:
    """Serialized size in bytes of each table."""
    _, _, z = _window_values(freqs)
    _, bits = _best_k(z)
    return 3 + (bits + 7) // 8


def _eg_stream(codes: np.ndarray, orders: np.ndarray) -> bytes:
    """Exp-Golomb codes, each of its own order: ``n`` zeros, then the ``n + k + 1`` bits of
    ``z + 2^k`` most significant first; bits fill each byte from its least significant bit."""
    v = codes + (1 << orders)
    nb = _bit_length(v)
    length = 2 * nb - orders - 1
    first = np.cumsum(length) - length
    stream = np.zeros(int(length.sum()), np.uint8)
    owner = np.repeat(np.arange(len(v)), nb)
    j = np.arange(len(owner)) - np.repeat(np.cumsum(nb) - nb, nb)  # bit index within v, MSB first
    stream[np.repeat(first + nb - orders - 1, nb) + j] = (v[owner] >> (nb[owner] - 1 - j)) & 1
    return np.packbits(stream, bitorder="little").tobytes()


def serialize_tables(freqs: np.ndarray, knots: tuple | None = None) -> bytes:
    """Serialize a stack of tables (FORMAT.md, "rans"): explicit (start, count - 1, k, Exp-Golomb-k
    deltas) or, where ``knots[t]`` is ``(start, count, positions, values)``, a knot table."""
    freqs = np.asarray(freqs, dtype=np.int64)
    start, count, z = _window_values(freqs)
    k, _ = _best_k(z)
    out = bytearray()
    for t in range(len(freqs)):  # one iteration per table, vectorized within
        if knots is not None and knots[t] is not None:
            st, cnt, pos, val = knots[t]
            kg, kv, codes, orders = _knot_codes(pos, val)
            out += bytes([st, cnt - 1, KNOT_MODE | kg << 4 | kv]) + _eg_stream(codes, orders)
        else:
            n = int(count[t])
            out += bytes([int(start[t]), n - 1, int(k[t])]) + _eg_stream(z[t, :n], np.full(n, k[t]))
    return bytes(out)


class _Bits:
    """Exp-Golomb reader over a table's bytes (tables are small: a Python loop per code is fine)."""

    def __init__(self, buf: np.ndarray, pos: int, t: int):
        self.bits = np.unpackbits(buf[pos:], bitorder="little")
        self.i, self.t = 0, t

    def read(self, k: int) -> int:
        bits, i = self.bits, self.i
        n = 0
        while i + n < len(bits) and bits[i + n] == 0 and n <= 16:
            n += 1
        if n > 16 or i + 2 * n + k + 1 > len(bits):
            raise CorruptStream(f"rans table {self.t} runs past the payload or has an overlong code")
        v = int("".join(map(str, bits[i + n : i + 2 * n + k + 1].tolist())), 2)
        self.i = i + 2 * n + k + 1
        return v - (1 << k)


def _unzigzag(z: int) -> int:
    return (z >> 1) if z % 2 == 0 else -((z + 1) >> 1)


def parse_tables(buf: np.ndarray, pos: int, n_tables: int, scale_bits: int) -> tuple[np.ndarray, int]:
    """Parse ``n_tables`` tables from ``buf[pos:]``.

    Returns
    -------
    (np.ndarray, int)
        ``(n_tables, 256)`` int64 frequencies and the position after the last table.

    Raises
    ------
    CorruptStream
        A table runs past the buffer, has an unknown mode, an Exp-Golomb code longer than 16 bits
        of prefix, a frequency above 2^M or not summing to exactly 2^M, or knots past its window,
        above 65535 or of zero total weight.
    """
    target = 1 << scale_bits
    out = np.zeros((n_tables, 256), dtype=np.int64)
    end = len(buf)
    for t in range(n_tables):
        if pos + 3 > end:
            raise CorruptStream(f"rans table {t} runs past the payload")
        start, count, mode = int(buf[pos]), int(buf[pos + 1]) + 1, int(buf[pos + 2])
        # A code is at most 2 * 16 + 8 bits: read that much per code (or what is left) as bits.
        br = _Bits(buf[: min(end, pos + 3 + count * 11)], pos + 3, t)
        if mode & KNOT_MODE:
            if mode & 0x08:
                raise CorruptStream(f"rans table {t} has unknown mode byte {mode:#x}")
            kg, kv = (mode >> 4) & 7, mode & 7
            at, vals = [0], [_unzigzag(br.read(kv))]
            while at[-1] < count - 1:
                at.append(at[-1] + 1 + br.read(kg))
                vals.append(vals[-1] + _unzigzag(br.read(kv)))
                if at[-1] > count - 1:
                    raise CorruptStream(f"rans table {t} has a knot past its window of {count}")
            if not all(0 <= v <= MAX_KNOT_VALUE for v in vals):
                raise CorruptStream(f"rans table {t} has a knot weight outside 0..{MAX_KNOT_VALUE}")
            values = knot_freqs(count, np.array(at), np.array(vals), scale_bits)
            if values is None:
                raise CorruptStream(f"rans table {t} has knots that give no valid frequencies")
        else:
            if mode > MAX_EG_K:
                raise CorruptStream(f"rans table {t} has Exp-Golomb order {mode} > {MAX_EG_K}")
            prev, values = 0, []
            for _ in range(count):
                prev += _unzigzag(br.read(mode))
                if not 0 <= prev <= target:
                    raise CorruptStream(f"rans table {t} has frequency {prev} outside 0..2^{scale_bits}")
                values.append(prev)
            if sum(values) != target:
                raise CorruptStream(f"rans table {t} sums to {sum(values)}, not 2^{scale_bits}")
        out[t, (start + np.arange(count)) % 256] = values
        pos += 3 + (br.i + 7) // 8
    return out, pos


def choose_scale_bits(counts: np.ndarray) -> list[int]:
    """Candidate M values for these tables: from the fewest bits that fit every symbol to 14."""
    distinct = int((counts > 0).sum(axis=1).max())
    low = max(1, int(np.ceil(np.log2(max(distinct, 2)))))
    n = int(counts.sum(axis=1).max())
    high = min(14, RANS_MAX_SCALE_BITS, max(low, int(np.ceil(np.log2(max(n, 2)))) + 2))
    return list(range(low, high + 1))


# --- Knot tables (FORMAT.md "rans", mode byte 0x80 | ...) ------------------------------------
# An explicit table spends ~2-5 bits on every symbol of its window: 40-90 bytes, which is several
# per cent of a tensor of a few thousand weights. Trained weights have smooth histograms, so a
# knot table sends a few (position, weight) knots instead; the decoder interpolates the weights
# linearly between knots and scales them to 2^M. Knots are placed by dynamic programming over the
# window (cost: the knot's bits plus the coded bits of the symbols it spans); where a knot table
# does not beat the explicit one, the explicit table is kept.

KNOT_MODE = 0x80  # bit 7 of the table's third byte; bits 4-6: gap order, bits 0-2: value order
MAX_KNOT_VALUE = 0xFFFF
#: Longest segment the knot search considers (a wider gap costs more search than it saves bits).
KNOT_MAX_GAP = 48
#: Tables whose explicit form is under this share of the tensor's coded bytes are not refitted.
KNOT_MIN_SHARE = 0.001


def knot_weights(count: int, pos: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Interpolated weights of the window's ``count`` positions (floor of the linear blend)."""
    w = np.zeros(count, np.int64)
    w[pos[0]] = val[0]
    a, b = pos[:-1], pos[1:]
    seg = np.repeat(np.arange(len(a)), b - a)  # segment of every position after the first knot
    t = np.arange(int(pos[0]) + 1, count)
    w[t] = (val[:-1][seg] * (b[seg] - t) + val[1:][seg] * (t - a[seg])) // (b[seg] - a[seg])
    return w


def knot_freqs(count: int, pos: np.ndarray, val: np.ndarray, scale_bits: int) -> np.ndarray | None:
    """Window frequencies of a knot table, exactly as the decoders compute them, or None if invalid.

    ``f = max(1, w * 2^M // sum(w))`` where ``w > 0``, 0 elsewhere; the difference to 2^M goes to
    the first largest ``f``, which must stay >= 1.
    """
    w = knot_weights(count, pos, val)
    total, target = int(w.sum()), 1 << scale_bits
    if total == 0:
        return None
    f = np.where(w > 0, np.maximum(w * target // total, 1), 0)
    top = int(np.argmax(f))
    f[top] += target - int(f.sum())
    return f if f[top] >= 1 else None


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.convolve(np.pad(x, r), k / k.sum(), mode="valid")


def fit_knots(c: np.ndarray, scale_bits: int, value_bits: int, knot_cost: float = 14.0) -> tuple | None:
    """Knots for the window counts ``c``: (positions, values), or None if no valid table came out.

    Dynamic programming over the positions: a knot at position j with candidate value v (the
    count scaled to 2^value_bits, raw or smoothed) is reached from an earlier knot (i, u) at the
    cost of ``knot_cost`` bits plus, for every symbol between them, ``c * -log2(f) + lam * f``
    with ``f`` the interpolated weight and ``lam`` the Lagrange multiplier that keeps the weights
    summing to about 2^value_bits. Vectorized over the candidate pairs and the start positions.
    """
    c = np.asarray(c, np.int64)
    n_pos, n, scale = len(c), int(c.sum()), 1 << value_bits
    raw = c * scale / n
    if raw.max() > MAX_KNOT_VALUE:
        return None
    cand = np.stack([np.where(c > 0, np.maximum(np.round(v), 1), np.round(v)) for v in (raw, _smooth(raw, 1.5))])
    cand = np.minimum(cand, MAX_KNOT_VALUE).astype(np.int64)
    n_cand, lam = len(cand), n / (scale * np.log(2))

    def cost(f: np.ndarray, cc: np.ndarray) -> np.ndarray:
        bits = np.where(cc > 0, -cc * np.log2(np.maximum(f, 1)), 0.0) + lam * f
        return np.where((cc > 0) & (f <= 0), np.inf, bits)

    best = np.full((n_cand, n_pos), np.inf)
    back = np.zeros((n_cand, n_pos, 2), np.int64)
    best[:, 0] = knot_cost + cost(cand[:, 0], c[0])
    for j in range(1, n_pos):
        i = np.arange(max(0, j - KNOT_MAX_GAP), j)  # the previous knot
        t = np.arange(i[0] + 1, j + 1)  # the positions a segment (i, j] may cover
        inside = t[None, :] > i[:, None]  # (I, T)
        vi = cand[:, i][:, None, :, None]
        vj = cand[:, j][None, :, None, None]
        f = (vi * (j - t) + vj * (t[None, :] - i[:, None])) // (j - i)[:, None]
        seg = np.where(inside, cost(f, c[t]), 0.0).sum(axis=-1)  # (Ci, Cj, I)
        tot = (best[:, i][:, None, :] + seg + knot_cost).transpose(1, 0, 2).reshape(n_cand, -1)
        a = np.argmin(tot, axis=1)
        best[:, j] = tot[np.arange(n_cand), a]
        back[:, j, 0], back[:, j, 1] = a // len(i), i[a % len(i)]
    k, j = int(np.argmin(best[:, -1])), n_pos - 1
    pos, val = [j], [cand[k, j]]
    while j > 0:
        k, j = back[k, j]
        pos.append(j)
        val.append(cand[k, j])
    pos, val = np.array(pos[::-1], np.int64), np.array(val[::-1], np.int64)
    f = knot_freqs(n_pos, pos, val, scale_bits)
    if f is None or np.any((c > 0) & (f == 0)):
        return None
    return pos, val


def _knot_codes(pos: np.ndarray, val: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Orders (gap, value) and the interleaved code values and orders of a knot table."""
    d = np.diff(val, prepend=0)
    z = np.where(d >= 0, 2 * d, -2 * d - 1)
    gaps = np.diff(pos) - 1
    kg = int(_best_k(gaps[None])[0][0]) if len(gaps) else 0
    kv = int(_best_k(z[None])[0][0])
    codes = np.empty(2 * len(val) - 1, np.int64)
    codes[0::2], codes[1::2] = z, gaps
    orders = np.where(np.arange(len(codes)) % 2 == 0, kv, kg)
    return kg, kv, codes, orders


def knot_table_bytes(pos: np.ndarray, val: np.ndarray) -> int:
    """Serialized size in bytes of a knot table."""
    _, _, codes, orders = _knot_codes(pos, val)
    nb = _bit_length(codes + (1 << orders))
    return 3 + (int((2 * nb - orders - 1).sum()) + 7) // 8
