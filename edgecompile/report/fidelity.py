"""The fidelity gate: every output of a compiled bundle compared with the original model, by kind.

Each model output has a *kind* (declared by the factory's ``data["outputs"]`` or ``--task``), and
the kind decides the metric that can judge it:

============  ===================================================  ==========================
kind          gate metric                                          why
============  ===================================================  ==========================
logits        accuracy drop (labelled eval data) or top-1          a classifier is judged by
              agreement with the original on the samples it        its decisions; a near-tie
              decides (top-1 logit ahead by >= 0.5)                flips under any rounding
embedding     mean per-sample cosine                               direction is what a
                                                                   retrieval index compares
probability   decision agreement at the threshold (0.5) over       a 1-value output has no
              the set, and correlation over the set                per-sample cosine
regression,   correlation over the whole set (centred cosine of    offsets near zero make a
detection     all values)                                          per-sample cosine unstable
state         mean per-sample cosine                               a recurrent state is a
                                                                   vector carried forward
auto          per-sample cosine when a sample has >= 2 values,     the safe default: never
              else correlation over the set                        argmax unless asked
============  ===================================================  ==========================

Cosine is never computed over a 1-element vector (it is always 1.0). With labels and no declared
kinds, the first output is taken to be class logits. A factory may add its own checks
(``data["metric"]``, e.g. agreement over a whole recurrent stream). Every figure is reported for
every output; the checks say which ones decide, with their thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from ..errors import InputError

KINDS = ("auto", "logits", "embedding", "probability", "regression", "detection", "state")
_ALIASES = {"classify": "logits", "classifier": "logits", "class": "logits", "embed": "embedding",
            "prob": "probability", "binary": "probability", "regress": "regression", "value": "regression",
            "detect": "detection", "recurrent": "state"}

# A user metric: (reference outputs, bundle outputs) -> one check or a list of checks, each a dict
# {"name": str, "value": float, "threshold": float, "higher_is_better": bool (default True)}.
MetricFn = Callable[[list[np.ndarray], list[np.ndarray]], dict | list]


# A logits sample counts as decided when the reference's top-1 logit leads the runner-up by this
# much (probability ratio e^0.5 = 1.65). Undecided samples flip under any perturbation, even a
# different fp32 summation order: measured on EfficientNet-Lite0 over photo crops (median top-1
# probability 0.23), int8 *weights* alone change 6-12 % of all top-1 decisions at logit cosine 0.99.
DECIDED_MARGIN = 0.5
MIN_DECIDED = 0.25     # gate on the decided samples when at least this share of the set is decided


class FidelitySpecError(InputError, ValueError):
    """Output kinds or a metric that do not fit the model (one line: what and how to fix it)."""


@dataclass(frozen=True)
class Thresholds:
    """A build fails below these unless `--allow-degraded`; each applies to the kinds that use it."""

    min_top1_agreement: float = 0.97     # logits without labels
    min_cosine: float = 0.97             # embedding, state, auto (per-sample cosine)
    max_accuracy_drop: float = 0.005     # logits with labels: 0.5 points
    min_decision_agreement: float = 0.97  # probability: same side of the threshold
    min_correlation: float = 0.97        # probability, regression, detection, scalar auto


@dataclass(frozen=True)
class OutputSpec:
    """What one model output is: its kind and, for probabilities, the decision threshold."""

    kind: str = "auto"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FidelitySpecError(f"unknown output kind {self.kind!r}; use one of {', '.join(KINDS)}")


def parse_output_specs(spec, n_outputs: int) -> tuple[OutputSpec, ...]:
    """One `OutputSpec` per output from None, ``"logits,state"`` (``--task``), or a list of kinds
    / dicts ``{"kind": ..., "threshold": ...}`` (factory). Missing trailing entries are ``auto``."""
    if spec is None:
        items: list = []
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    if len(items) > n_outputs:
        raise FidelitySpecError(f"{len(items)} output kinds given for a model with {n_outputs} output(s): "
                                f"give one kind per output, in the model's output order")
    out = []
    for it in items:
        if isinstance(it, OutputSpec):
            out.append(it)
            continue
        d = {"kind": it} if isinstance(it, str) else dict(it)
        kind = str(d.get("kind", "auto")).lower()
        kind = _ALIASES.get(kind, kind)
        try:
            threshold = float(d.get("threshold", 0.5))
        except (TypeError, ValueError):
            raise FidelitySpecError(f"output {it!r}: threshold must be a number") from None
        out.append(OutputSpec(kind, threshold))
    return tuple(out) + (OutputSpec(),) * (n_outputs - len(out))


@dataclass(frozen=True)
class Check:
    """One gate decision: `metric` of `output` measured at `value` against `threshold`."""

    output: str
    metric: str
    value: float
    threshold: float
    higher_is_better: bool = True

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.value):
            return False
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def line(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return f"{self.output}: {self.metric} {self.value:.4f} (needs {op} {self.threshold:g})"


@dataclass(frozen=True)
class OutputFidelity:
    """Every figure measured on one output over the eval set (None where it does not apply)."""

    name: str
    kind: str
    values_per_sample: int
    max_abs_error: float
    mean_abs_error: float
    rel_rmse: float | None               # RMSE / std of the reference over the set
    correlation: float | None            # Pearson over all values of the set
    mean_cosine: float | None            # per-sample cosine (samples with >= 2 values)
    min_cosine: float | None
    top1_agreement: float | None = None
    top1_agreement_decided: float | None = None   # on samples whose reference top-1 leads by DECIDED_MARGIN
    decided_fraction: float | None = None
    accuracy_reference: float | None = None
    accuracy_bundle: float | None = None
    decision_agreement: float | None = None
    positive_rate_reference: float | None = None
    positive_rate_bundle: float | None = None


@dataclass(frozen=True)
class Fidelity:
    """The gate's verdict: figures per output and the checks that decide."""

    n_samples: int
    outputs: tuple[OutputFidelity, ...]
    checks: tuple[Check, ...]
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [c.line() for c in self.checks if not c.passed]

    # Headline figures of the first output, for one-line summaries and older callers.
    @property
    def primary(self) -> OutputFidelity:
        return self.outputs[0]

    @property
    def top1_agreement(self) -> float | None:
        return self.primary.top1_agreement

    @property
    def accuracy_reference(self) -> float | None:
        return self.primary.accuracy_reference

    @property
    def accuracy_bundle(self) -> float | None:
        return self.primary.accuracy_bundle

    @property
    def cosine(self) -> float | None:
        return self.primary.mean_cosine

    def to_dict(self) -> dict:
        p = self.primary
        return {"n_samples": self.n_samples, "passed": self.passed, "note": self.note,
                "top1_agreement": p.top1_agreement, "accuracy_reference": p.accuracy_reference,
                "accuracy_bundle": p.accuracy_bundle, "cosine": p.mean_cosine, "min_cosine": p.min_cosine,
                "max_abs_error": max(o.max_abs_error for o in self.outputs),
                "outputs": [asdict(o) for o in self.outputs],
                "checks": [dict(asdict(c), passed=c.passed, line=c.line()) for c in self.checks], **self.extra}


