"""Torch implementations of every IR op (the numerical meaning of `ir.ops.OPS`).

Each function takes the node's input tensors (None for an absent optional input) and its
attributes, and returns one tensor. Used by the executor and, on meta tensors, by shape inference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TORCH_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
NUMPY_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}


def _axes(attrs) -> list[int]:
    return list(attrs["axes"])


def _pool_args(attrs, nd):
    k, s, p = attrs["kernel"], attrs["stride"], attrs["padding"]
    assert len(k) == nd
    return k, s, p


def _max_pool(x, attrs):
    nd = x.dim() - 2
    k, s, p = _pool_args(attrs, nd)
    fn = F.max_pool1d if nd == 1 else F.max_pool2d
    return fn(x, k, s, p, attrs["dilation"], attrs["ceil_mode"])


def _avg_pool(x, attrs):
    nd = x.dim() - 2
    k, s, p = _pool_args(attrs, nd)
    fn = F.avg_pool1d if nd == 1 else F.avg_pool2d
    return fn(x, k, s, p, attrs["ceil_mode"], attrs["count_include_pad"])


def _conv(x, w, b, attrs):
    fn = F.conv1d if w.dim() == 3 else F.conv2d
    return fn(x, w, b, attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"])


def _conv_transpose(x, w, b, attrs):
    fn = F.conv_transpose1d if w.dim() == 3 else F.conv_transpose2d
    return fn(x, w, b, attrs["stride"], attrs["padding"], attrs["output_padding"], attrs["groups"],
              attrs["dilation"])


def _resize(x, attrs):
    """torch's upsample kernels with the node's output size and (optional) scale factors."""
    size, nd = [int(s) for s in attrs["size"]], x.dim() - 2
    scales = list(attrs["scales"]) if attrs["scales"] is not None else [None] * nd
    up = torch.ops.aten
    if attrs["mode"] == "nearest":
        fn = up.upsample_nearest1d.default if nd == 1 else up.upsample_nearest2d.default
        return fn(x, size, *scales)
    if attrs["mode"] == "nearest_exact":
        fn = up._upsample_nearest_exact1d.default if nd == 1 else up._upsample_nearest_exact2d.default
        return fn(x, size, *scales)
    fn = up.upsample_linear1d.default if nd == 1 else up.upsample_bilinear2d.default
    return fn(x, size, bool(attrs["align_corners"]), *scales)


def _pad(x, attrs):
    pads, n = attrs["pads"], x.dim()
    # ONNX order [b0..bn-1, e0..en-1] -> torch order (last axis first: (b_last, e_last, ...))
    torch_pads = []
    for axis in reversed(range(n)):
        torch_pads += [pads[axis], pads[axis + n]]
    return F.pad(x, torch_pads, value=attrs["value"])


def _layer_norm(x, w, b, attrs):
    shape = x.shape[-attrs["normalized_ndim"]:]
    return F.layer_norm(x, shape, w, b, attrs["eps"])


def _group_norm(x, w, b, attrs):
    return F.group_norm(x, attrs["num_groups"], w, b, attrs["eps"])


def _batch_norm(x, mean, var, w, b, attrs):
    return F.batch_norm(x, mean, var, w, b, False, 0.0, attrs["eps"])


def _slice(x, attrs):
    idx = [slice(None)] * x.dim()
    idx[attrs["axis"]] = slice(attrs["start"], attrs["end"], attrs["step"])
    return x[tuple(idx)]


def _clip(x, attrs):
    return torch.clamp(x, attrs["min"], attrs["max"])


def _gather(data, idx, attrs):
    axis = attrs["axis"]
    idx = idx.long()
    if axis == 0 and data.dim() == 2:
        return F.embedding(idx, data)
    return torch.index_select(data, axis, idx.reshape(-1)).reshape(
        data.shape[:axis] + idx.shape + data.shape[axis + 1:])


OP_IMPLS = {
    "relu": lambda a, _: torch.relu(a[0]),
    "sigmoid": lambda a, _: torch.sigmoid(a[0]),
    "tanh": lambda a, _: torch.tanh(a[0]),
    "silu": lambda a, _: F.silu(a[0]),
    "hardswish": lambda a, _: F.hardswish(a[0]),
    "hardsigmoid": lambda a, _: F.hardsigmoid(a[0]),
    "exp": lambda a, _: torch.exp(a[0]),
    "log": lambda a, _: torch.log(a[0]),
    "sqrt": lambda a, _: _sqrt(a[0]),
    "rsqrt": lambda a, _: torch.rsqrt(a[0]),
    "neg": lambda a, _: torch.neg(a[0]),
    "abs": lambda a, _: torch.abs(a[0]),
    "erf": lambda a, _: torch.erf(a[0]),
    "log1p": lambda a, _: torch.log1p(a[0]),
    "cumsum": lambda a, at: torch.cumsum(a[0], at["axis"], dtype=a[0].dtype),
    "softplus": lambda a, at: F.softplus(a[0], at["beta"], at["threshold"]),
    "add": lambda a, _: a[0] + a[1],
    "sub": lambda a, _: a[0] - a[1],
    "mul": lambda a, _: a[0] * a[1],
    "div": lambda a, _: a[0] / a[1],
    "pow": lambda a, _: torch.pow(a[0], a[1]),
    "maximum": lambda a, _: torch.maximum(a[0], a[1]),
    "minimum": lambda a, _: torch.minimum(a[0], a[1]),
    "eq": lambda a, _: a[0] == a[1],
    "lt": lambda a, _: a[0] < a[1],
    "gt": lambda a, _: a[0] > a[1],
    "gelu": lambda a, at: F.gelu(a[0], approximate=at["approximate"]),
    "clip": lambda a, at: _clip(a[0], at),
    "softmax": lambda a, at: torch.softmax(a[0], at["axis"]),
    "log_softmax": lambda a, at: torch.log_softmax(a[0], at["axis"]),
    "linear": lambda a, _: F.linear(a[0], a[1], a[2] if len(a) > 2 else None),
    "matmul": lambda a, _: torch.matmul(a[0], a[1]),
    "conv": lambda a, at: _conv(a[0], a[1], a[2] if len(a) > 2 else None, at),
    "conv_transpose": lambda a, at: _conv_transpose(a[0], a[1], a[2] if len(a) > 2 else None, at),
    "resize": lambda a, at: _resize(a[0], at),
    "batch_norm": lambda a, at: _batch_norm(*(list(a) + [None] * (5 - len(a))), at),
    "layer_norm": lambda a, at: _layer_norm(*(list(a) + [None] * (3 - len(a))), at),
    "group_norm": lambda a, at: _group_norm(*(list(a) + [None] * (3 - len(a))), at),
    "max_pool": lambda a, at: _max_pool(a[0], at),
    "avg_pool": lambda a, at: _avg_pool(a[0], at),
    "mean": lambda a, at: torch.mean(a[0], _axes(at), keepdim=at["keepdims"]),
    "sum": lambda a, at: torch.sum(a[0], _axes(at), keepdim=at["keepdims"]),
    "reduce_max": lambda a, at: torch.amax(a[0], _axes(at), keepdim=at["keepdims"]),
    "reshape": lambda a, at: torch.reshape(a[0], list(at["shape"])),
    "transpose": lambda a, at: torch.permute(a[0], list(at["perm"])),
    "slice": lambda a, at: _slice(a[0], at),
    "concat": lambda a, at: torch.cat(list(a), at["axis"]),
    "pad": lambda a, at: _pad(a[0], at),
    "gather": lambda a, at: _gather(a[0], a[1], at),
    "expand": lambda a, at: a[0].expand(list(at["shape"])),
    "where": lambda a, _: torch.where(a[0], a[1], a[2]),
    "cast": lambda a, at: a[0].to(TORCH_DTYPES[at["dtype"]]),
}


def run_op(op: str, args: list, attrs: dict) -> torch.Tensor:
    """Runs one IR op with torch."""
    return OP_IMPLS[op](args, attrs)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (0 instead of inf), same values: a magnitude such as
    sqrt(re^2 + im^2) of an all-zero (pruned) STFT bin otherwise turns training gradients NaN."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return torch.sqrt(x)
    pos = x > 0
    # x <= 0: the plain value (0, or NaN for a negative input), without a gradient
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.sqrt(x.detach()))


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
               axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (identity inside the clamp range)."""
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    y = (q - zero_point) * scale
    if not x.requires_grad:
        return y
    # Straight-through: y + (x - x) has y's value exactly and x's gradient. The older form
    # x + (y - x).detach() cancelled to 0 for huge finite x (a -3.4e38 attention mask fill: the
    # executor read masked scores as 0 while onnxruntime clamped them to the range's low end).
    # Where x is +-inf, x - x is NaN: take y there.
    return torch.where(torch.isfinite(x), y + (x - x.detach()), y)


def dynamic_fake_quant(x: torch.Tensor, per: str = "tensor") -> torch.Tensor:
    """Run-time asymmetric uint8 quantize-dequantize (straight-through gradient).

    ``per="tensor"``: one range over the whole tensor, as onnxruntime's DynamicQuantizeLinear
    (``scale = (max(x, 0) - min(x, 0)) / 255``, ``zp = round(-min / scale)``). ``per="row"``: one
    range per vector of the last axis (TFLite's hybrid FULLY_CONNECTED); use "sample" for one per
    index of axis 0 (its hybrid CONV_2D).
    """
    xd = x.detach()
    if per == "tensor":
        lo, hi = xd.min().clamp_max(0), xd.max().clamp_min(0)
    else:
        dims = [-1] if per == "row" else list(range(1, x.dim()))
        lo, hi = xd.amin(dims, keepdim=True).clamp_max(0), xd.amax(dims, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / 255).clamp_min(1e-30)
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    y = (torch.clamp(torch.round(xd / scale) + zp, 0, 255) - zp) * scale
    return y + (x - xd) if x.requires_grad else y


def to_torch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))
