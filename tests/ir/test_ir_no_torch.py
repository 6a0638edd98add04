"""``import edgecompile.ir`` needs numpy only (graph.py's promise, issue 15): the torch executor and
shape inference beside it are imported when first used."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.modules["torch"] = None                       # any import of torch fails
import numpy as np
from edgecompile.ir import Graph, verify, weight_input
from edgecompile.ir import analysis, identity     # noqa: F401
g = Graph("g")
x = g.add_input("x", (1, 4))
w = g.add_const("fc.weight", np.ones((3, 4), np.float32))
g.outputs = [g.add_node("linear", [x, w], {}, name="fc").output]
verify(g, check_shapes=False)
assert weight_input(g.nodes[0]) is w
print(g.dump())
"""


def test_ir_imports_without_torch():
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "linear(x, fc.weight)" in run.stdout


def test_torch_names_load_on_first_use():
    import edgecompile.ir as ir
    from edgecompile.ir.torch_executor import run_graph

    assert ir.run_graph is run_graph
