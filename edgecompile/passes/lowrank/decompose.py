"""Low-rank decompositions of weight tensors: pure NumPy functions, no graph, no torch.

- `svd_factors`: truncated SVD of a matrix, ``W ≈ U @ V`` with the singular values split as
  square roots into both factors (balanced factors have similar ranges, which suits int8 later).
- `tucker2`: Tucker-2 of a convolution weight along its output and input channel modes
  (Kim et al. 2016), as the chain conv1x1 -> conv kxk -> conv1x1.
- `tt_decompose` / `tt_reconstruct`: the tensor-train matrix format (Novikov et al. 2015)
  computed by TT-SVD (Oseledets 2011); `factor_modes` picks the mode sizes.

All functions compute in float64 when given float64 and in float32 otherwise, and return arrays of
the input's float dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from ...errors import InputError

__all__ = [
    "NotEligibleError", "Tucker2Factors", "svd_factors", "tucker2", "tucker2_params",
    "tt_decompose", "tt_reconstruct", "tt_params", "tt_max_ranks", "factor_modes",
    "gram_eigh",
]

# A TT bond rank may be given as a function of the bond's singular values and its index.
BondRankFn = Callable[[np.ndarray, int], int]


class NotEligibleError(InputError, ValueError):
    """The weight cannot be decomposed this way (e.g. a grouped convolution for Tucker-2)."""


def _float(w: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(w)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"{what}: expected a numeric array, got dtype {w.dtype}")
    if w.dtype != np.float64:
        w = w.astype(np.float32, copy=False)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{what}: the weight holds NaN or inf; fix the model before compressing it")
    return w


def _check_rank(rank: int, full: int, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"{what}: rank must be an int, got {type(rank).__name__}")
    if not 1 <= rank <= full:
        raise ValueError(f"{what}: rank {rank} is outside [1, {full}]")
    return int(rank)


def gram_eigh(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right singular vectors of a tall `w` ([m, n], m >= n) from its Gram.

    ``WᵀW = V diag(s²) Vᵀ`` costs one m·n² product plus an n×n eigensolve, several times faster
    than LAPACK's SVD for tall matrices. Singular values below about sqrt(eps)·s_max lose their
    relative accuracy, which does not matter for choosing ranks or for the leading vectors.

    Returns
    -------
    s : (n,) singular values in decreasing order.
    v : (n, n) matching right singular vectors as columns.
    """
    gram = (w.T @ w).astype(np.float64)
    evals, evecs = np.linalg.eigh(gram)
    order = np.arange(evals.size)[::-1]
    s = np.sqrt(np.clip(evals[order], 0.0, None))
    return s, evecs[:, order]


