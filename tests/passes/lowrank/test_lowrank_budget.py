"""Tests of the global byte-budget rank search (`budget_ranks`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecompile.passes.lowrank.rank import (
    BudgetError, LayerSpectrum, budget_ranks, fraction_rank, mode_spectra, singular_values)


def _bytes(layers, ranks, bpp, fixed=0):
    return fixed + bpp * sum(layer.dense_params if ranks[layer.name] is None
                             else layer.params(ranks[layer.name]) for layer in layers)


def _discarded(layer, rank):
    """Relative discarded energy (the search's objective) of one layer at a rank."""
    if rank is None:
        return 0.0
    ranks = (rank,) if layer.kind == "svd" else rank
    return sum(np.sum(s[r:] ** 2) for s, r in zip(layer.spectra, ranks)) / layer.energy


def _full(layer, rank):
    """Ranks as a tuple with dense counted as the full rank, for monotonicity checks."""
    if rank is None:
        return tuple(s.size + 1 for s in layer.spectra)
    return (rank,) if layer.kind == "svd" else rank


@st.composite
def _layers(draw):
    layers = []
    for k in range(draw(st.integers(1, 5))):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        if draw(st.booleans()):
            m, n = draw(st.integers(2, 60)), draw(st.integers(2, 60))
            decay = draw(st.floats(0.5, 1.0))
            s = np.sort(rng.random(min(m, n)) * decay ** np.arange(min(m, n)))[::-1]
            layers.append(LayerSpectrum(f"fc{k}", "svd", (m, n), (s,)))
        else:
            o, i, ks = draw(st.integers(2, 24)), draw(st.integers(1, 24)), draw(st.sampled_from([1, 9]))
            w = rng.standard_normal((o, i, ks))
            layers.append(LayerSpectrum(f"conv{k}", "tucker2", (o, i, ks), mode_spectra(w)))
    return layers


@settings(max_examples=50, deadline=None)
@given(layers=_layers(), frac=st.floats(0.0, 1.2), bpp=st.sampled_from([4.0, 1.0, 0.55]))
def test_budget_is_met_and_never_adds_bytes(layers, frac, bpp):
    dense = sum(layer.dense_params for layer in layers) * bpp
    budget = int(frac * dense)
    try:
        ranks = budget_ranks(layers, budget, bpp, fixed_bytes=10)
    except BudgetError:
        # only when even the smallest ranks do not fit
        smallest = {layer.name: (1 if layer.kind == "svd" else (1, 1)) for layer in layers}
        floor = 10 + bpp * sum(min(layer.dense_params, layer.params(smallest[layer.name]))
                               for layer in layers)
        assert floor > budget
        return
    assert _bytes(layers, ranks, bpp, fixed=10) <= budget
    for layer in layers:
        if ranks[layer.name] is not None:
            assert layer.params(ranks[layer.name]) < layer.dense_params


@settings(max_examples=30, deadline=None)
@given(layers=_layers(), fracs=st.lists(st.floats(0.05, 1.1), min_size=2, max_size=6))
def test_budget_ranks_are_monotone_in_the_budget(layers, fracs):
    dense = sum(layer.dense_params for layer in layers) * 4.0
    previous = None
    for frac in sorted(fracs):
        try:
            ranks = budget_ranks(layers, int(frac * dense), 4.0)
        except BudgetError:
            continue
        if previous is not None:
            for layer in layers:
                now, before = _full(layer, ranks[layer.name]), _full(layer, previous[layer.name])
                assert all(a >= b for a, b in zip(now, before)), layer.name
            assert sum(_discarded(x, ranks[x.name]) for x in layers) <= \
                sum(_discarded(x, previous[x.name]) for x in layers) + 1e-12
        previous = ranks


def test_budget_error_names_the_smallest_size():
    layer = LayerSpectrum("fc", "svd", (100, 100), (np.linspace(1, 0.1, 100),))
    with pytest.raises(BudgetError, match=r"byte budget 700 is below the smallest achievable size 800"):
        budget_ranks([layer], 700, 4.0)
    assert budget_ranks([layer], 800, 4.0) == {"fc": 1}


def test_large_budget_keeps_everything_dense(digits_mlp):
    layers = [LayerSpectrum(k, "svd", w.shape, (singular_values(w),)) for k, w in digits_mlp.items()]
    dense = sum(w.size for w in digits_mlp.values()) * 4
    assert set(budget_ranks(layers, dense, 4.0).values()) == {None}
    with pytest.raises(ValueError, match="unique"):
        budget_ranks(layers + layers[:1], dense, 4.0)


def test_budget_leaves_less_than_one_step_unspent(digits_mlp):
    layers = [LayerSpectrum(k, "svd", w.shape, (singular_values(w),)) for k, w in digits_mlp.items()]
    dense = sum(w.size for w in digits_mlp.values())
    biggest_step = max(sum(layer.shape) for layer in layers)
    for frac in (0.1, 0.3, 0.6):
        budget = int(frac * dense)
        ranks = budget_ranks(layers, budget, 1.0)
        assert budget - biggest_step < _bytes(layers, ranks, 1.0) <= budget


def test_greedy_beats_a_uniform_fraction_on_trained_weights(digits_mlp):
    """At the bytes a uniform rank fraction uses, the greedy loses less (relative) energy."""
    layers = [LayerSpectrum(k, "svd", w.shape, (singular_values(w),)) for k, w in digits_mlp.items()]
    for f in (0.1, 0.2, 0.3):
        uniform = {x.name: fraction_rank(min(x.shape), f) for x in layers}
        uniform = {x.name: (r if x.params(r) < x.dense_params else None)
                   for x, r in zip(layers, uniform.values())}
        budget = _bytes(layers, uniform, 1.0)
        greedy = budget_ranks(layers, budget, 1.0)
        assert sum(_discarded(x, greedy[x.name]) for x in layers) <= \
            sum(_discarded(x, uniform[x.name]) for x in layers)


def test_greedy_steps_go_to_the_larger_relative_gain():
    """Each step buys the largest drop in relative error per byte, whichever layer it is in."""
    decaying = LayerSpectrum("decaying", "svd", (64, 64), (0.5 ** np.arange(64),))
    flat = LayerSpectrum("flat", "svd", (64, 64), (np.ones(64),))
    # steps cost 128 bytes each. Relative gains: decaying 0.1875, 0.047, 0.0117, ... (energy
    # 0.75·0.25^r); flat 1/64 = 0.0156 every step. With 7 steps to spend after rank 1 each, the
    # decaying layer takes its first two, the flat one the other five.
    ranks = budget_ranks([decaying, flat], 128 * 9, 1.0)
    assert ranks == {"decaying": 3, "flat": 6}


def test_tucker_layers_take_two_ranks():
    rng = np.random.default_rng(0)
    w = np.einsum("abk,oa,ib->oik", rng.standard_normal((8, 4, 9)), rng.standard_normal((32, 8)),
                  rng.standard_normal((16, 4)))
    layer = LayerSpectrum("conv", "tucker2", (32, 16, 9), mode_spectra(w))
    ranks = budget_ranks([layer], 4 * layer.params((8, 4)), 4.0)["conv"]
    # all the energy sits in ranks (8, 4); with exactly their bytes the search finds them
    assert ranks == (8, 4)
    assert math.isclose(_discarded(layer, ranks), 0.0, abs_tol=1e-12)
