"""Property tests of the pure decompositions: SVD factors, Tucker-2, tensor train, mode factoring."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecompile.passes.lowrank.decompose import (
    NotEligibleError, factor_modes, svd_factors, tt_decompose, tt_max_ranks, tt_params,
    tt_reconstruct, tucker2, tucker2_params)
from edgecompile.passes.lowrank.rank import mode_spectra

EXACT = 1e-6  # reconstruction tolerance for exact-rank inputs (float64, unit-scale entries)


def _exact_rank(rng: np.random.Generator, m: int, n: int, r: int) -> np.ndarray:
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) / math.sqrt(r)


def _tucker_weight(rng, o, i, kernel, r_out, r_in):
    core = rng.standard_normal((r_out, r_in, *kernel))
    a = rng.standard_normal((o, r_out))
    b = rng.standard_normal((i, r_in))
    return np.einsum("ab...,oa,ib->oi...", core, a, b) / math.sqrt(r_out * r_in)


def _tucker_apply(f) -> np.ndarray:
    last = f.last.reshape(f.last.shape[:2])
    first = f.first.reshape(f.first.shape[:2])
    return np.einsum("ab...,oa,bi->oi...", f.core, last, first)


# ------------------------------------------------------------------------------------ svd_factors

@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), data=st.data())
def test_svd_exact_rank_reconstructs(m, n, data):
    r = data.draw(st.integers(1, min(m, n)))
    seed = data.draw(st.integers(0, 2**16))
    w = _exact_rank(np.random.default_rng(seed), m, n, r)
    for method in ("svd", "gram"):
        u, v = svd_factors(w, r, method=method)
        assert u.shape == (m, r) and v.shape == (r, n)
        np.testing.assert_allclose(u @ v, w, atol=EXACT)


def test_svd_gram_path_on_tall_and_wide_matrices():
    rng = np.random.default_rng(1)
    w = _exact_rank(rng, 1200, 260, 7)  # "auto" takes the Gram path here
    for mat in (w, w.T):
        u, v = svd_factors(mat, 7)
        np.testing.assert_allclose(u @ v, mat, atol=EXACT)


def test_svd_truncation_error_is_the_discarded_energy(digits_mlp):
    w = digits_mlp["fc1"]
    s = np.linalg.svd(w, compute_uv=False)
    for r in (1, 8, 32, 100):
        for method in ("svd", "gram"):
            u, v = svd_factors(w, r, method=method)
            err = np.linalg.norm(w - u @ v)
            assert err == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-6, abs=1e-9)


def test_svd_factors_are_balanced():
    w = np.random.default_rng(2).standard_normal((30, 20)) * 5.0
    u, v = svd_factors(w, 6)
    s = np.linalg.svd(w, compute_uv=False)[:6]
    # each factor carries sqrt(s): column norms of U equal row norms of V equal sqrt(s).
    np.testing.assert_allclose(np.linalg.norm(u, axis=0), np.sqrt(s), rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), np.sqrt(s), rtol=1e-10)


def test_svd_keeps_float32():
    w = np.random.default_rng(3).standard_normal((16, 12)).astype(np.float32)
    u, v = svd_factors(w, 4)
    assert u.dtype == v.dtype == np.float32


@pytest.mark.parametrize("rank", [0, 13, -1])
def test_svd_rejects_bad_rank(rank):
    with pytest.raises(ValueError, match="rank"):
        svd_factors(np.ones((12, 20)), rank)


def test_svd_rejects_nan_and_non_matrix():
    with pytest.raises(ValueError, match="NaN"):
        svd_factors(np.full((3, 3), np.nan), 1)
    with pytest.raises(ValueError, match="2-D"):
        svd_factors(np.ones((2, 3, 4)), 1)


# ---------------------------------------------------------------------------------------- tucker2

@settings(max_examples=30, deadline=None)
@given(o=st.integers(2, 16), i=st.integers(2, 16), kernel=st.sampled_from([(3, 3), (1, 1), (5,), (3, 1)]),
       data=st.data())
def test_tucker2_exact_multilinear_ranks_reconstruct(o, i, kernel, data):
    k = math.prod(kernel)
    r_out = data.draw(st.integers(1, min(o, i * k)))
    r_in = data.draw(st.integers(1, min(i, o * k)))
    w = _tucker_weight(np.random.default_rng(data.draw(st.integers(0, 2**16))), o, i, kernel,
                       r_out, r_in)
    # the multilinear ranks of w are at most (r_out, r_in); a random core makes them exact.
    f = tucker2(w, (r_out, r_in))
    ones = (1,) * len(kernel)
    assert f.first.shape == (r_in, i, *ones)
    assert f.core.shape == (r_out, r_in, *kernel)
    assert f.last.shape == (o, r_out, *ones)
    np.testing.assert_allclose(_tucker_apply(f), w, atol=EXACT)


def test_tucker2_error_within_hosvd_bound_and_hooi_helps():
    rng = np.random.default_rng(4)
    w = _tucker_weight(rng, 32, 24, (3, 3), 8, 6) + 0.05 * rng.standard_normal((32, 24, 3, 3))
    s_out, s_in = mode_spectra(w)
    for ranks in [(8, 6), (4, 4), (12, 3)]:
        bound = math.sqrt(np.sum(s_out[ranks[0]:] ** 2) + np.sum(s_in[ranks[1]:] ** 2))
        hosvd = np.linalg.norm(w - _tucker_apply(tucker2(w, ranks, n_iter=0)))
        hooi = np.linalg.norm(w - _tucker_apply(tucker2(w, ranks, n_iter=3)))
        assert hosvd <= bound * (1 + 1e-9)
        assert hooi <= hosvd * (1 + 1e-9)


def test_tucker2_rejects_grouped_conv():
    w = np.ones((8, 1, 3, 3))
    with pytest.raises(NotEligibleError, match="groups=8"):
        tucker2(w, (2, 1), groups=8)


def test_tucker2_rejects_matrices_and_bad_ranks():
    with pytest.raises(ValueError, match="conv weight"):
        tucker2(np.ones((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="r_in"):
        tucker2(np.ones((4, 3, 3, 3)), (2, 4))


def test_tucker2_params_counts_the_chain():
    f = tucker2(np.random.default_rng(5).standard_normal((16, 8, 3, 3)), (5, 4))
    assert sum(x.size for x in f) == tucker2_params(16, 8, 9, 5, 4)


# ------------------------------------------------------------------------------------ tensor train

@st.composite
def _tt_case(draw):
    d = draw(st.integers(2, 4))
    outs = tuple(draw(st.lists(st.integers(1, 4), min_size=d, max_size=d)))
    ins = tuple(draw(st.lists(st.integers(1, 4), min_size=d, max_size=d)))
    caps = tt_max_ranks(outs, ins)
    ranks = [draw(st.integers(1, c)) for c in caps]
    return outs, ins, ranks, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None)
@given(case=_tt_case())
def test_tt_exact_ranks_reconstruct(case):
    outs, ins, ranks, seed = case
    rng = np.random.default_rng(seed)
    full = [1, *ranks, 1]
    cores = [rng.standard_normal((full[k], outs[k], ins[k], full[k + 1])) for k in range(len(outs))]
    w = tt_reconstruct(cores)
    assert w.shape == (math.prod(outs), math.prod(ins))
    got = tt_decompose(w, ins, outs, ranks)
    for k, c in enumerate(got):
        assert c.shape[1:3] == (outs[k], ins[k])
        assert c.shape[0] <= full[k] and c.shape[3] <= full[k + 1]
    np.testing.assert_allclose(tt_reconstruct(got), w, atol=EXACT * max(1.0, np.abs(w).max()))
    # the error-driven form finds the same (or smaller) ranks and is exact too
    got_eps = tt_decompose(w, ins, outs, rel_error=1e-9)
    assert tt_params(got_eps) <= tt_params(got)
    np.testing.assert_allclose(tt_reconstruct(got_eps), w, atol=EXACT * max(1.0, np.abs(w).max()))


def test_tt_relative_error_bound_on_trained_weight(digits_mlp):
    w = digits_mlp["fc1"]  # [128, 256]
    outs, ins = factor_modes(128, 3), factor_modes(256, 3)
    for eps in (0.05, 0.2, 0.5):
        cores = tt_decompose(w, ins, outs, rel_error=eps)
        err = np.linalg.norm(w - tt_reconstruct(cores)) / np.linalg.norm(w)
        assert err <= eps + 1e-12
    # looser error, fewer parameters
    sizes = [tt_params(tt_decompose(w, ins, outs, rel_error=e)) for e in (0.05, 0.2, 0.5)]
    assert sizes == sorted(sizes, reverse=True)


def test_tt_rank_forms_and_capping():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((12, 8))
    for ranks in (100, [100, 100], [1, 100, 100, 1]):
        cores = tt_decompose(w, (2, 2, 2), (2, 3, 2), ranks)
        assert [c.shape[3] for c in cores[:-1]] == list(tt_max_ranks((2, 3, 2), (2, 2, 2)))
        np.testing.assert_allclose(tt_reconstruct(cores), w, atol=EXACT)
    cores = tt_decompose(w, (2, 2, 2), (2, 3, 2), lambda s, k: 1 + k)
    assert [c.shape[3] for c in cores] == [1, 2, 1]


@pytest.mark.parametrize("shape, kwargs, match", [
    ((10, 8), dict(in_modes=(2, 4), out_modes=(3, 4), ranks=2), "prod"),
    ((12, 8), dict(in_modes=(2, 4), out_modes=(12,), ranks=2), "same"),
    ((12, 8), dict(in_modes=(2, 4), out_modes=(3, 4)), "exactly one"),
    ((12, 8), dict(in_modes=(2, 4), out_modes=(3, 4), ranks=2, rel_error=0.1), "exactly one"),
    ((12, 8), dict(in_modes=(2, 4), out_modes=(3, 4), ranks=[2, 2]), "inner ranks"),
    ((12, 8), dict(in_modes=(2, 4), out_modes=(3, 4), ranks=[2, 2, 2]), "boundary"),
    ((12, 8), dict(in_modes=(2, 4), out_modes=(3, 4), rel_error=1.5), "rel_error"),
])
def test_tt_rejects_bad_arguments(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tt_decompose(np.ones(shape), **kwargs)


# ------------------------------------------------------------------------------------ factor_modes

def _brute_best_max(n: int, d: int) -> int:
    divisors = [f for f in range(1, n + 1) if n % f == 0]
    best = n
    for combo in itertools.product(divisors, repeat=d - 1):
        rest, ok = n, True
        for f in combo:
            if rest % f:
                ok = False
                break
            rest //= f
        if ok:
            best = min(best, max((*combo, rest)))
    return best


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 600), d=st.integers(1, 3))
def test_factor_modes_is_a_most_balanced_factorization(n, d):
    modes = factor_modes(n, d)
    assert len(modes) == d and math.prod(modes) == n and list(modes) == sorted(modes)
    assert max(modes) == _brute_best_max(n, d)


def test_factor_modes_known_values():
    assert factor_modes(768, 3) == (8, 8, 12)
    assert factor_modes(3072, 3) == (12, 16, 16)
    assert factor_modes(13, 2) == (1, 13)
    with pytest.raises(ValueError):
        factor_modes(0, 2)
