"""Converters for layout ops: views, permutes, slicing, splitting, concatenation, padding, indexing.

Shapes are static, so every view-like op (view, reshape, flatten, squeeze, unsqueeze) becomes one
`reshape` to the node's example output shape, and identities are dropped. `select` is a slice
plus a reshape; `split`/`chunk`/`unbind` return a tuple of slices (picked by `getitem`).
"""

from __future__ import annotations

import numpy as np
import torch

from .context import Const, ConvertContext, Unsupported, dtype_name


def view(cx: ConvertContext, x, *_, **__):
    """view / _unsafe_view / reshape / flatten / squeeze / unsqueeze -> reshape (or nothing)."""
    return cx.reshape(x, cx.out_shape)


def permute(cx: ConvertContext, x, dims):
    return cx.transpose(x, dims)


def transpose(cx: ConvertContext, x, d0, d1):
    n = len(cx.shape(x))
    perm = list(range(n))
    d0, d1 = d0 % n, d1 % n
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return cx.transpose(x, perm)


def t(cx: ConvertContext, x):
    return cx.transpose(x, [1, 0]) if len(cx.shape(x)) == 2 else cx.value(x)


def expand(cx: ConvertContext, x, size, implicit=False):
    return cx.expand(x, cx.out_shape)


def _resolve(start, end, step, size):
    """Python slice bounds -> non-negative (start, end) within [0, size]."""
    start, end, _ = slice(start, end, step).indices(size)
    return start, max(end, start)


def slice_(cx: ConvertContext, x, dim=0, start=None, end=None, step=1):
    shape = cx.shape(x)
    dim %= len(shape)
    if step < 1:
        raise Unsupported(f"slice step {step}")
    start, end = _resolve(start, end, step, shape[dim])
    return cx.slice(x, dim, start, end, step)


def select(cx: ConvertContext, x, dim, index):
    """x.select(dim, i) -> slice(i, i+1) + reshape dropping the axis."""
    shape = cx.shape(x)
    dim %= len(shape)
    index %= shape[dim]
    return cx.reshape(cx.slice(x, dim, index, index + 1), cx.out_shape)


def _split_at(cx: ConvertContext, x, sizes, dim):
    dim %= len(cx.shape(x))
    outs, start = [], 0
    for s in sizes:
        outs.append(cx.slice(x, dim, start, start + s))
        start += s
    return tuple(outs)


def split_with_sizes(cx: ConvertContext, x, sizes, dim=0):
    return _split_at(cx, x, sizes, dim)


def split(cx: ConvertContext, x, size, dim=0):
    if isinstance(size, (list, tuple)):
        return _split_at(cx, x, size, dim)
    n = cx.shape(x)[dim % len(cx.shape(x))]
    return _split_at(cx, x, [min(size, n - i) for i in range(0, n, size)], dim)


