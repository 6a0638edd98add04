"""Tests for the int8 quantization pass and its calibration (edgecompile/passes/quantize.py, calibrate.py).

Accuracy figures are measured on a CNN and an MLP trained on scikit-learn's digits in session
fixtures (seeded, ~2 s together); other checks use small hand-built graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.ir import Graph, QuantParams, infer_shapes, run_graph, verify
from edgecompile.passes.base import PassError
from edgecompile.passes.calibrate import activation_qparams, collect_ranges, mse_range
from edgecompile.passes.quantize import (
    QuantConfig, QuantizePass, QuantSpecError, parse_quant_spec, quantize_bias, quantize_weight,
)

BATCH = 100


CONV = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
POOL = dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=False)


# ------------------------------------------------------------------------------ fixtures

def graph_from_sequential(model: nn.Sequential, shape: tuple[int, ...], name: str) -> Graph:
    """Our IR for a Sequential of Conv2d / Linear / ReLU / MaxPool2d / Flatten (by hand, no frontend)."""
    g = Graph(name)
    h = g.add_input("x", shape)
    for k, m in enumerate(model):
        p = {n: t.detach().numpy().copy() for n, t in m.named_parameters()}
        if isinstance(m, nn.Conv2d):
            w, b = g.add_const(f"{k}.weight", p["weight"]), g.add_const(f"{k}.bias", p["bias"])
            h = g.add_node("conv", [h, w, b], CONV, name=f"conv{k}").output
        elif isinstance(m, nn.Linear):
            w, b = g.add_const(f"{k}.weight", p["weight"]), g.add_const(f"{k}.bias", p["bias"])
            h = g.add_node("linear", [h, w, b], name=f"fc{k}").output
        elif isinstance(m, nn.ReLU):
            h = g.add_node("relu", [h]).output
        elif isinstance(m, nn.MaxPool2d):
            h = g.add_node("max_pool", [h], POOL).output
        elif isinstance(m, nn.Flatten):
            h = g.add_node("reshape", [h], {"shape": [shape[0], -1]}).output
        else:
            raise TypeError(f"no IR mapping for {type(m).__name__} in this test helper")
    g.outputs = [h]
    infer_shapes(g)
    verify(g)
    return g


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="session")
def digits():
    """Digits as float32 in [0, 1]: (x_train, y_train, x_test, y_test), a seeded 1197/600 split."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = (x[perm] / 16.0).astype(np.float32), y[perm]
    return x[:-600], y[:-600], x[-600:], y[-600:]


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """A 2-conv CNN trained on digits (~1.5 s), as (IR graph with batch 100, image shape)."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(128, 10))
    _train(model, torch.tensor(xtr).reshape(-1, 1, 8, 8), torch.tensor(ytr), 400)
    return graph_from_sequential(model.eval(), (BATCH, 1, 8, 8), "digits_cnn"), (1, 8, 8)


@pytest.fixture(scope="session")
def digits_mlp(digits):
    """A 64-128-64-10 ReLU MLP trained on digits (~0.5 s)."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    _train(model, torch.tensor(xtr), torch.tensor(ytr), 400)
    return graph_from_sequential(model.eval(), (BATCH, 64), "digits_mlp"), (64,)


def _batches(x: np.ndarray, shape: tuple[int, ...], n: int | None = None) -> list[tuple[np.ndarray]]:
    x = x.reshape(-1, *shape)
    out = [(x[i:i + BATCH],) for i in range(0, len(x) - BATCH + 1, BATCH)]
    return out[:n] if n else out


def _logits(graph: Graph, batches, fake_quant: bool) -> np.ndarray:
    return np.concatenate([run_graph(graph, *b, fake_quant=fake_quant) for b in batches])


def quantized_figures(model, digits, method: str = "minmax") -> dict[str, float]:
    """Float and int8 (fake-quantized executor) accuracy and top-1 agreement on held-out digits."""
    graph, shape = model
    xtr, _, xte, yte = digits
    test = _batches(xte, shape)
    ref = _logits(graph, test, fake_quant=False)
    q = graph.copy()
    QuantizePass(QuantConfig(calibration=method), _batches(xtr, shape, 3))(q)
    out = _logits(q, test, fake_quant=True)
    return {"float_acc": float((ref.argmax(1) == yte).mean()), "int8_acc": float((out.argmax(1) == yte).mean()),
            "agreement": float((out.argmax(1) == ref.argmax(1)).mean())}


# ----------------------------------------------------------------------------- numerics