# -- numerics -----------------------------------------------------------------------------------

def per_sample_cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine of each row of two [N, D] arrays; two all-zero rows count as equal (1.0), one
    all-zero row against a non-zero one as 0.0."""
    nr, ng = np.linalg.norm(ref, axis=1), np.linalg.norm(got, axis=1)
    tiny = 1e-30
    cos = (ref * got).sum(1) / np.maximum(nr * ng, tiny)
    both_zero = (nr <= tiny) & (ng <= tiny)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


def set_correlation(ref: np.ndarray, got: np.ndarray) -> float:
    """Pearson correlation of all values of the set; a constant reference counts as matched
    (1.0) only if the bundle reproduces it, else 0.0 (a constant bundle output scores 0)."""
    r, g = ref.ravel(), got.ravel()
    rc, gc = r - r.mean(), g - g.mean()
    sr, sg = np.linalg.norm(rc), np.linalg.norm(gc)
    scale = max(1.0, float(np.abs(r).max(initial=0.0)))
    if sr <= 1e-12 * scale * np.sqrt(r.size):
        return 1.0 if np.abs(r - g).max(initial=0.0) <= 1e-6 * scale else 0.0
    if sg == 0.0:
        return 0.0
    return float(np.clip((rc @ gc) / (sr * sg), -1.0, 1.0))


def _figures(name: str, spec: OutputSpec, ref: np.ndarray, got: np.ndarray, labels) -> OutputFidelity:
    n = ref.shape[0]
    r, g = ref.reshape(n, -1).astype(np.float64), got.reshape(n, -1).astype(np.float64)
    d = r.shape[1]
    err = np.abs(r - g)
    std = float(r.std())
    rmse = float(np.sqrt(((r - g) ** 2).mean())) if r.size else 0.0
    cos = per_sample_cosine(r, g) if d >= 2 else None
    fig = dict(name=name, kind=spec.kind, values_per_sample=d, max_abs_error=float(err.max(initial=0.0)),
               mean_abs_error=float(err.mean()) if err.size else 0.0,
               rel_rmse=rmse / std if std > 0 else None, correlation=set_correlation(r, g),
               mean_cosine=None if cos is None else float(cos.mean()),
               min_cosine=None if cos is None else float(cos.min()))
    if spec.kind == "logits" and d >= 2:
        pr, pg = r.argmax(1), g.argmax(1)
        fig["top1_agreement"] = float((pr == pg).mean())
        top2 = np.sort(r, axis=1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) >= DECIDED_MARGIN
        fig["decided_fraction"] = float(decided.mean())
        if decided.any():
            fig["top1_agreement_decided"] = float((pr[decided] == pg[decided]).mean())
        if labels is not None:
            lab = np.asarray(labels).reshape(-1)[:n]
            fig["accuracy_reference"], fig["accuracy_bundle"] = float((pr == lab).mean()), float((pg == lab).mean())
    if spec.kind == "probability" or (spec.kind == "logits" and d == 1):
        t = spec.threshold if spec.kind == "probability" else 0.0
        dr, dg = r > t, g > t
        fig["decision_agreement"] = float((dr == dg).mean())
        fig["positive_rate_reference"], fig["positive_rate_bundle"] = float(dr.mean()), float(dg.mean())
    return OutputFidelity(**fig)


def _checks(o: OutputFidelity, spec: OutputSpec, t: Thresholds) -> list[Check]:
    k, name = spec.kind, o.name
    if k == "logits" and o.accuracy_reference is not None:
        return [Check(name, "accuracy drop (points)", 100 * (o.accuracy_reference - o.accuracy_bundle),
                      100 * t.max_accuracy_drop, higher_is_better=False)]
    if k == "logits" and o.top1_agreement is not None:
        if o.decided_fraction is not None and o.decided_fraction >= MIN_DECIDED and o.decided_fraction < 1.0:
            return [Check(name, f"top-1 agreement on decided samples ({o.decided_fraction:.0%}, "
                          f"margin >= {DECIDED_MARGIN})", o.top1_agreement_decided, t.min_top1_agreement)]
        return [Check(name, "top-1 agreement", o.top1_agreement, t.min_top1_agreement)]
    if o.decision_agreement is not None:
        thr = spec.threshold if k == "probability" else 0.0
        return [Check(name, f"decision agreement at {thr:g}", o.decision_agreement, t.min_decision_agreement),
                Check(name, "correlation over the set", o.correlation, t.min_correlation)]
    if k in ("embedding", "state", "auto") and o.mean_cosine is not None:
        return [Check(name, "mean per-sample cosine", o.mean_cosine, t.min_cosine)]
    return [Check(name, "correlation over the set", o.correlation, t.min_correlation)]


def checks_from(res, what: str = "metric") -> list[Check]:
    """`Check`s from what a factory's metric returned: one dict or a list of dicts with
    ``name``, ``value``, ``threshold`` and optionally ``higher_is_better``."""
    items = res if isinstance(res, list) else [res]
    checks = []
    for it in items:
        try:
            checks.append(Check("model", str(it["name"]), float(it["value"]), float(it["threshold"]),
                                bool(it.get("higher_is_better", True))))
        except (KeyError, TypeError, ValueError) as e:
            raise FidelitySpecError(f"the factory's {what} returned {it!r}; it must return "
                                    f"{{'name', 'value', 'threshold'[, 'higher_is_better']}} ({e})") from None
    return checks


def compare(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], specs: Sequence[OutputSpec] | None = None,
            thresholds: Thresholds | None = None, labels: np.ndarray | None = None,
            names: Sequence[str] | None = None, metric: MetricFn | None = None, note: str = "") -> Fidelity:
    """Compares every output of the reference and the bundle (each stacked over samples on axis 0).

    Parameters
    ----------
    ref, got : one array per output, same shapes
    specs : one `OutputSpec` per output (None: all ``auto``; with labels the first becomes logits)
    labels : integer class labels of the eval samples (accuracy of the first logits output)
    metric : the factory's own checks over all outputs
    """
    ref, got = [np.asarray(a) for a in ref], [np.asarray(a) for a in got]
    if len(ref) != len(got) or not ref:
        raise ValueError(f"the reference has {len(ref)} outputs, the bundle {len(got)}")
    specs = tuple(specs) if specs is not None else parse_output_specs(None, len(ref))
    if labels is not None and all(s.kind == "auto" for s in specs):
        specs = (OutputSpec("logits"),) + specs[1:]
    names = list(names) if names is not None else [f"output {i}" for i in range(len(ref))]
    t = thresholds or Thresholds()
    outs, checks = [], []
    for i, (r, g) in enumerate(zip(ref, got)):
        if r.shape != g.shape:
            raise ValueError(f"{names[i]}: reference shape {list(r.shape)}, bundle shape {list(g.shape)}")
        use_labels = labels if specs[i].kind == "logits" and i == _first_logits(specs) else None
        o = _figures(names[i], specs[i], r, g, use_labels)
        outs.append(o)
        checks += _checks(o, specs[i], t)
    if metric is not None:
        checks += checks_from(metric(ref, got), "metric")
    return Fidelity(int(ref[0].shape[0]), tuple(outs), tuple(checks), note)


def _first_logits(specs: Sequence[OutputSpec]) -> int:
    return next((i for i, s in enumerate(specs) if s.kind == "logits"), -1)
