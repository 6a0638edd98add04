"""Generated C inference: a quantized IR graph as ``model.c`` / ``model.h`` for the ``ecm_`` kernels.

``emit_c(graph)`` lowers the graph with the integer reference (`ref.graph.lower`: the schedule of
kernel calls and their integer parameters), then writes it as one straight-line C function:

- **No interpreter.** ``model_run(in0, ..., out0, ..., arena)`` calls one ``ecm_`` kernel per
  step, every shape and parameter a compile-time constant; no op registry, no allocation, no
  global state. A failing kernel returns its ``ecm_status`` at once.
- **One arena, planned statically.** Activations live at fixed offsets of a caller-owned arena
  (`memory_plan.plan_memory`, TFLite Micro's greedy planner). Graph inputs and outputs are the
  caller's buffers. Reshapes that keep the byte order are aliases; others are transposes.
- **Weights stay in the container.** Every weight tensor goes into an ``.ecw`` container in the
  kernels' layout (conv OHWI, fully connected [O, I]), compiled into flash as a C array. A
  *streamed* tensor is entropy-coded there and decoded into a scratch slot of the arena just
  before its layer runs (the slot and the decoder's workspace are buffers of the plan, alive for
  that one step, so they reuse dead activation space); the others are stored raw and read in
  place from flash. RAM is the arena + I/O, never the decoded model. Which tensors stream is a
  per-layer trade of flash against decode time (`emit_c`'s ``stream``, `_choose_streamed`).
- Biases and requantization multipliers (int32, one per output channel) are ``static const``
  arrays in ``model.c`` (flash).

Inputs and outputs are int8 in the kernels' layout (NHWC for 4-D tensors: an image as rows of
pixels of channels), quantized with the scale and zero point that ``model.h`` defines.

The numpy reference of the same calls (`ref.graph.execute`) is the specification: the tests
compile this C for the host, Cortex-M (QEMU) and aarch64 (QEMU) and compare every output byte.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...container import format as ecw_format
from ...container.writer import encode_container
from ...ir import Graph
from ..base import EmittedModel
from ..memory_plan import ALIGNMENT, Buffer, plan_memory, verify_plan
from .ref.graph import CRefUnsupported, KernelCall, _nchw, _nhwc, execute, lower
from .writer import WEIGHTED, CBackendError, Writer

__all__ = ["CModel", "CLayer", "emit_c", "CBackendError", "STREAM_MIN_SAVING", "STREAM_MIN_REUSE",
           "ECW_WORKSPACE_BYTES", "ECW_FAST_WORKSPACE_BYTES"]

#: A weight tensor is streamed (entropy-decoded before its layer on every run) only when its
#: container payload is at most this fraction of its raw bytes: decoding costs time on every
#: inference, so it must buy a real flash saving.
STREAM_MIN_SAVING = 0.125
#: ``ECW_WORKSPACE_SIZE`` / ``ECW_FAST_WORKSPACE_SIZE`` of runtime/include/ecw.h (the reference and
#: the table-driven decoder's state); a test holds them equal.
ECW_WORKSPACE_BYTES = 772
ECW_FAST_WORKSPACE_BYTES = 772 + 4 * 4100
#: "auto" streams a tensor only when its layer does at least this many MACs per weight byte:
#: decoding costs ~50-200 emulated instructions a byte on Cortex-M4 (measured on the digits CNN's
#: lut tensors, fast and reference decoder) while the DSP kernels take ~1.5 a MAC, so below this
#: the decode would cost more than ~15 % of the layer.
STREAM_MIN_REUSE = 1024


@dataclass(frozen=True)
class CLayer:
    """One step of the generated schedule, for the report."""

    index: int
    node: str
    kernel: str
    output_shape: tuple[int, ...]
    weight_bytes: int = 0          # decoded int8 weights
    stored_bytes: int = 0          # bytes in the container (payload)
    codec: str = ""
    streamed: bool = False
    macs: int = 0


@dataclass
class CModel:
    """What `emit_c` writes: sources, the container, and the static memory figures.

    files : file name -> text (``model.h``, ``model.c``) or bytes (``weights.ecw``); the container
        C array (``model_weights.c``) is written by `bundle.container_to_c` from ``container``.
    arena_bytes : the one buffer ``model_run`` needs (activations + streaming slots + decoder state)
    scratch_bytes : the largest streamed tensor (one slot of the arena, not extra)
    io_bytes : inputs + outputs (the caller's buffers)
    container : the ``.ecw`` bytes (weights in kernel layout)
    calls : the numpy reference's kernel calls (`ref.graph.execute` runs them)
    """

    prefix: str
    files: dict[str, Any]
    arena_bytes: int
    scratch_bytes: int
    io_bytes: int
    container: bytes
    records: list
    layers: list[CLayer]
    calls: list[KernelCall]
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    peak_layer: str = ""             # the step where the most arena bytes are alive together
    peak_live_bytes: int = 0

    @property
    def ram_bytes(self) -> int:
        return self.arena_bytes + self.io_bytes

    @property
    def streamed_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.layers if layer.streamed)

    def emitted(self, graph: Graph) -> EmittedModel:
        """The backend contract's record of this model: the model file is ``model.c``, the "ops"
        the ``ecm_`` kernels it calls (with their call counts), container names mapped to layers."""
        kernels: dict[str, int] = {}
        for layer in self.layers:
            kernels[layer.kernel] = kernels.get(layer.kernel, 0) + 1
        # container names are "<index>:<layer>"; the report's rows match a layer's weight value
        weight_of = {n.name: n.inputs[1].name for n in graph.nodes if len(n.inputs) > 1 and n.inputs[1] is not None}
        return EmittedModel(self.files[f"{self.prefix}.c"].encode(), {}, {},
                            [(f"ecm_{k}", n) for k, n in kernels.items()],
                            source_names={r.name: weight_of.get(r.name.split(":", 1)[-1], r.name) for r in self.records})


# -- schedule ------------------------------------------------------------------------------------
@dataclass
class _Step:
    kernel: str                      # an ecm kernel, "transpose", "copy", or "alias"
    node: str
    inputs: list[str]
    output: str
    args: dict
    call: int                        # index of the KernelCall it comes from


def _shapes(graph: Graph, calls: list[KernelCall]) -> dict[str, tuple[int, ...]]:
    """Storage shape (NHWC for 4-D) of every value the calls touch: the reference run once on zeros."""
    env = {v.name: _nhwc(np.zeros(v.shape, np.int8)) for v in graph.inputs}
    env = execute(calls, env)
    return {k: tuple(v.shape) for k, v in env.items()}


def _expand(calls: list[KernelCall], shapes: dict[str, tuple[int, ...]]) -> list[_Step]:
    """Kernel calls -> C steps: flattens and order-keeping reshapes become aliases; other reshapes
    one or two transposes (NHWC <-> NCHW around the free reshape)."""
    steps: list[_Step] = []
    for i, c in enumerate(calls):
        src = c.inputs[0] if c.inputs else ""
        if c.kernel == "flatten":
            steps.append(_Step("alias", c.node, [src], c.output, {}, i))
            continue
        if c.kernel != "reshape":
            steps.append(_Step(c.kernel, c.node, list(c.inputs), c.output, dict(c.args), i))
            continue
        in_shape, out_shape = shapes[src], shapes[c.output]
        n = int(np.prod(in_shape))
        order = _nhwc(_nchw(np.arange(n).reshape(in_shape)).reshape(c.args["shape"])).reshape(-1)
        if np.array_equal(order, np.arange(n)):
            steps.append(_Step("alias", c.node, [src], c.output, {}, i))
            continue
        cur = src
        if len(in_shape) == 4:           # NHWC storage -> NCHW order
            tmp = c.output + "/nchw" if len(out_shape) == 4 else c.output
            shapes[tmp] = tuple(in_shape[k] for k in (0, 3, 1, 2)) if len(out_shape) == 4 else out_shape
            steps.append(_Step("transpose", c.node, [cur], tmp, {"shape": in_shape, "perm": (0, 3, 1, 2)}, i))
            cur = tmp
        if len(out_shape) == 4:          # NCHW order (the IR shape) -> NHWC storage
            nchw = tuple(c.args["shape"])
            steps.append(_Step("transpose", c.node, [cur], c.output, {"shape": nchw, "perm": (0, 2, 3, 1)}, i))
    return steps


def _storage(graph: Graph, steps: list[_Step]) -> tuple[dict[str, str], list[_Step]]:
    """Each value's storage: ``in<k>`` / ``out<k>`` (the caller's buffers) or ``a:<group>`` (an
    arena buffer). Aliases join groups; an alias that would join two caller buffers becomes a copy."""
    pinned = {v.name: f"in{k}" for k, v in enumerate(graph.inputs)}
    for k, v in enumerate(graph.outputs):
        pinned.setdefault(v.name, f"out{k}")
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    def pin_of(root: str) -> str | None:
        return next((io for v, io in pinned.items() if find(v) == root), None)

    out: list[_Step] = []
    for s in steps:
        if s.kernel == "alias":
            a, b = find(s.inputs[0]), find(s.output)
            pa, pb = pin_of(a), pin_of(b)
            if pa is not None and pb is not None and pa != pb:
                out.append(_Step("copy", s.node, s.inputs, s.output, {}, s.call))
            else:
                parent[b] = a
            continue
        out.append(s)
    # In place: ecm_add may write over one of its inputs, so an add whose input dies there takes
    # that input's buffer (a residual block then holds two maps, not three).
    last_read: dict[str, int] = {}
    for i, s in enumerate(out):
        for x in s.inputs:
            last_read[find(x)] = i
    for i, s in enumerate(out):
        if s.kernel != "add" or len(s.inputs) != 2 or pin_of(find(s.output)) is not None:
            continue
        for x in s.inputs:
            g = find(x)
            if pin_of(g) is None and last_read.get(g) == i and g != find(s.output):
                parent[find(s.output)] = g
                break
    names = {v.name for v in graph.inputs} | {x for s in steps for x in (*s.inputs, s.output)}
    return {name: pin_of(find(name)) or "a:" + find(name) for name in names}, out


def _weight_tensors(steps: list[_Step]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Every weighted step's weights in kernel layout, named ``<index>:<layer>``; step -> name.
    Steps with equal weights (an unrolled LSTM's recurrent matrix, once per time step) share one
    tensor, stored once."""
    tensors: dict[str, np.ndarray] = {}
    names: dict[int, str] = {}
    seen: dict[tuple, str] = {}
    for i, s in enumerate(steps):
        if s.kernel in WEIGHTED:
            w = np.ascontiguousarray(s.args["w"], np.int8)
            key = (w.shape, hashlib.blake2b(w.data, digest_size=20).digest())
            if key not in seen:
                seen[key] = f"{len(tensors)}:{s.node}".encode()[: ecw_format.MAX_NAME_LEN].decode("utf-8", "ignore")
                tensors[seen[key]] = w
            names[i] = seen[key]
    return tensors, names


