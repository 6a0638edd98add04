"""Training objective of the recovery loop: a loss per output, chosen by what the output is.

Labels, when the data has them, train one output:

* integer labels: cross-entropy over the last dim of the first ``"logits"`` output (or the
  first output), accuracy reported;
* floating labels: MSE on the first regression/probability/detection output (or the first).

Without labels every output is distilled from the teacher, with a loss chosen by its kind
(:data:`OUTPUT_KINDS`, one per output, in ``tree_leaves`` order):

=============================  ============================================================
``"logits"``                   ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over the last dim
                               (Hinton et al. 2015); a last dim of 1 is a binary logit:
                               the same KL between Bernoulli ``sigmoid(·/T)``
``"embedding"``                ``1 − cos(s, t)`` over the last dim (+ ``embedding_mse`` ×
                               the normalized MSE, which pins the norm cosine ignores)
``"probability"``              BCE against the teacher's probability when all its values lie
                               in [0, 1] (minus the teacher's entropy, so 0 at a match: the
                               Bernoulli KL, same gradient), normalized MSE otherwise
``"regression"``, ``"detection"``, ``"state"``, ``"auto"`` / unknown
                               normalized MSE: ``mean((s − t)²) / Var(t)``, the variance
                               of the teacher's output over the calibration set, so outputs
                               of different scales weigh alike
=============================  ============================================================

A softmax is never taken over a last dim of size 1 and KL is used only for ``"logits"``.
Each output's loss is averaged within the sample; the per-sample losses of all outputs are
summed, so the loss is a mean over samples of per-sample losses (the convention FNGD needs).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import FinetuneData, FinetuneDataError
from .layers import SUPPORTED
from .outputs import OutputStats, flatten_outputs

OUTPUT_KINDS = ("logits", "embedding", "probability", "regression", "detection", "state",
                "auto")

_EPS = 1e-6


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[N, positions, last]`` view of a batch-first output (a ``[N]`` output: ``[N, 1, 1]``)."""
    n = x.shape[0]
    if x.dim() == 1:
        return x.reshape(n, 1, 1)
    return x.reshape(n, -1, x.shape[-1])


def _bernoulli_kl(p: torch.Tensor, log_q: torch.Tensor, log_1mq: torch.Tensor) -> torch.Tensor:
    """``KL(Bern(p) ‖ Bern(q))`` element-wise = BCE(q; p) − H(p)."""
    return (torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)
            - p * log_q - (1 - p) * log_1mq)