@pytest.mark.parametrize("model", ["digits_cnn", "digits_mlp"])
def test_int8_keeps_accuracy_on_trained_digits(model, digits, request):
    figs = quantized_figures(request.getfixturevalue(model), digits)
    assert figs["float_acc"] > 0.93, figs            # the fixture trained
    assert figs["agreement"] >= 0.98, figs
    assert figs["float_acc"] - figs["int8_acc"] <= 0.01, figs


def test_weights_dequantize_within_half_a_step_and_bias_scale_is_exact(digits_cnn, digits):
    graph, shape = digits_cnn
    g = graph.copy()
    floats = {n: v.data for n, v in g.consts.items()}
    res = QuantizePass(QuantConfig(), _batches(digits[0], shape, 2))(g)
    verify(g)
    assert res.modified and len(res.records) == 3
    for node in g.nodes:
        if node.op not in ("conv", "linear"):
            continue
        w, b, x = node.input(1), node.input(2), node.input(0)
        assert w.data.dtype == np.int8 and w.quant.axis == 0 and np.abs(w.data).max() <= 127
        assert np.all(w.quant.zero_point == 0)
        s, _ = w.quant.broadcast(w.data.ndim)
        assert np.all(np.abs(w.real() - floats[w.name]) <= s / 2 * (1 + 1e-6))
        assert b.data.dtype == np.int32 and b.quant.dtype == "int32"
        np.testing.assert_array_equal(b.quant.scale, np.float32(x.quant.scale[0]) * w.quant.scale)
        assert np.all(np.abs(b.real() - floats[b.name]) <= b.quant.scale / 2 * (1 + 1e-6))
    # every float activation, graph input included, is int8 per tensor with a range containing 0
    acts = [g.inputs[0]] + [n.output for n in g.nodes]
    for v in acts:
        q = v.quant
        assert q is not None and q.axis is None and q.dtype == "int8" and -128 <= q.zero_point[0] <= 127
    assert all(r["bits"] == 8 for r in res.records)
    before, after = (sum(r[k] for r in res.records) for k in ("bytes_before", "bytes_after"))
    assert after < 0.3 * before        # int8 weights + int32 biases + float32 scales


def test_quantize_weight_and_bias_numerics():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    w[2] = 0.0
    q, qp = quantize_weight(w, 0)
    others = np.abs(np.delete(w, 2, 0)).reshape(5, -1).max(1) / 127
    assert q.dtype == np.int8 and np.isclose(qp.scale[2], np.median(others)) and not q[2].any()
    np.testing.assert_array_equal(np.abs(q).reshape(6, -1).max(1), [127, 127, 0, 127, 127, 127])
    b = rng.standard_normal(6).astype(np.float32)
    bq, bqp = quantize_bias(b, 0.05, qp.scale)
    np.testing.assert_allclose(bqp.dequantize(bq), b, atol=float(bqp.scale.max()) / 2 + 1e-9)
    m = rng.standard_normal((5, 7)).astype(np.float32)
    q, qp = quantize_weight(m, 1)                  # matmul b[K, N]: one scale per output column
    assert qp.axis == 1 and qp.scale.size == 7


def test_bias_overflow_raises_the_weight_scale():
    g = Graph("big_bias")
    x = g.add_input("x", (4, 3))
    w = g.add_const("w", np.full((2, 3), 1e-6, np.float32))
    b = g.add_const("b", np.array([1e4, -1.0], np.float32))
    g.outputs = [g.add_node("linear", [x, w, b], name="fc").output]
    infer_shapes(g)
    xs = [(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32),)]
    QuantizePass(QuantConfig(), xs)(g)
    assert np.abs(b.data.astype(np.int64)).max() <= 2 ** 31 - 1
    np.testing.assert_allclose(b.real(), [1e4, -1.0], rtol=1e-6, atol=b.quant.scale[1])


def rules_graph() -> Graph:
    """Exercises TFLite's fixed-output and shared-qparams rules."""
    rng = np.random.default_rng(0)
    g = Graph("rules")
    x = g.add_input("x", (2, 4, 6, 6))
    w = g.add_const("c.weight", rng.standard_normal((8, 4, 3, 3)).astype(np.float32))
    h = g.add_node("conv", [x, w, None], CONV, name="conv").output
    p = g.add_node("max_pool", [h], POOL, name="pool").output
    f = g.add_node("reshape", [p], {"shape": [2, 72]}, name="flat").output
    fw = g.add_const("fc.weight", rng.standard_normal((10, 72)).astype(np.float32) * 0.2)
    z = g.add_node("linear", [f, fw, None], name="fc").output
    sm = g.add_node("softmax", [z], {"axis": 1}, name="softmax").output
    sg = g.add_node("sigmoid", [z], name="sigmoid").output
    th = g.add_node("tanh", [z], name="tanh").output
    cat = g.add_node("concat", [sm, z], {"axis": 1}, name="cat").output
    g.outputs = [sm, sg, th, cat]
    infer_shapes(g)
    return g


