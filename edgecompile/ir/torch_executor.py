"""Runs an IR graph with torch ops; exposes its weights as trainable parameters.

The executor is the numerical reference for every pass (tests compare a graph before and after
a pass through it) and the trainable form for fine-tuning: each `linear`, `conv` and embedding
(`gather` of a constant table on axis 0) whose weight is a float constant becomes a real
`nn.Linear` / `nn.Conv1d` / `nn.Conv2d` / `nn.Embedding` submodule, so optimizers that hook layers
(FNGD, K-FAC) see ordinary layers, factorized layers included (they are chains of these). Other
float tensors are `nn.Parameter`s; scalars, batch-norm statistics and integer constants are buffers. `write_back` copies trained
weights into the graph.

Quantization: constants stored as integers are dequantized (fixed buffers); activations whose
value carries `quant` are fake-quantized when `fake_quant` is on (the int8 deployment's numerics);
the input of a layer marked ``meta["arith"] == "int8-dynamic"`` is quantized at run time, per
tensor or per row as ``graph.meta["quant"]["dynamic_per"]`` says (dynamic-range int8).
With `weight_fake_quant_bits` set, float layer weights are fake-quantized per output channel
(symmetric) with a straight-through gradient: quantization-aware fine-tuning.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from .graph import Graph, Node, Value
from .torch_ops import TORCH_DTYPES, dynamic_fake_quant, fake_quant, run_op, to_torch


def _key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _fq_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization (axis 0) with a straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
    return fake_quant(w, amax / qmax, torch.zeros_like(amax), -qmax, qmax, axis=0)


class QATMixin:
    """Applies `_fq_weight` to the weight in forward when `qat_bits` is set."""

    qat_bits: int | None = None

    def _w(self):
        return self.weight if self.qat_bits is None else _fq_weight(self.weight, self.qat_bits)


class IRLinear(QATMixin, nn.Linear):
    def forward(self, x):
        return nn.functional.linear(x, self._w(), self.bias)


class IRConv1d(QATMixin, nn.Conv1d):
    def forward(self, x):
        return self._conv_forward(x, self._w(), self.bias)


class IRConv2d(QATMixin, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self._w(), self.bias)


class IREmbedding(QATMixin, nn.Embedding):
    def forward(self, idx):
        return nn.functional.embedding(idx, self._w())


def _float_const(v: Value | None) -> bool:
    return v is not None and v.is_const and v.quant is None and v.data.dtype.kind == "f"


def _trainable(v: Value) -> bool:
    """Float tensors that are model weights: not scalars (attention scale, activation constants) and
    not batch-norm running statistics."""
    if not _float_const(v) or v.data.size <= 1:
        return False
    return not any(node.op == "batch_norm" and i in (1, 2) for node, i in v.uses)


class TorchExecutor(nn.Module):
    """An `nn.Module` that evaluates `graph`.

    Parameters
    ----------
    graph : Graph
        The graph to run; it is not copied (call `write_back` after training to update it).
    fake_quant : bool
        Fake-quantize activations that carry quantization parameters.
    weight_fake_quant_bits : int or None
        If set, fake-quantize float layer weights per channel with this many bits (QAT).
    """

    def __init__(self, graph: Graph, fake_quant: bool = True, weight_fake_quant_bits: int | None = None):
        super().__init__()
        self.graph = graph
        self.fake_quant = fake_quant
        self.layers = nn.ModuleDict()
        self.params = nn.ParameterDict()
        self._layer_of: dict[str, str] = {}        # node name -> layer key
        self._const_src: dict[str, tuple[str, str]] = {}  # const name -> (kind, key[.attr])
        # node name -> callback given the node's (first) input as the node sees it (a gather's
        # indices); statistics passes (passes/gptq.py) read layer inputs this way
        self.observers: dict[str, object] = {}
        owner = self._layer_owners(graph)
        for node in graph.nodes:
            if node.name in owner:
                self._make_layer(node, weight_fake_quant_bits)
        for name, v in graph.consts.items():
            if name in self._const_src:
                continue
            key = "c_" + _key(name)
            t = to_torch(v.real() if v.quant is not None else v.data)
            if _trainable(v):
                self.params[key] = nn.Parameter(t.clone())
                self._const_src[name] = ("param", key)
            else:
                self.register_buffer(key, t.clone(), persistent=False)
                self._const_src[name] = ("buffer", key)

    # -- construction ---------------------------------------------------------------------
    @staticmethod
    def _layer_owners(graph: Graph) -> set[str]:
        """Nodes that get an nn layer: weight and bias used by this node alone, float, not shared."""
        owners = set()
        for node in graph.nodes:
            if node.op in ("linear", "conv"):
                w, b = node.input(1), node.input(2)
            elif node.op == "gather" and node.attrs.get("axis") == 0:
                w, b = node.input(0), None
                if w is None or w.shape is None or len(w.shape) != 2:
                    continue
            else:
                continue
            if not _float_const(w) or len(w.uses) != 1:
                continue
            if b is not None and (not _float_const(b) or len(b.uses) != 1):
                continue
            owners.add(node.name)
        return owners

    def _make_layer(self, node: Node, bits: int | None) -> None:
        w = node.input(0) if node.op == "gather" else node.input(1)
        b = node.input(2) if node.op != "gather" else None
        wt = to_torch(w.data).clone()
        if node.op == "linear":
            layer = IRLinear(wt.shape[1], wt.shape[0], bias=b is not None)
        elif node.op == "gather":
            layer = IREmbedding(wt.shape[0], wt.shape[1])
        else:
            cls = IRConv1d if wt.dim() == 3 else IRConv2d
            a = node.attrs
            layer = cls(wt.shape[1] * a["groups"], wt.shape[0], tuple(wt.shape[2:]), stride=a["stride"],
                        padding=a["padding"], dilation=a["dilation"], groups=a["groups"], bias=b is not None)
        layer.qat_bits = bits
        with torch.no_grad():
            layer.weight.copy_(wt)
            if b is not None:
                layer.bias.copy_(to_torch(b.data))
        key = f"n{len(self.layers)}_{_key(node.name)}"[:120]
        self.layers[key] = layer
        self._layer_of[node.name] = key
        self._const_src[w.name] = ("layer", key + ".weight")
        if b is not None:
            self._const_src[b.name] = ("layer", key + ".bias")

    # -- running --------------------------------------------------------------------------
    def const_tensor(self, name: str) -> torch.Tensor:
        kind, key = self._const_src[name]
        if kind == "param":
            return self.params[key]
        if kind == "buffer":
            return getattr(self, key)
        layer_key, attr = key.rsplit(".", 1)
        return getattr(self.layers[layer_key], attr)

    def _quantize_act(self, v: Value, t: torch.Tensor) -> torch.Tensor:
        q = v.quant
        if q is None or not self.fake_quant or not t.is_floating_point():
            return t
        lo, hi = q.qrange()
        scale = torch.as_tensor(q.scale, device=t.device)
        zp = torch.as_tensor(q.zero_point, device=t.device).float()
        return fake_quant(t, scale, zp, lo, hi, q.axis)

    def forward(self, *inputs: torch.Tensor):
        """Runs the graph. Inputs must match the graph's shapes, except that the batch (axis 0) may
        differ from the graph's static batch B: smaller batches are zero-padded to B, larger ones
        run in chunks of B (padded at the end) and the outputs are cut back. This is exact for
        graphs whose samples are independent along axis 0 — every inference model we import."""
        g = self.graph
        if len(inputs) != len(g.inputs):
            raise ValueError(f"graph {g.name!r} takes {len(g.inputs)} inputs, got {len(inputs)}")
        for v, t in zip(g.inputs, inputs):
            if v.shape is not None and (t.dim() != len(v.shape) or tuple(t.shape[1:]) != v.shape[1:]):
                raise ValueError(f"input {v.name!r}: expected shape {list(v.shape)}, got {list(t.shape)}")
        b = g.inputs[0].shape[0] if g.inputs and g.inputs[0].shape else None
        n = inputs[0].shape[0] if inputs else None
        if b is None or n == b:
            return self._run(inputs)
        pad = (-n) % b
        if pad:
            inputs = tuple(torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))]) for t in inputs)
        outs = [self._run(tuple(t[i:i + b] for t in inputs)) for i in range(0, n + pad, b)]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat([o[k] for o in outs])[:n] for k in range(len(outs[0])))
        return torch.cat(outs)[:n]

    def _dynamic(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        """The run-time quantized input of a dynamic-range int8 layer (else `x` unchanged)."""
        if not self.fake_quant or node.meta.get("arith") != "int8-dynamic" or not x.is_floating_point():
            return x
        per = (self.graph.meta.get("quant") or {}).get("dynamic_per") or "tensor"
        return dynamic_fake_quant(x, "sample" if per == "row" and node.op == "conv" else per)

    def _run(self, inputs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        g = self.graph
        env: dict[int, torch.Tensor] = {}
        for v, t in zip(g.inputs, inputs):
            env[id(v)] = self._quantize_act(v, t.to(TORCH_DTYPES[v.dtype]))
        for node in g.nodes:
            key = self._layer_of.get(node.name)
            observe = self.observers.get(node.name)
            if key is not None:
                x = env[id(node.input(1) if node.op == "gather" else node.input(0))]
                x = x.long() if node.op == "gather" else self._dynamic(node, x)
                if observe is not None:
                    observe(x)
                out = self.layers[key](x)
            else:
                args = [None if v is None else (env[id(v)] if id(v) in env else self.const_tensor(v.name))
                        for v in node.inputs]
                if args:
                    args[0] = self._dynamic(node, args[0])
                    if observe is not None:     # a gather's statistics are its indices
                        observe(args[1] if node.op == "gather" else args[0])
                out = run_op(node.op, args, node.attrs)
            env[id(node.output)] = self._quantize_act(node.output, out)
        outs = tuple(env[id(v)] if id(v) in env else self.const_tensor(v.name) for v in g.outputs)
        return outs[0] if len(outs) == 1 else outs

    # -- training support -----------------------------------------------------------------
    def layer_for_node(self, node_name: str) -> nn.Module | None:
        key = self._layer_of.get(node_name)
        return None if key is None else self.layers[key]

    def parameter_name(self, const_name: str) -> str | None:
        """The `named_parameters()` name of a graph constant, if it is trainable."""
        kind, key = self._const_src.get(const_name, ("", ""))
        if kind == "layer":
            return "layers." + key
        if kind == "param":
            return "params." + key
        return None

    @torch.no_grad()
    def write_back(self) -> None:
        """Copies the (trained) parameters back into the graph's float constants."""
        for name, (kind, _) in self._const_src.items():
            if kind == "buffer":
                continue
            v = self.graph.consts[name]
            v.data = self.const_tensor(name).detach().cpu().numpy().astype(v.data.dtype, copy=True)


def run_graph(graph: Graph, *inputs: np.ndarray | torch.Tensor, fake_quant: bool = True):
    """Convenience: evaluates `graph` on numpy or torch inputs, returns numpy output(s)."""
    ex = TorchExecutor(graph, fake_quant=fake_quant).eval()
    with torch.no_grad():
        ts = [torch.as_tensor(x) for x in inputs]
        out = ex(*ts)
    if isinstance(out, tuple):
        return tuple(o.numpy() for o in out)
    return out.numpy()
