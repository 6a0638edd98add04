"""Memory planner: property tests on random lifetimes, and plans of real graphs and TFLite models."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecompile.backends.memory_plan import (Buffer, PlanError, graph_buffers, peak_live_bytes, plan_graph,
                                              plan_memory, plan_tflite, verify_plan)


@st.composite
def lifetimes(draw):
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        first = draw(st.integers(0, 30))
        out.append(Buffer(f"t{i}", draw(st.integers(0, 5000)), first, first + draw(st.integers(0, 10))))
    return out


@settings(max_examples=200, deadline=None)
@given(lifetimes(), st.sampled_from([1, 4, 16]))
def test_greedy_plan_never_overlaps_live_buffers(buffers, alignment):
    plan = plan_memory(buffers, alignment=alignment)
    verify_plan(buffers, plan)
    assert all(o % alignment == 0 for o in plan.offsets.values())
    assert plan.arena_bytes >= peak_live_bytes(buffers)
    aligned_sum = sum(-(-b.size // alignment) * alignment for b in buffers)
    assert plan.arena_bytes <= aligned_sum
    if alignment == 1:
        assert plan.arena_bytes <= plan.naive_bytes


def test_chain_reuses_memory_and_matches_hand_plan():
    # a -> b -> c -> d, each alive for two ops: two slots suffice
    bufs = [Buffer("a", 100, 0, 1), Buffer("b", 200, 1, 2), Buffer("c", 100, 2, 3), Buffer("d", 50, 3, 4)]
    plan = plan_memory(bufs, alignment=1)
    verify_plan(bufs, plan)
    assert plan.arena_bytes == 300 == peak_live_bytes(bufs)
    assert plan.naive_bytes == 450
    assert plan.offsets["b"] == 0 and plan.offsets["a"] == 200 and plan.offsets["c"] == 200


def test_verify_catches_overlap_and_bad_input():
    bufs = [Buffer("a", 100, 0, 2), Buffer("b", 100, 1, 3)]
    plan = plan_memory(bufs)
    bad = type(plan)(plan.arena_bytes, {"a": 0, "b": 50}, plan.naive_bytes, 0, plan.peak_live_bytes)
    with pytest.raises(PlanError, match="alive together"):
        verify_plan(bufs, bad)
    with pytest.raises(PlanError, match="twice"):
        plan_memory([Buffer("a", 1, 0, 0), Buffer("a", 1, 0, 0)])
    with pytest.raises(PlanError, match="invalid"):
        plan_memory([Buffer("a", 1, 3, 2)])


def _cnn_graph():
    from edgecompile.ir import Graph, infer_shapes
    rng = np.random.default_rng(0)
    g = Graph("cnn")
    x = g.add_input("x", (1, 3, 16, 16))
    attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    h = g.add_node("conv", [x, g.add_const("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)), None],
                   attrs).output
    h = g.add_node("relu", [h]).output
    h = g.add_node("conv", [h, g.add_const("w2", rng.standard_normal((8, 8, 3, 3)).astype(np.float32)), None],
                   attrs).output
    h = g.add_node("relu", [h]).output
    h = g.add_node("mean", [h], {"axes": [2, 3], "keepdims": False}).output
    g.outputs = [h]
    infer_shapes(g)
    return g


def test_graph_plan_counts_int8_activations_as_bytes():
    from tflite_util import quantize_for_test
    g = _cnn_graph()
    f = plan_graph(g)
    bufs, io = graph_buffers(g)
    assert io == (3 * 16 * 16 + 8) * 4
    assert f.naive_bytes == 4 * 8 * 16 * 16 * 4        # four [1, 8, 16, 16] float activations
    assert f.arena_bytes == 2 * 8 * 16 * 16 * 4        # two alive at a time
    q = plan_graph(quantize_for_test(g, np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)))
    assert q.arena_bytes == f.arena_bytes // 4


def test_tflite_plan_is_valid_and_saves_memory():
    from edgecompile.backends.tflite import emit_tflite
    plan = plan_tflite(emit_tflite(_cnn_graph()).model_bytes)
    assert plan.peak_live_bytes <= plan.arena_bytes < plan.naive_bytes
    assert plan.io_bytes == (3 * 16 * 16 + 8) * 4


def test_deployment_figures_add_up():
    from edgecompile.backends.memory_plan import deployment_figures
    from edgecompile.backends.tflite import emit_tflite, tflite_op_table
    m = emit_tflite(_cnn_graph(), embed_weights=False)
    plan = plan_tflite(m.model_bytes)          # stripped weights (and short names): same activations
    full = plan_tflite(emit_tflite(_cnn_graph()).model_bytes)
    assert (plan.arena_bytes, plan.naive_bytes, plan.io_bytes) == (full.arena_bytes, full.naive_bytes, full.io_bytes)
    assert sorted(plan.offsets.values()) == sorted(full.offsets.values())
    fig = deployment_figures(m.model_bytes, plan, len(tflite_op_table(m.model_bytes)), weights_bytes=1000)
    assert fig["ram_bytes"] == plan.arena_bytes + plan.io_bytes
    assert fig["flash_bytes_estimate"] == len(m.model_bytes) + 1000 + fig["runtime_bytes_estimate"]