def test_fixed_and_shared_qparams_follow_tflite():
    g = rules_graph()
    calib = [(np.random.default_rng(i).standard_normal((2, 4, 6, 6)).astype(np.float32),) for i in range(3)]
    QuantizePass(QuantConfig(), calib)(g)
    verify(g)
    node = {n.name: n for n in g.nodes}

    def sz(name):
        q = node[name].output.quant
        return float(q.scale[0]), int(q.zero_point[0])

    assert sz("softmax") == (1 / 256, -128)
    assert sz("sigmoid") == (1 / 256, -128)
    assert sz("tanh") == (1 / 128, 0)
    assert node["pool"].output.quant is node["conv"].output.quant
    assert node["flat"].output.quant is node["conv"].output.quant
    # concat never forces a fixed-range input onto the others: its output takes the logits' range
    assert node["cat"].output.quant is node["fc"].output.quant
    assert node["cat"].output.quant is not node["softmax"].output.quant


def test_integer_inputs_stay_integer_and_norm_params_stay_float():
    rng = np.random.default_rng(0)
    g = Graph("tokens")
    ids = g.add_input("ids", (2, 5), "int64")
    table = g.add_const("emb.weight", rng.standard_normal((20, 8)).astype(np.float32))
    h = g.add_node("gather", [table, ids], {"axis": 0}, name="emb").output
    lw, lb = g.add_const("ln.weight", np.ones(8, np.float32)), g.add_const("ln.bias", np.zeros(8, np.float32))
    h = g.add_node("layer_norm", [h, lw, lb], {"normalized_ndim": 1, "eps": 1e-5}, name="ln").output
    mb = g.add_const("proj", rng.standard_normal((8, 3)).astype(np.float32))
    g.outputs = [g.add_node("matmul", [h, mb], name="proj").output]
    infer_shapes(g)
    calib = [(rng.integers(0, 20, (2, 5)),) for _ in range(4)]
    ref = run_graph(g, calib[0][0])
    QuantizePass(QuantConfig(), calib)(g)
    verify(g)
    assert ids.quant is None
    assert table.quant.axis == 0 and table.data.dtype == np.int8 and table.quant.scale.size == 20
    assert mb.quant.axis == 1 and mb.quant.scale.size == 3
    assert lw.quant is None and lw.data.dtype == np.float32 and lb.data.dtype == np.float32
    assert g.node("emb").output.quant is not None and g.node("ln").output.quant is not None
    np.testing.assert_allclose(run_graph(g, calib[0][0]), ref, atol=0.1 * np.abs(ref).max())


def test_masked_softmax_keeps_its_resolution():
    """Scores + (-1e4 mask) -> softmax: the range is clipped to 32 below the maximum."""
    rng = np.random.default_rng(0)
    g = Graph("attn")
    s = g.add_input("scores", (2, 6, 6))
    mask = np.zeros((1, 1, 6), np.float32)
    mask[..., 4:] = -1e4
    m = g.add_const("mask", mask)
    a = g.add_node("add", [s, m], name="masked").output
    g.outputs = [g.add_node("softmax", [a], {"axis": -1}, name="softmax").output]
    infer_shapes(g)
    calib = [(rng.standard_normal((2, 6, 6)).astype(np.float32) * 3,) for _ in range(4)]
    ref = run_graph(g, *calib[0])
    QuantizePass(QuantConfig(), calib)(g)
    q = g.node("masked").output.quant
    assert q.scale[0] * 255 <= 32 + 10 + 1e-3          # not 1e4 / 255
    assert m.quant is None                              # the mask constant stays float
    np.testing.assert_allclose(run_graph(g, *calib[0]), ref, atol=0.04)


def test_weights_only_needs_no_calibration_and_leaves_activations_float(digits_mlp, digits):
    graph, shape = digits_mlp
    g = graph.copy()
    res = QuantizePass(parse_quant_spec("int8:weights_only"))(g)
    assert res.modified and all(r["bias_bits"] is None for r in res.records)
    assert all(n.output.quant is None for n in g.nodes) and g.inputs[0].quant is None
    assert all(v.data.dtype == np.float32 for n, v in g.consts.items() if n.endswith("bias"))
    test = _batches(digits[2], shape, 2)
    np.testing.assert_allclose(_logits(g, test, True), _logits(graph, test, False), atol=0.15)


