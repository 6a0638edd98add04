"""The pass runner: records tagged with their pass, one timing per pass, a text dump after every
pass, and a failure that names the pass and the passes before it."""

import numpy as np
import pytest

from edgecompile.errors import InputError, InternalError
from edgecompile.ir import Graph, run_graph
from edgecompile.passes.base import LayerRecord, Pass, PassError, PassResult
from edgecompile.passes.pipeline import PassFailed, baseline_passes, compress_passes, run_pipeline
from edgecompile.passes.prune import MagnitudePrunePass

from test_fold import conv_bn_graph


class BreakGraph(Pass):
    """Leaves a node reading a value that nothing produces: the verifier must refuse it."""

    name = "break_graph"

    def call(self, graph: Graph) -> PassResult:
        node = graph.nodes[-1]
        graph.set_input(node, 0, graph.add_input("dangling", (1,)))
        graph.inputs.pop()          # a value that is neither an input, a constant nor produced
        return PassResult(graph, True)


class Refuse(Pass):
    name = "refuse"

    def call(self, graph: Graph) -> PassResult:
        raise PassError("conv: weight is not constant")


def test_order_records_timings_and_dumps(tmp_path):
    g = conv_bn_graph()
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = run_graph(g, x)
    res = run_pipeline(g, compress_passes(prune="magnitude:0.5"), dump_dir=tmp_path, first_index=1)
    assert [t.name for t in res.timings] == ["fold_batch_norm", "cleanup", "magnitude-prune"]
    assert all(t.seconds >= 0 for t in res.timings) and res.timings[0].modified
    assert all(isinstance(r, LayerRecord) and r.pass_name for r in res.records)
    folded = next(r for r in res.records if r.kind == "bn_folded")
    assert folded.to_dict() == {"node": "conv", "op": "conv", "kind": "bn_folded", "bn": "bn",
                                "pass": "fold_batch_norm"}
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["01-fold_batch_norm.txt", "02-cleanup.txt", "03-magnitude-prune.txt"]
    assert "batch_norm" not in (tmp_path / dumps[0]).read_text()
    assert (tmp_path / dumps[-1]).read_text().rstrip("\n") == g.dump().rstrip("\n")
    assert run_graph(g, x).shape == ref.shape


def test_baseline_is_the_start_of_every_pipeline():
    assert [p.name for p in baseline_passes()] == ["fold_batch_norm", "cleanup"]
    assert [p.name for p in compress_passes()] == ["fold_batch_norm", "cleanup"]
    assert isinstance(compress_passes(prune="magnitude:0.5")[-1], MagnitudePrunePass)


def test_an_invalid_graph_names_the_pass_and_those_before():
    g = conv_bn_graph()
    with pytest.raises(PassFailed, match=r"in pass 'break_graph' \(after fold_batch_norm, cleanup\)") as e:
        run_pipeline(g, baseline_passes() + [BreakGraph()])
    assert isinstance(e.value, InternalError) and e.value.exit_code == 70


def test_an_input_error_keeps_its_kind_and_names_the_pass():
    g = conv_bn_graph()
    with pytest.raises(PassError, match=r"weight is not constant \[in pass 'refuse' \(the first pass\)\]") as e:
        run_pipeline(g, [Refuse()])
    assert isinstance(e.value, InputError) and e.value.exit_code == 3


def test_records_read_as_report_rows():
    r = LayerRecord.of({"node": "fc", "op": "linear", "kind": "kept", "reason": "small", "params": 10, "pass": "p"})
    assert r.reason == "small" and r.figures == {"params": 10} and r.pass_name == "p"
    assert r["params"] == 10 and r.get("missing") is None and "reason" in r and dict(r) == r.to_dict()
    assert LayerRecord(None, None, "cleanup", figures={"removed": 2}).to_dict() == {"kind": "cleanup", "removed": 2}
