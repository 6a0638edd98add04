"""Fidelity of a compiled bundle against the original model, and the build's pass/fail rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    """A build fails below these unless `--allow-degraded` (top-1 applies to classifiers only)."""

    min_top1_agreement: float = 0.97
    min_cosine: float = 0.97
    max_accuracy_drop: float = 0.005   # with labelled eval data: accuracy may drop this much (0.5 pt)


@dataclass(frozen=True)
class Fidelity:
    n_samples: int
    max_abs_error: float
    mean_abs_error: float
    cosine: float                       # mean over samples of the output cosine similarity
    min_cosine: float
    top1_agreement: float | None        # classifiers: share of samples with the same argmax
    accuracy_reference: float | None    # with labels
    accuracy_bundle: float | None

    def failures(self, t: Thresholds) -> list[str]:
        """Classifiers are judged by accuracy when the eval data has labels (a fine-tuned model may
        disagree with the original where the original was wrong), else by top-1 agreement; other
        models by the cosine of their outputs. Every figure is reported either way."""
        if self.accuracy_reference is not None and self.accuracy_bundle is not None:
            drop = self.accuracy_reference - self.accuracy_bundle
            if drop > t.max_accuracy_drop:
                return [f"accuracy {self.accuracy_bundle:.4f} is {100 * drop:.2f} points below the original's "
                        f"{self.accuracy_reference:.4f} (allowed {100 * t.max_accuracy_drop:.2f})"]
            return []
        if self.top1_agreement is not None:
            if self.top1_agreement < t.min_top1_agreement:
                return [f"top-1 agreement {self.top1_agreement:.4f} < {t.min_top1_agreement}"]
            return []
        if self.cosine < t.min_cosine:
            return [f"mean output cosine {self.cosine:.4f} < {t.min_cosine}"]
        return []


def is_classifier_output(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] > 1


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None) -> Fidelity:
    """Compares the first outputs of reference and bundle, stacked over samples on axis 0."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, bundle {got.shape}")
    n = ref.shape[0]
    r, g = ref.reshape(n, -1), got.reshape(n, -1)
    err = np.abs(r - g)
    cos = (r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
    top1 = acc_r = acc_g = None
    if is_classifier_output(r):
        pr, pg = r.argmax(1), g.argmax(1)
        top1 = float((pr == pg).mean())
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)[:n]
            acc_r, acc_g = float((pr == labels).mean()), float((pg == labels).mean())
    return Fidelity(n, float(err.max()), float(err.mean()), float(cos.mean()), float(cos.min()), top1, acc_r, acc_g)
