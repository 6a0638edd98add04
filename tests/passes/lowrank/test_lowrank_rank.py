"""Tests of rank selection: spectra, effective rank, energy and fraction ranks, rank specs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecompile.passes.lowrank.decompose import tucker2_params
from edgecompile.passes.lowrank.rank import (
    RankSpec, RankSpecError, effective_rank, energy_rank, factorized_params, fraction_rank,
    max_useful_rank, mode_spectra, parse_rank_spec, resolve_rank, singular_values)

spectra = st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1e3)), min_size=1, max_size=50).map(np.array)


def test_effective_rank_of_identity_and_rank_one():
    for n in (1, 2, 7, 64):
        assert effective_rank(singular_values(np.eye(n))) == pytest.approx(n, rel=1e-12)
    rank1 = np.outer(np.arange(1.0, 6.0), np.arange(1.0, 9.0))
    assert effective_rank(singular_values(rank1)) == pytest.approx(1.0, abs=1e-9)
    assert effective_rank(np.zeros(5)) == 0.0


@settings(max_examples=60, deadline=None)
@given(s=spectra, scale=st.floats(1e-6, 1e6))
def test_effective_rank_is_scale_invariant_and_bounded(s, scale):
    e = effective_rank(s)
    if s.sum() == 0:
        assert e == 0.0
        return
    assert effective_rank(scale * s) == pytest.approx(e, rel=1e-9)
    assert effective_rank(s[::-1]) == pytest.approx(e, rel=1e-9)
    assert 1.0 - 1e-9 <= e <= np.count_nonzero(s) + 1e-9


@pytest.mark.parametrize("shape", [(40, 30), (300, 1300), (1300, 300)])
def test_singular_values_methods_agree(shape):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    for method in ("svd", "gram", "auto"):
        s = singular_values(w, method=method)
        assert s.dtype == np.float64 and s.shape == ref.shape
        np.testing.assert_allclose(s, ref, rtol=0, atol=1e-5 * ref[0])


def test_mode_spectra_are_the_unfolding_spectra():
    w = np.random.default_rng(1).standard_normal((6, 4, 3, 3))
    s_out, s_in = mode_spectra(w)
    np.testing.assert_allclose(s_out, np.linalg.svd(w.reshape(6, -1), compute_uv=False))
    np.testing.assert_allclose(s_in, np.linalg.svd(w.transpose(1, 0, 2, 3).reshape(4, -1),
                                                   compute_uv=False))


def test_energy_rank():
    s = np.sqrt(np.array([50.0, 30.0, 15.0, 5.0]))  # energies sum to 100
    assert [energy_rank(s, k) for k in (0.5, 0.51, 0.8, 0.95, 0.96, 1.0)] == [1, 2, 2, 3, 4, 4]
    w = np.random.default_rng(2).standard_normal((20, 3)) @ np.random.default_rng(3).standard_normal((3, 15))
    assert energy_rank(singular_values(w), 1.0) == 3
    with pytest.raises(RankSpecError):
        energy_rank(s, 0.0)


def test_fraction_rank():
    assert [fraction_rank(100, f) for f in (0.001, 0.25, 0.251, 1.0)] == [1, 25, 26, 100]
    assert fraction_rank(768, 0.25) == 192
    with pytest.raises(RankSpecError):
        fraction_rank(10, 1.5)


@pytest.mark.parametrize("text, spec", [
    ("erank", RankSpec("erank", 1.0)),
    ("erank:0.8", RankSpec("erank", 0.8)),
    ("energy:0.95", RankSpec("energy", 0.95)),
    ("fraction:0.25", RankSpec("fraction", 0.25)),
    ("fixed:32", RankSpec("fixed", 32)),
    (" none ", RankSpec("none")),
])
def test_parse_rank_spec(text, spec):
    assert parse_rank_spec(text) == spec
    assert parse_rank_spec(str(spec)) == spec


@pytest.mark.parametrize("text", ["", "svd", "energy", "energy:1.5", "fraction:0", "fixed:2.5",
                                  "fixed:0", "erank:-1", "none:3", "energy:abc", "erank:0.8:1"])
def test_parse_rank_spec_rejects(text):
    with pytest.raises(RankSpecError, match="rank spec|rank|number"):
        parse_rank_spec(text)


def test_rank_spec_resolve(digits_mlp):
    w = digits_mlp["fc1"]  # [128, 256]
    s = singular_values(w)
    m, n = w.shape
    erank = effective_rank(s)
    assert parse_rank_spec("erank").resolve(s, m, n) == int(np.ceil(erank))
    assert parse_rank_spec("erank:0.5").resolve(s, m, n) == int(np.ceil(0.5 * erank))
    assert parse_rank_spec("energy:0.9").resolve(s, m, n) == energy_rank(s, 0.9)
    assert parse_rank_spec("fraction:0.25").resolve(s, m, n) == 32
    assert parse_rank_spec("fixed:500").resolve(s, m, n) == 128  # clamped to the full rank
    assert parse_rank_spec("none").resolve(s, m, n) == 128
    assert not parse_rank_spec("none").enabled
    # a trained layer is far from full effective rank; a Gaussian one is not
    gauss = singular_values(np.random.default_rng(0).standard_normal((m, n)))
    assert effective_rank(s) < 0.9 * effective_rank(gauss)


@settings(max_examples=80, deadline=None)
@given(m=st.integers(1, 3000), n=st.integers(1, 3000))
def test_max_useful_rank_svd(m, n):
    r = max_useful_rank(m, n)
    assert r * (m + n) < m * n or r == 0
    assert (r + 1) * (m + n) >= m * n


@settings(max_examples=60, deadline=None)
@given(o=st.integers(1, 512), i=st.integers(1, 512), k=st.sampled_from([1, 3, 9, 25]))
def test_max_useful_rank_tucker2(o, i, k):
    r = max_useful_rank(o, i, "tucker2", ksize=k)
    dense = o * i * k
    if r:
        assert tucker2_params(o, i, k, min(r, o), min(r, i)) < dense
    assert tucker2_params(o, i, k, min(r + 1, o), min(r + 1, i)) >= dense or r + 1 > max(o, i)


def test_resolve_rank_forms():
    assert resolve_rank(16, "svd", (64, 32)) == 16
    assert resolve_rank(100, "svd", (64, 32)) == 32
    assert resolve_rank(0.25, "svd", (64, 32)) == 8
    assert resolve_rank((4, 2), "tucker2", (16, 8, 9)) == (4, 2)
    assert resolve_rank(0.5, "tucker2", (16, 8, 9)) == (8, 4)
    assert factorized_params("svd", (64, 32), 8) == 8 * 96
    assert factorized_params("tucker2", (16, 8, 9), (4, 2)) == tucker2_params(16, 8, 9, 4, 2)


@pytest.mark.parametrize("rank, kind, shape", [
    (0, "svd", (64, 32)), (True, "svd", (64, 32)), ("3", "svd", (64, 32)), (1.5, "svd", (64, 32)),
    ((1, 2, 3), "tucker2", (16, 8, 9)),
])
def test_resolve_rank_rejects(rank, kind, shape):
    with pytest.raises(RankSpecError):
        resolve_rank(rank, kind, shape)
