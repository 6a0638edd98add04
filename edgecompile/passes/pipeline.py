"""The compression passes in order, built per config, and the one runner every pass goes through.

`compress_passes` spells out the target-independent order once (`baseline_passes`: fold batch
norms, clean up; then
factorize for ``--rank`` / ``--budget-bytes``, prune for ``--prune``). The int8 passes (quantize,
cluster, the per-layer search) run per candidate in `choose`. `run_pipeline` runs a list of
passes on a graph: each pass verifies the graph after it modified it (`Pass.__call__`), is timed
for the report, may have the graph's text dump written after it (``--dump-ir DIR``), and a failure
names the pass and the passes before it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgecompileError, InternalError
from ..ir import Graph
from ..ir.verify import VerifyError
from .base import LayerRecord, Pass

__all__ = ["PassFailed", "PassTiming", "PipelineResult", "baseline_passes", "compress_passes", "dump_graph", "run_pipeline"]


class PassFailed(InternalError):
    """A pass broke (an exception that is not an input error, or a graph `verify` refuses after it):
    a compiler bug, named with the pass and the passes that ran before it."""


@dataclass(frozen=True)
class PassTiming:
    """One pass run: its name, whether it changed the graph, and its wall time in seconds."""

    name: str
    modified: bool
    seconds: float


@dataclass
class PipelineResult:
    """The records of every pass (tagged with its name) and how long each pass took."""

    records: list[LayerRecord] = field(default_factory=list)
    timings: list[PassTiming] = field(default_factory=list)


def baseline_passes() -> list[Pass]:
    """The lossless start of every pipeline: fold batch norms into their layers, then clean up
    (also what the fp32 ONNX baseline of the report gets, as onnxruntime would do at load)."""
    from .fold import CleanupPass, FoldBatchNormPass

    return [FoldBatchNormPass(), CleanupPass()]


def compress_passes(*, rank: str = "none", budget_bytes: int | None = None, bytes_per_param: float = 4.0,
                    prune: str = "none") -> list[Pass]:
    """The target-independent compression passes for one build, in order.

    Parameters
    ----------
    rank : str
        ``--rank`` (``"none"``: factorize only under a byte budget, ranks then by ``erank``).
    budget_bytes : int or None
        ``--budget-bytes``: the low-rank search spends rank up to it.
    bytes_per_param : float
        What a weight will cost after quantization (1 for int8, 4 for float), for the budget.
    prune : str
        ``--prune`` (``"none"``: no pruning pass).
    """
    from .lowrank.factorize import LowRankConfig, LowRankPass
    from .lowrank.rank import parse_rank_spec
    from .prune import make_prune_pass, parse_prune_spec

    passes = baseline_passes()
    if budget_bytes is not None or rank != "none":
        passes.append(LowRankPass(LowRankConfig(rank=parse_rank_spec(rank if rank != "none" else "erank"),
                                                budget_bytes=budget_bytes, bytes_per_param=bytes_per_param)))
    pruner = make_prune_pass(parse_prune_spec(prune))
    if pruner is not None:
        passes.append(pruner)
    return passes


def dump_graph(graph: Graph, dump_dir: Path | None, index: int, label: str) -> Path | None:
    """Writes ``dump_dir/NN-label.txt`` with `graph.dump()`; None without a folder."""
    if dump_dir is None:
        return None
    dump_dir = Path(dump_dir)
    dump_dir.mkdir(parents=True, exist_ok=True)
    path = dump_dir / f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')}.txt"
    text = graph.dump()
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def run_pipeline(graph: Graph, passes: Sequence[Pass], *, dump_dir: Path | None = None,
                 first_index: int = 1) -> PipelineResult:
    """Runs `passes` on `graph` in order (in place); see the module docstring.

    Parameters
    ----------
    dump_dir : Path or None
        Where the graph's text dump goes after each pass (``NN-<pass>.txt``, NN from `first_index`).

    Raises
    ------
    EdgecompileError
        A domain error of a pass (a `PassError`: the graph does not meet its precondition) as the
        pass raised it, with the pass named at the end of its message.
    PassFailed
        Any other exception, or a graph the verifier refuses after a pass: exit 70.
    """
    result = PipelineResult()
    for i, p in enumerate(passes):
        before = [q.name for q in passes[:i]]
        where = f"in pass {p.name!r}" + (f" (after {', '.join(before)})" if before else " (the first pass)")
        t0 = time.perf_counter()
        try:
            res = p(graph)
        except VerifyError as e:
            raise PassFailed(f"the graph is invalid {where}: {e}; please report it with the model") from e
        except EdgecompileError as e:
            if len(e.args) == 1 and isinstance(e.args[0], str):
                e.args = (f"{e.args[0]} [{where}]",)
            raise
        except Exception as e:
            raise PassFailed(f"{type(e).__name__} {where}: {e}; please report it with the model") from e
        result.timings.append(PassTiming(p.name, res.modified, round(time.perf_counter() - t0, 4)))
        result.records += [r.named(p.name) for r in res.records]
        dump_graph(graph, dump_dir, first_index + i, p.name)
    return result