def chunk(cx: ConvertContext, x, chunks, dim=0):
    n = cx.shape(x)[dim % len(cx.shape(x))]
    size = -(-n // chunks)
    return split(cx, x, size, dim)


def unbind(cx: ConvertContext, x, dim=0):
    shape = cx.shape(x)
    dim %= len(shape)
    rest = shape[:dim] + shape[dim + 1:]
    return tuple(cx.reshape(cx.slice(x, dim, i, i + 1), rest) for i in range(shape[dim]))


def cat(cx: ConvertContext, tensors, dim=0):
    # torch.cat skips 1-D empty tensors (legacy behaviour); so do we.
    xs = [x for x in tensors if not (len(cx.shape(x)) == 1 and cx.shape(x)[0] == 0)]
    if len(xs) == 1:
        return cx.value(xs[0])
    dtype = cx.out_dtype
    return cx.emit("concat", [cx.value(x, dtype) for x in xs], axis=dim % len(cx.out_shape))


def repeat(cx: ConvertContext, x, repeats):
    """x.repeat(r) -> reshape to the output rank, then concat copies along each repeated axis."""
    shape = cx.shape(x)
    y = cx.reshape(x, (1,) * (len(repeats) - len(shape)) + tuple(shape))
    for axis, r in enumerate(repeats):
        if r == 1:
            continue
        if y.shape[axis] == 1:
            y = cx.expand(y, y.shape[:axis] + (r,) + y.shape[axis + 1:])
        else:
            y = cx.emit("concat", [y] * r, axis=axis)
    return y


def constant_pad_nd(cx: ConvertContext, x, pad, value=0.0):
    """torch pads (last axis first, [l, r] pairs) -> IR pads in ONNX order [begins..., ends...]."""
    n = len(cx.shape(x))
    begins, ends = [0] * n, [0] * n
    for i in range(len(pad) // 2):
        axis = n - 1 - i
        begins[axis], ends[axis] = int(pad[2 * i]), int(pad[2 * i + 1])
    if min(begins + ends) < 0:
        raise Unsupported("negative padding (cropping)")
    if not any(begins + ends):
        return cx.value(x)
    return cx.emit("pad", [x], pads=begins + ends, value=float(value))


def cumsum(cx: ConvertContext, x, dim, dtype=None):
    """torch.cumsum: the input cast to the result's dtype (torch sums integers in int64), then a
    running sum in that dtype (what ONNX CumSum and TFLite CUMSUM compute)."""
    out = dtype_name(cx.out.dtype)
    return cx.emit("cumsum", [cx.value(x, out)], axis=dim % max(len(cx.shape(x)), 1))


def gather_elements(cx: ConvertContext, x, dim, index, sparse_grad=False):
    """torch.gather. Only from a constant whose values are all equal (then the result is that
    value, whatever the index: RoBERTa's all-zero token-type buffer gathered by position)."""
    if isinstance(x, Const):
        flat = x.tensor.reshape(-1)
        if flat.numel() and bool((flat == flat[0]).all()):
            return Const(torch.full(cx.shape(index), flat[0].item(), dtype=x.tensor.dtype), f"{cx.name_hint}.gather")
    raise Unsupported("torch.gather of a run-time tensor (element-wise gather has no IR op yet)")


def index_select(cx: ConvertContext, x, dim, index):
    return cx.emit("gather", [x, cx.value(index)], axis=dim % len(cx.shape(x)))


def index(cx: ConvertContext, x, indices):
    """Advanced indexing x[i0, i1, ...].

    One index tensor (the other axes untouched) is a `gather` on that axis. Several constant
    index tensors on the leading axes are folded into one flat index over those axes: a `gather`
    on the flattened leading axes, or a plain `reshape` when the flat index is the identity
    (as in a mask broadcast written as `mask[arange(B)[:, None], arange(S)]`).
    """
    shape = cx.shape(x)
    used = [i for i, ix in enumerate(indices) if ix is not None]
    for i in used:
        if cx.dtype(indices[i]) == "bool":
            raise Unsupported("boolean mask indexing (data-dependent shape)")
    if len(used) == 1:
        return cx.emit("gather", [x, cx.value(indices[used[0]])], axis=used[0])
    k = len(indices)
    if used != list(range(k)) or not all(isinstance(ix, Const) for ix in indices):
        raise Unsupported("advanced indexing with several non-constant or non-leading index tensors")
    idx = [ix.tensor.numpy().astype(np.int64) % shape[i] for i, ix in enumerate(indices)]
    flat = np.ravel_multi_index(np.broadcast_arrays(*idx), shape[:k])
    rest = tuple(shape[k:])
    lead = int(np.prod(shape[:k]))
    if flat.size == lead and np.array_equal(flat.ravel(), np.arange(lead)):
        return cx.reshape(x, cx.out_shape)
    data = cx.reshape(x, (lead,) + rest)
    return cx.emit("gather", [data, cx.const(flat, f"{cx.name_hint}.index")], axis=0)


def embedding(cx: ConvertContext, weight, indices, *_, **__):
    """embedding(table, ids) -> gather(table, ids, axis 0); the table keeps its state_dict name."""
    return cx.emit("gather", [weight, cx.value(indices)], axis=0)


def _memory_order(shape, stride) -> list[int] | None:
    """The axes of size > 1 from outermost to innermost in memory, when `shape` / `stride` lay the
    elements out densely with no gaps or overlaps (a permutation of a contiguous layout); else None."""
    dims = sorted((d for d in range(len(shape)) if shape[d] > 1), key=lambda d: -stride[d])
    expected = 1
    for d in reversed(dims):
        if stride[d] != expected:
            return None
        expected *= shape[d]
    return dims


def _squeezed_transpose(cx: ConvertContext, x, logical: list[int], memory: list[int]):
    """`x` (its size-1 axes dropped, its other axes in `logical` order) permuted to `memory` order."""
    return cx.transpose(x, [logical.index(d) for d in memory])


def as_strided(cx: ConvertContext, x, size, stride, storage_offset=None):
    """as_strided that reads its input's elements again in another dense layout -> reshape / transpose.

    Decompositions emit it to give a result the strides of its input (adaptive average pooling of a
    channels-last tensor: a mean, then as_strided to the same shape with permuted strides). The IR
    has no strides: every value is its elements in row-major order. So the input is read in its
    memory order (the example value's strides), and the result's memory order is read back into
    row-major order; both must be dense (no gap, no overlap) and start at the same offset. Any
    other as_strided (overlapping windows, gaps) is `Unsupported`.
    """
    src = cx.arg_vals[0]
    size, stride = [int(s) for s in size], [int(s) for s in stride]
    offset = src.storage_offset() if storage_offset is None else int(storage_offset)
    in_shape, in_stride = [int(s) for s in src.shape], [int(s) for s in src.stride()]
    in_order, out_order = _memory_order(in_shape, in_stride), _memory_order(size, stride)
    if (in_order is None or out_order is None or offset != src.storage_offset()
            or int(np.prod(size)) != int(np.prod(in_shape))):
        raise Unsupported(f"as_strided of a {in_shape} tensor with strides {in_stride} to size {size}, "
                          f"stride {stride}, offset {offset} (only dense re-layouts of the input convert)")
    in_dims = [d for d in range(len(in_shape)) if in_shape[d] > 1]
    flat = cx.reshape(x, [in_shape[d] for d in in_dims])
    flat = _squeezed_transpose(cx, flat, in_dims, in_order)
    out_dims = [d for d in range(len(size)) if size[d] > 1]
    y = cx.reshape(flat, [size[d] for d in out_order])
    y = _squeezed_transpose(cx, y, out_order, out_dims)
    return cx.reshape(y, size)