def svd_factors(w: np.ndarray, rank: int, *, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD ``W ≈ U @ V`` with balanced factors.

    With ``W = P diag(s) Qᵀ``, returns ``U = P_r diag(√s_r)`` and ``V = diag(√s_r) Q_rᵀ``: the
    best rank-r approximation in Frobenius and spectral norm (Eckart–Young), so
    ``‖W − UV‖_F² = Σ_{i>r} s_i²``.

    Parameters
    ----------
    w : (m, n) array
        A linear weight [out, in] or an embedding table [vocab, dim].
    rank : int
        Kept rank r, 1 <= r <= min(m, n).
    method : {"auto", "svd", "gram"}
        "svd" is LAPACK's thin SVD; "gram" takes the eigenvectors of the smaller Gram matrix and
        projects (fast for tall or wide matrices such as embeddings); "auto" uses "gram" when the
        aspect ratio is at least 4 and the short side at least 256.

    Returns
    -------
    U : (m, r) array
    V : (r, n) array
    """
    w = _float(w, "svd_factors")
    if w.ndim != 2:
        raise ValueError(f"svd_factors: expected a 2-D weight, got shape {w.shape}")
    m, n = w.shape
    r = _check_rank(rank, min(m, n), "svd_factors")
    if method == "auto":
        method = "gram" if min(m, n) >= 256 and max(m, n) >= 4 * min(m, n) else "svd"
    if method == "svd":
        p, s, qt = np.linalg.svd(w, full_matrices=False)
        root = np.sqrt(s[:r]).astype(w.dtype)
        return p[:, :r] * root, root[:, None] * qt[:r]
    if method != "gram":
        raise ValueError(f"svd_factors: unknown method {method!r}; use 'auto', 'svd' or 'gram'")
    tall = w if m >= n else w.T
    s, v = gram_eigh(tall)
    s_r = np.maximum(s[:r], np.finfo(np.float64).tiny)
    v_r = v[:, :r].astype(w.dtype)
    # tall ≈ (tall v_r) v_rᵀ; (tall v_r) has columns p_i·s_i, so dividing by √s_i balances it.
    left = (tall @ v_r) / np.sqrt(s_r).astype(w.dtype)
    right = (np.sqrt(s_r).astype(w.dtype)[:, None] * v_r.T)
    return (left, right) if m >= n else (right.T, left.T)


# --------------------------------------------------------------------------------------- Tucker-2

class Tucker2Factors(NamedTuple):
    """Factors of ``W[o, i, k…] ≈ Σ_ab last[o, a] core[a, b, k…] first[b, i]`` as conv weights."""

    first: np.ndarray  # [r_in, I, 1, …]: 1x1 conv, I -> r_in channels
    core: np.ndarray   # [r_out, r_in, kh, kw…]: the spatial conv
    last: np.ndarray   # [O, r_out, 1, …]: 1x1 conv, r_out -> O channels


def _leading_left_vectors(a: np.ndarray, r: int) -> np.ndarray:
    """The r leading left singular vectors of a (m, n) matrix, as columns."""
    if a.shape[1] >= 4 * a.shape[0]:
        # wide: the eigenvectors of the small m×m Gram are the left singular vectors.
        _, u = gram_eigh(a.T)
        return u[:, :r].astype(a.dtype)
    # full_matrices only when r exceeds the matrix rank bound (then the extra columns are an
    # orthonormal completion that the core multiplies by zero).
    u, _, _ = np.linalg.svd(a, full_matrices=r > min(a.shape))
    return u[:, :r]


def tucker2(w: np.ndarray, ranks: tuple[int, int], *, groups: int = 1,
            n_iter: int = 3) -> Tucker2Factors:
    """Tucker-2 decomposition of a convolution weight along its two channel modes.

    ``W ≈ core ×₀ U_out ×₁ U_in``, initialised by HOSVD (leading left singular vectors of the
    mode-0 and mode-1 unfoldings) and refined by `n_iter` HOOI sweeps (De Lathauwer et al. 2000).
    As in Kim et al. 2016, "Compression of deep convolutional neural networks for fast and low
    power mobile applications" (ICLR), the result runs as conv1x1 (I -> r_in), then the kxk conv
    on r_in -> r_out channels with the original stride, padding and dilation, then conv1x1
    (r_out -> O). The squared error is at most the discarded energy of the two unfoldings.

    Parameters
    ----------
    w : (O, I, *kernel) array
        A 1-D or 2-D convolution weight.
    ranks : (r_out, r_in)
        Kept ranks of the output and input channel modes.
    groups : int
        The convolution's group count; only 1 is eligible.
    n_iter : int
        HOOI sweeps after the HOSVD start (0 gives plain truncated HOSVD).

    Returns
    -------
    Tucker2Factors
        ``(first [r_in, I, 1…], core [r_out, r_in, *kernel], last [O, r_out, 1…])``.

    Raises
    ------
    NotEligibleError
        For grouped or depthwise convolutions, whose weight does not couple all input channels.
    """
    if groups != 1:
        raise NotEligibleError(
            f"tucker2: a grouped convolution (groups={groups}) is not eligible; "
            "only groups=1 convolutions couple all channels")
    w = _float(w, "tucker2")
    if w.ndim < 3:
        raise ValueError(f"tucker2: expected a conv weight [O, I, *kernel], got shape {w.shape}")
    o, i = w.shape[:2]
    kernel = w.shape[2:]
    ksize = math.prod(kernel)
    if len(ranks) != 2:
        raise ValueError(f"tucker2: ranks must be (r_out, r_in), got {ranks!r}")
    r_out = _check_rank(ranks[0], min(o, i * ksize), "tucker2 r_out")
    r_in = _check_rank(ranks[1], min(i, o * ksize), "tucker2 r_in")
    x = w.reshape(o, i, ksize)

    def unfold0(t: np.ndarray) -> np.ndarray:  # [o, rest]
        return t.reshape(t.shape[0], -1)

    def unfold1(t: np.ndarray) -> np.ndarray:  # [i, rest]
        return t.transpose(1, 0, 2).reshape(t.shape[1], -1)

    u_out = _leading_left_vectors(unfold0(x), r_out)
    u_in = _leading_left_vectors(unfold1(x), r_in)
    for _ in range(n_iter):
        # HOOI: each factor from the unfolding of W projected on the other factor.
        u_out = _leading_left_vectors(unfold0(np.einsum("oik,ib->obk", x, u_in)), r_out)
        u_in = _leading_left_vectors(unfold1(np.einsum("oik,oa->aik", x, u_out)), r_in)
    core = np.einsum("oik,oa,ib->abk", x, u_out, u_in).reshape(r_out, r_in, *kernel)
    ones = (1,) * len(kernel)
    first = np.ascontiguousarray(u_in.T).reshape(r_in, i, *ones)
    last = np.ascontiguousarray(u_out).reshape(o, r_out, *ones)
    return Tucker2Factors(first.astype(w.dtype), core.astype(w.dtype), last.astype(w.dtype))


def tucker2_params(out_ch: int, in_ch: int, ksize: int, r_out: int, r_in: int) -> int:
    """Weight count of the Tucker-2 chain (biases excluded)."""
    return r_in * in_ch + r_out * r_in * ksize + out_ch * r_out


# ------------------------------------------------------------------------------------ tensor train

@functools.lru_cache(maxsize=4096)
def _best_modes(n: int, d: int, lo: int) -> tuple[int, ...] | None:
    """Non-decreasing factors >= lo of n, d of them, with the smallest largest factor."""
    if d == 1:
        return (n,) if n >= lo else None
    best = None
    f = lo
    while f ** d <= n:
        if n % f == 0:
            rest = _best_modes(n // f, d - 1, f)
            if rest is not None and (best is None or rest[-1] < best[-1]):
                best = (f, *rest)
        f += 1
    return best


def factor_modes(n: int, d: int) -> tuple[int, ...]:
    """The most balanced factorization of n into d integer modes (smallest largest mode).

    ``factor_modes(768, 3) == (8, 8, 12)``. A prime n cannot be balanced; the result then has
    ones in it (``factor_modes(13, 2) == (1, 13)``), which the caller should treat as "not
    tensorizable" (see `tt_decompose`).

    Parameters
    ----------
    n : int
        The dimension, n >= 1.
    d : int
        The number of modes, d >= 1.

    Returns
    -------
    tuple of d ints in non-decreasing order whose product is n.
    """
    if n < 1 or d < 1:
        raise ValueError(f"factor_modes: need n >= 1 and d >= 1, got n={n}, d={d}")
    modes = _best_modes(int(n), int(d), 2)
    if modes is None:  # not enough prime factors: pad with ones
        for k in range(d - 1, 0, -1):
            inner = _best_modes(int(n), k, 2)
            if inner is not None:
                return (1,) * (d - k) + inner
        return (1,) * (d - 1) + (int(n),)
    return modes


def tt_max_ranks(out_modes: Sequence[int], in_modes: Sequence[int]) -> tuple[int, ...]:
    """The largest useful bond ranks ``r_1 … r_{d-1}`` of a TT-matrix with these modes."""
    sizes = [a * b for a, b in zip(out_modes, in_modes)]
    return tuple(min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, len(sizes)))


def _resolve_tt_ranks(ranks: int | Sequence[int], d: int) -> list[int]:
    """Ranks as a list of the d-1 inner bonds; accepts an int, d-1 ints or d+1 with end 1s."""
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        inner = [int(ranks)] * (d - 1)
    else:
        inner = [int(r) for r in ranks]
        if len(inner) == d + 1:
            if inner[0] != 1 or inner[-1] != 1:
                raise ValueError(f"tt_decompose: boundary ranks must be 1, got {list(ranks)}")
            inner = inner[1:-1]
        if len(inner) != d - 1:
            raise ValueError(f"tt_decompose: {d} cores need {d - 1} inner ranks, got {list(ranks)}")
    if any(r < 1 for r in inner):
        raise ValueError(f"tt_decompose: ranks must be >= 1, got {inner}")
    return inner


def tt_decompose(w: np.ndarray, in_modes: Sequence[int], out_modes: Sequence[int],
                 ranks: int | Sequence[int] | BondRankFn | None = None, *,
                 rel_error: float | None = None) -> list[np.ndarray]:
    """TT-matrix decomposition of a linear weight by TT-SVD.

    ``W[(o₁…o_d), (i₁…i_d)] = G₁[:, o₁, i₁, :] · G₂[:, o₂, i₂, :] ⋯ G_d[:, o_d, i_d, :]``, the
    TT-matrix format of Novikov et al. 2015, "Tensorizing Neural Networks" (NeurIPS), computed by
    the sequential truncated SVDs of Oseledets 2011, "Tensor-Train Decomposition" (SIAM J. Sci.
    Comput.). Row and column indices are row-major over their modes.

    Parameters
    ----------
    w : (m, n) array
        A linear weight [out, in] with m = prod(out_modes), n = prod(in_modes).
    in_modes, out_modes : sequences of d ints
    ranks : int, sequence or callable, optional
        Inner bond ranks: one int for all bonds, d-1 ints, or d+1 ints with 1 at both ends; or a
        function ``(singular_values_of_bond, bond_index) -> rank``. Ranks above what a bond can
        hold are capped (`tt_max_ranks`). Give exactly one of `ranks` and `rel_error`.
    rel_error : float, optional
        Target relative Frobenius error ε: each bond discards at most ε‖W‖/√(d−1), so that
        ``‖W − TT‖_F <= ε‖W‖_F`` (Oseledets 2011, Thm. 2.2).

    Returns
    -------
    list of d arrays, core k of shape (r_{k-1}, out_modes[k], in_modes[k], r_k), r_0 = r_d = 1.
    """
    w = _float(w, "tt_decompose")
    in_modes = tuple(int(x) for x in in_modes)
    out_modes = tuple(int(x) for x in out_modes)
    d = len(in_modes)
    if d < 1 or len(out_modes) != d:
        raise ValueError(f"tt_decompose: in_modes {in_modes} and out_modes {out_modes} must have "
                         "the same, non-zero length")
    if w.shape != (math.prod(out_modes), math.prod(in_modes)):
        raise ValueError(f"tt_decompose: weight shape {w.shape} is not (prod(out_modes) = "
                         f"{math.prod(out_modes)}, prod(in_modes) = {math.prod(in_modes)})")
    if (ranks is None) == (rel_error is None):
        raise ValueError("tt_decompose: give exactly one of ranks and rel_error")
    if rel_error is not None:
        if not 0.0 <= rel_error < 1.0:
            raise ValueError(f"tt_decompose: rel_error must be in [0, 1), got {rel_error}")
        delta = rel_error * float(np.linalg.norm(w)) / math.sqrt(max(d - 1, 1))

        def chooser(s: np.ndarray, _k: int) -> int:
            # smallest r whose discarded tail Σ_{i>=r} s_i² stays within δ².
            tail = np.cumsum((s.astype(np.float64) ** 2)[::-1])[::-1]
            return max(1, int(np.count_nonzero(tail > delta ** 2)))
    elif callable(ranks):
        chooser = ranks
    else:
        fixed = _resolve_tt_ranks(ranks, d)

        def chooser(_s: np.ndarray, k: int) -> int:
            return fixed[k]

    sizes = [o * i for o, i in zip(out_modes, in_modes)]
    # [o1..od, i1..id] -> [o1, i1, o2, i2, ...]: core k then carries the pair (o_k, i_k).
    t = w.reshape(out_modes + in_modes)
    t = t.transpose([ax for k in range(d) for ax in (k, d + k)])
    cores: list[np.ndarray] = []
    rest = np.ascontiguousarray(t).reshape(sizes[0], -1)
    r_prev = 1
    for k in range(d - 1):
        p, s, qt = np.linalg.svd(rest, full_matrices=False)
        r = int(min(max(1, chooser(s, k)), s.size))
        cores.append(p[:, :r].reshape(r_prev, out_modes[k], in_modes[k], r))
        rest = (s[:r, None] * qt[:r]).reshape(r * sizes[k + 1], -1)
        r_prev = r
    cores.append(rest.reshape(r_prev, out_modes[-1], in_modes[-1], 1))
    return [c.astype(w.dtype, copy=False) for c in cores]


def tt_reconstruct(cores: Sequence[np.ndarray]) -> np.ndarray:
    """The (m, n) matrix of a TT-matrix given as cores (r_{k-1}, o_k, i_k, r_k).

    The inverse of `tt_decompose` up to its truncation error.
    """
    if not cores:
        raise ValueError("tt_reconstruct: no cores")
    for k, c in enumerate(cores):
        if c.ndim != 4:
            raise ValueError(f"tt_reconstruct: core {k} has shape {c.shape}, expected 4-D")
    if cores[0].shape[0] != 1 or cores[-1].shape[3] != 1:
        raise ValueError("tt_reconstruct: the boundary ranks must be 1")
    full = cores[0][0]  # [o1, i1, r1]
    outs, ins = [cores[0].shape[1]], [cores[0].shape[2]]
    for k, c in enumerate(cores[1:], start=1):
        if c.shape[0] != full.shape[-1]:
            raise ValueError(f"tt_reconstruct: core {k} rank {c.shape[0]} does not match "
                             f"the previous core's {full.shape[-1]}")
        # [O, I, r] x [r, o, i, r'] -> [O, o, I, i, r'] -> [O·o, I·i, r']
        full = np.einsum("abr,rcds->acbds", full, c)
        outs.append(c.shape[1])
        ins.append(c.shape[2])
        full = full.reshape(math.prod(outs), math.prod(ins), c.shape[3])
    return full[..., 0]


def tt_params(cores_or_shapes: Sequence[np.ndarray] | Sequence[tuple[int, ...]]) -> int:
    """Weight count of a TT-matrix, from its cores or their shapes."""
    return sum(math.prod(getattr(c, "shape", c)) for c in cores_or_shapes)
