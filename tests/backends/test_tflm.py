"""The real TensorFlow Lite Micro interpreter (PyPI tflite-micro) against our `--backend tflite` output.

TFLM runs quantized toy models as LiteRT does (within one output step), names an op it cannot run
(GELU: no kernel; GATHER with int64 positions: refused when it runs), refuses a bundle's stripped
``model.tflite`` as LiteRT does, and reports an arena no smaller than our static memory plan.
"""

import functools
import json

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from tflite_micro import runtime

from edgecompile.backends.tflite import tflm
from edgecompile.backends.memory_plan import plan_tflite
from edgecompile.backends.tflite import emit_tflite, op_counts
from edgecompile.backends.tflite.builder import BUILTIN_NAMES, TFL_TYPES, unpack_model
from edgecompile.container import write_container
from edgecompile.frontend.torch_export import import_model
from edgecompile.ir import Graph, infer_shapes
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass
from edgecompile.passes.quantize import QuantConfig, QuantizePass
from edgecompile.bundle import BundleError
from edgecompile.bundle.tflite_model import (STRIPPED_IDENTIFIER, STRIPPED_MARKER, fill_weights, pack_model,
                                             unmark_stripped)
from edgecompile.bundle.tflite_session import load_tflite_bundle
from tflite_util import models, run_tflite, step

@functools.cache
def _quantized(name: str):
    """A toy model from tests/models.py, imported, folded and int8-quantized (cached: export is the slow part)."""
    model, example = models.ZOO[name]()
    xs = [e.numpy() for e in example]
    g = import_model(model, example)
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    QuantizePass(QuantConfig(), [xs])(g)
    return g, xs


def _gelu_mlp() -> tuple[Graph, np.ndarray]:
    """linear -> GELU -> linear, int8 (TFLM has no GELU kernel, float or int8)."""
    rng = np.random.default_rng(3)
    g = Graph("gelu_mlp")
    x = g.add_input("x", (2, 8))
    h = g.add_node("linear", [x, g.add_const("fc1.weight", rng.standard_normal((16, 8)).astype(np.float32)),
                              g.add_const("fc1.bias", rng.standard_normal(16).astype(np.float32))], name="fc1").output
    a = g.add_node("gelu", [h], {"approximate": "none"}, name="act").output
    y = g.add_node("linear", [a, g.add_const("fc2.weight", rng.standard_normal((4, 16)).astype(np.float32)),
                              g.add_const("fc2.bias", rng.standard_normal(4).astype(np.float32))], name="fc2").output
    g.outputs = [y]
    infer_shapes(g)
    xs = rng.standard_normal((2, 8)).astype(np.float32)
    QuantizePass(QuantConfig(), [[xs]])(g)
    return g, xs


def _operator_names(model_bytes: bytes) -> list[str]:
    """Builtin op name of each operator, in execution order."""
    model = unpack_model(model_bytes)
    return [BUILTIN_NAMES[max(c.builtinCode, c.deprecatedBuiltinCode)]
            for c in (model.operatorCodes[o.opcodeIndex] for o in model.subgraphs[0].operators)]


# -- runs like LiteRT --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "mobilenet_block"])
def test_tflm_agrees_with_litert_within_one_step(name):
    g, xs = _quantized(name)
    m = emit_tflite(g, embed_weights=True)
    assert op_counts(m.model_bytes).get("CONV_2D", 0) >= 1
    tflm.check_ops(m.model_bytes, m.node_map)
    got = tflm.run(m.model_bytes, xs)[0]
    ref = run_tflite(m.model_bytes, *xs)[0]
    assert got.shape == ref.shape and got.dtype == ref.dtype
    off = np.abs(got - ref) / step(g)
    assert off.max() <= 2 + 1e-4                       # two kernels' roundings may meet once
    assert (off > 1 + 1e-4).mean() <= 0.01             # within one step on nearly all elements
    assert np.abs(got).max() > 0                       # real weights, not empty buffers


def test_run_checks_the_number_of_inputs():
    g, xs = _quantized("cnn")
    with pytest.raises(ValueError, match="1 inputs, got 2"):
        tflm.run(emit_tflite(g).model_bytes, [xs[0], xs[0]])


