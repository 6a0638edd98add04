"""Training objective of the recovery loop, and the checks that give clear input errors.

* integer labels: cross-entropy over the last dim of the output (accuracy reported);
* floating labels: MSE;
* no labels: distillation from the teacher, KL divergence of temperature-softened logits
  (``T² · KL(p_teacher ‖ p_student)``, Hinton et al. 2015) for classifier-like outputs, MSE
  otherwise.  ``distill="auto"`` picks KL for 2-D outputs ``[N, C]`` and MSE for the rest.

Every loss is a mean over samples of a per-sample loss (the convention FNGD assumes).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import FinetuneData, FinetuneDataError
from .layers import SUPPORTED


def first_output(out) -> torch.Tensor:
    """The tensor to train on from a model's output (tuples: first; dicts: ``logits``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return out["logits"] if "logits" in out else first_output(next(iter(out.values())))
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    raise TypeError(f"cannot train on a model output of type {type(out).__name__}")


@dataclass(frozen=True)
class Objective:
    """Which loss to use: ``"ce"``, ``"mse"`` (labels), ``"kl"`` or ``"distill_mse"``."""

    kind: str
    temperature: float = 2.0

    @property
    def needs_teacher(self) -> bool:
        return self.kind in ("kl", "distill_mse")

    def loss(self, out: torch.Tensor, labels: torch.Tensor | None,
             target: torch.Tensor | None) -> torch.Tensor:
        """The mean over samples of :meth:`per_sample`."""
        return self.per_sample(out, labels, target).mean()

    def per_sample(self, out: torch.Tensor, labels: torch.Tensor | None,
                   target: torch.Tensor | None) -> torch.Tensor:
        """Per-sample losses ``[N]`` (a sample's loss averages over its positions/elements,
        so the mean of these equals the usual batch-mean loss)."""
        n = out.shape[0]
        if self.kind == "ce":
            rows = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1),
                                   reduction="none")
            return rows.view(n, -1).mean(1)
        if self.kind == "mse":
            diff = out - labels.to(out.dtype).reshape(out.shape)
            return diff.square().reshape(n, -1).mean(1)
        if self.kind == "kl":
            t = self.temperature
            s = F.log_softmax(out.reshape(-1, out.shape[-1]) / t, dim=-1)
            p = F.log_softmax(target.reshape(-1, target.shape[-1]).to(out.dtype) / t, dim=-1)
            rows = F.kl_div(s, p, reduction="none", log_target=True).sum(-1)
            return rows.view(n, -1).mean(1) * (t * t)
        return (out - target.to(out.dtype)).square().reshape(n, -1).mean(1)

    def correct_t(self, out: torch.Tensor,
                  labels: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """(correct as a device tensor, counted): no host sync per training step."""
        if self.kind != "ce":
            return out.new_zeros((), dtype=torch.long), 0
        pred = out.reshape(-1, out.shape[-1]).argmax(-1)
        return (pred == labels.reshape(-1)).sum(), pred.numel()

    def correct(self, out: torch.Tensor, labels: torch.Tensor | None) -> tuple[int, int]:
        """(correct, counted) predictions; (0, 0) when accuracy is not defined."""
        if self.kind != "ce":
            return 0, 0
        pred = out.reshape(-1, out.shape[-1]).argmax(-1)
        return int((pred == labels.reshape(-1)).sum()), int(pred.numel())


def choose_objective(data: FinetuneData, sample_out: torch.Tensor, distill: str,
                     temperature: float, has_teacher: bool) -> Objective:
    """Pick the loss from the data's labels and the model's output shape."""
    if data.labels is not None:
        if data.labels.is_floating_point():
            return Objective("mse")
        n_classes = sample_out.shape[-1]
        top = int(data.labels.max())
        if int(data.labels.min()) < 0 or top >= n_classes:
            raise FinetuneDataError(f"labels range over [{int(data.labels.min())}, {top}] but "
                                    f"the model outputs {n_classes} classes")
        return Objective("ce")
    if not has_teacher:
        raise FinetuneDataError("the fine-tuning data has no labels and no teacher was given: "
                                "pass the uncompressed model as teacher, or add labels (y)")
    if distill not in ("auto", "kl", "mse"):
        raise ValueError(f"distill must be 'auto', 'kl' or 'mse' (got {distill!r})")
    if distill == "kl" or (distill == "auto" and sample_out.dim() == 2):
        return Objective("kl", temperature)
    return Objective("distill_mse")


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
def probe(model: nn.Module, inputs: tuple[torch.Tensor, ...], what: str) -> torch.Tensor:
    """Run ``model`` on a couple of samples; turn a shape failure into a clear error."""
    was_training = model.training
    model.eval()
    try:
        return first_output(model(*(x[:2] for x in inputs)))
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        got = ", ".join(str(list(x.shape[1:])) for x in inputs)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FinetuneDataError(f"{what}: per-sample input shape(s) {got} do not fit the model; "
                                f"{expected_input_hint(model)} ({first})") from err
    finally:
        model.train(was_training)
