"""Import a PyTorch model into the edgecompile IR through `torch.export`.

Flow: ``model.eval()`` -> ``torch.export.export`` (non-strict) -> ``run_decompositions`` with
`op_table.decomposition_table()` (core ATen, a few composite ops kept whole) -> one walk over the
FX graph in which every node is

- forwarded (no-ops: clone, alias, detach, dropout) or dropped (runtime asserts);
- rejected if it draws random numbers (`torch.randn` in forward), which folding would freeze;
- **constant-folded** when all its inputs are constants (parameters, buffers, literals or earlier
  folded results): it is evaluated with torch and its result stays a `Const`, entering the IR only
  if something non-constant uses it. Position ids, default token-type ids, masks built from
  `arange`/`full` disappear this way;
- converted through `op_table.ATEN_TO_IR` otherwise.

Then small IR clean-ups run (`cleanup.py`), nodes get their final names from the module path
(`finalize`), and `verify` checks the result.

**Static shapes.** The graph is specialized to the example inputs' shapes (every reshape, expand
and slice is resolved to numbers); import again for another input shape. Integer indices stay
int64 as in torch.

Naming: parameters and buffers become constants named by their state_dict names
("features.0.weight"); graph inputs keep the names of the forward arguments; a node is named after
the module it ran in ("features.0"), or "module.op" when the module produced several nodes.
`meta["module"]` holds the module path, `meta["source"]` the user's "file.py:LINE" and
`meta["aten"]` the aten op it came from.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx.node import map_arg

from ..ir import Graph, Value, verify
from .cleanup import cleanup, finalize
from .factorized import tag_factorized
from .context import Const, ConvertContext, Unsupported, dtype_name
from .errors import FrontendError, UnsupportedNode, UnsupportedOpError
from .op_table import (ATEN_TO_IR, GETITEM, IDENTITY_OPS, IGNORED_OPS, decomposition_table, op_name,
                       supported_ops)
from .source import module_of, user_frame

log = logging.getLogger(__name__)
aten = torch.ops.aten

_FAILED = object()   # stands for the output of an unsupported node (its users are skipped)
_TRANSPOSES = {aten.permute.default, aten.t.default, aten.transpose.int}
_COPIES = {aten.clone.default, aten.contiguous.default}


@contextlib.contextmanager
def _quiet_torch():
    """Silences a deprecation warning raised inside torch.export itself (not actionable by users)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        yield


def import_model(model: torch.nn.Module, example_inputs: tuple, name: str | None = None) -> Graph:
    """Exports `model` with `torch.export` and converts it to an IR `Graph`.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is put in eval mode (dropout off, batch norm on running statistics).
    example_inputs : tuple of torch.Tensor
        Positional inputs of `forward`; the graph is specialized to their shapes and dtypes.
    name : str, optional
        Graph name (default: the model's class name).

    Raises
    ------
    UnsupportedOpError
        Some operators have no IR conversion (all of them are named, with source lines).
    FrontendError
        `torch.export` failed, or an input is not a tensor.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise FrontendError(f"example input {i} is a {type(x).__name__}, not a tensor; pass tensors only "
                                "(bake other arguments into the model)")
    model.eval()
    t0 = time.perf_counter()
    printed = io.StringIO()   # torch.export prints a failed trace's partial graph to stderr itself
    try:
        with torch.no_grad(), _quiet_torch(), contextlib.redirect_stderr(printed):
            ep = torch.export.export(model, example_inputs, strict=False)
    except Exception as e:  # torch.export raises many types; the CLI needs one line
        log.info("torch.export printed:\n%s", printed.getvalue())
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FrontendError(f"torch.export failed for {type(model).__name__}: {first}; make the model export "
                            "(no Python branch on tensor values: torch.cond) or pass a .pt2 you exported") from e
    sys.stderr.write(printed.getvalue())
    log.info("torch.export took %.2fs", time.perf_counter() - t0)
    graph = import_exported_program(ep, name or type(model).__name__)
    tag_factorized(graph, model)    # pre-set SVD / Tucker-2 / TT layers keep their structure
    return graph


def import_exported_program(ep: torch.export.ExportedProgram, name: str = "graph") -> Graph:
    """Converts an `ExportedProgram` (decomposed here to core ATen) to an IR `Graph`."""
    t0 = time.perf_counter()
    with _quiet_torch():
        ep = ep.run_decompositions(decomposition_table())
    t1 = time.perf_counter()
    graph = _Importer(ep, name).run()
    log.info("decompositions %.2fs, conversion %.2fs", t1 - t0, time.perf_counter() - t1)
    return graph


def load_exported_program(path: str | Path) -> torch.export.ExportedProgram:
    """A program saved with `torch.export.save`; `FrontendError` (one line) if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FrontendError(f"no such exported program: {path}")
    try:
        return torch.export.load(str(path))
    except Exception as e:
        raise FrontendError(f"cannot load {path} as a torch.export program: {str(e).splitlines()[0]}") from e