@dataclass(frozen=True)
class Term:
    """The distillation loss of one output.

    ``loss``: ``"kl"``, ``"binary_kl"``, ``"cosine"``, ``"bce"`` or ``"nmse"``; ``scale``:
    ``1 / Var(teacher output)`` (normalized MSE, and the MSE part of ``"cosine"``).
    """

    index: int
    kind: str
    loss: str
    scale: float = 1.0
    temperature: float = 2.0
    mse_weight: float = 0.0

    def per_sample(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[N]`` losses of student output ``s`` against teacher output ``t`` (batch-first)."""
        t = t.to(s.dtype)
        if self.loss == "kl":
            T = self.temperature
            rows = F.kl_div(F.log_softmax(_rows(s) / T, -1), F.log_softmax(_rows(t) / T, -1),
                            reduction="none", log_target=True).sum(-1)
            return rows.mean(1) * (T * T)
        if self.loss == "binary_kl":
            T = self.temperature
            sz, tz = _rows(s) / T, _rows(t) / T
            kl = _bernoulli_kl(torch.sigmoid(tz), F.logsigmoid(sz), F.logsigmoid(-sz))
            return kl.flatten(1).mean(1) * (T * T)
        if self.loss == "bce":
            q = s.clamp(_EPS, 1 - _EPS)
            kl = _bernoulli_kl(t.clamp(0, 1), torch.log(q), torch.log1p(-q))
            return kl.reshape(s.shape[0], -1).mean(1)
        nmse = (s - t).square().reshape(s.shape[0], -1).mean(1) * self.scale
        if self.loss == "nmse":
            return nmse
        cos = F.cosine_similarity(_rows(s), _rows(t), dim=-1, eps=1e-8).mean(1)
        return (1 - cos) + self.mse_weight * nmse

    @property
    def description(self) -> str:
        where = f"{self.kind}[{self.index}]"
        if self.loss == "kl":
            return f"KL(T={self.temperature:g}) on {where}"
        if self.loss == "binary_kl":
            return f"binary KL(T={self.temperature:g}) on {where}"
        if self.loss == "bce":
            return f"BCE on {where}"
        if self.loss == "cosine":
            extra = f" + {self.mse_weight:g}·normalized MSE" if self.mse_weight else ""
            return f"1-cos{extra} on {where}"
        return f"normalized MSE on {where}"


def distill_term(index: int, kind: str, stats: OutputStats, temperature: float = 2.0,
                 embedding_mse: float = 0.0, force: str = "auto") -> Term:
    """The loss of output ``index`` of kind ``kind``, given its teacher statistics.

    ``force``: ``"auto"`` (by kind), ``"kl"`` (KL on every output with a last dim > 1, the
    old behaviour) or ``"mse"`` (normalized MSE on every output).
    """
    kind = kind if kind in OUTPUT_KINDS else "auto"
    scale = 1.0 / stats.var if stats.var > 1e-12 else 1.0
    last = stats.sample_shape[-1] if stats.sample_shape else 1
    if force == "kl" and last > 1:
        return Term(index, kind, "kl", scale, temperature)
    if force == "auto":
        if kind == "logits":
            return Term(index, kind, "kl" if last > 1 else "binary_kl", scale, temperature)
        if kind == "embedding" and last > 1:  # cosine of a 1-element vector is always 1
            return Term(index, kind, "cosine", scale, temperature, embedding_mse)
        if kind == "probability" and stats.in_unit_interval:
            return Term(index, kind, "bce", scale, temperature)
    return Term(index, kind, "nmse", scale, temperature)


@dataclass(frozen=True)
class Objective:
    """The recovery loss: supervised on one output (``label_loss`` ``"ce"`` / ``"mse"``) or
    distillation of every output (``terms``).  :attr:`description` is the human-readable
    loss the build report prints."""

    terms: tuple[Term, ...] = ()
    label_loss: str | None = None
    label_index: int = 0
    label_kind: str = "auto"

    @property
    def needs_teacher(self) -> bool:
        return self.label_loss is None

    @property
    def description(self) -> str:
        where = f"{self.label_kind}[{self.label_index}]"
        if self.label_loss == "ce":
            return f"cross-entropy on integer labels ({where})"
        if self.label_loss == "mse":
            return f"MSE on float labels ({where})"
        return "distillation: " + " + ".join(t.description for t in self.terms)

    def loss(self, outs: Sequence[torch.Tensor], labels: torch.Tensor | None,
             targets: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """The mean over samples of :meth:`per_sample`."""
        return self.per_sample(outs, labels, targets).mean()

    def per_sample(self, outs: Sequence[torch.Tensor], labels: torch.Tensor | None,
                   targets: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """Per-sample losses ``[N]``: each output's loss averaged within the sample, summed
        over the outputs (batch-first outputs; ``targets``: the teacher's, same order)."""
        if self.label_loss is not None:
            out = outs[self.label_index]
            n = out.shape[0]
            if self.label_loss == "ce":
                rows = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1),
                                       reduction="none")
                return rows.view(n, -1).mean(1)
            diff = out - labels.to(out.dtype).reshape(out.shape)
            return diff.square().reshape(n, -1).mean(1)
        total = None
        for term in self.terms:
            part = term.per_sample(outs[term.index], targets[term.index])
            total = part if total is None else total + part
        return total

    def correct_t(self, outs: Sequence[torch.Tensor],
                  labels: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """(correct as a device tensor, counted): no host sync per training step."""
        out = outs[self.label_index]
        if self.label_loss != "ce":
            return out.new_zeros((), dtype=torch.long), 0
        pred = out.reshape(-1, out.shape[-1]).argmax(-1)
        return (pred == labels.reshape(-1)).sum(), pred.numel()

    def correct(self, outs: Sequence[torch.Tensor], labels: torch.Tensor | None) -> tuple[int, int]:
        """(correct, counted) predictions; (0, 0) when accuracy is not defined."""
        c, k = self.correct_t(outs, labels)
        return int(c), k


def resolve_kinds(output_kinds: Sequence[str] | None, n_outputs: int) -> tuple[str, ...]:
    """One kind per output (``None``: ``"auto"`` for all); a wrong count is an error."""
    if output_kinds is None:
        return ("auto",) * n_outputs
    kinds = tuple(output_kinds)
    if len(kinds) != n_outputs:
        raise ValueError(f"{len(kinds)} output kinds {list(kinds)} given for a model with "
                         f"{n_outputs} outputs; give one kind per output "
                         f"({', '.join(OUTPUT_KINDS)})")
    return kinds


def _first_of(kinds: Sequence[str], wanted: tuple[str, ...]) -> int:
    return next((k for k, kind in enumerate(kinds) if kind in wanted), 0)


def choose_objective(data: FinetuneData, sample_outs: Sequence[torch.Tensor],
                     kinds: Sequence[str], stats: Sequence[OutputStats] | None, *,
                     distill: str = "auto", temperature: float = 2.0,
                     embedding_mse: float = 0.0) -> Objective:
    """Pick the loss from the data's labels, the outputs' kinds and the teacher's statistics
    (``stats``: ``None`` when there is no teacher)."""
    if data.labels is not None:
        if data.labels.is_floating_point():
            k = _first_of(kinds, ("regression", "probability", "detection"))
            return Objective(label_loss="mse", label_index=k, label_kind=kinds[k])
        k = _first_of(kinds, ("logits",))
        n_classes = sample_outs[k].shape[-1]
        top = int(data.labels.max())
        if int(data.labels.min()) < 0 or top >= n_classes:
            raise FinetuneDataError(f"labels range over [{int(data.labels.min())}, {top}] but "
                                    f"output {k} has {n_classes} classes")
        return Objective(label_loss="ce", label_index=k, label_kind=kinds[k])
    if stats is None:
        raise FinetuneDataError("the fine-tuning data has no labels and no teacher was given: "
                                "pass the uncompressed model as teacher, or add labels (y)")
    if distill not in ("auto", "kl", "mse"):
        raise ValueError(f"distill must be 'auto', 'kl' or 'mse' (got {distill!r})")
    return Objective(tuple(distill_term(k, kind, st, temperature, embedding_mse, distill)
                           for k, (kind, st) in enumerate(zip(kinds, stats))))


def expected_input_hint(model: nn.Module) -> str:
    """What the model seems to expect, for error messages."""
    shapes = getattr(model, "input_shapes", None)
    if shapes:
        return f"the model expects inputs of shape {list(map(tuple, shapes))}"
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            return f"its first layer {name!r} is an Embedding expecting integer ids < {m.num_embeddings}"
        if isinstance(m, nn.Linear):
            return f"its first layer {name!r} is a Linear expecting [..., {m.in_features}]"
        if isinstance(m, SUPPORTED):  # conv
            spatial = ", L" if isinstance(m, nn.Conv1d) else ", H, W"
            return (f"its first layer {name!r} is a {type(m).__name__} expecting "
                    f"[N, {m.in_channels}{spatial}]")
    return "the model's expected input shape is unknown"


@torch.no_grad()
def probe(model: nn.Module, inputs: tuple[torch.Tensor, ...], what: str) -> tuple[torch.Tensor, ...]:
    """Run ``model`` on a couple of samples (its flattened outputs); turn a shape failure into
    a clear error."""
    was_training = model.training
    model.eval()
    try:
        return flatten_outputs(model(*(x[:2] for x in inputs)))
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        got = ", ".join(str(list(x.shape[1:])) for x in inputs)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FinetuneDataError(f"{what}: per-sample input shape(s) {got} do not fit the model; "
                                f"{expected_input_hint(model)} ({first})") from err
    finally:
        model.train(was_training)
