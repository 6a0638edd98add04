"""Pruning: unstructured magnitude pruning and structured channel pruning of layer weights.

- `MagnitudePrunePass`: ``W -> W * mask``, zeroing the smallest-magnitude entries of linear, conv,
  const-matmul and embedding weights (per layer, or below one threshold shared by all layers).
  Shapes do not change; biases and normalization parameters are never touched. The keep-masks are
  returned (`PruneResult.masks`) and left in ``graph.meta["sparsity_masks"]`` so that fine-tuning
  can hold the zeros.
- `ChannelPrunePass`: ``conv/linear[C_out] -> conv/linear[C_out - k]``: the k output channels of
  lowest L2 norm are really removed, with their neighbours resized (see `channel_plan.py`).

Numerics (`magnitude_masks`, `channel_scores`, `select_channels`) are pure functions; the passes
only find eligible layers and rewrite them. The CLI form of the config is parsed by
`parse_prune_spec` ("none", "magnitude:0.5", "magnitude:global:0.6", "channel:0.25").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..ir.ops import weight_input
from ..ir import Graph, Node, Value, infer_shapes
from .base import Pass, PassResult
from .channel_plan import ChannelStep, apply_channel_removal, trace_channels
from ..errors import InputError

__all__ = [
    "PruneConfig", "PruneSpecError", "PruneResult", "parse_prune_spec", "make_prune_pass",
    "magnitude_masks", "channel_scores", "select_channels", "MagnitudePrunePass", "ChannelPrunePass",
]

log = logging.getLogger(__name__)

_METHODS = ("none", "magnitude", "channel")
_SCOPES = ("layer", "global")
# In global mode no single tensor loses more than this fraction: a layer pruned to nothing would
# disconnect the network. It binds only when one layer's weights are far smaller than the rest.
MAX_TENSOR_SPARSITY = 0.98


class PruneSpecError(InputError, ValueError):
    """A `--prune` spec or prune config that cannot be understood."""


@dataclass(frozen=True)
class PruneConfig:
    """What to prune.

    Attributes
    ----------
    method : "none", "magnitude" or "channel"
    amount : float in [0, 1)
        Fraction of weights (magnitude) or of output channels (channel) to remove.
    scope : "layer" or "global"
        "layer": every layer loses `amount`. "global": `amount` of all eligible weights/channels,
        chosen by one criterion across layers (raw magnitude; for channels, the channel norm
        relative to its layer's RMS channel norm), so layers lose different fractions.
    skip : tuple of node names left alone.
    """

    method: str = "none"
    amount: float = 0.0
    scope: str = "layer"
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise PruneSpecError(f"unknown prune method {self.method!r}; use one of {', '.join(_METHODS)}")
        if self.scope not in _SCOPES:
            raise PruneSpecError(f"unknown prune scope {self.scope!r}; use 'layer' or 'global'")
        if not 0.0 <= float(self.amount) < 1.0:
            raise PruneSpecError(f"prune amount {self.amount} is outside [0, 1)")
        object.__setattr__(self, "skip", tuple(self.skip))


def parse_prune_spec(spec: str) -> PruneConfig:
    """Parses the CLI form: ``none`` | ``METHOD:[SCOPE:]FRACTION``.

    METHOD is ``magnitude`` or ``channel``, SCOPE ``layer`` (default) or ``global``, FRACTION a
    number in [0, 1), e.g. ``magnitude:0.5``, ``magnitude:global:0.6``, ``channel:0.25``.
    """
    text = spec.strip().lower()
    if text in ("none", ""):
        return PruneConfig()
    parts = text.split(":")
    usage = ("expected 'none', 'magnitude:FRACTION', 'magnitude:global:FRACTION' or "
             "'channel:[global:]FRACTION' with FRACTION in [0, 1)")
    if len(parts) not in (2, 3) or parts[0] not in ("magnitude", "channel"):
        raise PruneSpecError(f"bad --prune spec {spec!r}: {usage}")
    scope = parts[1] if len(parts) == 3 else "layer"
    try:
        amount = float(parts[-1])
    except ValueError:
        raise PruneSpecError(f"bad --prune spec {spec!r}: {parts[-1]!r} is not a number; {usage}") from None
    try:
        return PruneConfig(parts[0], amount, scope)
    except PruneSpecError as e:
        raise PruneSpecError(f"bad --prune spec {spec!r}: {e}") from None


def make_prune_pass(config: PruneConfig) -> Pass | None:
    """The pass for `config`, or None when it prunes nothing."""
    if config.method == "none" or config.amount == 0:
        return None
    return MagnitudePrunePass(config) if config.method == "magnitude" else ChannelPrunePass(config)


@dataclass
class PruneResult(PassResult):
    """`PassResult` plus the keep-masks (const name -> bool array, True = kept)."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)


# ------------------------------------------------------------------------------- numerics

def _keep_largest(mag: np.ndarray, k: int) -> np.ndarray:
    """Mask keeping the `k` largest entries of the flat array `mag` (ties broken by position)."""
    mask = np.zeros(mag.size, bool)
    if k > 0:
        mask[np.argpartition(-mag, k - 1, kind="introselect")[:k]] = True
    return mask


def magnitude_masks(weights: Mapping[str, np.ndarray], sparsity: float,
                    scope: str = "layer") -> dict[str, np.ndarray]:
    """Keep-masks zeroing the `sparsity` fraction of smallest-magnitude entries.

    Parameters
    ----------
    weights : name -> array
    sparsity : fraction in [0, 1) of entries to zero
    scope : "layer" (each tensor loses ``round(sparsity * size)`` entries) or "global" (the
        ``round(sparsity * total)`` smallest entries across all tensors, i.e. one threshold;
        no tensor loses more than `MAX_TENSOR_SPARSITY`).

    Returns
    -------
    dict name -> bool array of the weight's shape, True where the entry is kept. Exactly the
    requested number of entries is dropped (ties at the threshold are broken by position).
    """
    if scope == "layer":
        return {n: _keep_largest(np.abs(w).ravel(), w.size - int(round(sparsity * w.size))).reshape(w.shape)
                for n, w in weights.items()}
    if scope != "global":
        raise PruneSpecError(f"unknown prune scope {scope!r}; use 'layer' or 'global'")
    names = list(weights)
    flat = np.concatenate([np.abs(weights[n]).ravel().astype(np.float32) for n in names]) if names else np.zeros(0)
    keep = _keep_largest(flat, flat.size - int(round(sparsity * flat.size)))
    masks, start = {}, 0
    for n in names:
        w = weights[n]
        m = keep[start:start + w.size]
        start += w.size
        floor = int(np.ceil((1 - MAX_TENSOR_SPARSITY) * w.size - 1e-9))
        if m.sum() < floor:
            log.info("global pruning capped %s at %.0f%% sparsity", n, 100 * MAX_TENSOR_SPARSITY)
            m = _keep_largest(np.abs(w).ravel(), floor)
        masks[n] = m.reshape(w.shape)
    return masks


def channel_scores(weight: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Importance of each output channel (axis 0): its L2 norm, times ``|scale|`` if given.

    `scale` is the per-channel factor of a following batch norm (gamma / sqrt(var + eps)), which
    multiplies the channel before anything downstream sees it.
    """
    s = np.linalg.norm(weight.reshape(weight.shape[0], -1).astype(np.float64), axis=1)
    return s if scale is None else s * np.abs(scale)


def select_channels(scores: Mapping[str, np.ndarray], amount: float,
                    scope: str = "layer") -> dict[str, np.ndarray]:
    """The output channels to remove per layer (sorted index arrays); every layer keeps one.

    "layer": the ``round(amount * C)`` lowest-scoring channels of each layer. "global": the
    ``round(amount * total)`` lowest channels across layers, scores first divided by their layer's
    RMS score so that layers of different scale compete fairly.
    """
    if scope == "layer":
        out = {}
        for n, s in scores.items():
            k = min(int(round(amount * s.size)), s.size - 1)
            out[n] = np.sort(np.argsort(s, kind="stable")[:k])
        return out
    if scope != "global":
        raise PruneSpecError(f"unknown prune scope {scope!r}; use 'layer' or 'global'")
    names = list(scores)
    if not names:
        return {}
    norm = [scores[n] / max(float(np.sqrt(np.mean(scores[n] ** 2))), 1e-30) for n in names]
    flat = np.concatenate(norm)
    drop = _keep_largest(-flat, int(round(amount * flat.size)))   # True for the k lowest
    out, start = {}, 0
    for n, s in zip(names, norm):
        d = np.flatnonzero(drop[start:start + s.size])
        start += s.size
        if d.size == s.size:                       # keep the layer's best channel
            d = np.delete(d, int(np.argmax(s)))
        out[n] = d
    return out


# -------------------------------------------------------------------------- eligibility

def _float_weight(v: Value | None) -> bool:
    return v is not None and v.is_const and v.quant is None and v.data.dtype.kind == "f"


def layer_weight(node: Node) -> Value | None:
    """The prunable weight of a layer node (linear, conv, const matmul b, embedding table), or None."""
    w = weight_input(node)
    if not _float_weight(w) or w.data.ndim < 2 or (node.op == "gather" and w.data.ndim != 2):
        return None
    return w


# ---------------------------------------------------------------------------- passes

class MagnitudePrunePass(Pass):
    """``W -> W * mask``: zeros the smallest-magnitude weights of every layer (shapes unchanged).

    Invariant: each pruned weight keeps exactly ``size - round(amount * size)`` entries (layer
    scope) or all weights together keep that many (global scope); kept entries are bit-identical;
    biases and norm parameters are untouched.
    """

    name = "magnitude-prune"

    def __init__(self, config: PruneConfig):
        if config.method != "magnitude":
            raise PruneSpecError(f"MagnitudePrunePass needs method 'magnitude', got {config.method!r}")
        self.config = config

    def call(self, graph: Graph) -> PruneResult:
        layers: dict[str, Node] = {}                   # const name -> first node using it
        for node in graph.nodes:
            w = layer_weight(node)
            if w is not None and node.name not in self.config.skip:
                layers.setdefault(w.name, node)
        weights = {n: graph.consts[n].data for n in layers}
        masks = magnitude_masks(weights, self.config.amount, self.config.scope) if self.config.amount else {}
        records, modified = [], False
        for name, mask in masks.items():
            v, node = graph.consts[name], layers[name]
            modified |= bool(np.any(v.data[~mask] != 0))
            v.data = np.where(mask, v.data, np.zeros((), v.data.dtype))   # a new array: never mutate
            nnz = int(np.count_nonzero(v.data))
            records.append({"node": node.name, "op": node.op, "kind": "magnitude", "weight": name,
                            "params_before": int(v.data.size), "params_after": nnz,
                            "sparsity": 1.0 - nnz / v.data.size})
        if modified:      # a new dict: graph.copy() shares meta values
            graph.meta["sparsity_masks"] = {**graph.meta.get("sparsity_masks", {}), **masks}
        return PruneResult(graph, modified, records if modified else [], masks if modified else {})


class ChannelPrunePass(Pass):
    """``conv/linear[C_out] -> [C_out - k]``: removes the lowest-norm output channels for real.

    Neighbours are resized along the channel's path: the layer's bias, a following batch norm,
    elementwise ops (and elementwise ops with a per-channel constant), pooling, reductions over
    other axes, a flatten, and the input channels (or flattened column blocks) of the next conv or
    linear. What a removed channel still contributed downstream when its weights are zero (the
    constant its bias produces through that path) is folded into the next layer's bias: the pruned
    graph computes exactly what the graph with the removed channels' weights zeroed computes (so
    removing zero-weight channels leaves the output unchanged), unless the next conv or an average
    pool pads its input, where borders see the fold approximately (noted in the record).
    Channels that reach a residual add, a concat, a channel-mixing reshape, a grouped/depthwise
    conv, a graph output or anything else are not prunable; the record says why.
    """

    name = "channel-prune"

    def __init__(self, config: PruneConfig):
        if config.method != "channel":
            raise PruneSpecError(f"ChannelPrunePass needs method 'channel', got {config.method!r}")
        self.config = config

    @staticmethod
    def check(graph: Graph, node: Node) -> list[ChannelStep] | str:
        """The channel path of `node`'s output, or the reason its channels cannot be pruned."""
        if node.op not in ("conv", "linear"):
            return f"{node.op} is not a conv or linear layer"
        w, b = node.input(1), node.input(2)
        if not _float_weight(w):
            return "weight is not a float constant"
        if len(w.uses) != 1 or (b is not None and (not _float_weight(b) or len(b.uses) != 1)):
            return "weight or bias is shared with another node or not a float constant"
        if node.op == "conv" and node.attrs["groups"] != 1:
            return f"grouped/depthwise conv (groups={node.attrs['groups']})"
        if node.output.shape is None:
            return "output shape unknown (run infer_shapes)"
        return trace_channels(graph, node)

    def call(self, graph: Graph) -> PruneResult:
        records: dict[str, dict] = {}
        plans: dict[str, tuple[Node, list[ChannelStep]]] = {}
        scores: dict[str, np.ndarray] = {}
        for node in graph.nodes:
            if node.op not in ("conv", "linear") or node.name in self.config.skip:
                continue
            plan = self.check(graph, node)
            if isinstance(plan, str):
                records[node.name] = {"node": node.name, "op": node.op, "kind": "channel", "skipped": plan}
                log.info("channel pruning skips %s (%s): %s", node.name, node.op, plan)
                continue
            plans[node.name] = (node, plan)
            scores[node.name] = channel_scores(node.input(1).data, _bn_scale(node, plan))
        removed = select_channels(scores, self.config.amount, self.config.scope) if self.config.amount else {}
        # Last layer first: a layer's removed channels then fold into its successor's bias only for
        # the successor's kept channels, so the result equals zeroing all removed channels' weights.
        for name, (node, plan) in reversed(plans.items()):
            drop = removed.get(name, np.zeros(0, np.int64))
            if drop.size == 0:
                continue
            c_out = node.input(1).data.shape[0]
            before = graph.param_count()
            exact = apply_channel_removal(graph, node, plan, drop)
            records[name] = {"node": name, "op": node.op, "kind": "channel", "channels_before": c_out,
                             "channels_after": c_out - drop.size, "removed": drop.tolist(),
                             "params_before": before, "params_after": graph.param_count(),
                             "resized": sorted({s.node.name for s in plan}),
                             "bias_fold": "exact" if exact else "approximate at padded borders"}
        modified = any("removed" in r for r in records.values())
        if modified:
            infer_shapes(graph, overwrite=True)
            old = graph.meta.get("sparsity_masks")
            if old:           # masks of resized weights no longer apply
                graph.meta["sparsity_masks"] = {n: m for n, m in old.items()
                                                if n in graph.consts and graph.consts[n].data.shape == m.shape}
        order = [n.name for n in graph.nodes if n.name in records]
        return PruneResult(graph, modified, [records[n] for n in order])


def _bn_scale(node: Node, plan: list[ChannelStep]) -> np.ndarray | None:
    """gamma / sqrt(var + eps) of a batch norm that alone consumes `node`'s output, else None."""
    if len(node.output.uses) != 1:
        return None
    for st in plan:
        if st.kind == "batch_norm" and st.src is node.output:
            var = st.node.input(2).data.astype(np.float64)
            gamma = st.node.input(3).data if st.node.input(3) is not None else 1.0
            return gamma / np.sqrt(var + st.node.attrs["eps"])
    return None
