"""Readers are total: every kind of damage to a bundle (container, manifest, model file, report,
folder) gives the documented error class from the loaders and `inspect`, and exit 4 with one line
from `edgecompile inspect`. The bundles are written by the build's own writer from a small IR graph."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

from bench.bench_fuzz_readers import tiny_graph
from edgecompile.build import BuildConfig, _write_bundle
from edgecompile.bundle.check import inspect_bundle
from edgecompile.cli import main
from edgecompile.container import ContainerError, encode_container, read_container
from edgecompile.errors import CorruptError
from edgecompile.ir import Graph, infer_shapes
from edgecompile.bundle import load_bundle
from edgecompile.bundle import BundleError
from edgecompile.targets import load_target


@pytest.fixture(scope="module", params=["onnx", "tflite"])
def bundle(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "b"
    out.mkdir()
    cfg = BuildConfig(codecs=("zstd",))
    _write_bundle(out, tiny_graph(), load_target("rpi4"), request.param, cfg)
    load_bundle(out, threads=1)            # the undamaged bundle loads
    inspect_bundle(out)
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def _zstd_content_size(b: Path) -> None:
    """One changed byte in a zstd frame header: the frame claims an 8-byte content size of ~2^62."""
    data = bytearray((b / "weights.ecw").read_bytes())
    rec = next(r for r in read_container(bytes(data)).records if r.codec == "zstd")
    off = rec.offset
    assert zstandard.get_frame_parameters(bytes(data[off:off + 18])).content_size == rec.decoded_size
    data[off + 4] = (data[off + 4] & 0x3F) | 0xC0          # frame content size field: 8 bytes
    (b / "weights.ecw").write_bytes(bytes(data))


def _truncate_model(b: Path, keep_sha: bool) -> None:
    m = _manifest(b)
    data = (b / m["model"]).read_bytes()
    (b / m["model"]).write_bytes(data[: len(data) // 2])
    if not keep_sha:
        del m["model_sha256"]
        (b / "manifest.json").write_text(json.dumps(m))


def _flip_model_byte(b: Path) -> None:
    m = _manifest(b)
    data = bytearray((b / m["model"]).read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / m["model"]).write_bytes(bytes(data))


def _no_tensors(b: Path) -> None:
    (b / "weights.ecw").write_bytes(encode_container({}, {})[0])


def _manifest_edit(**fields):
    def edit(b: Path) -> None:
        (b / "manifest.json").write_text(json.dumps(_manifest(b) | fields))
    return edit


def _manifest_bytes(raw: bytes):
    def edit(b: Path) -> None:
        (b / "manifest.json").write_bytes(raw)
    return edit


def _report(raw: bytes):
    def edit(b: Path) -> None:
        (b / "report.json").write_bytes(raw)
    return edit


# (id, mutation, what the message says, whether the loaders read it: report.json is inspect's alone)
MUTATIONS = [
    ("zstd frame header", _zstd_content_size, "zstd frame declares", True),
    ("truncated model (sha)", lambda b: _truncate_model(b, True), "changed since the build", True),
    ("truncated model (no sha)", lambda b: _truncate_model(b, False), "model", True),
    ("one model byte", _flip_model_byte, "changed since the build", True),
    ("zero tensors", _no_tensors, "", True),
    ("missing weights file", lambda b: (b / "weights.ecw").unlink(), "missing", True),
    ("manifest not UTF-8", _manifest_bytes(b'{"format": "edgecompile-bundle\xff"}'), "not valid JSON", True),
    ("manifest a list", _manifest_bytes(b"[1, 2]"), "not an edgecompile bundle manifest", True),
    ("manifest deep", _manifest_bytes(b"[" * 100_000), "not valid JSON", True),
    ("manifest empty", _manifest_bytes(b""), "not valid JSON", True),
    ("version 99", _manifest_edit(version=99), "version 99", True),
    ("version a string", _manifest_edit(version="1"), "version '1'", True),
    ("version true", _manifest_edit(version=True), "version True", True),
    ("backend unknown", _manifest_edit(backend="coreml"), "unknown backend 'coreml'", True),
    ("backend not a string", _manifest_edit(backend=3), "'backend' is missing or not a string", True),
    ("model null", _manifest_edit(model=None), "'model' is missing or not a string", True),
    ("model outside", _manifest_edit(model="../../etc/passwd"), "inside the bundle", True),
    ("dequantize a string", _manifest_edit(dequantize_at_load="conv.weight"), "dequantize_at_load", True),
    ("sha not hex", _manifest_edit(model_sha256=12), "model_sha256", True),
    ("report not JSON", _report(b"\xff{"), "report.json", False),
    ("report a list", _report(b"[]"), "report.json", False),
]


@pytest.mark.parametrize("case", MUTATIONS, ids=[c[0] for c in MUTATIONS])
def test_each_mutation_class_gives_the_documented_error(case, bundle, tmp_path):
    _, mutate, needle, loaders = case
    b = _copy(bundle, tmp_path)
    mutate(b)
    if loaders:
        with pytest.raises((BundleError, ContainerError)) as e:
            load_bundle(b, threads=1)
        assert isinstance(e.value, CorruptError) and needle in str(e.value)
    with pytest.raises(BundleError, match=None) as e:
        inspect_bundle(b)
    assert needle in str(e.value) and "\n" not in str(e.value)
    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert res.exit_code == 4, res.output
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_a_file_where_the_bundle_folder_should_be(bundle, tmp_path):
    f = tmp_path / "b"
    f.write_bytes((bundle / "weights.ecw").read_bytes())
    for read in (load_bundle, inspect_bundle):
        with pytest.raises(BundleError, match="is a file, not a bundle folder"):
            read(f)
    res = CliRunner().invoke(main, ["inspect", str(f)])
    assert res.exit_code == 4 and res.stderr.count("\n") == 1


def test_a_model_needing_no_weights_may_have_zero_tensors(tmp_path):
    """Zero tensors are an error only when the model needs weights: a weightless model is fine."""
    g = Graph("relu")
    x = g.add_input("x", (1, 4))
    g.outputs = [g.add_node("relu", [x], name="act").output]
    infer_shapes(g)
    for backend in ("onnx", "tflite"):
        out = tmp_path / backend
        out.mkdir()
        _write_bundle(out, g, load_target("rpi4"), backend, BuildConfig())
        info = inspect_bundle(out)
        assert info["tensors"] == 0
        (y,) = load_bundle(out).run(np.array([[-1, 2, -3, 4]], np.float32))
        np.testing.assert_array_equal(y, [[0, 2, 0, 4]])
