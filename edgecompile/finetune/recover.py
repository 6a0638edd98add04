"""The short recovery loop after compression: ``recover(student, data, config, teacher, masks)``.

Used by ``edgecompile build --finetune DATA --optimizer auto|fngd|adamw|sgd|kfac|twa --epochs N``
(``auto``, the default: the optimizer ``bench/bench_finetune.py`` measured fastest for the
model's kind, :data:`.optimizers.AUTO`).
Cross-entropy when the data has labels, distillation of every output from the teacher
otherwise, with a loss per output kind (:mod:`.objective`); the teacher's outputs computed once
and cached (:class:`.outputs.TeacherOutputs`); pruning masks re-applied after every step; a checkpoint per epoch; DDP
when launched under ``torchrun`` (each rank takes its slice of every global batch); CUDA when
available.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from . import checkpoint, ddp, optimizers
from . import fngd as fngd_defaults
from .data import FinetuneData, FinetuneDataError, batches, eval_batches
from .fngd import FNGD
from .layers import GRAM_DEFAULT
from .objective import Objective, choose_objective, probe, resolve_kinds
from .regularize import parse_regularizer
from .outputs import (TEACHER_CACHE_BYTES, TeacherOutputs, batch_first, find_batch_axes,
                      flatten_outputs)
from .twa import TWA, reestimate_batchnorm
from ..errors import InputError

log = logging.getLogger(__name__)


class NonFiniteLossError(InputError, FloatingPointError):
    """The training loss became NaN or infinite."""


class RecoverConfigError(InputError, ValueError):
    """A `RecoverConfig` field is out of range (epochs, batch size, schedule, TWA phases)."""


#: Learning-rate schedules over the whole run (every optimizer, every parameter group):
#: ``"constant"``, or ``"cosine"`` from the configured rate down to 0 at the last step.
SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at global step ``step`` of ``total``."""
    if schedule == "constant" or total <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


