"""End-to-end: the CLI on the embedded default and on bad input (one-line errors, exit codes, clean --out)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "edgecompile.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "digits-rpi4"
    r = run_cli("build", "--target", "rpi4", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    return out, json.loads(r.stdout)


def test_default_build_json_and_files(default_bundle):
    out, res = default_bundle
    assert res["ok"]
    for f in ("model.onnx", "weights.ecw", "manifest.json", "report.json", "report.html"):
        assert (out / f).is_file(), f
    rep = res["report"]
    assert rep["fidelity"]["top1_agreement"] >= 0.97
    assert rep["totals"]["compression_ratio"] > 3.5  # int8 alone; pruning adds more (bench)
    assert rep["layers"] and all(r["bytes_after"] > 0 for r in rep["layers"])
    assert "<img" in (out / "report.html").read_text()


def test_inspect_ok_and_corrupt(default_bundle, tmp_path):
    out, _ = default_bundle
    r = run_cli("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert "CRC-32 checks passed" in r.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in out.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "weights.ecw").read_bytes()
    (bad / "weights.ecw").write_bytes(data[: len(data) // 2])
    r = run_cli("inspect", str(bad))
    assert r.returncode == 4
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args, needle", [
    (["build", "--target", "esp32"], "unknown target 'esp32'; known targets:"),
    (["build", "nope.py:model"], "model file nope.py does not exist"),
    (["build", "edgecompile.data.digits:missing"], "has no callable 'missing'"),
    (["build", "--budget-bytes", "10"], "budget"),
])
def test_bad_input_one_line_nothing_written(args, needle, tmp_path):
    out = tmp_path / "out"
    r = run_cli(*args, "--out", str(out))
    assert r.returncode == 3, r.stderr
    assert needle in r.stderr
    assert r.stderr.count("\n") == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unsupported_op_names_op_and_line(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import torch\n"
                   "class M(torch.nn.Module):\n"
                   "    def forward(self, x):\n"
                   "        return torch.cumprod(x, 1)\n"
                   "def model():\n"
                   "    return M(), (torch.randn(1, 4),)\n")
    r = run_cli("build", f"{src}:model", "--out", str(tmp_path / "o"))
    assert r.returncode == 3
    assert "cumprod" in r.stderr and "m.py:4" in r.stderr


def test_targets_lists_all():
    r = run_cli("targets", "--json")
    names = {t["name"] for t in json.loads(r.stdout)}
    assert {"rpi4", "rpi5", "stm32f746", "nrf52840", "rp2040", "host"} <= names


def test_default_build_searches_and_says_what_it_shipped(default_bundle):
    rep = default_bundle[1]["report"]
    assert rep["config"]["optimize"] == "size" and rep["attempts"] and rep["chosen"]
    assert rep["attempts"][-1]["passed"] and rep["attempts"][-1]["config"] == rep["chosen"]
    assert rep["totals"]["compression_ratio"] > 6      # the search adds sparsity and shared levels


def test_optimize_none_and_task_on_the_cli(tmp_path):
    r = run_cli("build", "--optimize", "none", "--task", "logits", "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["report"]
    assert rep["config"]["optimize"] == "none" and "no per-layer search" in rep["search"]["note"]
    assert rep["fidelity"]["outputs"][0]["kind"] == "logits"
    bad = run_cli("build", "--task", "banana", "--out", str(tmp_path / "b"))
    assert bad.returncode == 3 and bad.stderr.count("\n") == 1 and "unknown output kind 'banana'" in bad.stderr
    assert not (tmp_path / "b").exists()


def _factory(tmp_path, body: str) -> str:
    src = tmp_path / "m.py"
    src.write_text("import torch\n"
                   "class M(torch.nn.Module):\n"
                   "    def __init__(self):\n"
                   "        super().__init__()\n"
                   "        self.fc = torch.nn.Linear(8, 6)\n"
                   "    def forward(self, x):\n"
                   f"        return {body}\n"
                   "def model():\n"
                   "    torch.manual_seed(0)\n"
                   "    return M().eval(), (torch.randn(1, 8),)\n")
    return f"{src}:model"


def test_mcu_op_without_c_kernel_names_op_layer_and_way_out(tmp_path):
    """The default microcontroller backend (generated C) has no log_softmax kernel: one line naming
    the op and the layer and suggesting --backend tflite, exit 3, nothing written."""
    out = tmp_path / "o"
    r = run_cli("build", _factory(tmp_path, "torch.log_softmax(self.fc(x), 1)"), "--target", "nrf52840",
                "--out", str(out))
    assert r.returncode == 3, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "log_softmax" in errors[0] and "--backend tflite" in errors[0]
    assert not out.exists()


def test_tflite_for_mcu_checks_tflite_micro_kernels(tmp_path):
    """--backend tflite for a microcontroller: TFLite Micro has no GELU kernel, so the build stops
    with one line naming GELU (not a bundle that cannot run on the board)."""
    pytest.importorskip("tflite_micro")
    out = tmp_path / "o"
    r = run_cli("build", _factory(tmp_path, "torch.nn.functional.gelu(self.fc(x))"), "--target", "nrf52840",
                "--backend", "tflite", "--quant", "int8", "--out", str(out))
    assert r.returncode == 3, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "GELU" in errors[0] and "layer gelu" in errors[0]
    assert not out.exists()


def test_dump_ir_writes_the_graph_after_every_pass(tmp_path):
    ir = tmp_path / "ir"
    r = run_cli("build", _factory(tmp_path, "self.fc(x)"), "--quant", "none", "--dump-ir", str(ir),
                "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in ir.iterdir())
    assert names[:3] == ["00-import.txt", "01-fold_batch_norm.txt", "02-cleanup.txt"], names
    assert len(names) == 4 and names[3].startswith("03-candidate"), names
    assert (ir / "00-import.txt").read_text().startswith("graph m(x: float32[1, 8])")
    rep = json.loads(r.stdout)["report"]
    assert [t["pass"] for t in rep["pass_timings_s"]] == ["fold_batch_norm", "cleanup"]


def test_output_that_is_the_input_reshaped_builds(tmp_path):
    """``return x.reshape(x.shape)``: the output stays a node, not an alias of the input (issue 15)."""
    r = run_cli("build", _factory(tmp_path, "x.reshape(x.shape)"), "--quant", "none", "--out", str(tmp_path / "o"),
                "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["report"]
    assert rep["verdict"]["passed"] and [o["op"] for o in rep["backend_ops"]] == ["Reshape"], rep["backend_ops"]
