"""Error-compensated rounding of int8 layer weights onto fewer levels (GPTQ / OBQ).

``int8 W [out, in] + input Gram H = X^T X  ->  int8 W' on a level set, zeros where masked``

Rounding each weight to its nearest shared level (k-means, `cluster.cluster_int8`) minimizes the
weights' error; what matters is the layer's output error ``||X (W - W')^T||``. GPTQ (Frantar,
Ashkboos, Hoefler, Alistarh, ICLR 2023, after Optimal Brain Quantization) rounds one input column
at a time and moves the not-yet-rounded columns to cancel the error just made, using the inverse
of the Gram matrix of the layer's inputs on calibration data. Pruned positions are rounded to
zero the same way, so their loss is compensated too (as SparseGPT does). We write our own: the
published implementations round onto a uniform per-row grid in float; ours rounds onto the
layer's shared int8 levels (the `lut` codec's codebook), with a pruning mask, in the normalized
int8 domain (per-output-channel scales factor out of the row-wise updates, so the result is the
same as in real units).

Columns are taken in order of decreasing ``diag(H)`` (the paper's "act-order"), in blocks of 128
with lazy updates; ``H`` is damped by 10 % of its mean diagonal (the paper's 1 % fits the calibration
samples too closely when they are few against a layer's inputs: MTCNN O-net's 1152-input dense
layer from 144 samples. Measured at the goal thresholds, `bench_pretrained --quick` data: MTCNN
132.8 -> 116.4 KB, the most compressed plan now passing the real gate; silero-vad 170.1 -> 164.2 KB;
MiniLM the same at 11.3 MB). Cost: one Cholesky per layer and
``O(out * in^2)`` arithmetic per rounding, ~in Python iterations of vectorized row updates.

`layer_grams` collects ``H`` for every searched layer in one pass of the executor over the
calibration samples, in the int8 graph's own numerics (fake-quantized activations), which is what
the deployed layer sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import Graph, TorchExecutor

BLOCK = 128
DAMP = 0.1


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the rounding's thousands of small vectorized steps: with two
    threads on a busy 2-core machine each step waits for the other thread to be scheduled
    (measured on MiniLM's 1536x384 layers under load: 1-11 s a rounding on 2 threads, 0.1-0.4 s
    on one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def gram_shape_ok(node) -> bool:
    """Layers whose weight rows see one shared input vector: linear, ungrouped conv, and matmul
    by a 2-D constant (``x @ W``)."""
    if node.op == "linear":
        return True
    if node.op == "conv":
        return node.attrs.get("groups", 1) == 1
    if node.op == "matmul":
        w = node.input(1)
        return w is not None and w.is_const and len(w.shape) == 2
    return False


def _columns(node, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of the weight's column space: [samples, in (* kernel)]."""
    if node.op == "conv":
        a, w = node.attrs, node.input(1)
        k = tuple(w.shape[2:])
        if len(k) == 1:                  # conv1d as a conv2d of height 1
            x, k = x.unsqueeze(2), (1, k[0])
            st, pd, dl = (1, a["stride"][0]), (0, a["padding"][0]), (1, a["dilation"][0])
        else:
            st, pd, dl = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"])
        cols = F.unfold(x, k, dilation=dl, padding=pd, stride=st)      # [N, C*kh*kw, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def layer_grams(graph: Graph, samples: Sequence[np.ndarray], nodes: Sequence[str]) -> dict[str, np.ndarray]:
    """{node name: H = sum of x x^T over every input row the layer sees} for `nodes` (those
    `gram_shape_ok` accepts), from one executor pass over `samples`.

    An embedding table (a ``gather`` layer) is the linear layer of one-hot inputs, whose Gram is
    diagonal: it gets the 1-D vector of how often each row is read."""
    ex = TorchExecutor(graph, fake_quant=True).eval()
    grams: dict[str, torch.Tensor] = {}

    def observer(node):
        if node.op == "gather":
            rows = node.input(0).shape[0]

            def count(idx: torch.Tensor) -> None:
                grams[node.name] = grams.get(node.name, 0) + torch.bincount(idx.reshape(-1), minlength=rows).double()
            return count

        def add(x: torch.Tensor) -> None:
            c = _columns(node, x.double())
            grams[node.name] = grams.get(node.name, 0) + c.T @ c
        return add

    ex.observers = {n: observer(graph.node(n)) for n in nodes
                    if gram_shape_ok(graph.node(n)) or graph.node(n).op == "gather"}
    ex(*[torch.as_tensor(a) for a in samples])
    return {k: v.numpy() for k, v in grams.items()}


