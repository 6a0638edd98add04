"""The IR's op set: one small table that the frontend, the executor, every pass and every backend share.

Semantics follow PyTorch (NCHW / NCL layouts, numpy broadcasting for binary ops). Each entry gives
the inputs (`?` marks an optional one that may be None), required attributes, and the meaning.
`verify()` checks arity and attributes against this table; `torch_executor.OP_IMPLS` must
implement every op here (a test holds the two together).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSchema:
    name: str
    inputs: tuple[str, ...]          # names; a trailing '?' marks optional, '*' variadic
    attrs: tuple[str, ...] = ()      # required attribute names
    doc: str = ""

    @property
    def min_inputs(self) -> int:
        return sum(1 for i in self.inputs if not i.endswith(("?", "*")))

    @property
    def max_inputs(self) -> int | None:
        return None if any(i.endswith("*") for i in self.inputs) else len(self.inputs)


def _s(name, inputs, attrs=(), doc=""):
    return OpSchema(name, tuple(inputs), tuple(attrs), doc)


_UNARY = {
    "relu": "max(x, 0)",
    "sigmoid": "1 / (1 + exp(-x))",
    "tanh": "tanh(x)",
    "silu": "x * sigmoid(x)",
    "hardswish": "x * relu6(x + 3) / 6",
    "hardsigmoid": "relu6(x + 3) / 6",
    "exp": "exp(x)",
    "log": "log(x)",
    "sqrt": "sqrt(x)",
    "rsqrt": "1 / sqrt(x)",
    "neg": "-x",
    "abs": "|x|",
    "erf": "erf(x)",
    "log1p": "log(1 + x), accurate for tiny x",
}
_BINARY = {
    "add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b", "pow": "a ** b",
    "maximum": "max(a, b)", "minimum": "min(a, b)",
    "eq": "a == b (bool)", "lt": "a < b (bool)", "gt": "a > b (bool)",
}

OPS: dict[str, OpSchema] = {}
for _n, _d in _UNARY.items():
    OPS[_n] = _s(_n, ["x"], doc=_d)
for _n, _d in _BINARY.items():
    OPS[_n] = _s(_n, ["a", "b"], doc=_d + ", numpy broadcasting")

for _schema in [
    _s("gelu", ["x"], ["approximate"], "GELU; approximate is 'none' (erf) or 'tanh'"),
    _s("softplus", ["x"], ["beta", "threshold"],
       "log(1 + exp(beta x)) / beta, or x where beta x > threshold (torch.nn.functional.softplus)"),
    _s("clip", ["x"], ["min", "max"], "clamp(x, min, max); relu6 is clip(0, 6); None = unbounded"),
    _s("softmax", ["x"], ["axis"], "softmax along axis"),
    _s("log_softmax", ["x"], ["axis"], "log-softmax along axis"),
    _s("linear", ["x", "weight", "bias?"], [], "x @ weight.T + bias; weight [out, in], on the last axis"),
    _s("matmul", ["a", "b"], [], "batched matrix product with broadcasting (torch.matmul)"),
    _s("conv", ["x", "weight", "bias?"], ["stride", "padding", "dilation", "groups"],
       "1-D or 2-D convolution, NC(H)W; weight [out, in/groups, *kernel]; padding symmetric per axis"),
    _s("conv_transpose", ["x", "weight", "bias?"], ["stride", "padding", "output_padding", "dilation", "groups"],
       "1-D or 2-D transposed convolution (torch's conv_transpose), NC(H)W; weight [in, out/groups, *kernel]; "
       "output (in-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1 per axis"),
    _s("resize", ["x"], ["mode", "size", "scales", "align_corners"],
       "1-D or 2-D upsampling of NC(H)W to spatial `size`: mode 'nearest' (source floor(dst * scale)), "
       "'nearest_exact' (floor((dst + 0.5) * scale)) or 'linear' (bilinear in 2-D; half-pixel centres, or "
       "corner-aligned with align_corners); scales (one "
       "per spatial axis, or None) are torch's scale_factors, which set the coordinate mapping when given"),
    _s("batch_norm", ["x", "mean", "var", "weight?", "bias?"], ["eps"],
       "inference batch norm over axis 1"),
    _s("layer_norm", ["x", "weight?", "bias?"], ["normalized_ndim", "eps"],
       "layer norm over the last normalized_ndim axes"),
    _s("group_norm", ["x", "weight?", "bias?"], ["num_groups", "eps"],
       "group norm: axis 1 split into num_groups groups, each normalized over its channels and all "
       "later axes; then per-channel weight [C] and bias [C]"),
    _s("max_pool", ["x"], ["kernel", "stride", "padding", "dilation", "ceil_mode"], "max pooling, 1-D or 2-D"),
    _s("avg_pool", ["x"], ["kernel", "stride", "padding", "ceil_mode", "count_include_pad"],
       "average pooling, 1-D or 2-D"),
    _s("mean", ["x"], ["axes", "keepdims"], "mean over axes"),
    _s("sum", ["x"], ["axes", "keepdims"], "sum over axes"),
    _s("reduce_max", ["x"], ["axes", "keepdims"], "max over axes"),
    _s("reshape", ["x"], ["shape"], "reshape to a static shape"),
    _s("transpose", ["x"], ["perm"], "permute axes"),
    _s("slice", ["x"], ["axis", "start", "end", "step"], "x[start:end:step] along axis (resolved, non-negative)"),
    _s("concat", ["xs*"], ["axis"], "concatenate along axis"),
    _s("pad", ["x"], ["pads", "value"], "constant pad; pads = [begin_0..begin_n, end_0..end_n] (ONNX order)"),
    _s("gather", ["data", "indices"], ["axis"], "take along axis (embedding lookup is gather axis 0)"),
    _s("expand", ["x"], ["shape"], "broadcast to a static shape"),
    _s("where", ["cond", "a", "b"], [], "cond ? a : b with broadcasting"),
    _s("cast", ["x"], ["dtype"], "convert element type"),
    _s("cumsum", ["x"], ["axis"], "running sum along axis, in x's dtype (torch.cumsum after a cast)"),
]:
    OPS[_schema.name] = _schema

#: Ops whose weight input (index 1, or 0 for gather) is a compressible parameter; the report,
#: the passes and fine-tuning treat these as "layers" (`weight_input`).
WEIGHT_OPS = {"linear": 1, "conv": 1, "gather": 0, "matmul": 1, "conv_transpose": 1}


def weight_index(node) -> int | None:
    """Which input of `node` is its layer weight (`WEIGHT_OPS`; a gather only as a row lookup,
    axis 0: an embedding), or None for a node that is not a layer."""
    if node.op == "gather" and node.attrs.get("axis") != 0:
        return None
    return WEIGHT_OPS.get(node.op)


def weight_input(node):
    """The constant weight of a layer node (a `Value`), or None: the one definition of "a layer's
    weight" that the report, the passes and fine-tuning share. An activation @ activation matmul
    (attention) has no constant weight, so it is no layer."""
    i = weight_index(node)
    w = node.input(i) if i is not None else None
    return w if w is not None and w.is_const else None