@dataclass(frozen=True)
class RecoverConfig:
    """Recovery fine-tuning settings (``None`` learning rate/damping: per-optimizer default,
    see :data:`edgecompile.finetune.optimizers.DEFAULTS`)."""

    optimizer: str = "auto"  # per model kind, see optimizers.AUTO
    epochs: int = 3
    batch_size: int = 64
    lr: float | None = None
    damping: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    fallback_lr: float | None = None
    alpha_refresh_every: int | None = None
    # The library's one default (layers.GRAM_DEFAULT, exact and cheapest): "factor" never forms
    # per-sample gradients but took > 300 s for one batch of 64 160x160 images on a 5M-parameter
    # MobileNet-style CNN (2 cores) against 34 s for "auto" (bench/bench_finetune_kinds.py).
    fngd_gram: str = GRAM_DEFAULT
    fngd_coefficients: str = "shared"
    fngd_normalize: str = "mean"
    fngd_check_every: int | None = fngd_defaults.CHECK_EVERY
    fngd_min_alignment: float = fngd_defaults.MIN_ALIGNMENT
    fngd_reuse_clip: bool = fngd_defaults.REUSE_CLIP
    fngd_reuse_renormalize: bool = fngd_defaults.REUSE_RENORMALIZE
    fngd_ddp_solve: str = "local"
    # Every epoch the batches of the first (only their order shuffled), for FNGD: stored
    # coefficients are reused in the batch they were solved in (bench/bench_finetune.py).
    fngd_fixed_batches: bool = False
    lr_schedule: str = "cosine"
    kfac_ema: float = 0.95
    kfac_inverse_every: int = 10
    kfac_kl_clip: float | None = 1e-3
    twa_warmup_epochs: int = 1
    # TWA's basis: weights collected along the whole warm-up trajectory (up to this many,
    # evenly spaced in steps; the papers use ~100), D × K / world floats per rank.
    twa_checkpoints: int = 100
    twa_base: str = "sgd"
    # Journal version: one coefficient vector per tensor.  Shared coefficients lost accuracy in
    # the TWA phase on the digits transformer (0.292 after warm-up -> 0.244), per-tensor ones
    # gained (-> 0.395; bench/bench_finetune.py rows twa, twa-shared).
    twa_per_layer: bool = True
    # TWA-v (the journal version): this share of the samples is held out of the warm-up and the
    # coefficients are trained on it alone; 0: TWA-t, both phases on every sample. Not the default:
    # at 0.2 it lost on every bench task (bench/bench_finetune.py rows twa / twa-v, final accuracy:
    # digits CNN 0.975 / 0.967, digits transformer 0.395 / 0.310, mnist1d 0.963 / 0.912, reverse-s2s
    # 0.234 / 0.187): with a few thousand samples, the warm-up misses the held-out fifth more than
    # the coefficients gain from fresh data. The paper's TWA-v has a validation set to spare.
    twa_holdout: float = 0.0
    distill: str = "auto"  # "auto": loss by output kind; "kl" / "mse" on every output
    temperature: float = 2.0
    embedding_mse: float = 0.0  # weight of normalized MSE next to 1-cos on embeddings
    teacher_cache_bytes: int = TEACHER_CACHE_BYTES  # above: the teacher re-runs every step
    device: str | None = None
    seed: int = 0
    checkpoint_dir: str | None = None
    resume: bool = True
    keep_checkpoints: int = 2
    eval_every: int | None = None
    regularize: str | None = None  # "erank:λ" | "nuclear:λ": compression-aware training (.regularize)

    def __post_init__(self):
        optimizers.check_name(self.optimizer)
        parse_regularizer(self.regularize)
        if self.epochs < 1 or self.batch_size < 1:
            raise RecoverConfigError(f"epochs and batch_size must be >= 1 (got {self.epochs}, "
                                     f"{self.batch_size})")
        if self.lr_schedule not in SCHEDULES:
            raise RecoverConfigError(f"lr_schedule must be one of {', '.join(SCHEDULES)} "
                                     f"(got {self.lr_schedule!r})")
        if not 0.0 <= self.twa_holdout < 1.0:
            raise RecoverConfigError(f"twa_holdout must be in [0, 1) (got {self.twa_holdout})")
        if self.optimizer == "twa" and not 0 < self.twa_warmup_epochs < self.epochs:
            raise RecoverConfigError(f"twa needs 0 < twa_warmup_epochs ({self.twa_warmup_epochs}) < "
                                     f"epochs ({self.epochs}): a normal phase, then subspace training")


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    wall_s: float


@dataclass(frozen=True)
class CurvePoint:
    epoch: int
    step: int
    wall_s: float  # cumulative training time (evaluation excluded)
    eval_loss: float | None
    eval_accuracy: float | None


@dataclass(frozen=True)
class RecoverResult:
    optimizer: str
    epochs: tuple[EpochStats, ...]
    curve: tuple[CurvePoint, ...]
    device: str
    world_size: int
    resumed_from_epoch: int | None
    state_dict: dict[str, torch.Tensor]
    #: The loss actually trained, e.g. "distillation: KL(T=2) on logits[0] + 1-cos on
    #: embedding[1]" or "MSE on float labels (regression[0])".
    loss_description: str = ""
    #: Whether the teacher's outputs were cached (False: recomputed every step, or no teacher).
    teacher_cached: bool = False
    #: FNGD's drift checks, ``(epoch, cosine, uniform cosine)`` each (see ``FNGD.alignment``), and how many of
    #: them found the stored coefficients stale and re-solved.
    alignment: tuple[tuple[int, float, float], ...] = ()
    resolves: int = 0

    @property
    def final_accuracy(self) -> float | None:
        last = self.epochs[-1]
        return last.eval_accuracy if last.eval_accuracy is not None else last.accuracy


def _resolve_device(config: RecoverConfig) -> torch.device:
    if ddp.is_distributed() or config.device is None or config.device.startswith("cuda"):
        return ddp.init_from_env(config.device)
    return torch.device(config.device)


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, device):
    if not masks:
        return []
    params = dict(model.named_parameters())
    out = []
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask for {name!r}, which is not a parameter of the model "
                           f"(parameters: {', '.join(list(params)[:6])}…)")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter "
                             f"has {tuple(params[name].shape)}")
        out.append((params[name], mask.to(device=device, dtype=torch.bool)))
    return out