def as_rows(op: str, q: np.ndarray) -> np.ndarray:
    """A layer weight as [out, in (* kernel)] rows (matmul's [in, out] weight transposed)."""
    return q.T if op == "matmul" else q.reshape(q.shape[0], -1)


def from_rows(op: str, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return rows.T.copy() if op == "matmul" else rows.reshape(shape)


def _inverse_factor(h: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(column order, upper Cholesky factor of the damped, reordered H^-1)."""
    h = torch.from_numpy(np.array(h, dtype=np.float64))
    d = torch.diagonal(h)
    dead = d <= 0
    h[dead, dead] = 1.0                       # inputs that are always zero: their weights are free
    order = torch.argsort(torch.diagonal(h), descending=True)
    h = h[order][:, order]
    h += DAMP * torch.diagonal(h).mean() * torch.eye(len(h), dtype=h.dtype)
    for tries in range(4):                    # ill-conditioned H: damp more
        L, info = torch.linalg.cholesky_ex(h)
        if info == 0:
            break
        h += (10 ** tries) * DAMP * torch.diagonal(h).mean() * torch.eye(len(h), dtype=h.dtype)
    hinv = torch.cholesky_inverse(L)
    return order, torch.linalg.cholesky(hinv, upper=True)


class Rounder:
    """GPTQ rounding of one layer's int8 rows onto level sets, its Gram factored once."""

    def __init__(self, h: np.ndarray):
        self.h = torch.from_numpy(np.asarray(h, dtype=np.float64))
        with one_thread():
            self.order, self.u = _inverse_factor(h)

    def loss(self, rows: np.ndarray, got: np.ndarray) -> float:
        """The layer's summed squared output error on the calibration inputs, in int8 units:
        ``sum_r (w_r - q_r)^T H (w_r - q_r)``."""
        d = torch.from_numpy(rows.astype(np.float64) - got.astype(np.float64))
        return float(((d @ self.h) * d).sum())

    def round(self, rows: np.ndarray, levels: np.ndarray, mask: np.ndarray | None = None,
              sparsity: float = 0.0) -> np.ndarray:
        """See `_round`."""
        with one_thread():
            return self._round(rows, levels, mask, sparsity)

    def _round(self, rows: np.ndarray, levels: np.ndarray, mask: np.ndarray | None, sparsity: float) -> np.ndarray:
        """rows [out, in] int8; levels: the allowed int8 values (sorted; 0 always allowed); mask
        [out, in] bool, True = forced to zero. Returns int8 rows on the levels.

        With `sparsity` (and no mask) the mask is chosen as SparseGPT does: at the start of each
        block of columns, the `sparsity` share of each row's weights with the smallest
        ``w^2 / [H^-1]_jj`` (the output error their removal costs, weights already compensated)."""
        order, u = self.order, self.u
        # columns as contiguous rows: wt[j] is input column j of every output row
        wt = torch.from_numpy(rows.astype(np.float64)).T[order].contiguous()
        keep = None if mask is None else ~torch.from_numpy(mask).T[order]
        lv = torch.from_numpy(np.union1d(levels, [0]).astype(np.float64))
        out = torch.zeros_like(wt)
        n = wt.shape[0]
        if keep is None and sparsity > 0:
            keep = torch.ones_like(wt, dtype=torch.bool)
        for i1 in range(0, n, BLOCK):
            i2 = min(i1 + BLOCK, n)
            w1, u1 = wt[i1:i2].clone(), u[i1:i2, i1:i2]
            if mask is None and sparsity > 0:
                cost = w1 ** 2 / torch.diagonal(u1)[:, None] ** 2
                k = int(round(sparsity * (i2 - i1)))
                if k:
                    cut = torch.kthvalue(cost, k, dim=0, keepdim=True).values
                    keep[i1:i2] = cost > cut
            err = torch.zeros_like(w1)
            for i in range(i2 - i1):
                col = w1[i]
                j = torch.searchsorted(lv, col).clamp(1, len(lv) - 1)
                lo, hi = lv[j - 1], lv[j]
                qc = torch.where((col - lo) <= (hi - col), lo, hi)
                if keep is not None:
                    qc = qc * keep[i1 + i]
                out[i1 + i] = qc
                e = (col - qc) / u1[i, i]
                w1[i:] -= u1[i, i:, None] * e[None, :]
                err[i] = e
            wt[i2:] -= u[i1:i2, i2:].T @ err
        return out[torch.argsort(order)].T.numpy().astype(np.int8)
