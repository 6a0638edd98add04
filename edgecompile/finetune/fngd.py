"""FNGD: inverse-free fast natural gradient descent (Ou, Zhu, Huang et al., 2024).

With per-sample gradients ``U = [g_1 … g_N]`` of a mini-batch, the damped natural gradient
for the empirical Fisher is ``Δ = (UUᵀ/N + λI)⁻¹ ḡ``.  By the push-through identity
``Δ = U α`` with ``α = (UᵀU + NλI)⁻¹ 1``: a weighted sum of per-sample gradients that needs
only the ``N × N`` Gram matrix ``K = UᵀU``, computed from each layer's inputs and output
gradients (:mod:`edgecompile.finetune.layers`) without materializing per-sample gradients.
FNGD solves for ``α`` while a sample is new (the first epoch, and every ``refresh_every``
epochs if set), stores it per sample, and reuses it afterwards while drift checks say the
stored coefficients still point along the natural gradient.

Coefficients (``coefficients=``)
  ``"shared"`` (default): one ``α`` for the whole network from ``K = Σ_layers K_l``, i.e. the
  natural gradient with the empirical Fisher of all supported layers' weights together (``U``
  stacks every layer's per-sample gradient).  A reused step is then a single reweighted
  backward pass: the loss ``Σ cᵢ ℓᵢ`` (:meth:`FNGD.reduce`) leaves ``Σ cᵢ gᵢ`` in every
  ``.grad`` at exactly the cost of a first-order step, with no hooks attached.
  ``"layer"``: one ``α`` per layer (block-diagonal Fisher); reused steps scale each layer's
  output gradient per sample with hooks.

Damping is relative: ``λ = damping · tr(K)/N²`` (the Fisher's mean non-zero eigenvalue times
``damping``), so ``damping`` is scale free and bounds how much one sample's coefficient can
exceed a typical one's (``≤ 1 + 1/damping``): a sample whose gradient was tiny when ``α`` was
solved cannot blow a later step up.  ``normalize="mean"`` (default) rescales each batch's
coefficients to sum to 1, so the step is a weighted *average* of per-sample gradients and
``lr`` has SGD's meaning; ``"none"`` keeps the exact damped NGD step (see
:func:`~edgecompile.finetune.layers.normalize_coefficients`).

Reuse that measures its own drift
  A reused step trusts coefficients solved epochs ago, in another batch.  So the first reused
  step, and every ``check_every``-th after it, is solved afresh instead and its stored
  coefficients ``s`` compared with the fresh ``α`` by the cosine of their directions,
  ``αᵀKs / √(αᵀKα · sᵀKs)``, read off the Gram matrix the solve formed anyway (no extra pass);
  the plain mean gradient's cosine ``αᵀK1 / √(αᵀKα · 1ᵀK1)`` is recorded beside it
  (:attr:`FNGD.alignment`).  Below ``min_alignment`` every stored coefficient is dropped and
  reuse backs off: every step solves for 1, then 2, 4, … more epochs before reuse is tried
  (and checked) again.  Reused coefficients are clipped at 0 (a negative one ascends on its
  sample) and renormalized to sum to 1 in their new batch.

Evidence (``bench/bench_finetune.py``, CPU, 1 thread, lr 0.1, damping 0.1, batch 64; epochs
to the target accuracy, "—" not reached in the run, then the final accuracy)::

                 digits-cnn    digits-tf      mnist1d-res   reverse-s2s   mean cosine stored/mean
  fngd (default) 2.45  0.972   3.00  0.514    6.00  0.870   4.95  0.932   0.43/0.20 0.27/0.28
   min_align 0.5 2.45  0.972   3.00  0.514    5.16  0.884   —     0.826
   min_align 0.3                              3.32  0.934   —     0.822
  fngd-paper     5.00  0.972   diverged       2.63  0.944   —     0.793   0.30/0.25 —
  fngd-clip      —     0.945   diverged       3.16  0.947   —     0.832   0.35/0.27 —
  fngd-renorm    —     0.957   diverged       3.32  0.941   —     0.822   0.35/0.31 —
  fngd-r1        2.45  0.975   3.00  0.552    5.63  0.883   4.95  0.935   (solves every step)
  fngd-d1        2.23  0.972   —     0.426    2.16  0.964   —     0.865   0.36/0.52 0.55/0.56

  (cosines for digits-cnn / digits-tf; on mnist1d-res and reverse-s2s the stored coefficients
  reach 0.50-0.63 against 0.57-0.68 for the plain mean.)  ``fngd-paper``: raw stored
  coefficients, never re-solved (the paper); ``-clip``: negatives clipped; ``-renorm``: also
  renormalized; ``-r1``: a fresh solve every step (plain NGD); ``-d1``: the default at damping
  1.0; ``min_align``: the default with a lower re-solve threshold.  What it shows: stored coefficients point along the natural gradient no better than
  uniform weights (SGD's direction) on every task, so reuse buys first-order cost with
  first-order quality, and on the transformer it diverged in every variant that keeps reusing
  (the first reused steps moved the weights 6x further than a solved step).  Nor is the
  new batch composition the cause: reusing in the very batch solved
  (``RecoverConfig.fngd_fixed_batches``) still gave cosines 0.12-0.38 on the transformer at
  lr 0.05; the weights move too far between epochs.  Clipping and
  renormalizing alone did not reach a target the raw reuse missed; checking and backing off
  did (digits-cnn 5.00 → 2.45 epochs, digits-tf diverged → 3.00, reverse-s2s — → 4.95), at
  the cost of solving most steps; the threshold 0.7 is the one that reached all four targets.  A solved step costs 1.7-3.0x an AdamW step with the default exact Gram
  (:data:`~edgecompile.finetune.layers.GRAM_DEFAULT`), against 4-67x with ``gram="factor"``
  (the bench's step-cost lines); a reused step 0.8-1.0x.  Where plain NGD itself is slower
  than first-order steps (mnist1d-res: r1 5.63 epochs, SGD 2.48) no reuse policy wins: the
  fastest there were K-FAC (0.79 epochs) and SGD.

Conventions
-----------
* Dim 0 of every supported layer's input is the batch; ``sample_ids`` name its rows.
* Build the loss with :meth:`FNGD.reduce` from the per-sample losses (mean in solve steps,
  ``Σ cᵢ ℓᵢ`` in shared-reuse steps).  A plain mean loss also works in solve steps and in
  ``"layer"`` mode (``reduction`` says whether it is a mean or a sum).
* Under DDP (``ddp_solve="local"``, default) each rank solves ``α`` on its own samples (the
  Gram matrix of the global batch restricted to its diagonal blocks, one per rank) and the
  step is the mean over ranks of ``U_r α_r``: one all-reduce of the parameters' size, which
  replaces DDP's own in solve steps (:attr:`FNGD.averages_itself`; ``recover`` skips DDP's
  with ``no_sync``).  ``"global"`` gathers every layer's inputs and output gradients for the
  exact global Gram matrix, traffic ∝ batch × world (``bench/bench_finetune_ddp.py``).  Every
  rank stores every rank's ``α`` (``N`` scalars sent per solve).
* Parameters outside Linear/Conv1d/Conv2d/Embedding layers (norms, free tensors), and layers
  whose hooks did not fire (called functionally), get SGD with momentum with learning rate
  ``fallback_lr`` (default: ``lr``) on their gradient: the mean gradient in solve steps, the
  same ``cᵢ``-weighted gradient as everyone else in shared-reuse steps.
* Momentum and (coupled, L2) weight decay act on the direction:
  ``d = Δ + wd·p;  buf = μ·buf + d;  p ← p − lr·buf``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from . import ddp, layers
from .fngd_hooks import LayerHooks

log = logging.getLogger(__name__)

#: Reused steps between drift checks (a fresh solve on that batch compared with its stored
#: coefficients), and the cosine below which the stored coefficients are re-solved.
CHECK_EVERY = 4
MIN_ALIGNMENT = 0.7
#: What a reused step does to the stored coefficients: clip negatives, rescale to sum 1.
REUSE_CLIP = True
REUSE_RENORMALIZE = True
#: Under DDP: ``"local"`` (each rank solves on its own samples, a block-diagonal Gram over
#: ranks; traffic one all-reduce of the parameters) or ``"global"`` (exact global-batch Gram
#: from every layer's gathered inputs and output gradients; traffic ∝ batch × world).
DDP_SOLVE = ("local", "global")


class FNGD(torch.optim.Optimizer):
    """Fast natural gradient descent with stored per-sample coefficients.

    Parameters
    ----------
    model:
        The module to train (may be wrapped in DistributedDataParallel).
    lr:
        Step size on the (normalized) natural-gradient direction.
    damping:
        Relative damping (``λ = damping · tr(UᵀU)/N²``); must be positive.
    momentum, weight_decay:
        Heavy-ball momentum and L2 weight decay, applied to every parameter.
    refresh_every:
        Recompute a sample's ``α`` once it is this many epochs old (``None``: never, as in the
        paper: only in the first epoch).  Epochs are set with :meth:`set_epoch`.
    fallback_lr:
        Learning rate of the first-order update for unsupported parameters (default ``lr``).
    reduction:
        ``"mean"`` or ``"sum"``: how a plain training loss reduces over the batch.
    gram:
        ``"auto"`` (default: the cheaper exact method per layer; for convolutions with many
        output positions that forms the per-sample gradients, never more than
        ``max_gram_elems`` elements) or ``"factor"`` (never forms a per-sample gradient, at
        ``(N·positions)²`` cost: 10-900× slower for convolutions); see
        :func:`edgecompile.finetune.layers.gram`.
    coefficients:
        ``"shared"`` (one ``α`` for the network) or ``"layer"`` (one per layer).
    normalize:
        ``"mean"``, ``"norm"`` or ``"none"``: per-batch rescaling of the coefficients.
    check_every, min_alignment:
        Drift checks: the first reused step and every ``check_every``-th after it solve afresh
        and compare (:attr:`alignment`); below ``min_alignment`` the stored coefficients are
        dropped and reuse backs off for 1, 2, 4, … epochs.  ``None``: never check.
    reuse_clip, reuse_renormalize:
        What a reused step does to the stored coefficients: clip negatives to 0, rescale them
        to sum to 1 in the new batch (with ``normalize="mean"``).
    ddp_solve:
        ``"local"`` (each rank solves on its own samples) or ``"global"`` (the exact global
        batch; gathers every layer's inputs and output gradients).

    Usage
    -----
    ::

        opt = FNGD(model, lr=0.05, damping=0.1)
        for epoch in range(epochs):
            opt.set_epoch(epoch)
            for x, y, ids in loader:
                opt.set_batch(ids)          # before the forward pass
                losses = F.cross_entropy(model(x), y, reduction="none")
                opt.zero_grad(); opt.reduce(losses).backward(); opt.step()

    Without :meth:`set_batch`, every step solves for ``α`` and nothing is stored.
    """

    def __init__(self, model: nn.Module, lr: float = 0.05, damping: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 0.0,
                 refresh_every: int | None = None, fallback_lr: float | None = None,
                 reduction: str = "mean", gram: str = layers.GRAM_DEFAULT, coefficients: str = "shared",
                 normalize: str = "mean", max_gram_elems: int = 1 << 25,
                 check_every: int | None = CHECK_EVERY, min_alignment: float = MIN_ALIGNMENT,
                 reuse_clip: bool = REUSE_CLIP, reuse_renormalize: bool = REUSE_RENORMALIZE,
                 ddp_solve: str = "local"):
        if damping <= 0:
            raise ValueError(f"FNGD damping must be > 0 (got {damping}); try 0.1")
        for what, value, allowed in (("reduction", reduction, ("mean", "sum")),
                                     ("gram", gram, layers.GRAM_MODES),
                                     ("coefficients", coefficients, ("shared", "layer")),
                                     ("normalize", normalize, layers.NORMALIZE)):
            if value not in allowed:
                raise ValueError(f"FNGD {what} must be one of {', '.join(allowed)} "
                                 f"(got {value!r})")
        if ddp_solve not in DDP_SOLVE:
            raise ValueError(f"FNGD ddp_solve must be one of {', '.join(DDP_SOLVE)} "
                             f"(got {ddp_solve!r})")
        if check_every is not None and check_every < 1:
            raise ValueError(f"FNGD check_every must be >= 1 or None (got {check_every})")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"FNGD refresh_every must be >= 1 or None (got {refresh_every})")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("FNGD: the model has no trainable parameters")
        defaults = dict(lr=lr, damping=damping, momentum=momentum, weight_decay=weight_decay,
                        fallback_lr=lr if fallback_lr is None else fallback_lr)
        super().__init__(params, defaults)
        self.reduction, self.gram_mode, self.max_gram_elems = reduction, gram, max_gram_elems
        self.refresh_every, self.shared, self.normalize = (refresh_every,
                                                           coefficients == "shared", normalize)
        self.hooks = LayerHooks(model, reduction)
        self.layer_names = self.hooks.names
        self._supported = {id(p) for _, m in self.hooks.layers
                           for p in m.parameters(recurse=False)}
        self.hooks.attach(reuse_hooks=not self.shared)
        columns = 1 if self.shared else len(self.layer_names)
        device = params[0].device
        self.alpha = torch.full((0, columns), float("nan"), dtype=torch.float64, device=device)
        self.alpha_epoch = torch.full((0,), -1, dtype=torch.long, device=device)
        self.epoch = 0
        self._ids = self._weights = None
        self._reduced = False
        self._warned: set[str] = set()
        self.check_every, self.min_alignment = check_every, float(min_alignment)
        self.reuse_clip, self.reuse_renormalize = reuse_clip, reuse_renormalize
        self.local_solve = ddp_solve == "local"
        self._reuse_steps = 0
        self._solve_until = -1  # no reuse up to this epoch (after a failed drift check)
        self._stored: torch.Tensor | None = None  # stored coefficients of a checked batch
        #: ``(epoch, cosine, uniform cosine)`` of every drift check: how the stored-coefficient
        #: direction, and the plain mean gradient, align with a fresh solve on the same batch.
        self.alignment: list[tuple[int, float]] = []
        #: How many times a drift check found the stored coefficients stale.
        self.resolves = 0

    # ----------------------------------------------------------------- batch protocol
    def set_epoch(self, epoch: int) -> None:
        """Tell FNGD the current epoch (drives ``refresh_every``)."""
        self.epoch = int(epoch)

    def set_batch(self, sample_ids: torch.Tensor | Iterable[int]) -> None:
        """Name the dataset rows of the next forward pass (call before it).

        Decides whether this step solves for ``α`` (some sample has none, or a stale one)
        or reuses the stored ``α`` at first-order cost.
        """
        ids = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise ValueError("FNGD.set_batch: empty batch of sample ids")
        if int(ids.min()) < 0:
            raise ValueError("FNGD.set_batch: sample ids must be non-negative dataset indices")
        ids = ids.to(self.alpha.device)
        self._grow(int(ids.max()) + 1)
        stamp = self.alpha_epoch[ids]
        fresh = stamp >= 0
        if self.refresh_every is not None:
            fresh &= (self.epoch - stamp) < self.refresh_every
        reuse = bool(fresh.all()) and self.epoch > self._solve_until
        if ddp.is_distributed():  # every rank must take the same branch (collectives in step)
            flag = torch.tensor(float(reuse), device=ids.device)
            ddp.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            reuse = bool(flag)
        self._ids, self._reduced, self._weights, self._stored = ids, False, None, None
        coef = self._reuse_coefficients(self.alpha[ids]) if reuse else None
        if reuse and self.check_every is not None:
            self._reuse_steps += 1
            if self._reuse_steps % self.check_every == 1 % self.check_every:
                # A drift check: this batch is solved afresh and its stored coefficients are
                # only compared with the fresh ones (in _solve).
                self._stored, coef = coef, None
        if self.shared:
            # Reuse needs no hooks: the reweighted loss does the work.
            self.hooks.set_mode("off" if coef is not None else "capture")
            self._weights = None if coef is None else coef[:, 0]
        else:
            self.hooks.set_mode("capture" if coef is None else "reuse", coef, self._ddp_scale)

    @property
    def _ddp_scale(self) -> int:
        """Multiplier of a reused step's loss that DDP's gradient averaging divides out: the
        world size when the coefficients sum to 1 over the global batch, 1 when they sum to 1
        on every rank (local solves)."""
        return 1 if self.local_solve else ddp.world_size()

    def _reuse_coefficients(self, coef: torch.Tensor) -> torch.Tensor:
        """Stored coefficients as a reused step applies them: negative ones clipped to 0
        (``reuse_clip``), then rescaled to sum to 1 in this batch (``reuse_renormalize``, with
        ``normalize="mean"``, over the global batch for ``ddp_solve="global"``; a column that
        sums to <= 0 falls back to the plain mean)."""
        if self.reuse_clip:
            coef = coef.clamp_min(0)
        if self.reuse_renormalize and self.normalize == "mean":
            total = coef.sum(0, keepdim=True)
            if ddp.is_distributed() and not self.local_solve:  # the global batch sums to 1
                total = ddp.all_reduce(total.contiguous())
            uniform = torch.full_like(coef, 1.0 / coef.shape[0])
            coef = torch.where(total > 0, coef / total.clamp_min(1e-300), uniform)
        return coef

    @property
    def reusing(self) -> bool:
        """Whether the current batch reuses stored coefficients."""
        return self.hooks.mode in ("off", "reuse") and self._ids is not None

    @property
    def averages_itself(self) -> bool:
        """Whether :meth:`step` averages this batch's update over ranks itself (a local solve
        under DDP): the caller may then skip DDP's gradient all-reduce (``model.no_sync()``)."""
        return self.local_solve and ddp.is_distributed() and self.hooks.mode == "capture"

    def reduce(self, losses: torch.Tensor) -> torch.Tensor:
        """The training loss to differentiate, from per-sample losses ``[N]`` (or ``[N, …]``,
        averaged over the trailing dims): ``Σ cᵢ ℓᵢ`` when reusing shared coefficients (times
        the world size for global solves, whose coefficients sum to 1 over the global batch:
        DDP's gradient averaging divides it out), else their mean (or sum with
        ``reduction="sum"``)."""
        if losses.dim() > 1:
            losses = losses.reshape(losses.shape[0], -1).mean(1)
        if self._weights is None:
            return losses.mean() if self.reduction == "mean" else losses.sum()
        if losses.shape[0] != self._weights.shape[0]:
            raise ValueError(f"FNGD.reduce: {losses.shape[0]} per-sample losses but set_batch "
                             f"got {self._weights.shape[0]} sample ids")
        self._reduced = True
        w = self._weights.to(losses.dtype)
        return (losses * w).sum() * self._ddp_scale

    def alpha_for(self, sample_ids: torch.Tensor) -> torch.Tensor:
        """Stored coefficients of the given samples, ``[n, columns]`` (NaN where none yet)."""
        ids = torch.as_tensor(sample_ids, dtype=torch.long, device=self.alpha.device)
        return self.alpha[ids]

    def remove_hooks(self) -> None:
        """Detach FNGD from the model (the optimizer is unusable afterwards)."""
        self.hooks.detach()

    def _grow(self, size: int) -> None:
        if size <= self.alpha.shape[0]:
            return
        extra = max(size, 2 * self.alpha.shape[0]) - self.alpha.shape[0]
        self.alpha = torch.cat([self.alpha, self.alpha.new_full((extra, self.alpha.shape[1]),
                                                                float("nan"))])
        self.alpha_epoch = torch.cat([self.alpha_epoch, self.alpha_epoch.new_full((extra,), -1)])

    # ----------------------------------------------------------------- step
    def _gathered(self) -> dict[int, layers.Capture]:
        caps = {}
        gather = ddp.is_distributed() and not self.local_solve
        for i in range(len(self.layer_names)):
            cap = self.hooks.capture(i)
            if cap is not None and gather:  # same hooks fire on every rank
                rows = cap.rows()
                cap = layers.Capture(
                    None if rows is None else ddp.gather_rows(rows.contiguous())[0],
                    ddp.gather_rows(cap.D.contiguous())[0],
                    None if cap.idx is None else ddp.gather_rows(cap.idx.contiguous())[0])
            if cap is None:
                self._warn_fallback(i)
                continue
            if cap.D.dtype in (torch.float16, torch.bfloat16):
                rows = cap.rows()
                cap = layers.Capture(None if rows is None else rows.float(), cap.D.float(),
                                     cap.idx)
            caps[i] = cap
        return caps

    def _coefficients(self, K: torch.Tensor, damping: float, what: str) -> torch.Tensor:
        try:
            alpha = layers.damped_coefficients(K, damping)
        except FloatingPointError as err:
            raise FloatingPointError(f"FNGD {what}: {err}; lower the learning rate or raise "
                                     "the damping") from None
        return layers.normalize_coefficients(alpha, K, self.normalize)

    def _solve(self, damping: float) -> dict[int, torch.Tensor]:
        caps = self._gathered()
        if not caps:
            return {}
        grams = {i: layers.gram(cap, self.gram_mode, self.max_gram_elems)
                 for i, cap in caps.items()}
        if self.shared:
            K = sum(grams.values())
            c = self._coefficients(K, damping, "network")
            coefs = {i: c for i in caps}
            pairs = [(K, c, 0)]
        else:
            coefs = {i: self._coefficients(K, damping, f"layer {self.layer_names[i]!r}")
                     for i, K in grams.items()}
            pairs = [(grams[i], coefs[i], i) for i in grams]
        if self._stored is not None:
            self._check_drift(pairs)
        if self._ids is not None:
            self._store(coefs)
        directions = {}
        for i, cap in caps.items():
            module = self.hooks.layers[i][1]
            step = layers.weighted_grad(module, cap, coefs[i].to(cap.D.dtype))
            directions.update({id(getattr(module, k)): v for k, v in step.items()})
        if self.local_solve and ddp.is_distributed():
            self._average_over_ranks(directions)
        return directions

    def _check_drift(self, pairs) -> None:
        """Cosine between the stored-coefficient direction ``U s`` and the fresh natural
        gradient ``U α`` of this batch, from the Gram matrices alone: ``αᵀKs / √(αᵀKα · sᵀKs)``
        (summed over layers for per-layer coefficients; averaged over ranks).  Below
        ``min_alignment`` every stored coefficient is dropped, so the coming steps re-solve."""
        stored = self._stored.to(torch.float64)
        if ddp.is_distributed() and not self.local_solve:
            stored = ddp.gather_rows(stored.contiguous())[0]
        terms = torch.zeros(5, dtype=torch.float64, device=stored.device)
        for K, fresh, col in pairs:
            K64, a, st = K.to(torch.float64), fresh.to(torch.float64), stored[:, col]
            Ks, Ka = K64 @ st, K64 @ a
            terms += torch.stack([a @ Ks, a @ Ka, st @ Ks, Ka.sum(), K64.sum()]).to(terms.device)
        cos = terms[0] / (terms[1] * terms[2]).sqrt().clamp_min(1e-300)
        # The plain mean gradient (uniform weights, SGD's direction) against the same solve.
        sgd = terms[3] / (terms[1] * terms[4]).sqrt().clamp_min(1e-300)
        both = torch.stack([cos, sgd])
        if ddp.is_distributed() and self.local_solve:
            both = ddp.all_reduce_mean(both)
        cos, sgd = both.tolist()
        self.alignment.append((self.epoch, cos, sgd))
        if cos < self.min_alignment:
            self.alpha_epoch.fill_(-1)
            self.resolves += 1
            # Back off: solve every step for 1, 2, 4, … more epochs before trusting reuse again.
            self._solve_until = self.epoch + 2 ** (self.resolves - 1)
            log.info("FNGD: stored coefficients point along the natural gradient at cosine "
                     "%.2f < %.2f (epoch %d); re-solving", cos, self.min_alignment, self.epoch)

    def _store(self, coefs: dict[int, torch.Tensor]) -> None:
        """Keep this batch's coefficients by sample id.  Every rank stores every rank's: the
        next epoch deals the samples to other ranks (a local solve sends ``N`` scalars)."""
        n = next(iter(coefs.values())).shape[0]
        table = torch.full((n, self.alpha.shape[1]), float("nan"), dtype=torch.float64,
                           device=self.alpha.device)
        for i, ci in coefs.items():
            table[:, 0 if self.shared else i] = ci.to(table)
        ids = self._ids
        if ddp.is_distributed():
            ids = ddp.gather_rows(ids)[0]
            if self.local_solve:
                table = ddp.gather_rows(table)[0]
        if table.shape[0] != ids.shape[0]:
            raise ValueError(f"FNGD saw {table.shape[0]} per-sample rows for {ids.shape[0]} "
                             "samples: the model padded or split the batch; train with a batch "
                             "size the model takes as it is")
        self._grow(int(ids.max()) + 1)
        self.alpha[ids] = table
        self.alpha_epoch[ids] = self.epoch

    def _average_over_ranks(self, directions: dict[int, torch.Tensor]) -> None:
        """Local solves: average every parameter's step over ranks in one all-reduce of the
        parameters' size (DDP's own traffic).  Parameters without a direction send their
        gradient (averaging an already averaged gradient changes nothing, so this is also
        right when the caller did not skip DDP's all-reduce with ``no_sync``)."""
        parts = []
        for group in self.param_groups:
            for p in group["params"]:
                d = directions.get(id(p), p.grad)
                if d is not None:
                    parts.append((p, id(p) in directions, d))
        if not parts:
            return
        flat = ddp.all_reduce_mean(torch.cat([d.reshape(-1).to(torch.float32 if d.dtype in (
            torch.float16, torch.bfloat16) else d.dtype) for _, _, d in parts]))
        offset = 0
        for p, has_direction, d in parts:
            avg = flat[offset:offset + d.numel()].view_as(d).to(d.dtype)
            offset += d.numel()
            if has_direction:
                directions[id(p)] = avg
            else:
                p.grad.copy_(avg)

    @torch.no_grad()
    def step(self, closure=None):
        """Update the parameters from the last forward/backward pass."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        mode = self.hooks.mode
        if mode == "off":
            if not self._reduced:
                raise RuntimeError("FNGD: this batch reuses stored coefficients; call "
                                   "opt.set_batch(ids) before every forward pass and build the "
                                   "loss with opt.reduce(per_sample_losses)")
            directions = None  # every .grad already holds Σ cᵢ gᵢ
        elif mode == "reuse":
            directions = {}
            for i, (_, module) in enumerate(self.hooks.layers):
                if i not in self.hooks.scaled:
                    self._warn_fallback(i)
                    continue
                for p in module.parameters(recurse=False):
                    if p.grad is not None:
                        directions[id(p)] = p.grad
        else:
            directions = self._solve(group["damping"])
        for group in self.param_groups:
            self._apply(group, directions)
        if mode == "reuse":
            self.hooks.set_mode("capture")  # a forward without set_batch solves
        else:
            self.hooks.reset()
        self._ids = self._weights = None
        self._reduced = False
        return loss

    def _apply(self, group: dict, directions: dict[int, torch.Tensor] | None) -> None:
        if directions is None:  # .grad holds Σ cᵢ gᵢ for supported layers: their lr, others' fallback
            directions = {id(p): p.grad for p in group["params"]
                          if id(p) in self._supported and p.grad is not None}
        layers.apply_directions(group, directions, self.state)

    def _warn_fallback(self, i: int) -> None:
        name = self.layer_names[i]
        if name not in self._warned:
            self._warned.add(name)
            log.info("FNGD: layer %r was not seen through its hooks this step "
                     "(called functionally?); it gets the first-order update", name)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["fngd"] = {"alpha": self.alpha.clone(), "alpha_epoch": self.alpha_epoch.clone(),
                      "epoch": self.epoch, "layer_names": list(self.layer_names),
                      "shared": self.shared, "reuse_steps": self._reuse_steps,
                      "alignment": list(self.alignment), "resolves": self.resolves,
                      "solve_until": self._solve_until}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("fngd", None)
        if extra is not None and list(extra["layer_names"]) != self.layer_names:
            raise ValueError("FNGD.load_state_dict: the saved state is for layers "
                             f"{extra['layer_names'][:4]}…, this model has "
                             f"{self.layer_names[:4]}…; load it into the same model")
        if extra is not None and extra.get("shared", False) != self.shared:
            raise ValueError("FNGD.load_state_dict: the saved state has "
                             f"coefficients={'shared' if extra.get('shared') else 'layer'}; "
                             "build the optimizer with the same setting")
        super().load_state_dict(state_dict)
        if extra is None:
            return
        device = self.alpha.device
        self.alpha = extra["alpha"].to(device)
        self.alpha_epoch = extra["alpha_epoch"].to(device)
        self.epoch = int(extra["epoch"])
        self._reuse_steps = int(extra.get("reuse_steps", 0))
        self.alignment = [tuple(a) for a in extra.get("alignment", [])]
        self.resolves = int(extra.get("resolves", 0))
        self._solve_until = int(extra.get("solve_until", -1))