def test_skip_list_keeps_a_node_float(digits_mlp, digits):
    graph, shape = digits_mlp
    g = graph.copy()
    QuantizePass(QuantConfig(skip=("fc4",)), _batches(digits[0], shape, 1))(g)
    fc4 = g.node("fc4")
    assert fc4.output.quant is None and fc4.input(1).quant is None and fc4.input(1).data.dtype == np.float32
    assert g.node("fc0").input(1).quant is not None


# --------------------------------------------------------------------------- calibration

def test_calibration_methods_bound_the_observed_range():
    g = Graph("id")
    x = g.add_input("x", (10000,))
    g.outputs = [g.add_node("relu", [x], name="r").output]
    infer_shapes(g)
    data = np.random.default_rng(0).standard_t(2, size=20000).astype(np.float32)   # long tails
    halves = [(data[:10000],), (data[10000:],)]
    mm = collect_ranges(g, halves, "minmax")
    pc = collect_ranges(g, halves, "percentile", percentile=99.0)
    ms = collect_ranges(g, halves, "mse")
    assert mm["x"] == (float(data.min()), float(data.max())) and mm["r"] == (0.0, float(data.max()))
    assert np.quantile(data, 0.985) < pc["x"][1] < np.quantile(data, 0.995)
    assert data.min() <= ms["x"][0] < 0 < ms["x"][1] < data.max() and ms["r"][0] == 0.0

    def err(lo, hi):
        q = activation_qparams(lo, hi)
        return float(np.mean((q.dequantize(q.quantize(data)) - data) ** 2))

    lo, hi = mse_range(data.astype(np.float64), float(data.min()), float(data.max()))
    assert err(lo, hi) < err(float(data.min()), float(data.max()))
    for frac in (0.5, 0.8):       # the search beats other clipping ranges
        assert err(lo, hi) <= err(frac * data.min(), frac * data.max())


def test_activation_qparams_contain_zero():
    for lo, hi in [(0.5, 3.0), (-2.0, -0.1), (-1.0, 6.0), (0.0, 0.0)]:
        q = activation_qparams(lo, hi)
        assert -128 <= q.zero_point[0] <= 127 and q.scale[0] > 0
        assert q.dequantize(q.quantize(np.zeros(1, np.float32)))[0] == 0.0
        span = (min(lo, 0), max(hi, 0))
        if span[1] > span[0]:
            np.testing.assert_allclose(q.dequantize(q.quantize(np.array(span, np.float32))), span,
                                       atol=float(q.scale[0]))


def test_calibration_inputs_must_fit_the_graph(digits_mlp):
    g = digits_mlp[0].copy()
    with pytest.raises(PassError, match="expects"):
        QuantizePass(QuantConfig(), [(np.zeros((3, 64), np.float32),)])(g)


# -------------------------------------------------------------------------- negative

def test_none_and_preconditions_leave_the_graph_unchanged(digits_mlp):
    g = digits_mlp[0].copy()
    before = g.dump()
    res = QuantizePass(parse_quant_spec("none"))(g)
    assert not res.modified and res.records == [] and g.dump() == before
    with pytest.raises(PassError, match="calibration inputs"):
        QuantizePass(QuantConfig())(g)
    with pytest.raises(PassError, match="unknown node 'nope'"):
        QuantizePass(QuantConfig(skip=("nope",)), [(np.zeros((BATCH, 64), np.float32),)])(g)
    assert g.dump() == before
    QuantizePass(parse_quant_spec("int8:weights_only"))(g)
    with pytest.raises(PassError, match="already quantized"):
        QuantizePass(parse_quant_spec("int8:weights_only"))(g)


def test_parse_quant_spec():
    assert parse_quant_spec("int8") == QuantConfig()
    assert parse_quant_spec("none").mode == "none"
    assert parse_quant_spec("int8:weights_only").activations == "weights_only"
    c = parse_quant_spec("INT8:percentile=99.9")
    assert (c.calibration, c.percentile) == ("percentile", 99.9)
    assert parse_quant_spec("int8:mse:weights_only") == QuantConfig(calibration="mse", activations="weights_only")
    for bad in ["int4", "int8:fast", "int8:percentile=abc", "int8:percentile=20", ""]:
        with pytest.raises(QuantSpecError, match="--quant"):
            parse_quant_spec(bad)


# ---------------------------------------------------------------------------- golden

