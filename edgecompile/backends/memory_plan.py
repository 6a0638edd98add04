"""Static memory plan for activations: lifetimes, a greedy offset planner, and a verifier.

The planner is TFLite Micro's `GreedyMemoryPlanner`: buffers are placed largest first, each at
the lowest (aligned) offset where it overlaps no already-placed buffer that is alive at the same
time. `verify_plan` checks the one invariant that matters (no two buffers alive at the same time
share a byte); the arena is at least the largest set of simultaneously live buffers and at most
the sum of all buffers (the "naive" plan where nothing is reused).

Lifetimes come from an IR graph (`graph_buffers`, with the element sizes of the deployment: int8
activations one byte) or from a `.tflite` model (`tflite_buffers`, the tensors the interpreter
really allocates, layout transposes and float islands included). Model inputs and outputs are
I/O buffers owned by the application (as ST's analyze report counts them), not arena.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ..errors import InternalError

ALIGNMENT = 16
# Rough code size of the TFLite Micro interpreter core and of one builtin kernel on Cortex-M
# (-Os, from TFLM's size reports); flash figures that use them are labelled estimates.
TFLM_CORE_BYTES = 24 * 1024
TFLM_KERNEL_BYTES = 3 * 1024


class PlanError(InternalError, ValueError):
    """A memory plan is invalid (overlapping live buffers, a missing offset, a bad lifetime)."""


@dataclass(frozen=True)
class Buffer:
    """An activation buffer: `size` bytes alive from op `first` to op `last` (inclusive)."""

    name: str
    size: int
    first: int
    last: int

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    """Offsets of every activation in one arena.

    arena_bytes : size of the arena the plan needs
    offsets : buffer name -> byte offset in the arena
    naive_bytes : sum of all activation sizes (no reuse)
    io_bytes : model inputs + outputs (outside the arena)
    peak_live_bytes : the largest total size of buffers alive at one op (a lower bound on the arena)
    """

    arena_bytes: int
    offsets: dict[str, int]
    naive_bytes: int
    io_bytes: int
    peak_live_bytes: int

    @property
    def ram_bytes(self) -> int:
        """RAM = arena + I/O buffers."""
        return self.arena_bytes + self.io_bytes


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def peak_live_bytes(buffers: Sequence[Buffer]) -> int:
    """The largest sum of sizes of buffers alive at the same op."""
    if not buffers:
        return 0
    end = max(b.last for b in buffers) + 2
    delta = np.zeros(end + 1, np.int64)
    for b in buffers:
        delta[b.first] += b.size
        delta[b.last + 1] -= b.size
    return int(np.cumsum(delta).max())


def plan_memory(buffers: Sequence[Buffer], io_bytes: int = 0, alignment: int = ALIGNMENT) -> MemoryPlan:
    """Greedy-by-size offset assignment (TFLite Micro's GreedyMemoryPlanner).

    Parameters
    ----------
    buffers : sequence of Buffer
        Unique names, sizes >= 0, first <= last.
    io_bytes : int
        Size of the model's inputs and outputs, carried into the plan for the RAM figure.
    alignment : int
        Every offset is a multiple of it.
    """
    names = set()
    for b in buffers:
        if b.name in names:
            raise PlanError(f"buffer {b.name!r} appears twice")
        if b.size < 0 or b.first > b.last:
            raise PlanError(f"buffer {b.name!r}: size {b.size}, lifetime [{b.first}, {b.last}] is invalid")
        names.add(b.name)
    order = sorted(buffers, key=lambda b: (-b.size, b.first, b.name))
    placed: list[tuple[int, int, Buffer]] = []        # (offset, aligned size, buffer)
    offsets: dict[str, int] = {}
    arena = 0
    for b in order:
        need = _align(b.size, alignment)
        live = sorted((o, s) for o, s, p in placed if p.overlaps_in_time(b))
        offset = 0
        for o, s in live:          # first gap between live buffers (sorted by offset) that fits
            if o - offset >= need:
                break
            offset = max(offset, o + s)
        offsets[b.name] = offset
        placed.append((offset, need, b))
        arena = max(arena, offset + need)
    return MemoryPlan(arena, offsets, int(sum(b.size for b in buffers)), int(io_bytes), peak_live_bytes(buffers))


def verify_plan(buffers: Sequence[Buffer], plan: MemoryPlan) -> None:
    """Raises `PlanError` if two buffers alive at the same time share a byte, or one leaves the arena."""
    spans = []
    for b in buffers:
        if b.name not in plan.offsets:
            raise PlanError(f"buffer {b.name!r} has no offset")
        o = plan.offsets[b.name]
        if o < 0 or o + b.size > plan.arena_bytes:
            raise PlanError(f"buffer {b.name!r} [{o}, {o + b.size}) lies outside the arena of {plan.arena_bytes}")
        spans.append((o, o + b.size, b))
    spans.sort(key=lambda s: s[0])
    for i, (_o1, e1, b1) in enumerate(spans):
        for o2, e2, b2 in spans[i + 1:]:
            if o2 >= e1:
                break
            if b1.size and b2.size and b1.overlaps_in_time(b2):
                raise PlanError(f"buffers {b1.name!r} and {b2.name!r} are alive together (ops "
                                f"{max(b1.first, b2.first)}..{min(b1.last, b2.last)}) and share bytes "
                                f"[{o2}, {min(e1, e2)})")


# -- lifetimes -----------------------------------------------------------------------------------
def graph_buffers(graph, int8_activations: bool = True) -> tuple[list[Buffer], int]:
    """Activation buffers of an IR graph in execution order, and its I/O bytes.

    Quantized activations take one byte per element when `int8_activations` (the deployment),
    others their dtype's size.
    """
    def nbytes(v) -> int:
        item = 1 if (int8_activations and v.quant is not None) else np.dtype(v.dtype).itemsize
        return int(np.prod(v.shape, dtype=np.int64)) * item

    io = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    io_bytes = sum(nbytes(v) for v in graph.inputs) + sum(
        nbytes(v) for v in graph.outputs if not v.is_const and id(v) not in {id(i) for i in graph.inputs})
    last_use: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v is not None and not v.is_const:
                last_use[id(v)] = i
    out = []
    for i, n in enumerate(graph.nodes):
        for v in n.outputs:
            if id(v) in io:
                continue
            out.append(Buffer(v.name, nbytes(v), i, max(i, last_use.get(id(v), i))))
    return out, io_bytes


def tflite_buffers(model_bytes: bytes) -> tuple[list[Buffer], int]:
    """Activation buffers of a `.tflite` model's first subgraph (as the interpreter allocates them)."""
    from .tflite.builder import TFL_TYPE_NAMES, unpack_model

    model = unpack_model(model_bytes)
    sg = model.subgraphs[0]

    def nbytes(t) -> int:
        dtype = TFL_TYPE_NAMES.get(t.type)
        if dtype is None:
            raise PlanError(f"tensor {t.name!r}: element type {t.type} has no size here")
        shape = [] if t.shape is None else list(t.shape)
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    const = {i for i, t in enumerate(sg.tensors)
             if t.buffer > 0 and model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)}
    io = set(sg.inputs) | set(sg.outputs)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, o in enumerate(sg.operators):
        for t in o.inputs:
            if t >= 0:
                last[t] = i
        for t in o.outputs:
            first.setdefault(t, i)
    buffers = []
    for t, start in first.items():
        if t in io or t in const:
            continue
        name = sg.tensors[t].name
        name = name.decode() if isinstance(name, bytes) else name
        buffers.append(Buffer(name, nbytes(sg.tensors[t]), start, max(start, last.get(t, start))))
    io_bytes = sum(nbytes(sg.tensors[t]) for t in io)
    return buffers, io_bytes