@torch.no_grad()
def _apply_masks(masks) -> None:
    for p, m in masks:
        p.masked_fill_(~m, 0)


@torch.no_grad()
def _evaluate(model, data, objective, teacher_eval, axes, batch_size, device):
    if data.eval_inputs is None:
        return None, None
    was = model.training
    model.eval()
    total, correct, counted, n = 0.0, 0, 0, 0
    for b in eval_batches(data.eval_inputs, data.eval_labels, batch_size, device):
        outs = batch_first(flatten_outputs(model(*b.inputs)), axes)
        targets = teacher_eval.get(b.ids, b.inputs) if objective.needs_teacher else None
        total += float(objective.loss(outs, b.labels, targets)) * len(b.ids)
        c, k = objective.correct(outs, b.labels)
        correct, counted, n = correct + c, counted + k, n + len(b.ids)
    model.train(was)
    return total / n, (correct / counted if counted else None)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recover(student: nn.Module, data: FinetuneData, config: RecoverConfig,
            teacher: nn.Module | None = None, masks: Mapping[str, torch.Tensor] | None = None,
            progress: Callable[[EpochStats], None] | None = None,
            output_kinds: Sequence[str] | None = None) -> RecoverResult:
    """Fine-tune ``student`` in place to win back accuracy after compression.

    Parameters
    ----------
    student:
        The compressed model (its parameters are trained in place).
    data:
        Inputs, optional labels, optional eval split.
    config:
        Optimizer, epochs, batch size, … (:class:`RecoverConfig`).
    teacher:
        The original model, for distillation when ``data`` has no labels.
    masks:
        Boolean keep-masks per parameter name; pruned weights stay exactly zero.
    progress:
        Called with each epoch's :class:`EpochStats`.
    output_kinds:
        What each output is, in ``tree_leaves`` order of the model's output (``"logits"``,
        ``"embedding"``, ``"probability"``, ``"regression"``, ``"detection"``, ``"state"``,
        ``"auto"``); chooses each output's distillation loss and which output labels train.
        ``None``: ``"auto"`` (normalized MSE) for every output.

    The teacher runs once over the data before the first epoch; its outputs are kept on the
    CPU (``N × elements per sample × 4`` bytes, see :class:`.outputs.TeacherOutputs`) unless
    that exceeds ``config.teacher_cache_bytes``, in which case it runs again at every step.

    Raises
    ------
    FinetuneDataError
        Empty data, inputs that do not fit the model, labels out of range, no labels and
        no teacher, a student whose outputs do not match the teacher's.
    ValueError
        ``output_kinds`` does not have one kind per output.
    NonFiniteLossError
        The loss became NaN/inf (names epoch and step; lower the learning rate).
    """
    device = _resolve_device(config)
    rank, world = ddp.rank(), ddp.world_size()
    torch.manual_seed(config.seed)
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    mask_list = _check_masks(student, masks, device)
    _apply_masks(mask_list)
    sample = probe(student, tuple(x.to(device) for x in data.inputs), "fine-tuning data")
    if data.eval_inputs is not None:
        probe(student, tuple(x.to(device) for x in data.eval_inputs), "eval data")
    kinds = resolve_kinds(output_kinds, len(sample))
    axes, targets, eval_targets, stats = (0,) * len(sample), None, None, None
    if data.labels is None and teacher is not None:
        axes, targets, eval_targets = _teacher_outputs(teacher, data, sample, config, device)
        stats = targets.stats
    objective = choose_objective(data, sample, kinds, stats, distill=config.distill,
                                 temperature=config.temperature,
                                 embedding_mse=config.embedding_mse)
    log.info("fine-tuning loss: %s", objective.description)
    name, why = optimizers.resolve(config.optimizer, student,
                                   tuple(x[:2].to(device) for x in data.inputs), config.epochs)
    if name != config.optimizer:
        log.info("fine-tuning optimizer: %s (%s)", name, why)
        config = replace(config, optimizer=name)
    model = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device] if device.type == "cuda" else None)
    opts = optimizers.make(config.optimizer, student, config)
    base_lrs = {k: [(g["lr"], g.get("fallback_lr")) for g in o.param_groups]
                for k, o in opts.items()}
    history, curve, start, resumed = [], [], 0, None
    if config.checkpoint_dir and config.resume:
        saved = checkpoint.load_latest(config.checkpoint_dir, device)
        if saved is not None:
            if saved["config"]["optimizer"] != config.optimizer:
                raise ValueError(f"checkpoint in {config.checkpoint_dir} was made with "
                                 f"{saved['config']['optimizer']}, not {config.optimizer}; "
                                 "use another checkpoint_dir or resume=False")
            student.load_state_dict(saved["model"])
            for k, o in opts.items():
                o.load_state_dict(saved["optimizers"][k])
            history = [EpochStats(**e) for e in saved["history"]]
            curve = [CurvePoint(**c) for c in saved["curve"]]
            start = resumed = saved["epoch"] + 1
            log.info("resuming from epoch %d (%s)", start, config.checkpoint_dir)
    subsets = twa_split(len(data), config, world)
    steps_per_epoch = tuple(sum(1 for _ in batches(data, config.batch_size, 0, config.seed, "cpu", rank, world,
                                                    subset=sub)) for sub in subsets)
    loop = _Loop(model, student, data, config, objective, (targets, eval_targets, axes), opts,
                 mask_list, device, steps_per_epoch, curve, sum(e.wall_s for e in history),
                 base_lrs, subsets)
    loop.set_regularizer(parse_regularizer(config.regularize))
    try:
        for epoch in range(start, config.epochs):
            stats = loop.run_epoch(epoch)
            history.append(stats)
            if config.checkpoint_dir and rank == 0:
                checkpoint.save(config.checkpoint_dir, epoch, {
                    "epoch": epoch, "model": student.state_dict(),
                    "optimizers": {k: o.state_dict() for k, o in opts.items()},
                    "history": [asdict(e) for e in history], "curve": [asdict(c) for c in curve],
                    "config": asdict(config)}, config.keep_checkpoints)
            if progress is not None:  # after the checkpoint: an interrupt here loses nothing
                progress(stats)
    finally:
        main = opts["main"]
        drift = (tuple(main.alignment), main.resolves) if isinstance(main, FNGD) else ((), 0)
        del main
        _release(opts, loop)
        del loop, model, opts
        if world > 1:
            gc.collect()
    state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
    return RecoverResult(config.optimizer, tuple(history), tuple(curve), str(device), world,
                         resumed, state, objective.description,
                         targets is not None and targets.cached, *drift)