def _lut_form(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """A fully connected layer's weights as shared levels read in place (`ecm_fully_connected_lut`):
    (packed level indices, the levels, bits per index), when the layer has at most 16 distinct int8
    values (pruned + clustered) and that form saves at least `STREAM_MIN_SAVING` of its bytes."""
    levels = np.unique(w)
    if levels.size > 16:
        return None
    bits = 1 if levels.size <= 2 else 2 if levels.size <= 4 else 4
    per = 8 // bits
    idx = np.searchsorted(levels, w.reshape(-1)).astype(np.uint8)
    idx = np.concatenate([idx, np.zeros(-idx.size % per, np.uint8)]).reshape(-1, per)
    packed = np.bitwise_or.reduce(idx << (np.arange(per, dtype=np.uint8) * bits), axis=1).astype(np.uint8)
    if packed.size + levels.size > (1 - STREAM_MIN_SAVING) * w.size:
        return None
    return packed, levels.astype(np.int8), bits


def _macs(s: _Step, shapes) -> int:
    w = s.args.get("w")
    if s.kernel == "conv2d":
        return int(np.prod(shapes[s.output])) * int(np.prod(w.shape[1:]))
    if s.kernel == "fully_connected":
        return int(np.prod(shapes[s.output])) * int(w.shape[1])
    return 0


def _choose_streamed(records, names: dict[int, str], steps, shapes, stream: str, flash_budget: int | None) -> set[str]:
    """Which tensors to stream, from their best encoding (`records`): those that save at least
    `STREAM_MIN_SAVING`; under "auto" only where decoding is cheap beside the layer's arithmetic
    (at least `STREAM_MIN_REUSE` MACs per weight byte), plus, when the raw container would not fit
    `flash_budget`, the largest remaining savings until it fits."""
    if stream == "none":
        return set()
    by = {r.name: r for r in records}
    worth = {r.name for r in records if r.codec != "raw" and r.encoded_size <= (1 - STREAM_MIN_SAVING) * r.decoded_size}
    if stream == "all":
        return worth
    reuse = {names[i]: _macs(steps[i], shapes) / max(by[names[i]].decoded_size, 1) for i in names}
    chosen = {n for n in worth if reuse[n] >= STREAM_MIN_REUSE}
    if flash_budget is not None:
        size = sum(by[n].encoded_size if n in chosen else by[n].decoded_size for n in by)
        for n in sorted(worth - chosen, key=lambda n: by[n].encoded_size - by[n].decoded_size):
            if size <= flash_budget:
                break
            chosen.add(n)
            size -= by[n].decoded_size - by[n].encoded_size
    return chosen


def emit_c(graph: Graph, *, codecs: tuple[str, ...] = ("raw", "rans", "lut"), prefix: str = "model",
           stream: str = "auto", ram_budget: int | None = None, flash_budget: int | None = None,
           fast_decode: bool = True) -> CModel:
    """The graph as generated C (see the module docstring).

    Parameters
    ----------
    graph : Graph
        Quantized by the quantize pass: int8 activations (per tensor), symmetric int8 weights.
    codecs : tuple of str
        Codecs the target decodes; zstd is never used on the device.
    prefix : str
        C identifier prefix of the public API (``<prefix>_run``, ``<PREFIX>_ARENA_SIZE``).
    stream : "auto" | "all" | "none"
        Which weight tensors are entropy-coded in flash and decoded before their layer on every
        run (`_choose_streamed`): "all" that save at least `STREAM_MIN_SAVING` (smallest flash),
        "none" (every tensor raw, read in place: fastest), "auto" those whose decoding is cheap
        beside their layer's arithmetic, plus what it takes to fit `flash_budget`.
    ram_budget : int, optional
        The board's RAM: while arena + I/O exceed it, the tensor with the largest decode slot is
        stored raw instead (flash for RAM).
    flash_budget : int, optional
        Bytes of flash the weights may take ("auto" streams more until they fit).
    fast_decode : bool
        Give a streamed tensor's decode the table-driven decoder's workspace
        (`ECW_FAST_WORKSPACE_BYTES` instead of 772 bytes, alive only while it decodes) wherever that
        does not grow the arena: measured on Cortex-M4, 2.3x fewer instructions to decode a lut
        tensor.

    Raises
    ------
    CBackendError
        An op or shape without a C kernel, naming the op and the layer.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise CBackendError(f"prefix {prefix!r} is not a C identifier")
    try:
        calls = lower(graph)
    except CRefUnsupported as e:
        raise CBackendError(f"{e}; --backend c cannot run it (try --backend tflite)") from None
    shapes = _shapes(graph, calls)
    steps = _expand(calls, shapes)
    where, steps = _storage(graph, steps)
    ins = [_io(v, shapes) for v in graph.inputs]
    outs = [_io(v, shapes) for v in graph.outputs]
    io_bytes = sum(d["size"] for d in ins) + sum(d["size"] for d in outs)
    if stream not in ("auto", "all", "none"):
        raise CBackendError(f"stream {stream!r}: use auto, all or none")
    allowed = tuple(dict.fromkeys(tuple(c for c in codecs if c in ("raw", "rans", "lut")) + ("raw",)))
    tensors, names = _weight_tensors(steps)
    luts: dict[int, tuple[int, int]] = {}       # step -> (bits, levels): read in place, never streamed
    if stream == "auto":
        # A pruned + clustered fully connected layer (1 MAC per weight at batch 1, where decoding
        # would cost ~50-100x the layer) keeps its levels packed in flash and is computed from them.
        # Once per tensor (steps may share one), and only if every step reading it is fully connected.
        fc_only = {name: True for name in tensors}
        for i, name in names.items():
            fc_only[name] &= steps[i].kernel == "fully_connected"
        forms = {name: _lut_form(tensors[name]) for name, ok in fc_only.items() if ok}
        for name, form in forms.items():
            if form is not None:
                tensors[name], tensors[name + "/levels"], _ = form
        for i, name in names.items():
            if forms.get(name) is not None:
                luts[i] = (forms[name][2], forms[name][1].size)
    _, best = encode_container(tensors, codecs=allowed)
    in_place = {names[i] for i in luts} | {names[i] + "/levels" for i in luts}
    fixed = sum(r.decoded_size for r in best if r.name in in_place)     # the in-place levels' flash
    streamed = _choose_streamed([r for r in best if r.name not in in_place], {i: n for i, n in names.items()
                                                                              if i not in luts},
                                steps, shapes, stream, None if flash_budget is None else flash_budget - fixed)
    while True:
        data, records = encode_container(tensors, codecs=allowed, codec_for={n: "raw" for n in tensors if n not in streamed})
        by_name = {r.name: r for r in records}
        wrec = {i: by_name[n] for i, n in names.items()}
        workspace = {i: ECW_WORKSPACE_BYTES for i, r in wrec.items() if r.codec != "raw"}
        plan, scratch, buffers = _plan(steps, where, shapes, wrec, workspace)
        if ram_budget is None or plan.arena_bytes + io_bytes <= ram_budget or not streamed:
            break
        streamed.discard(max(streamed, key=lambda n: by_name[n].decoded_size))  # flash for RAM
    if fast_decode:
        # The fast decoder's table where it costs no RAM: a step's workspace grows only if the
        # arena stays as it is (it fits in activation space dead at that step).
        for i in sorted(workspace, key=lambda i: -wrec[i].decoded_size):
            trial = {**workspace, i: ECW_FAST_WORKSPACE_BYTES}
            got = _plan(steps, where, shapes, wrec, trial)
            if got[0].arena_bytes <= plan.arena_bytes:
                workspace, (plan, scratch, buffers) = trial, got
    layers = [CLayer(i, s.node, s.kernel, shapes[s.output], 0 if i not in wrec else wrec[i].decoded_size,
                     0 if i not in wrec else wrec[i].encoded_size,
                     f"levels in place ({luts[i][0]}-bit)" if i in luts else "" if i not in wrec else wrec[i].codec,
                     i in wrec and wrec[i].codec != "raw", _macs(s, shapes)) for i, s in enumerate(steps)]
    gen = Writer(prefix, graph, steps, where, shapes, plan.offsets, wrec, records, ins, outs, plan.arena_bytes, scratch,
                  workspace)
    gen.luts = {i: (bits, levels, by_name[names[i] + "/levels"].offset) for i, (bits, levels) in luts.items()}
    files = {f"{prefix}.h": gen.header(), f"{prefix}.c": gen.source()}
    live = [sum(b.size for b in buffers if b.first <= i <= b.last) for i in range(len(steps))]
    peak = int(np.argmax(live)) if live else 0
    return CModel(prefix, files, plan.arena_bytes, scratch, io_bytes, data, records, layers, calls, ins, outs,
                  steps[peak].node if steps else "", live[peak] if live else 0)


def _plan(steps: list[_Step], where: dict[str, str], shapes, wrec, workspace: dict[int, int]):
    """The arena plan: activation groups alive from their first write to their last read, plus one
    slot per streamed tensor and the decoder state, each alive only during its step."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    size: dict[str, int] = {}
    for i, s in enumerate(steps):
        for x in s.inputs:
            g = where[x]
            last[g] = i
        g = where[s.output]
        first.setdefault(g, i)
        last[g] = max(last.get(g, i), i)
        size[g] = max(size.get(g, 0), int(np.prod(shapes[s.output])))
    buffers = [Buffer(g, size[g], first[g], last[g]) for g in first if g.startswith("a:")]
    scratch = 0
    for i, r in wrec.items():
        if r.codec != "raw":
            buffers.append(Buffer(f"w@{i}", r.decoded_size, i, i))
            buffers.append(Buffer(f"ws@{i}", workspace[i], i, i))
            scratch = max(scratch, r.decoded_size)
    plan = plan_memory(buffers, alignment=ALIGNMENT)
    verify_plan(buffers, plan)
    return plan, scratch, buffers


def _io(v, shapes) -> dict:
    q = v.quant                        # None: a bool mask (bytes 0 / 1) or token ids (int32, 4 bytes each)
    shape = shapes[v.name]
    ids = q is None and v.dtype != "bool"
    return {"name": v.name, "shape": list(shape), "size": int(np.prod(shape)) * (4 if ids else 1),
            "scale": 1.0 if q is None else float(q.scale[0]), "zero_point": 0 if q is None else int(q.zero_point[0]),
            "layout": "int32 ids, little-endian bytes" if ids else "NHWC" if len(shape) == 4 else "as the IR"}
