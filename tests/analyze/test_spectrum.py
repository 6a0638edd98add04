"""Spectra, rank rules and dense equivalents: the analysis measures what `--rank` would ship."""

import numpy as np
import pytest
import torch

from edgecompile.analyze.compare_ranks import fit_knob, ranks_at, ranks_within, total_params
from edgecompile.analyze.spectrum import dense_equivalent, find_layers, l1_rank, layer_rank, rule_rank
from edgecompile.frontend import import_model
from edgecompile.ir import run_graph
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
from edgecompile.passes.lowrank.factorize import LowRankConfig, LowRankPass
from edgecompile.passes.lowrank.rank import RankSpec
from tests import models


def _graph(factory):
    model, inputs = factory()
    g = import_model(model, inputs, name="m")
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    return g, inputs


def test_l1_rank_and_rules():
    s = np.array([4.0, 3.0, 2.0, 1.0])
    assert l1_rank(s, 0.7) == 2          # 7 of 10
    assert l1_rank(s, 0.71) == 3
    assert l1_rank(s, 1.0) == 4
    assert rule_rank(np.ones(8), 8, "erank", 1.0) == 8      # equal singular values: erank = n
    assert rule_rank(np.array([1.0, 0, 0]), 3, "erank", 1.0) == 1
    assert rule_rank(s, 4, "energy", 16 / 30) == 1          # s² = 16, 9, 4, 1
    with pytest.raises(ValueError):
        rule_rank(s, 4, "nuclear", 0.5)


@pytest.mark.parametrize("factory", [models.mlp, models.cnn])
def test_dense_equivalent_is_what_the_pass_computes(factory):
    """Swapping the dense equivalent into the graph gives the outputs of the graph the low-rank pass
    rewrites at the same rank (SVD for linear, Tucker-2 for 3x3 convs)."""
    g, inputs = _graph(factory)
    layers = [lay for lay in find_layers(g, min_params=64) if lay.kind is not None]
    assert layers
    x = inputs[0].numpy()
    compared = set()
    for lay in layers:
        r = layer_rank(lay, "erank", 0.5) if lay.kind == "svd" else (min(3, lay.shape[0]), min(3, lay.shape[1]))
        swapped = g.copy()
        swapped.consts[lay.const].data = dense_equivalent(lay, g.consts[lay.const].data, r)
        rewritten = g.copy()
        others = tuple(o.node for o in find_layers(g, 0) if o.node != lay.node)
        fixed = r if isinstance(r, int) else 3     # the pass clamps fixed:3 to each mode as r does
        res = LowRankPass(LowRankConfig(RankSpec("fixed", fixed), min_params=0, min_saving=0.0, exclude=others,
                                        tt_policy="never"))(rewritten)
        if not any(rec["kind"] == "lowrank" for rec in res.records):
            continue       # that rank would not save weights: the pass keeps the layer
        np.testing.assert_allclose(run_graph(swapped, x), run_graph(rewritten, x), rtol=1e-4, atol=1e-5)
        assert not np.allclose(run_graph(swapped, x), run_graph(g, x), atol=1e-6)
        compared.add(lay.kind)
    assert compared == {lay.kind for lay in layers}


def test_fit_knob_meets_the_budget_and_grows_with_it():
    torch.manual_seed(0)
    g, _ = _graph(models.mlp)
    layers = [lay for lay in find_layers(g, min_params=64) if lay.kind is not None]
    dense = sum(lay.params for lay in layers)
    for method in ("erank", "energy", "l1"):
        prev = 0
        for b in (0.5, 0.7, 0.9):
            knob, ranks = fit_knob(layers, method, int(b * dense))
            used = total_params(layers, ranks)
            assert used <= b * dense
            assert used >= prev
            assert ranks == ranks_at(layers, method, knob)
            prev = used


def test_greedy_allocation_fits_the_budget_and_gives_rank_where_the_spectrum_is_flat():
    """`greedy` (the build's --budget-bytes allocation) spends the budget unevenly: a layer whose
    spectrum decays fast keeps a low rank, one whose spectrum is flat takes the rank the other
    gave up; one knob per rule cannot do that."""
    torch.manual_seed(0)
    g, _ = _graph(models.mlp)
    layers = [lay for lay in find_layers(g, min_params=64) if lay.kind is not None]
    assert len(layers) >= 2
    a = layers[0]
    w = g.consts[a.const].data
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    g.consts[a.const].data = ((u * (s * 0.3 ** np.arange(len(s)))) @ vt).astype(np.float32)  # fast decay
    layers = [lay for lay in find_layers(g, min_params=64) if lay.kind is not None]
    dense = sum(lay.params for lay in layers)
    knob, ranks = ranks_within(layers, "greedy", int(0.5 * dense))
    assert knob is None and total_params(layers, ranks) <= 0.5 * dense
    fast = ranks[layers[0].node]
    assert fast is not None and fast <= 3
    assert ranks[layers[1].node] is None or ranks[layers[1].node] > fast
    assert ranks_within(layers, "greedy", 1) is None     # not even rank 1 everywhere fits


def test_factorize_with_given_ranks_matches_the_dense_equivalents():
    from edgecompile.analyze.compare_ranks import factorize_with

    g, inputs = _graph(models.mlp)
    layers = [lay for lay in find_layers(g, min_params=64) if lay.kind is not None]
    ranks = {lay.node: 4 for lay in layers}
    f = factorize_with(g, ranks, min_params=64)
    assert f.param_count() < g.param_count()
    swapped = g.copy()
    for lay in layers:
        swapped.consts[lay.const].data = dense_equivalent(lay, g.consts[lay.const].data, 4)
    x = inputs[0].numpy()
    np.testing.assert_allclose(run_graph(f, x), run_graph(swapped, x), rtol=1e-4, atol=1e-5)