def _teacher_outputs(teacher, data, sample, config, device):
    """(batch axes, training-split and eval-split :class:`TeacherOutputs`), the cache cap
    shared by the two splits (training first)."""
    probe_in = tuple(x[:3].to(device) for x in data.inputs)
    axes = find_batch_axes(teacher, probe_in, len(sample))
    if len(axes) != len(sample):
        raise FinetuneDataError(f"the original model has {len(axes)} outputs, the compressed "
                                f"one {len(sample)}: they must match one to one")
    cap = config.teacher_cache_bytes
    train = TeacherOutputs(teacher, data.inputs, axes, config.batch_size, device, cap)
    for k, (s, st) in enumerate(zip(batch_first(sample, axes), train.stats)):
        if tuple(s.shape[1:]) != st.sample_shape:
            raise FinetuneDataError(f"output {k}: the compressed model gives "
                                    f"{list(s.shape[1:])} per sample, the original "
                                    f"{list(st.sample_shape)}")
    evals = None
    if data.eval_inputs is not None:
        left = cap - train.nbytes if train.cached else cap
        evals = TeacherOutputs(teacher, data.eval_inputs, axes, config.batch_size, device,
                               max(left, 0))
    return axes, train, evals


def _release(opts: dict, loop: _Loop) -> None:
    """Leaves the student as it came: optimizer hooks removed, the DDP wrapper dropped now.

    The hooks tie student → optimizer → DDP wrapper in a cycle that only the garbage collector
    frees; a DDP reducer freed that late (after ``destroy_process_group``, at interpreter exit)
    aborted the process ("terminate called without an active exception") in about 1 of 30
    two-process runs here, and 0 of 120 once it was freed before the group was destroyed.
    """
    for o in opts.values():
        getattr(o, "remove_hooks", lambda: None)()
    loop.model = loop.opts = None


