"""Per-layer algebra of per-sample gradients, without materializing them.

Every supported layer is brought to one *matrix form*: for sample ``i``, group ``g`` and
position ``t`` (sequence position, conv output pixel), an input row ``A[i, g, t]`` (length
``a``, with a trailing 1 when the layer has a bias) and an output-gradient row ``D[i, g, t]``
(length ``o``).  The per-sample gradient of group ``g`` is then

    G_ig = sum_t D[i, g, t] ⊗ A[i, g, t]            (an ``o × a`` matrix, weight | bias),

so the Gram matrix of per-sample gradients is

    K_ij = sum_g sum_{t,s} (A_igt · A_jgs) (D_igt · D_jgs),

which for ``T == 1`` is the familiar ``(a_i·a_j)(δ_i·δ_j)``.  Grouped convolutions have a
block-diagonal weight, so their Gram matrix is the sum of the per-group Gram matrices.  An
embedding's input is one-hot, so ``A_it · A_js = [x_it == x_js]``.

A layer called several times in one forward pass (shared weights) simply concatenates its
calls along ``t``: the per-sample gradient is the sum over calls, exactly as above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)

#: How :func:`gram` forms a layer's Gram matrix.  Both are exact; ``"auto"`` picks per layer
#: the cheaper of the factored contraction and the per-sample product.  The one default of the
#: library, the build and the bench (``FNGD(gram=)``, ``RecoverConfig.fngd_gram``): a solved
#: step cost 1.3-3.0x an AdamW step with ``"auto"`` on the four tasks of
#: ``bench/bench_finetune.py`` and 3.7-67x with ``"factor"`` (its step-cost lines).
GRAM_MODES = ("auto", "factor")
GRAM_DEFAULT = "auto"


@dataclass
class Capture:
    """One layer's matrix form for the current batch.

    ``A``: ``[N, G, T, a]`` float inputs (``None`` for embeddings, and for convolutions until
    :meth:`rows` forms them from ``x``), ``idx``: ``[N, T]`` int indices (embeddings only),
    ``D``: ``[N, G, T, o]`` per-sample output gradients (already multiplied back to the
    gradient of the per-sample loss).  A convolution keeps its raw input ``x`` (``module``:
    the layer) because its rows are ``kernel``-times larger than ``x``, and :func:`gram`'s
    per-sample path never needs them.
    """

    A: torch.Tensor | None
    D: torch.Tensor
    idx: torch.Tensor | None = None
    #: ``[N, G·o·a]`` per-sample gradients, when :func:`gram` formed them ("auto" mode).
    per_sample: torch.Tensor | None = None
    x: torch.Tensor | None = None
    module: nn.Module | None = None

    def rows(self) -> torch.Tensor | None:
        """``A``, formed from ``x`` on first use (``None`` for embeddings)."""
        if self.A is None and self.x is not None:
            self.A = input_rows(self.module, self.x)
        return self.A


def is_supported(module: nn.Module) -> bool:
    """Whether FNGD/K-FAC can handle ``module`` through its matrix form."""
    if isinstance(module, nn.Embedding):
        return not (module.sparse or module.scale_grad_by_freq)
    return isinstance(module, SUPPORTED)


def has_bias(module: nn.Module) -> bool:
    b = getattr(module, "bias", None)
    return b is not None and b.requires_grad


def _conv_geometry(module: nn.Conv1d | nn.Conv2d):
    if isinstance(module, nn.Conv1d):
        return (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
    return tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)


def _conv_pad(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Pad ``x`` ([N, C, H, W]) exactly as the conv would, so unfold needs no padding."""
    kernel, _, dilation = _conv_geometry(module)
    if module.padding == "valid":
        return x
    if module.padding == "same":
        pads = []
        for k, d in zip(reversed(kernel), reversed(dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pad = (0, *module.padding) if isinstance(module, nn.Conv1d) else tuple(module.padding)
        pads = [p for p in reversed(pad) for _ in range(2)]
    if not any(pads):
        return x
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, pads, mode=mode)


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer input in matrix form ``[N, G, T, a]`` (embeddings: indices ``[N, T]``)."""
    if isinstance(module, nn.Embedding):
        return x.reshape(x.shape[0], -1)
    if isinstance(module, nn.Linear):
        rows = x.reshape(x.shape[0], 1, -1, x.shape[-1])
        if has_bias(module):
            rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
        return rows
    return _conv_rows(module, x)


def _conv_rows(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A convolution's rows, written by one strided copy per kernel offset straight into the
    ``[N, G, T, a (+1)]`` layout, bias column included: ``F.unfold`` followed by a transpose
    and the bias concatenation copies the (kernel-times larger) rows two or three times, and
    took 2.5-10x longer on the convolutions of a MobileNet-style net."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
    x = _conv_pad(module, x)
    kernel, stride, dilation = _conv_geometry(module)
    n, c, hp, wp = x.shape
    g = module.groups
    cg, kk = c // g, kernel[0] * kernel[1]
    ho = (hp - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (wp - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    a, bias = cg * kk, has_bias(module)
    xg = x.view(n, g, cg, hp, wp).permute(0, 1, 3, 4, 2)  # [N, G, H, W, C/G]
    if kk == 1 and not bias and stride == (1, 1):
        return xg.reshape(n, g, ho * wo, cg)  # 1x1 conv: the input itself (a copy if strided)
    out = x.new_empty(n, g, ho * wo, a + bias)
    if bias:
        out[..., a] = 1
    # unfold's column order within a group: channel-major, then kernel row, kernel column
    target = out[..., :a].unflatten(3, (cg, kk)).unflatten(2, (ho, wo))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            h0, w0 = i * dilation[0], j * dilation[1]
            target[..., i * kernel[1] + j] = xg[:, :, h0:h0 + stride[0] * (ho - 1) + 1:stride[0],
                                                w0:w0 + stride[1] * (wo - 1) + 1:stride[1]]
    return out


def conv_per_sample(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor,
                    D: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients ``[N, G·o·a]`` of a convolution (layout of ``einsum("ngto,ngta->
    ngoa", D, A)``, bias last) from its raw input ``x`` and matrix-form output gradient ``D``.

    The weight part is one convolution backward with the batch folded into the groups (each
    sample its own group of every layer group), so the rows ``A`` are never formed; on the
    depthwise convolutions of a MobileNet-style net that is 6x faster than rows + matmul.
    """
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
    x = _conv_pad(module, x)
    kernel, stride, dilation = _conv_geometry(module)
    n, g = x.shape[0], module.groups
    o = D.shape[-1]
    ho = (x.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    grad = D.transpose(2, 3).reshape(1, n * g * o, ho, -1)  # [1, N·out, H', W']
    weight_shape = (n * g * o, x.shape[1] // g, *kernel)
    weight = x.new_zeros(()).expand(weight_shape)  # only its shape is read for grad_weight
    gw = torch.ops.aten.convolution_backward(
        grad, x.reshape(1, -1, *x.shape[2:]), weight, None, list(stride), [0, 0],
        list(dilation), False, [0, 0], n * g, [False, True, False])[1]
    per = gw.view(n, g, o, -1)
    if has_bias(module):
        per = torch.cat([per, D.sum(2).unsqueeze(-1)], dim=-1)
    return per.reshape(n, -1)


def grad_rows(module: nn.Module, grad_out: torch.Tensor) -> torch.Tensor:
    """The output gradient in matrix form ``[N, G, T, o]``."""
    n = grad_out.shape[0]
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return grad_out.reshape(n, 1, -1, grad_out.shape[-1])
    g = grad_out.reshape(n, module.groups, module.out_channels // module.groups, -1)
    return g.transpose(2, 3)


def _row_blocks(n: int, cost_per_row: int, max_elems: int):
    step = max(1, max_elems // max(1, cost_per_row))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def gram(cap: Capture, mode: str = GRAM_DEFAULT, max_elems: int = 1 << 25) -> torch.Tensor:
    """Gram matrix ``K = UᵀU`` (``[N, N]``) of the per-sample gradients of one layer.

    Parameters
    ----------
    cap:
        The layer's matrix form.
    mode:
        ``"factor"`` never forms a per-sample gradient: it contracts the ``(N·T)²`` products
        of input rows and of gradient rows (cost ``G (NT)² (a + o)``).  ``"auto"`` uses, per
        layer, the cheaper of that and the blockwise per-sample product (cost ``N G T a o +
        N² G a o``, memory ``N G a o``), which is much cheaper for convolutions with many
        output pixels.  Both are exact.  On the digits CNN of ``bench/bench_finetune.py``
        (N = 64) "factor" takes 4-100 ms per conv layer and step against 0.1-1.6 ms for the
        per-sample product, because the ``(NT)²`` intermediate is inherent to never forming
        ``G_i``; "auto" forms per-sample gradients only within ``max_elems`` (the same bound
        as "factor"'s own temporaries), so it never needs more memory than "factor".
    max_elems:
        Bound on the elements of any temporary, reached by splitting rows into blocks.
    """
    D = cap.D
    if cap.A is None and cap.x is None:
        return _gram_embedding(cap.idx, D[:, 0], max_elems)
    n, groups, t, o = D.shape
    if cap.A is None:  # a convolution: rows are formed only if the factor path needs them
        cg = cap.x.shape[1] // groups
        a = cg * math.prod(_conv_geometry(cap.module)[0]) + has_bias(cap.module)
    else:
        a = cap.A.shape[-1]
    factor_cost = groups * (n * t) ** 2 * (a + o)
    persample_cost = n * groups * t * a * o + n * n * groups * a * o
    if (t > 1 and mode == "auto" and persample_cost < factor_cost
            and n * groups * a * o <= max_elems):
        if cap.A is None:
            per_sample = conv_per_sample(cap.module, cap.x, D)
        else:
            per_sample = torch.matmul(D.transpose(2, 3), cap.A).reshape(n, -1)
        cap.per_sample = per_sample  # weighted_grad reuses it
        return per_sample @ per_sample.T
    A = cap.rows()
    if t == 1:
        ka = torch.einsum("nga,mga->gnm", A[:, :, 0], A[:, :, 0])
        kd = torch.einsum("ngo,mgo->gnm", D[:, :, 0], D[:, :, 0])
        return (ka * kd).sum(0)
    # K is symmetric: only blocks j >= i are computed (half the (NT)² work of "factor").
    out = A.new_zeros(n, n)
    a_all = A.permute(1, 0, 2, 3)
    d_all = D.permute(1, 0, 2, 3)
    for i0, i1 in _row_blocks(n, groups * t * n * t, max_elems):
        rows = i1 - i0
        ka = a_all[:, i0:i1].reshape(groups, rows * t, a) @ \
            a_all[:, i0:].reshape(groups, -1, a).transpose(1, 2)
        ka.mul_(d_all[:, i0:i1].reshape(groups, rows * t, o)
                @ d_all[:, i0:].reshape(groups, -1, o).transpose(1, 2))
        block = ka.view(groups, rows, t, -1).sum(2).view(groups, rows, n - i0, t).sum((0, 3))
        out[i0:i1, i0:] = block
        out[i0:, i0:i1] = block.T
    return out


def _gram_embedding(idx: torch.Tensor, D: torch.Tensor, max_elems: int) -> torch.Tensor:
    n, t = idx.shape
    flat_idx = idx.reshape(-1)
    flat_d = D.reshape(n * t, -1)
    out = D.new_zeros(n, n)
    for i0, i1 in _row_blocks(n, t * n * t, max_elems):
        same = flat_idx[i0 * t:i1 * t, None] == flat_idx[None, :]
        kd = flat_d[i0 * t:i1 * t] @ flat_d.T
        out[i0:i1] = (kd * same).view(i1 - i0, t, n, t).sum(dim=(1, 3))
    return out


def weighted_grad(module: nn.Module, cap: Capture, coef: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Σ_i coef_i g_i`` for one layer, as tensors shaped like its parameters.

    Costs one weight-gradient contraction, the same as autograd's own.
    """
    if cap.per_sample is not None:
        full = (coef.to(cap.per_sample.dtype) @ cap.per_sample).view(
            cap.D.shape[1], cap.D.shape[-1], -1)
        return _split_bias(module, full)
    D = cap.D * coef.view(-1, 1, 1, 1).to(cap.D.dtype)
    if cap.A is None:
        weight = module.weight
        step = torch.zeros(weight.shape, dtype=D.dtype, device=D.device)
        step.index_add_(0, cap.idx.reshape(-1), D[:, 0].reshape(-1, D.shape[-1]))
        if module.padding_idx is not None:
            step[module.padding_idx] = 0
        return {"weight": step}
    return _split_bias(module, torch.einsum("ngto,ngta->goa", D, cap.rows()))


def _split_bias(module: nn.Module, full: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[G, o, a(+1)]`` -> ``{"weight": …, "bias": …}`` shaped like the parameters."""
    out = {}
    if has_bias(module):
        out["bias"] = full[..., -1].reshape(-1)
        full = full[..., :-1]
    out["weight"] = full.reshape(module.weight.shape)
    return out


def damped_coefficients(K: torch.Tensor, damping: float) -> torch.Tensor:
    """``α = (K + μI)⁻¹ 1`` with ``μ = damping · tr(K) / N``, solved by Cholesky in float64.

    With ``U = [g_1 … g_N]`` and ``K = UᵀU``, ``U α = (UUᵀ/N + λI)⁻¹ ḡ`` for
    ``λ = damping · tr(K) / N²`` (push-through identity): the damped natural-gradient step for
    the empirical Fisher, with the damping *relative* to the Fisher's mean non-zero eigenvalue
    ``tr(K)/N²``.  Relative damping makes ``α`` invariant (up to the overall ``1/scale²``) to
    the scale of the gradients and bounds the spread of the coefficients: no sample's
    coefficient exceeds ``1 + 1/damping`` times that of a sample with a typical gradient.
    """
    n = K.shape[0]
    if not bool(torch.isfinite(K).all()):
        raise FloatingPointError("the Gram matrix of per-sample gradients is not finite "
                                 "(gradients overflowed)")
    k64 = K.to(torch.float64)
    k64 = 0.5 * (k64 + k64.T)
    trace = k64.diagonal().sum()
    if not bool(trace > 0):
        # Every per-sample gradient is zero (nothing to recover, e.g. a student equal to its
        # teacher): the step U·α is zero for any α, and a uniform α keeps it (and the stored
        # coefficients) finite, where 1 / (damping · tiny) would overflow to inf and 0·inf to NaN.
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=K.device)
    scale = trace / n
    system = k64 + (damping * scale) * torch.eye(n, dtype=torch.float64, device=K.device)
    ones = torch.ones(n, 1, dtype=torch.float64, device=K.device)
    chol, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(ones, chol).view(n)
    # Not positive definite within rounding: a least-squares solve is still well defined.
    return torch.linalg.lstsq(system, ones).solution.view(n)


NORMALIZE = ("mean", "norm", "none")


def normalize_coefficients(alpha: torch.Tensor, K: torch.Tensor, mode: str) -> torch.Tensor:
    """Rescale ``α`` (one scalar per batch; the direction ``Uα`` is unchanged).

    ``"mean"``: coefficients sum to 1, so the step ``Σ cᵢ gᵢ`` is a weighted *average* of
    per-sample gradients (plain averaging when the damping is large) and the learning rate
    means what it means for SGD; stored coefficients of samples from different batches are
    on one scale.  ``"norm"``: ``‖Σ cᵢ gᵢ‖ = ‖ḡ‖`` (the mean gradient's norm, from ``K``).
    ``"none"``: the exact damped natural-gradient step.  (On the digits benchmark "norm"
    diverged at every learning rate from 0.05 up once coefficients were reused; "mean" did not.)
    """
    if mode == "none":
        return alpha
    if mode == "mean":
        return alpha / alpha.sum()
    k64 = K.to(torch.float64)
    n = alpha.shape[0]
    grad_sq = k64.sum() / (n * n)
    step_sq = alpha @ (k64 @ alpha)
    return alpha * (grad_sq / step_sq.clamp_min(torch.finfo(torch.float64).tiny)).sqrt()


def describe(module: nn.Module) -> str:
    return f"{type(module).__name__}({math.prod(module.weight.shape)} weights)"


def momentum_update(p: torch.Tensor, d: torch.Tensor, lr: float, momentum: float, weight_decay: float,
                    state: dict) -> None:
    """``p -= lr * buf`` with ``buf = momentum * buf + (d + weight_decay * p)`` (PyTorch SGD's rule);
    the step every preconditioned optimizer here ends with, given its direction ``d``."""
    d = d.to(p.dtype)
    if weight_decay:
        d = d.add(p, alpha=weight_decay)
    if momentum:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.clone()
        else:
            buf.mul_(momentum).add_(d)
        d = buf
    p.add_(d, alpha=-lr)


def apply_directions(group: dict, directions: dict[int, torch.Tensor], state) -> None:
    """One optimizer step over ``group``: each parameter moves along its preconditioned direction
    (by ``id``) at ``lr``, or, when it has none, along its gradient at ``fallback_lr``."""
    mu, wd = group["momentum"], group["weight_decay"]
    for p in group["params"]:
        d, lr = directions.get(id(p)), group["lr"]
        if d is None:
            d, lr = p.grad, group["fallback_lr"]
        if d is not None:
            momentum_update(p, d, lr, mu, wd, state[p])
