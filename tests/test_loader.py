"""The torch-free bundle loader: round trip through a real .ecw container, errors, no disk writes."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgecompile.backends.onnx import emit_onnx
from edgecompile.container import ContainerError, write_container
from edgecompile.ir import Graph, QuantParams, infer_shapes, run_graph
from edgecompile.bundle import BundleError, TensorSpec, load_bundle
from edgecompile.bundle.onnx_session import create_session
from edgecompile.bundle.ship import ship



def _graph(quantized: bool) -> tuple[Graph, np.ndarray]:
    rng = np.random.default_rng(0)
    g = Graph("net")
    x = g.add_input("x", (2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    fc = rng.standard_normal((5, 4)).astype(np.float32)
    if quantized:
        x.quant = QuantParams([4 / 255], [0])
        qw = QuantParams(np.abs(w).reshape(4, -1).max(1) / 127, np.zeros(4), axis=0)
        qb = QuantParams(qw.scale * x.quant.scale[0], np.zeros(4), axis=0, dtype="int32")
        w_c, b_c = g.add_const("conv.weight", qw.quantize(w), qw), g.add_const("conv.bias", qb.quantize(b), qb)
    else:
        w_c, b_c = g.add_const("conv.weight", w), g.add_const("conv.bias", b)
    h = g.add_node("conv", [x, w_c, b_c], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}).output
    h = g.add_node("relu", [h]).output
    h = g.add_node("mean", [h], {"axes": [2, 3], "keepdims": False}).output
    y = g.add_node("linear", [h, g.add_const("fc.weight", fc), None]).output
    g.outputs = [y]
    infer_shapes(g)
    if quantized:
        for v, s, zp in [(g.nodes[0].output, 0.05, -10), (g.nodes[1].output, 0.03, -128),
                         (g.nodes[2].output, 0.01, -128), (y, 0.02, 0)]:
            v.quant = QuantParams([s], [zp])
    return g, rng.standard_normal((2, 3, 8, 8)).astype(np.float32)


def write_bundle(out: Path, graph: Graph, **emit) -> Path:
    """Writes a bundle as build.py does: model.onnx (weights external), weights.ecw, manifest."""
    m = emit_onnx(graph, embed_weights=False, **emit)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(m.model_bytes)
    write_container(out / "weights.ecw", m.tensors, {k: q for k, q in m.quant.items() if q is not None})
    spec = lambda v: {"name": v.name, "shape": list(v.shape), "dtype": v.dtype}  # noqa: E731
    manifest = {"format": "edgecompile-bundle", "version": 1, "backend": "onnx", "model": "model.onnx",
                "weights": "weights.ecw", "inputs": [spec(v) for v in graph.inputs],
                "outputs": [spec(v) for v in graph.outputs], "target": "host", "edgecompile_version": "test"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")}


@pytest.mark.parametrize("quantized", [False, True])
def test_round_trip_matches_executor_and_writes_nothing(tmp_path, quantized):
    g, x = _graph(quantized)
    bundle = write_bundle(tmp_path / "bundle", g)
    weights = emit_onnx(g, embed_weights=False).tensors
    assert not any(a.tobytes() in (bundle / "model.onnx").read_bytes() for a in weights.values() if a.size > 8)
    before, tmp_before = _snapshot(bundle), set(os.listdir(tempfile.gettempdir()))
    b = load_bundle(bundle, threads=1)
    (y,) = b.run(x)
    assert _snapshot(bundle) == before                              # nothing decoded to disk
    assert set(os.listdir(tempfile.gettempdir())) - tmp_before == set()
    want = run_graph(g, x)
    tol = 2 * float(g.outputs[0].quant.scale[0]) if quantized else 1e-5
    np.testing.assert_allclose(y, want, atol=tol, rtol=0 if quantized else 1e-5)
    assert b.inputs == [TensorSpec("x", (2, 3, 8, 8), "float32")]
    assert b.outputs == [TensorSpec(g.outputs[0].name, (2, 5), "float32")]
    assert b.latency([x], repeats=3) > 0


def test_create_session_with_in_memory_tensors():
    g, x = _graph(True)
    m = emit_onnx(g, embed_weights=False)
    assert m.tensors["conv.weight"].dtype == np.int8 and m.tensors["conv.bias"].dtype == np.int32
    (y,) = create_session(m.model_bytes, m.tensors).run(None, {"x": x})
    np.testing.assert_allclose(y, run_graph(g, x), atol=2 * float(g.outputs[0].quant.scale[0]))


def test_truncated_and_corrupt_containers_give_one_line_errors(tmp_path):
    g, _ = _graph(True)
    bundle = write_bundle(tmp_path / "b", g)
    ecw = bundle / "weights.ecw"
    data = ecw.read_bytes()
    ecw.write_bytes(data[: len(data) - 7])
    with pytest.raises(ContainerError) as e:
        load_bundle(bundle)
    assert str(ecw) in str(e.value) and "\n" not in str(e.value)
    corrupt = bytearray(data)
    corrupt[-20] ^= 0xFF                                           # inside the last payload
    ecw.write_bytes(bytes(corrupt))
    with pytest.raises(ContainerError, match=str(ecw)):
        load_bundle(bundle)
    ecw.write_bytes(b"not a container at all")
    with pytest.raises(ContainerError, match="weights.ecw"):
        load_bundle(bundle)


def test_bad_bundles(tmp_path):
    with pytest.raises(BundleError, match="no manifest"):
        load_bundle(tmp_path)
    g, _ = _graph(False)
    bundle = write_bundle(tmp_path / "b", g)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(manifest | {"version": 99}))
    with pytest.raises(BundleError, match="version 99"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest | {"backend": "coreml"}))
    with pytest.raises(BundleError, match="unknown backend 'coreml'"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx: missing"):
        load_bundle(bundle)


def test_container_missing_a_weight_is_a_bundle_error(tmp_path):
    g, _ = _graph(False)
    bundle = write_bundle(tmp_path / "b", g)
    m = emit_onnx(g, embed_weights=False)
    write_container(bundle / "weights.ecw", {k: v for k, v in m.tensors.items() if k != "fc.weight"})
    with pytest.raises(BundleError, match="cannot load the model.*the container has no fc.weight"):
        load_bundle(bundle)


def test_run_checks_arity_and_shapes(tmp_path):
    g, x = _graph(False)
    b = load_bundle(write_bundle(tmp_path / "b", g))
    with pytest.raises(ValueError, match="takes 1 inputs"):
        b.run(x, x)
    with pytest.raises(ValueError, match=r"expected shape \[2, 3, 8, 8\]"):
        b.run(x[:1])


def test_loader_runs_copied_into_a_bundle_without_torch(tmp_path):
    """The shipped python/ folder (`bundle.ship`), in a fresh interpreter that blocks torch and finds
    no edgecompile module but the shipped ones."""
    g, x = _graph(True)
    bundle = write_bundle(tmp_path / "b", g)
    runtime = bundle / "python"
    ship(runtime)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from edgecompile.bundle import load_bundle\n"
        f"import edgecompile; assert edgecompile.__file__.startswith({str(runtime)!r}), edgecompile.__file__\n"
        f"b = load_bundle({str(bundle)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, b.run(np.load({str(tmp_path / 'x.npy')!r}))[0])\n")
    subprocess.run([sys.executable, "-c", script], cwd=runtime, check=True, capture_output=True, text=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), run_graph(g, x),
                               atol=2 * float(g.outputs[0].quant.scale[0]))