def load_pt2(path: str | Path, name: str | None = None) -> Graph:
    """Loads a program saved with `torch.export.save` and converts it."""
    return import_exported_program(load_exported_program(path), name or Path(path).stem)


class _Importer:
    """One walk over an exported program's FX graph (see the module docstring)."""

    def __init__(self, ep: torch.export.ExportedProgram, name: str):
        self.ep = ep
        self.graph = Graph(name)
        self.cx = ConvertContext(self.graph)
        self.env: dict[torch.fx.Node, object] = {}
        self.problems: list[UnsupportedNode] = []

    def run(self) -> Graph:
        specs = {s.arg.name: s for s in self.ep.graph_signature.input_specs}
        outputs = ()
        with torch.no_grad():
            for node in self.ep.graph.nodes:
                if node.op == "placeholder":
                    self._placeholder(node, specs[node.name])
                elif node.op == "call_function":
                    self._call(node)
                elif node.op == "output":
                    outputs = node.args[0]
                else:   # get_attr / call_module: control flow and other higher-order ops
                    self._fail(node, f"graph node kind {node.op}")
        if self.problems:
            raise UnsupportedOpError(self.problems, supported_ops())
        self._outputs(outputs)
        cleanup(self.graph)
        graph = finalize(self.graph)
        verify(graph)
        return graph

    # -- graph boundary -----------------------------------------------------------------------
    def _placeholder(self, node: torch.fx.Node, spec) -> None:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            t = self.ep.state_dict.get(spec.target)
            if t is None:
                t = self.ep.constants[spec.target]
            self.env[node] = Const(t.detach(), spec.target)
        elif spec.kind == InputKind.USER_INPUT:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                self.env[node] = val       # a Python value specialized by export
                return
            self.env[node] = self.graph.add_input(node.name, tuple(val.shape), dtype_name(val.dtype))
        else:
            self._fail(node, f"input kind {spec.kind.name}")

    def _outputs(self, outputs) -> None:
        out_specs = self.ep.graph_signature.output_specs
        for spec, arg in zip(out_specs, outputs):
            if spec.kind != OutputKind.USER_OUTPUT:
                continue        # buffer mutations: none in eval mode worth keeping
            r = self.env.get(arg) if isinstance(arg, torch.fx.Node) else arg
            if isinstance(r, Const):
                self.cx.name_hint = "output"
                r = self.cx.value(r)
            if not isinstance(r, Value):
                raise FrontendError(f"model output {spec.arg.name} is a {type(r).__name__}, not a tensor; "
                                    "return tensors only")
            if r in self.graph.inputs:
                # an identity the converters skipped (``return x.reshape(x.shape)``): the output
                # stays a node of its own, never the input itself (`ir.identity` keeps it so)
                self.cx.name_hint = "output"
                r = self.cx.emit("reshape", [r], shape=list(r.shape))
            self.graph.outputs.append(r)

    # -- one node ----------------------------------------------------------------------------
    def _call(self, node: torch.fx.Node) -> None:
        target = node.target
        if target is GETITEM:
            src = self.env[node.args[0]]
            item = _FAILED if src is _FAILED else src[node.args[1]]
            if item is None:
                self._fail(node.args[0], f"output {node.args[1]} is used")
                item = _FAILED
            self.env[node] = item
            return
        if target in IGNORED_OPS:
            self.env[node] = None
            return
        inputs = [self.env[n] for n in node.all_input_nodes]
        if any(v is _FAILED for v in inputs):
            # Downstream of a failure nothing converts, but an op the table lacks is still named,
            # so one error lists every op the model needs (a U-Net's upsample behind its failed
            # transposed conv).
            if target not in ATEN_TO_IR and target not in IDENTITY_OPS:
                self._fail(node)
            self.env[node] = _FAILED
            return
        if target in IDENTITY_OPS:
            src = self.env[node.args[0]]
            if target in _COPIES and isinstance(src, Const) and not src.tensor.is_contiguous():
                # a folded permute is a strided tensor; clone / contiguous lay it out again as torch
                # does, since a later `view` of it is valid only for that layout (Swin's relative
                # position bias: view(N, N, -1).permute(2, 0, 1).contiguous(), then a view)
                self._enter(node)
                src = self._fold(node)
            self.env[node] = src
            return
        self._enter(node)
        if _is_random(target) and target not in ATEN_TO_IR:
            self._fail(node, "random numbers drawn at run time")
            return
        if all(isinstance(v, Const) for v in inputs):
            self.env[node] = self._fold(node)
            return
        convert = ATEN_TO_IR.get(target)
        if convert is None:
            self._fail(node)
            return
        args, kwargs = map_arg((node.args, node.kwargs), self.env.__getitem__)
        try:
            result = convert(self.cx, *args, **kwargs)
        except Unsupported as e:
            self._fail(node, str(e))
            return
        self._check(node, result)
        self.env[node] = result

    def _enter(self, node: torch.fx.Node) -> None:
        """Sets the context's naming hint, example output and node meta for `node`."""
        path, _ = module_of(node)
        frame = user_frame(node.meta.get("stack_trace"))
        self.cx.name_hint = path or node.name
        self.cx.out = node.meta.get("val")
        self.cx.arg_vals = tuple(a.meta.get("val") if isinstance(a, torch.fx.Node) else None for a in node.args)
        meta = {"module": path, "aten": op_name(node.target)}
        if frame is not None:
            meta["source"] = frame.location
        self.cx.meta = meta

    def _fold(self, node: torch.fx.Node):
        """Evaluates an all-constant node with torch; the result stays a `Const`."""
        args, kwargs = map_arg((node.args, node.kwargs), lambda n: self.env[n].tensor)
        try:
            result = node.target(*args, **kwargs)
        except Exception as e:     # torch's own check on constants (a view of a strided tensor...)
            self._fail(node, f"constant folding failed: {str(e).strip().splitlines()[0]}")
            return _FAILED
        path = self.cx.meta["module"]
        name = f"{path}.{node.name}" if path else node.name
        if isinstance(result, torch.Tensor):
            src = self.env[node.args[0]] if _is_2d_transpose(node) else None
            return Const(result, name, transpose_of=src, folded=True)
        if isinstance(result, (tuple, list)):
            return tuple(Const(r, name, folded=True) if isinstance(r, torch.Tensor) else r for r in result)
        return result

    def _check(self, node: torch.fx.Node, result) -> None:
        """The converted value must have torch's shape and dtype (catches converter bugs early)."""
        val = node.meta.get("val")
        pairs = zip(result, val) if isinstance(result, tuple) and isinstance(val, (tuple, list)) \
            else [(result, val)]
        for r, v in pairs:
            if r is None or not isinstance(v, torch.Tensor) or not isinstance(r, (Value, Const)):
                continue
            got = (tuple(self.cx.shape(r)), self.cx.dtype(r))
            want = (tuple(int(d) for d in v.shape), dtype_name(v.dtype))
            if got != want:
                raise FrontendError(f"internal error converting {op_name(node.target)} ({node.name}): "
                                    f"got {got[1]}{list(got[0])}, torch gives {want[1]}{list(want[0])}; "
                                    "please report this with the model")

    def _fail(self, node: torch.fx.Node, reason: str = "") -> None:
        self.env[node] = _FAILED
        path, typ = module_of(node)
        module = f"{path} ({typ.rsplit('.', 1)[-1]})" if path else ""
        self.problems.append(UnsupportedNode(op_name(node.target), user_frame(node.meta.get("stack_trace")),
                                             reason, module))


def _is_2d_transpose(node: torch.fx.Node) -> bool:
    """permute(W, [1, 0]) / t(W) / transpose(W, 0, 1) of a 2-D tensor."""
    if node.target not in _TRANSPOSES or len(node.args[0].meta["val"].shape) != 2:
        return False
    if node.target == aten.permute.default:
        return [d % 2 for d in node.args[1]] == [1, 0]
    if node.target == aten.transpose.int:
        return {node.args[1] % 2, node.args[2] % 2} == {0, 1}
    return True


def _is_random(target) -> bool:
    """Ops that draw random numbers: folding them would freeze one draw into the model.

    (Converted ops with the tag, like attention's dropout, are taken in inference mode.)
    """
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags
