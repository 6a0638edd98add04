"""Factorized layers for pre-set low-rank training: build a model factorized from the start, train it
with any optimizer, compile it; the frontend recognizes these layers and the bundle keeps them.

    from edgecompile import SVDLinear, Tucker2Conv, TTLinear

- `SVDLinear(in, out, rank)`: ``x -> U (V x) + b`` (two linears, r(m+n) weights);
- `Tucker2Conv(in, out, kernel, (r_out, r_in))`: conv1x1 (in -> r_in), the k×k conv (r_in -> r_out,
  with the stride, padding and dilation), conv1x1 (r_out -> out) (Kim et al. 2016);
- `TTLinear(in_modes, out_modes, ranks)`: a tensor-train matrix (Novikov et al. 2015), run as the
  same chain of reshape / linear / transpose that the low-rank pass emits (`rewrite.replace_linear_tt`).

Each has ``from_dense`` to start from a trained layer (the low-rank pass's own decompositions), and
declares ``edgecompile_factorized`` (method and rank): the frontend tags its nodes with it (no
import of this module there), the report groups them as one layer, and the low-rank pass leaves them
as they are. The survey's pre-set family and its "spatial-temporal balance": a compact model trained
with few-subspace optimizers (FNGD, TWA) in `--finetune`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class SVDLinear(nn.Module):
    """``Linear(in, out)`` as ``u(v(x))``: v [rank, in] without bias, u [out, rank] with the bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"SVDLinear: rank {rank} outside [1, {min(in_features, out_features)}]")
        self.v = nn.Linear(in_features, rank, bias=False)
        self.u = nn.Linear(rank, out_features, bias=bias)
        self.edgecompile_factorized = {"method": "svd", "rank": rank}

    def forward(self, x):
        return self.u(self.v(x))

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int) -> SVDLinear:
        """The best rank-`rank` approximation of a trained linear (truncated SVD, balanced factors)."""
        from .passes.lowrank.decompose import svd_factors

        m = cls(linear.in_features, linear.out_features, rank, linear.bias is not None)
        u, v = svd_factors(linear.weight.detach().cpu().numpy(), rank)
        with torch.no_grad():
            m.u.weight.copy_(torch.from_numpy(u))
            m.v.weight.copy_(torch.from_numpy(v))
            if linear.bias is not None:
                m.u.bias.copy_(linear.bias)
        return m


class Tucker2Conv(nn.Module):
    """``Conv2d(in, out, k)`` (or Conv1d with ``dims=1``) as conv1x1 · conv k×k · conv1x1 (Tucker-2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, ranks: tuple[int, int], stride=1,
                 padding=0, dilation=1, bias: bool = True, dims: int = 2):
        super().__init__()
        r_out, r_in = ranks
        if not (1 <= r_out <= out_channels and 1 <= r_in <= in_channels):
            raise ValueError(f"Tucker2Conv: ranks {ranks} outside [1, {out_channels}] x [1, {in_channels}]")
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.first = conv(in_channels, r_in, 1, bias=False)
        self.core = conv(r_in, r_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.last = conv(r_out, out_channels, 1, bias=bias)
        self.edgecompile_factorized = {"method": "tucker2", "rank": [r_out, r_in]}

    def forward(self, x):
        return self.last(self.core(self.first(x)))

    @classmethod
    def from_dense(cls, conv: nn.Conv1d | nn.Conv2d, ranks: tuple[int, int]) -> Tucker2Conv:
        """Tucker-2 (HOSVD + 3 HOOI sweeps) of a trained, ungrouped convolution."""
        from .passes.lowrank.decompose import tucker2

        if conv.groups != 1:
            raise ValueError(f"Tucker2Conv.from_dense: grouped convolution (groups={conv.groups})")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, tuple(ranks), conv.stride, conv.padding,
                conv.dilation, conv.bias is not None, dims=conv.weight.dim() - 2)
        first, core, last = tucker2(conv.weight.detach().cpu().numpy(), tuple(ranks))
        with torch.no_grad():
            m.first.weight.copy_(torch.from_numpy(first))
            m.core.weight.copy_(torch.from_numpy(core))
            m.last.weight.copy_(torch.from_numpy(last))
            if conv.bias is not None:
                m.last.bias.copy_(conv.bias)
        return m


class TTLinear(nn.Module):
    """``Linear(prod(in_modes), prod(out_modes))`` as a tensor-train matrix with cores
    [r_{k-1}, o_k, i_k, r_k]; forward is the low-rank pass's TT chain, so export keeps it."""

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks: int | Sequence[int],
                 bias: bool = True):
        super().__init__()
        d = len(in_modes)
        if d < 2 or len(out_modes) != d:
            raise ValueError("TTLinear: give d >= 2 input modes and as many output modes")
        inner = [ranks] * (d - 1) if isinstance(ranks, int) else list(ranks)
        if len(inner) != d - 1 or min(inner) < 1:
            raise ValueError(f"TTLinear: {d - 1} inner ranks >= 1 needed, got {ranks!r}")
        r = [1, *inner, 1]
        self.in_modes, self.out_modes = tuple(in_modes), tuple(out_modes)
        n = math.prod(in_modes)
        # W's entries sum Π r_inner products of one entry per core: this std gives W the variance of
        # nn.Linear's default init (1 / (3 n))
        std = (1.0 / (3 * n * math.prod(inner))) ** (1 / (2 * d))
        self.cores = nn.ParameterList(nn.Parameter(torch.randn(r[k], out_modes[k], in_modes[k], r[k + 1]) * std)
                                      for k in range(d))
        self.bias = nn.Parameter(torch.zeros(math.prod(out_modes))) if bias else None
        self.edgecompile_factorized = {"method": "tt", "rank": inner}

    def forward(self, x):
        lead = x.shape[:-1]
        batch = math.prod(lead)
        ins, d = self.in_modes, len(self.in_modes)
        h = x.reshape(batch * math.prod(ins[:-1]), ins[-1])
        done = 1
        for k in range(d - 1, -1, -1):
            core = self.cores[k]
            r_left, o, i, r_right = core.shape
            h = F.linear(h, core.reshape(r_left * o, i * r_right))
            if k > 0:
                h = h.reshape(done, batch * math.prod(ins[:k]), r_left, o).permute(3, 0, 1, 2)
                done *= o
                h = h.reshape(done * batch * math.prod(ins[:k - 1]), ins[k - 1] * r_left)
            else:
                h = h.reshape(done, batch, o).permute(1, 2, 0).reshape(*lead, math.prod(self.out_modes))
        return h if self.bias is None else h + self.bias

    @classmethod
    def from_dense(cls, linear: nn.Linear, in_modes: Sequence[int], out_modes: Sequence[int],
                   ranks: int | Sequence[int]) -> TTLinear:
        """TT-SVD of a trained linear at the given inner ranks (capped at what the bonds hold)."""
        from .passes.lowrank.decompose import tt_decompose

        cores = tt_decompose(linear.weight.detach().cpu().numpy(), in_modes, out_modes, ranks)
        m = cls(in_modes, out_modes, [c.shape[3] for c in cores[:-1]], linear.bias is not None)
        with torch.no_grad():
            for p, c in zip(m.cores, cores):
                p.copy_(torch.from_numpy(c))
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        return m


__all__ = ["SVDLinear", "Tucker2Conv", "TTLinear"]