GOLDEN = """\
graph tiny(x: float32[2, 4])
  const fc1.weight: int8[3, 4] q[int8, axis=0]
  const fc1.bias: int32[3] q[int32, axis=0]
  const fc2.weight: int8[2, 3] q[int8, axis=0]
  fc1: float32[2, 3] q = linear(x, fc1.weight, fc1.bias)
  relu: float32[2, 3] q = relu(fc1)
  fc2: float32[2, 2] q = linear(relu, fc2.weight, _)
  softmax: float32[2, 2] q = softmax(fc2) axis=1
  return softmax
"""


def test_golden_dump():
    rng = np.random.default_rng(0)
    g = Graph("tiny")
    x = g.add_input("x", (2, 4))
    w1 = g.add_const("fc1.weight", rng.standard_normal((3, 4)).astype(np.float32))
    b1 = g.add_const("fc1.bias", rng.standard_normal(3).astype(np.float32))
    h = g.add_node("linear", [x, w1, b1], name="fc1").output
    h = g.add_node("relu", [h]).output
    w2 = g.add_const("fc2.weight", rng.standard_normal((2, 3)).astype(np.float32))
    h = g.add_node("linear", [h, w2, None], name="fc2").output
    g.outputs = [g.add_node("softmax", [h], {"axis": 1}).output]
    infer_shapes(g)
    QuantizePass(QuantConfig(), [(rng.standard_normal((2, 4)).astype(np.float32),)])(g)
    assert g.dump() == GOLDEN
    assert isinstance(x.quant, QuantParams)


# ------------------------------------------------------------- imported models (frontend)



@pytest.mark.parametrize("name", [
    "cnn", "tiny_transformer", "group_norm_net",
    *[pytest.param(n, marks=pytest.mark.slow) for n in ("mlp", "mobilenet_block", "conv1d_net",
                                                         "bert_encoder", "lstm_cell_model", "gru_cell_model")],
    pytest.param("encoder_layer_classifier", marks=pytest.mark.slow),
])
def test_int8_on_imported_models(name):
    """Frontend graphs quantize to valid graphs whose int8 output stays close to the float one."""
    from edgecompile.frontend import import_model
    from tests.models import ZOO

    model, example = ZOO[name]()
    g = import_model(model, example)
    xs = tuple(t.numpy() for t in example)
    gen = torch.Generator().manual_seed(0)
    calib = [xs] + [tuple((t + 0.3 * torch.randn(t.shape, generator=gen)).numpy() if t.is_floating_point()
                          else t.numpy() for t in example) for _ in range(3)]
    ref = run_graph(g, *xs, fake_quant=False)
    QuantizePass(QuantConfig(), calib)(g)
    verify(g)
    out = run_graph(g, *xs)
    ref, out = (ref[0], out[0]) if isinstance(ref, tuple) else (ref, out)
    cos = float((ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out))
    assert cos > 0.99, cos
    assert all(v.quant is None for v in g.inputs if not v.dtype.startswith("float"))


@pytest.mark.parametrize("spread, one_grid", [(0.3, True), (1.0, False)])
def test_embedding_table_takes_one_grid_where_it_costs_little(spread, one_grid):
    """An embedding table is quantized on one grid (the table's largest scale, as onnxruntime and
    TFLite store it) when its rows lose little on it: every value within half a step, fewer coded
    bits than one scale per row. Rows whose norms spread wider keep their own scales."""
    from edgecompile.frontend import import_model
    from edgecompile.search.optimize import entropy_bytes

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.e = nn.Embedding(500, 32)
            with torch.no_grad():            # rows of different norms, as trained tables have
                g = torch.Generator().manual_seed(0)
                self.e.weight.mul_(torch.exp(spread * torch.randn(500, 1, generator=g)))

        def forward(self, ids):
            return self.e(ids).mean(1)

    torch.manual_seed(0)
    ids = torch.randint(0, 500, (4, 16))
    m = Emb().eval()
    g = import_model(m, (ids,))
    table = m.e.weight.detach().numpy()
    QuantizePass(QuantConfig(activations="weights_only"), [(ids.numpy(),)])(g)
    w = next(n for n in g.nodes if n.op == "gather").input(0)
    per_row, qp = quantize_weight(table, 0)
    assert w.data.dtype == np.int8
    if one_grid:
        step = np.float32(np.abs(table).max() / 127)
        assert np.all(w.quant.scale == step)
        assert np.abs(w.data * step - table).max() <= step / 2 * 1.0001
        assert entropy_bytes(w.data) < 0.9 * entropy_bytes(per_row)
    else:
        assert np.array_equal(w.data, per_row) and np.array_equal(w.quant.scale, qp.scale)
    got = run_graph(g, ids.numpy())
    got = got[0] if isinstance(got, (list, tuple)) else got
    want = m(ids).detach().numpy()
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.999
