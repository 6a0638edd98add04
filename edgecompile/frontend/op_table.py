"""THE op table: every aten overload the frontend accepts, mapped to the converter that emits IR.

A converter is called as ``convert(cx, *args, **kwargs)`` with the FX node's arguments (FX nodes
replaced by IR values / constants, see `context.py`) and returns the IR value (or a tuple of them
for multi-output ops). Nodes whose inputs are all constants never reach the table: the importer
evaluates them with torch (constant folding), whatever the op. `IDENTITY_OPS` are dropped by
forwarding their input; `IGNORED_OPS` (runtime asserts) produce nothing.

The decomposition table (`decomposition_table`) keeps a few composite ops whole because they map
1:1 onto IR ops and their core-ATen decompositions are worse to import:

- `linear`: decomposes to permute + addmm, and, for inputs of rank > 2, view + mm + view;
- `matmul`: decomposes to expand + view + bmm + view;
- `scaled_dot_product_attention`: decomposes to a math form plus a NaN guard for fully masked rows
  (`eq(-inf)`, `logical_not`, `any`, `where`) that has no place in an edge graph;
- `silu`, `hardswish`, `hardsigmoid`: IR ops of their own (int8 kernels exist for them);
- `upsample_nearest1d`, `upsample_linear1d`, `_upsample_nearest_exact{1,2}d`: decompose to arange /
  index arithmetic (gathers, clamps, lerps), where the `resize` IR op maps 1:1 to ONNX Resize and
  TFLite's RESIZE_* kernels (`upsample_nearest2d` / `upsample_bilinear2d.vec` are core ATen);
- bicubic, trilinear, 3-D nearest and antialiased upsampling: no IR op, and their decompositions
  fail later on an index op that says nothing of the cause; kept whole, the error names them.
- `softplus` (and so `mish`, which decomposes to ``x * tanh(softplus(x))``): its decomposition,
  ``where(beta x > threshold, x, log1p(exp(beta x)) / beta)``, puts `exp` of the input in an int8
  tensor, whose range (e^max) leaves no resolution for the small values that matter; whole, it is
  one op computed in float between int8 values.

The decomposed forms are converted too (`addmm`/`mm` with a transposed weight become `linear`),
so programs decomposed elsewhere import the same way.
"""

from __future__ import annotations

import operator

import torch

from . import convert_elementwise as ew
from . import convert_nn as nn
from . import convert_shape as sh

aten = torch.ops.aten