def plan_tflite(model_bytes: bytes, alignment: int = ALIGNMENT) -> MemoryPlan:
    """Plans and verifies the arena of a `.tflite` model."""
    buffers, io_bytes = tflite_buffers(model_bytes)
    plan = plan_memory(buffers, io_bytes, alignment)
    verify_plan(buffers, plan)
    return plan


def plan_graph(graph, int8_activations: bool = True, alignment: int = ALIGNMENT) -> MemoryPlan:
    """Plans and verifies the arena of an IR graph's activations."""
    buffers, io_bytes = graph_buffers(graph, int8_activations)
    plan = plan_memory(buffers, io_bytes, alignment)
    verify_plan(buffers, plan)
    return plan


def deployment_figures(model_bytes: bytes, plan: MemoryPlan, n_kernels: int, weights_bytes: int = 0) -> dict:
    """Flash = model + weights + runtime (estimate), RAM = arena + I/O, for the report.

    `model_bytes` is the `.tflite` file; `weights_bytes` the container when the weights live there
    (0 for an embedded model); `n_kernels` the number of distinct builtin ops (`tflite_op_table`).
    """
    runtime = TFLM_CORE_BYTES + TFLM_KERNEL_BYTES * n_kernels
    model = len(model_bytes) + int(weights_bytes)
    return {"arena_bytes": plan.arena_bytes, "naive_activation_bytes": plan.naive_bytes,
            "io_bytes": plan.io_bytes, "ram_bytes": plan.ram_bytes, "model_bytes": model,
            "runtime_bytes_estimate": runtime, "flash_bytes_estimate": model + runtime,
            "peak_live_bytes": plan.peak_live_bytes}
