"""Effective rank vs ℓ1 vs energy rank choice, and a per-layer allocation, at equal size, on the
model's own data.

For each rule (`spectrum.METHODS`) one knob sets every layer's rank (erank scale c, or the share
of Σs / Σs² kept); for a budget (a share of the factorizable layers' dense weights) the knob is
bisected to the largest value whose total weights fit, so the three rules are compared at (nearly)
the same size: ranks are integers, the table gives each rule's actual count. ``greedy`` is not one
knob but the allocation of the build's ``--budget-bytes`` (`rank.budget_ranks`): ranks raised one at a
time where they bring back the most relative energy per added weight, so layers whose spectra
decay fast give up more rank than others (measured, `bench/bench_analyze.py`: the digits
transformer within 0.5 pt at 45k weights, against 98k by energy and 190k by erank). Layers where a rank
would not save weights stay dense, as in the pass. The factorized model is measured in float
through the IR executor (dense equivalents of the pass's factorizations, `spectrum`).
"""

from __future__ import annotations

import numpy as np

from ..passes.lowrank.factorize import LowRankConfig, LowRankPass
from ..passes.lowrank.rank import BudgetError, budget_ranks
from .spectrum import METHODS, Layer, dense_equivalent, layer_rank, rank_params, saves

BUDGETS = (0.5, 0.35, 0.25)
RULES = METHODS + ("greedy",)


def ranks_at(layers: list[Layer], method: str, knob: float) -> dict[str, object]:
    """Layer -> rank under `method` at `knob` (None: kept dense, the rank would not save weights)."""
    out = {}
    for lay in layers:
        r = layer_rank(lay, method, knob)
        out[lay.node] = r if saves(lay, r) else None
    return out


def total_params(layers: list[Layer], ranks: dict) -> int:
    return sum(rank_params(lay, ranks[lay.node]) for lay in layers)


def fit_knob(layers: list[Layer], method: str, budget: int, iters: int = 40) -> tuple[float, dict] | None:
    """The largest knob whose total weights are at most `budget`, and its ranks (None if even the
    smallest knob does not fit)."""
    lo, hi = 1e-6, (4.0 if method == "erank" else 1.0)
    if total_params(layers, ranks_at(layers, method, lo)) > budget:
        return None
    if total_params(layers, ranks_at(layers, method, hi)) <= budget:
        return hi, ranks_at(layers, method, hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if total_params(layers, ranks_at(layers, method, mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return lo, ranks_at(layers, method, lo)


def ranks_within(layers: list[Layer], rule: str, budget: int) -> tuple[float | None, dict] | None:
    """(knob, layer -> rank) for a rule of `RULES` within `budget` weights of `layers` (each
    factorizable); knob None for ``greedy``; None when even rank 1 everywhere does not fit."""
    if rule != "greedy":
        return fit_knob(layers, rule, budget)
    node = {lay.spectrum.name: lay.node for lay in layers}
    try:
        got = budget_ranks([lay.spectrum for lay in layers], budget, bytes_per_param=1.0)
    except BudgetError:
        return None
    return None, {node[k]: v for k, v in got.items()}


def compare_rules(layers: list[Layer], weights: dict[str, np.ndarray], evaluate,
                  budgets=BUDGETS, methods=RULES) -> list[dict]:
    """One row per (budget, rule): knob, total weights of the factorizable layers, factorized count,
    and `evaluate()`'s figures with those layers replaced by their dense equivalents.

    `evaluate(weights_by_const) -> dict` runs the model with the given weights (e.g. accuracy on
    labelled data and the gate score)."""
    fact = [lay for lay in layers if lay.kind is not None]
    dense = sum(lay.params for lay in fact)
    cache: dict = {}
    rows = []
    for b in budgets:
        for m in methods:
            fit = ranks_within(fact, m, int(b * dense))
            if fit is None:
                rows.append({"budget": b, "method": m, "note": "even rank 1 everywhere does not fit"})
                continue
            knob, ranks = fit
            new = dict(weights)
            for lay in fact:
                r = ranks[lay.node]
                if r is not None:
                    key = (lay.node, r)
                    if key not in cache:
                        cache[key] = dense_equivalent(lay, weights[lay.const], r)
                    new[lay.const] = cache[key]
            rows.append({"budget": b, "method": m, "knob": None if knob is None else round(knob, 4), "params": total_params(fact, ranks),
                         "dense_params": dense, "factorized": sum(r is not None for r in ranks.values()),
                         "ranks": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ranks.items()},
                         **evaluate(new)})
    return rows


class _PlannedLowRank(LowRankPass):
    """The low-rank pass with its per-layer ranks given (layer -> rank, None keeps it dense)."""

    def __init__(self, ranks: dict, min_params: int):
        super().__init__(LowRankConfig(min_params=min_params, min_saving=0.0, tt_policy="never"))
        self.ranks = ranks

    def _plan(self, graph, layers) -> dict:
        return {lay.node.name: self.ranks.get(lay.node.name) for lay in layers}


def factorize_with(graph, ranks: dict, min_params: int = 1024):
    """A copy of `graph` rewritten by the low-rank pass at the given per-layer ranks (the graph the
    build would ship, factorized structure and all: for recovery or training from scratch)."""
    g = graph.copy()
    _PlannedLowRank(ranks, min_params)(g)
    return g
