"""The pass contract (after onnx-ir's `_pass_infra`): requires -> call -> ensures.

A pass is a small object built from its (frozen) config; `__call__(graph)` rewrites the graph in
place and returns a `PassResult` saying whether anything changed, plus one `LayerRecord` per layer
it looked at, for the report. A pass keeps no state between calls. `requires` raises `PassError`
when a precondition does not hold (naming the node and what to do); `ensures` runs `verify` by
default. The order of passes and the runner that times, verifies and dumps them: `pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InputError
from ..ir import Graph, verify


class PassError(InputError, ValueError):
    """A pass cannot run on this graph; the message names the node, the op and what to do."""


@dataclass(frozen=True)
class LayerRecord(Mapping):
    """What a pass did to one layer (or to the graph, with `node` None), for the report.

    Attributes
    ----------
    node, op : str or None
        The IR node and its op; None for a graph-wide record (``cleanup``'s count).
    kind : str
        What happened: ``"bn_folded"``, ``"lowrank"``, ``"magnitude"``, ``"channel"``,
        ``"quantize"``, ``"cluster"``, ``"cleanup"``, or ``"kept"`` (with `reason`).
    reason : str
        Why a layer was left alone (empty when it was rewritten).
    figures : Mapping[str, Any]
        The pass's own numbers (rank, sparsity, bits, bytes before / after, ...), JSON-able.
    pass_name : str
        The pass that wrote it; set by the pipeline runner.

    A record is also a read-only mapping over the report row it becomes (`to_dict`):
    ``record["rank"]``, ``record.get("reason")``, ``"removed" in record``, ``dict(record)``.
    """

    node: str | None
    op: str | None
    kind: str
    reason: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)
    pass_name: str = ""

    @classmethod
    def of(cls, row: Mapping[str, Any] | LayerRecord) -> LayerRecord:
        """A record from a report row (``node``, ``op``, ``kind``, ``reason``, ``pass``, figures)."""
        if isinstance(row, LayerRecord):
            return row
        rest = {k: v for k, v in row.items() if k not in ("node", "op", "kind", "reason", "pass")}
        return cls(row.get("node"), row.get("op"), str(row.get("kind", "")), str(row.get("reason", "") or ""),
                   rest, str(row.get("pass", "")))

    def named(self, pass_name: str) -> LayerRecord:
        """This record tagged with the pass that wrote it."""
        return replace(self, pass_name=pass_name)

    def to_dict(self) -> dict[str, Any]:
        """The report row: the fields set, the figures, then ``pass``."""
        row: dict[str, Any] = {k: v for k, v in (("node", self.node), ("op", self.op)) if v is not None}
        row["kind"] = self.kind
        row.update(self.figures)
        if self.reason:
            row["reason"] = self.reason
        if self.pass_name:
            row["pass"] = self.pass_name
        return row

    def __getitem__(self, key: str) -> Any:
        row = self.to_dict()
        if key in row:
            return row[key]
        if key in ("node", "op"):
            return None
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass
class PassResult:
    """What one pass run returns.

    Attributes
    ----------
    graph : Graph
        The graph, rewritten in place (the same object the pass was given).
    modified : bool
        Whether anything changed; only a modifying pass is verified again.
    records : list[LayerRecord]
        One per layer the pass looked at (rows given as dicts are read with `LayerRecord.of`).
    """

    graph: Graph
    modified: bool
    records: list[LayerRecord] = field(default_factory=list)

    def __post_init__(self):
        self.records = [LayerRecord.of(r) for r in self.records]


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
