"""The pass contract (after onnx-ir's `_pass_infra`): requires -> call -> ensures.

A pass is a small object built from its (frozen) config; `__call__(graph)` rewrites the graph in
place and returns a `PassResult` saying whether anything changed, plus per-node records for the
report. A pass keeps no state between calls. `requires` raises `PassError` when a precondition
does not hold (naming the node and what to do); `ensures` runs `verify` by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, verify
from ..errors import InputError


class PassError(InputError, ValueError):
    """A pass cannot run on this graph; the message names the node, the op and what to do."""


@dataclass
class PassResult:
    graph: Graph
    modified: bool
    records: list[dict] = field(default_factory=list)   # one dict per rewritten layer, for the report


class Pass:
    """Base class: override `call`; optionally `requires` and `ensures`."""

    name = "pass"

    def requires(self, graph: Graph) -> None:
        """Raises `PassError` if the pass cannot run on `graph`."""

    def call(self, graph: Graph) -> PassResult:
        raise NotImplementedError  # abstract: every concrete pass implements it

    def ensures(self, graph: Graph) -> None:
        verify(graph)

    def __call__(self, graph: Graph) -> PassResult:
        self.requires(graph)
        result = self.call(graph)
        if result.modified:
            self.ensures(result.graph)
        return result