def twa_split(n: int, config: RecoverConfig, world: int = 1) -> tuple:
    """(warm-up ids, TWA-phase ids), or (None, None) for every sample in both: TWA-v holds out
    `config.twa_holdout` of the samples, drawn by the seed, for the coefficients alone."""
    if config.optimizer != "twa" or not config.twa_holdout:
        return None, None
    held = max(world, int(round(config.twa_holdout * n)))
    if n - held < world:
        raise RecoverConfigError(f"twa_holdout {config.twa_holdout} of {n} samples leaves too few for the warm-up")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 7919 + 17))
    return order[held:].sort().values, order[:held].sort().values


class _Loop:
    """One epoch at a time; keeps the cumulative training clock for the curve."""

    def __init__(self, model, student, data, config, objective: Objective, teacher_outputs,
                 opts, masks, device, steps_per_epoch, curve, clock, base_lrs, subsets=(None, None)):
        self.model, self.student, self.data, self.config = model, student, data, config
        self.objective, self.opts, self.masks = objective, opts, masks
        self.targets, self.eval_targets, self.axes = teacher_outputs
        self.device, self.curve, self.clock = device, curve, clock
        # per phase (warm-up / TWA; the same for other optimizers): sample ids and steps an epoch
        self.subsets, self.phase_steps, self.base_lrs = subsets, steps_per_epoch, base_lrs
        w = config.twa_warmup_epochs if config.optimizer == "twa" else config.epochs
        self.warm_steps = warm = w * steps_per_epoch[0]
        self.total_steps = warm + (config.epochs - w) * steps_per_epoch[1]
        self.twa_every = max(1, -(-warm // config.twa_checkpoints))
        self.reg, self.reg_params = None, []

    def set_regularizer(self, reg) -> None:
        """Adds `reg`'s low-rank penalty on the student's layer weights to every step's loss."""
        from .regularize import targets

        self.reg = reg
        self.reg_params = [p for _, p in targets(self.student, reg)] if reg is not None else []

    def _phase(self, epoch: int) -> int:
        """0 in the warm-up (every epoch of other optimizers), 1 in TWA's subspace phase."""
        return int(self.config.optimizer == "twa" and epoch >= self.config.twa_warmup_epochs)

    def _first_step(self, epoch: int) -> int:
        if self._phase(epoch):
            return self.warm_steps + (epoch - self.config.twa_warmup_epochs) * self.phase_steps[1]
        return epoch * self.phase_steps[0]

    def _optimizer(self, epoch: int) -> torch.optim.Optimizer:
        """TWA's warm-up runs its base optimizer; every other epoch the main one."""
        return self.opts["base"] if "base" in self.opts and not self._phase(epoch) else self.opts["main"]

    def _set_lr(self, opt, global_step: int) -> None:
        if self.config.lr_schedule == "constant":
            return
        step, total = global_step, self.total_steps
        if "base" in self.opts:  # TWA: each phase its own schedule, as in the paper's code
            if opt is self.opts["base"]:
                total = self.warm_steps
            else:
                step, total = step - self.warm_steps, total - self.warm_steps
        f = lr_factor(self.config.lr_schedule, step, total)
        key = next(k for k, o in self.opts.items() if o is opt)
        for group, (lr, fallback) in zip(opt.param_groups, self.base_lrs[key]):
            group["lr"] = lr * f
            if fallback is not None:
                group["fallback_lr"] = fallback * f

    def _record(self, epoch: int, step: int) -> tuple[float | None, float | None]:
        ev = _evaluate(self.student, self.data, self.objective, self.eval_targets, self.axes,
                       self.config.batch_size, self.device)
        self.curve.append(CurvePoint(epoch, step, self.clock, *ev))
        return ev

    def run_epoch(self, epoch: int) -> EpochStats:
        cfg, opt = self.config, self._optimizer(epoch)
        twa = self.opts["main"] if isinstance(self.opts["main"], TWA) else None
        if isinstance(opt, FNGD):
            opt.set_epoch(epoch)
        fngd = opt if isinstance(opt, FNGD) else None
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        total, correct, count, counted = zero.clone(), zero.clone(), 0, 0
        clock0 = self.clock
        _sync(self.device)
        t0 = time.perf_counter()
        fixed = cfg.fngd_fixed_batches and cfg.optimizer == "fngd"
        phase = self._phase(epoch)
        subset = self.subsets[phase]
        for step, b in enumerate(batches(self.data, cfg.batch_size, epoch, cfg.seed,
                                         self.device, ddp.rank(), ddp.world_size(),
                                         fixed=fixed, subset=subset)):
            global_step = self._first_step(epoch) + step
            self._set_lr(opt, global_step)
            if fngd is not None:
                fngd.set_batch(b.ids)
            # A local FNGD solve averages its own step over ranks: DDP's all-reduce is skipped.
            with (self.model.no_sync() if fngd is not None and fngd.averages_itself
                  else contextlib.nullcontext()):
                outs = batch_first(flatten_outputs(self.model(*b.inputs)), self.axes)
                targets = None if self.targets is None else self.targets.get(b.ids, b.inputs)
                per_sample = self.objective.per_sample(outs, b.labels, targets)
                mean = per_sample.detach().mean()
                if not math.isfinite(float(mean)):
                    raise NonFiniteLossError(
                        f"loss became {float(mean)} at epoch {epoch}, step {step} "
                        f"(optimizer {cfg.optimizer}); lower the learning rate (lr) or raise "
                        "the damping; checkpoints of finished epochs are kept")
                loss = fngd.reduce(per_sample) if fngd is not None else per_sample.mean()
                if self.reg is not None and self.reg_params:
                    from .regularize import penalty
                    loss = loss + penalty(self.reg_params, self.reg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            try:
                opt.step()
            except FloatingPointError as err:
                raise NonFiniteLossError(f"epoch {epoch}, step {step}: {err}") from err
            _apply_masks(self.masks)
            if twa is not None and opt is not twa and (global_step + 1) % self.twa_every == 0:
                twa.collect()  # the trajectory of the warm-up phase
            total += mean * len(b.ids)
            count += len(b.ids)
            c, k = self.objective.correct_t([o.detach() for o in outs], b.labels)
            correct += c
            counted += k
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                _sync(self.device)
                self.clock += time.perf_counter() - t0
                self._record(epoch, step + 1)
                t0 = time.perf_counter()
        if twa is not None and opt is not twa and epoch + 1 == cfg.twa_warmup_epochs:
            if len(twa.checkpoints) < 2:
                twa.collect()
            getattr(opt, "remove_hooks", lambda: None)()
            twa.build_subspace()
        if twa is not None and epoch + 1 >= cfg.twa_warmup_epochs:
            # Batch-norm statistics of the averaged (then subspace-trained) weights.
            reestimate_batchnorm(self.student, (b.inputs for b in batches(
                self.data, cfg.batch_size, epoch, cfg.seed, self.device, ddp.rank(),
                ddp.world_size(), subset=subset)))
        _sync(self.device)
        self.clock += time.perf_counter() - t0
        stats = torch.stack([total, total.new_tensor(count), correct.to(total.dtype),
                             total.new_tensor(counted)])
        if ddp.is_distributed():
            torch.distributed.all_reduce(stats)
        total, count, correct, counted = stats.tolist()
        eval_loss, eval_acc = self._record(epoch, self.phase_steps[phase])
        return EpochStats(epoch, total / count, correct / counted if counted else None,
                          eval_loss, eval_acc, self.clock - clock0)