# -- ops TFLM cannot run ----------------------------------------------------------------------------------
def test_gelu_is_named_with_its_operator_and_layer():
    g, xs = _gelu_mlp()
    m = emit_tflite(g, embed_weights=True)
    index = _operator_names(m.model_bytes).index("GELU")
    assert run_tflite(m.model_bytes, xs)[0].shape == (2, 4)          # LiteRT runs it: TFLM is the stricter client
    with pytest.raises(tflm.TflmUnsupported) as info:
        tflm.check_ops(m.model_bytes, m.node_map)
    e = info.value
    assert isinstance(e, ValueError)
    assert (e.op, e.operator, e.tensor, e.layer) == ("GELU", index, "act", "act")
    assert str(e) == f"TFLite Micro cannot run GELU at operator {index} (act): it has no GELU kernel; use --backend c"
    with pytest.raises(tflm.TflmUnsupported, match="GELU"):
        tflm.run(m.model_bytes, [xs])


def test_a_kernel_that_refuses_a_type_names_it():
    """TFLM's GATHER takes int32 positions only: it refuses our int64 ids when it prepares."""
    g = Graph("emb")
    ids = g.add_input("ids", (2, 3), "int64")
    table = g.add_const("embed.weight", np.arange(20, dtype=np.float32).reshape(5, 4))
    h = g.add_node("gather", [table, ids], {"axis": 0}, name="embed").output
    g.outputs = [g.add_node("relu", [h], name="act").output]
    infer_shapes(g)
    m = emit_tflite(g, embed_weights=True)
    with pytest.raises(tflm.TflmUnsupported) as info:
        tflm.check_ops(m.model_bytes, m.node_map)
    e = info.value
    assert (e.op, e.operator, e.tensor, e.layer) == ("GATHER", 0, "embed", "embed") and "INT64" in e.reason
    assert str(e).endswith("; use --backend c") and "\n" not in str(e)


def _masked_select() -> tuple[Graph, list[np.ndarray]]:
    """where(conv(x) > 0, conv(x), y): the mask is made channels-last (from the conv), `y` exists only
    in NCHW, so the `where` runs in NCHW and the bool mask is transposed."""
    rng = np.random.default_rng(5)
    g = Graph("masked_select")
    x, y = g.add_input("x", (1, 2, 4, 4)), g.add_input("y", (1, 3, 4, 4))
    h = g.add_node("conv", [x, g.add_const("conv.weight", rng.standard_normal((3, 2, 1, 1)).astype(np.float32))],
                   {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1}, name="conv").output
    mask = g.add_node("gt", [h, g.add_const("zero", np.zeros((), np.float32))], name="mask").output
    g.outputs = [g.add_node("where", [mask, h, y], name="where").output]
    infer_shapes(g)
    return g, [rng.standard_normal((1, 2, 4, 4)).astype(np.float32), rng.standard_normal((1, 3, 4, 4)).astype(np.float32)]


def test_a_kernel_that_refuses_only_when_it_runs_is_found_by_check_ops():
    """TFLM's TRANSPOSE checks its type in Invoke (a bool mask of a `where`): check_ops runs the model
    once on zeros and calls that unsupported too; `run` reports it as a run failure."""
    g, xs = _masked_select()
    m = emit_tflite(g, embed_weights=True)
    with pytest.raises(tflm.TflmUnsupported) as info:
        tflm.check_ops(m.model_bytes, m.node_map)
    e = info.value
    assert e.op == "TRANSPOSE" and "BOOL" in e.reason and e.layer == "where"
    sg = unpack_model(m.model_bytes).subgraphs[0]
    bool_transposes = [i for i, name in enumerate(_operator_names(m.model_bytes))
                       if name == "TRANSPOSE" and sg.tensors[sg.operators[i].outputs[0]].type == TFL_TYPES["bool"]]
    assert e.operator == bool_transposes[0]
    with pytest.raises(tflm.TflmError, match=f"TRANSPOSE at operator {e.operator}"):
        tflm.run(m.model_bytes, xs)