ATEN_TO_IR = {
    # activations
    **{getattr(aten, op).default: ew.unary(op) for op in ew.UNARY},
    aten.gelu.default: ew.gelu,
    aten.hardtanh.default: ew.hardtanh,
    aten.relu6.default: ew.relu6,
    aten.clamp.default: ew.clip,
    aten.clamp.Tensor: ew.clip,
    aten.clamp_min.default: lambda cx, x, lo: ew.clip(cx, x, lo, None),
    aten.clamp_max.default: lambda cx, x, hi: ew.clip(cx, x, None, hi),
    aten.softplus.default: ew.softplus,
    aten.leaky_relu.default: ew.leaky_relu,
    aten.reciprocal.default: ew.reciprocal,
    aten._softmax.default: nn.softmax("softmax"),
    aten.softmax.int: nn.softmax("softmax"),
    aten._log_softmax.default: nn.softmax("log_softmax"),
    aten.log_softmax.int: nn.softmax("log_softmax"),
    # arithmetic (tensor and scalar overloads share a converter)
    aten.add.Tensor: ew.binary("add"), aten.add.Scalar: ew.binary("add"),
    aten.sub.Tensor: ew.binary("sub"), aten.sub.Scalar: ew.binary("sub"),
    aten.mul.Tensor: ew.binary("mul"), aten.mul.Scalar: ew.binary("mul"),
    aten.div.Tensor: ew.binary("div"), aten.div.Scalar: ew.binary("div"),
    aten.div.Tensor_mode: ew.binary("div"),
    aten.pow.Tensor_Scalar: ew.binary("pow"), aten.pow.Tensor_Tensor: ew.binary("pow"),
    aten.pow.Scalar: ew.binary("pow"),
    aten.maximum.default: ew.binary("maximum"), aten.minimum.default: ew.binary("minimum"),
    aten.rsub.Scalar: ew.rsub, aten.rsub.Tensor: ew.rsub,
    # comparisons and logic
    **{getattr(aten, op).Tensor: ew.compare(op) for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{getattr(aten, op).Scalar: ew.compare(op) for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    aten.logical_not.default: ew.logical_not,
    aten.bitwise_not.default: ew.bitwise_not,
    aten.logical_and.default: ew.logical("and"), aten.bitwise_and.Tensor: ew.logical("and"),
    aten.logical_or.default: ew.logical("or"), aten.bitwise_or.Tensor: ew.logical("or"),
    aten.where.self: ew.where,
    aten.masked_fill.Scalar: ew.masked_fill, aten.masked_fill.Tensor: ew.masked_fill,
    aten.any.dim: nn.any_, aten.any.dims: nn.any_, aten.any.default: nn.any_,
    # dtype and constants shaped like a tensor
    aten._to_copy.default: ew.to_copy, aten.to.dtype: ew.to_copy,
    aten.type_as.default: ew.type_as,
    aten.zeros_like.default: ew.like(0), aten.ones_like.default: ew.like(1),
    aten.empty_like.default: ew.like(0), aten.full_like.default: ew.like(None),
    aten.new_zeros.default: ew.like(0), aten.new_ones.default: ew.like(1),
    aten.new_empty.default: ew.like(0), aten.new_full.default: ew.like(None),
    aten.fill.Scalar: ew.fill,
    # layers
    aten.convolution.default: nn.convolution,
    aten.upsample_nearest2d.default: nn.upsample(2, "nearest", "default"),
    aten.upsample_nearest2d.vec: nn.upsample(2, "nearest", "vec"),
    aten.upsample_bilinear2d.default: nn.upsample(2, "linear", "default"),
    aten.upsample_bilinear2d.vec: nn.upsample(2, "linear", "vec"),
    aten.upsample_nearest1d.default: nn.upsample(1, "nearest", "default"),
    aten.upsample_nearest1d.vec: nn.upsample(1, "nearest", "vec"),
    aten.upsample_linear1d.default: nn.upsample(1, "linear", "default"),
    aten.upsample_linear1d.vec: nn.upsample(1, "linear", "vec"),
    aten._upsample_nearest_exact2d.default: nn.upsample(2, "nearest_exact", "default"),
    aten._upsample_nearest_exact2d.vec: nn.upsample(2, "nearest_exact", "vec"),
    aten._upsample_nearest_exact1d.default: nn.upsample(1, "nearest_exact", "default"),
    aten._upsample_nearest_exact1d.vec: nn.upsample(1, "nearest_exact", "vec"),
    aten._native_batch_norm_legit_no_training.default: nn.batch_norm_no_training,
    aten.native_layer_norm.default: nn.native_layer_norm,
    aten.native_group_norm.default: nn.native_group_norm,
    aten.max_pool2d_with_indices.default: nn.max_pool(2),
    aten.max_pool2d.default: nn.max_pool(2),
    aten.max_pool1d.default: nn.max_pool(1),
    aten.avg_pool2d.default: nn.avg_pool(2),
    aten.avg_pool1d.default: nn.avg_pool(1),
    aten._adaptive_avg_pool2d.default: nn.adaptive_pool(2, "avg"),
    aten.adaptive_avg_pool2d.default: nn.adaptive_pool(2, "avg"),
    aten.adaptive_avg_pool1d.default: nn.adaptive_pool(1, "avg"),
    aten.adaptive_max_pool2d.default: nn.adaptive_pool(2, "max"),
    aten.adaptive_max_pool1d.default: nn.adaptive_pool(1, "max"),
    aten.embedding.default: sh.embedding,
    aten.linear.default: nn.linear,
    aten.addmm.default: nn.addmm,
    aten.mm.default: nn.mm,
    aten.bmm.default: nn.matmul,
    aten.matmul.default: nn.matmul,
    aten.scaled_dot_product_attention.default: nn.sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu.default: nn.sdpa_flash_cpu,
    # reductions
    aten.mean.dim: nn.reduce("mean"), aten.mean.default: nn.reduce_all("mean"),
    aten.sum.dim_IntList: nn.reduce("sum"), aten.sum.default: nn.reduce_all("sum"),
    aten.amax.default: nn.reduce("reduce_max"), aten.max.dim: nn.reduce("reduce_max"),
    # layout
    **{op: sh.view for op in (aten.view.default, aten._unsafe_view.default, aten.reshape.default,
                              aten.flatten.using_ints, aten.unsqueeze.default, aten.squeeze.default,
                              aten.squeeze.dim, aten.squeeze.dims)},
    aten.permute.default: sh.permute,
    aten.transpose.int: sh.transpose,
    aten.t.default: sh.t,
    aten.expand.default: sh.expand,
    aten.as_strided.default: sh.as_strided,
    aten.slice.Tensor: sh.slice_,
    aten.select.int: sh.select,
    aten.split_with_sizes.default: sh.split_with_sizes,
    aten.split.Tensor: sh.split,
    aten.chunk.default: sh.chunk,
    aten.unbind.int: sh.unbind,
    aten.cat.default: sh.cat,
    aten.repeat.default: sh.repeat,
    aten.constant_pad_nd.default: sh.constant_pad_nd,
    aten.index.Tensor: sh.index,
    aten.index_select.default: sh.index_select,
    aten.cumsum.default: sh.cumsum,
    aten.gather.default: sh.gather_elements,
}

IDENTITY_OPS = {
    aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default,
    aten.contiguous.default, aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
}

IGNORED_OPS = {
    aten._assert_tensor_metadata.default, aten._assert_async.msg, aten._assert_scalar.default,
    aten.sym_constrain_range.default, aten.sym_constrain_range_for_size.default,
    aten._functional_assert_async.msg,
}

# Python-level callables that appear in FX graphs next to aten ops.
GETITEM = operator.getitem

# Composite ops kept whole through `run_decompositions` (reasons in the module docstring).
KEEP_UNDECOMPOSED = (
    aten.linear.default, aten.matmul.default, aten.scaled_dot_product_attention.default,
    aten.silu.default, aten.hardswish.default, aten.hardsigmoid.default, aten.softplus.default,
    aten.upsample_nearest1d.default, aten.upsample_nearest1d.vec,
    aten.upsample_linear1d.default, aten.upsample_linear1d.vec,
    aten._upsample_nearest_exact1d.default, aten._upsample_nearest_exact1d.vec,
    aten._upsample_nearest_exact2d.default, aten._upsample_nearest_exact2d.vec,
    aten.upsample_bicubic2d.vec, aten.upsample_trilinear3d.vec, aten.upsample_nearest3d.vec,
    aten.upsample_nearest3d.default, aten._upsample_nearest_exact3d.vec, aten._upsample_nearest_exact3d.default,
    aten._upsample_bilinear2d_aa.vec, aten._upsample_bicubic2d_aa.vec,
)


def decomposition_table() -> dict:
    """Core-ATen decompositions minus `KEEP_UNDECOMPOSED`, for `ExportedProgram.run_decompositions`."""
    table = torch.export.default_decompositions()
    for op in KEEP_UNDECOMPOSED:
        if op in table:
            del table[op]
    return table


def op_name(target) -> str:
    """'aten.add.Tensor' for an overload; the packet name for other callables."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def supported_ops() -> list[str]:
    """Sorted op packet names the frontend converts (e.g. 'aten.addmm'), for messages and the CLI."""
    names = {op_name(t).rsplit(".", 1)[0] for t in ATEN_TO_IR}
    return sorted(names | {op_name(t).rsplit(".", 1)[0] for t in IDENTITY_OPS})