# -- the stripped model ---------------------------------------------------------------------------------
def test_stripped_model_runs_in_no_interpreter_but_the_bundle_loader_runs_it(tmp_path, capfd):
    g, xs = _quantized("cnn")
    stripped, full = emit_tflite(g, embed_weights=False), emit_tflite(g, embed_weights=True)
    assert stripped.model_bytes[4:8] == STRIPPED_IDENTIFIER and full.model_bytes[4:8] == b"TFL3"
    assert stripped.ops == full.ops                           # the marker is no op of the model
    with pytest.raises(ValueError, match="not a valid Flatbuffer"):
        Interpreter(model_content=stripped.model_bytes)
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="TFLM failed to allocate tensors"):
        runtime.Interpreter.from_bytes(stripped.model_bytes, arena_size=1 << 20)
    assert "Failed to get registration from op code CUSTOM" in capfd.readouterr().err
    with pytest.raises(ValueError, match="weights were stripped"):
        tflm.check_ops(stripped.model_bytes)

    (tmp_path / "model.tflite").write_bytes(stripped.model_bytes)
    write_container(tmp_path / "weights.ecw", stripped.tensors, {k: q for k, q in stripped.quant.items() if q})
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "edgecompile-bundle", "version": 1, "backend": "tflite", "model": "model.tflite",
         "weights": "weights.ecw"}))
    session = load_tflite_bundle(tmp_path)
    np.testing.assert_array_equal(session.run(*xs)[0], run_tflite(full.model_bytes, *xs)[0])

    filled = fill_weights(stripped.model_bytes, stripped.tensors)       # what a device gets: a plain TFL3 model
    assert filled[4:8] == b"TFL3" and STRIPPED_MARKER.encode() not in filled
    np.testing.assert_array_equal(tflm.run(filled, xs)[0], tflm.run(full.model_bytes, xs)[0])


def test_a_model_with_weights_still_missing_is_refused():
    """Without the marker (a bundle from before it) the empty constants themselves are found."""
    g, _ = _quantized("cnn")
    stripped = emit_tflite(g, embed_weights=False)
    model = unpack_model(stripped.model_bytes)
    unmark_stripped(model)
    old = pack_model(model)
    with pytest.raises(BundleError, match=r"constant tensors \[.*\] have no data"):
        fill_weights(old, {})
    with pytest.raises(ValueError, match="weights were stripped"):
        tflm.check_ops(old)


def test_the_readme_documents_the_stripped_format():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `model.onnx` / `model.tflite`"))
    assert f"`{STRIPPED_IDENTIFIER.decode()}`" in row and f"`{STRIPPED_MARKER}`" in row


# -- the arena --------------------------------------------------------------------------------------------
def test_arena_figures_of_the_digits_cnn_cover_our_plan(capfd):
    g, _ = _quantized("cnn")
    m = emit_tflite(g, embed_weights=True)
    fig = tflm.arena_figures(m.model_bytes)
    plan = plan_tflite(m.model_bytes)
    assert fig["persistent_bytes"] > 0 and fig["non_persistent_bytes"] > 0
    assert fig["total_bytes"] == fig["persistent_bytes"] + fig["non_persistent_bytes"]
    assert sum(fig["by_kind"].values()) <= fig["persistent_bytes"]
    # TFLM's head holds the activations and the model's inputs and outputs, placed by the same greedy
    # planner as ours (which leaves the I/O to the application): at least the peak of live activations,
    # and here exactly our arena (2048 B; TFLM fits the I/O into gaps). Its tail is the interpreter's
    # own structs, which our plan does not count: so the total exceeds our arena plus I/O.
    assert fig["non_persistent_bytes"] >= plan.peak_live_bytes
    assert fig["total_bytes"] >= plan.arena_bytes + plan.io_bytes
    # the figure is what TFLM needs: an arena of exactly total_bytes loads the model on this host
    runtime.Interpreter.from_bytes(m.model_bytes, arena_size=fig["total_bytes"])
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(m.model_bytes, arena_size=fig["non_persistent_bytes"])
    assert "missing" in capfd.readouterr().err


def test_a_where_over_channels_last_values_stays_channels_last():
    """The 1-D CNN's `where` (mask, both branches from convs) runs channels-last: no transposes, so no
    bool TRANSPOSE for TFLM to refuse; TFLM runs the model as LiteRT does."""
    g, xs = _quantized("conv1d_net")
    m = emit_tflite(g, embed_weights=True)
    sg = unpack_model(m.model_bytes).subgraphs[0]
    names = _operator_names(m.model_bytes)
    assert not [i for i, name in enumerate(names)
                if name == "TRANSPOSE" and sg.tensors[sg.operators[i].outputs[0]].type == TFL_TYPES["bool"]]
    tflm.check_ops(m.model_bytes, m.node_map)
    got, want = tflm.run(m.model_bytes, xs)[0], run_tflite(m.model_bytes, *xs)[0]
    assert np.abs(got.astype(np.float64) - want).max() <= step(g) + 1e-6
