"""The recovery loop: objectives, masks, checkpoints/resume, and clear errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgecompile.finetune import (FinetuneData, FinetuneDataError, NonFiniteLossError,
                                  RecoverConfig, recover)


def _data(n=96, labels=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    y = (x @ w).argmax(1)
    return x, (y if labels else None)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("opt", ["fngd", "sgd", "adamw", "kfac", "twa"])
def test_every_optimizer_lowers_the_loss(opt):
    x, y = _data()
    data = FinetuneData.from_arrays(x, y, x[:32], y[:32])
    cfg = RecoverConfig(optimizer=opt, epochs=3, batch_size=16, device="cpu")
    res = recover(_net(), data, cfg)
    assert res.optimizer == opt and len(res.epochs) == 3 and res.world_size == 1
    assert res.epochs[-1].loss < res.epochs[0].loss
    assert res.final_accuracy is not None and 0 <= res.final_accuracy <= 1
    assert all(e.wall_s > 0 for e in res.epochs)
    assert [c.epoch for c in res.curve] == [0, 1, 2]


def test_distillation_without_labels_kl_and_mse():
    x, _ = _data(labels=False)
    teacher = _net(1)
    res = recover(_net(2), FinetuneData.from_arrays(x, eval_inputs=x[:32]),
                  RecoverConfig(optimizer="adamw", epochs=3, batch_size=16, lr=1e-2), teacher)
    assert res.epochs[-1].eval_loss < res.epochs[0].eval_loss and res.final_accuracy is None

    class Seq(nn.Module):  # non-classifier output [N, T, d] -> MSE distillation
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(x.view(x.shape[0], 2, 3).repeat(1, 1, 2))

    res = recover(Seq(3), FinetuneData.from_arrays(x), RecoverConfig(
        optimizer="fngd", epochs=3, batch_size=16, lr=0.3, damping=0.1), Seq(4))
    assert res.epochs[-1].loss < 0.5 * res.epochs[0].loss


@pytest.mark.parametrize("opt", ["fngd", "twa"])
def test_masks_keep_pruned_weights_at_zero(opt):
    """TWA too: every checkpoint is taken after the masks are applied, so the basis is zero on
    pruned weights and ``w = P β`` keeps them at zero without re-reading β."""
    x, y = _data()
    model = _net()
    mask = torch.rand(16, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    recover(model, FinetuneData.from_arrays(x, y),
            RecoverConfig(optimizer=opt, epochs=3, batch_size=16), masks={"0.weight": mask})
    w = model[0].weight.detach()
    assert (w[~mask] == 0).all() and (w[mask] != 0).all()


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    x, y = _data()
    data = FinetuneData.from_arrays(x, y)
    full = recover(_net(), data, RecoverConfig(optimizer="fngd", epochs=3, batch_size=16))

    class Interrupted(Exception):
        pass

    def stop_after_second(stats):
        if stats.epoch == 1:
            raise Interrupted

    cfg = RecoverConfig(optimizer="fngd", epochs=3, batch_size=16, checkpoint_dir=str(tmp_path))
    with pytest.raises(Interrupted):
        recover(_net(), data, cfg, progress=stop_after_second)
    assert (tmp_path / "latest").read_text().strip() == "epoch_0001.pt"
    again = recover(_net(5), data, RecoverConfig(optimizer="fngd", epochs=3, batch_size=16,
                                                 checkpoint_dir=str(tmp_path)))
    assert again.resumed_from_epoch == 2 and len(again.epochs) == 3
    for k, v in full.state_dict.items():
        torch.testing.assert_close(again.state_dict[k], v)
    with pytest.raises(ValueError, match="made with fngd, not sgd"):
        recover(_net(), data, RecoverConfig(optimizer="sgd", epochs=3,
                                            checkpoint_dir=str(tmp_path)))


def test_bad_inputs_give_clear_errors():
    x, y = _data()
    with pytest.raises(FinetuneDataError, match=r"\[5\] do not fit the model.*\[\.\.\., 6\]"):
        recover(_net(), FinetuneData.from_arrays(x[:, :5], y), RecoverConfig())
    with pytest.raises(FinetuneDataError, match="empty"):
        FinetuneData.from_arrays(x[:0], y[:0])
    with pytest.raises(FinetuneDataError, match="no labels and no teacher"):
        recover(_net(), FinetuneData.from_arrays(x), RecoverConfig())
    with pytest.raises(FinetuneDataError, match="labels range over"):
        recover(_net(), FinetuneData.from_arrays(x, y + 5), RecoverConfig())
    with pytest.raises(FinetuneDataError, match="96 labels for 95 samples"):
        FinetuneData.from_arrays(x[:95], y)
    with pytest.raises(KeyError, match="not a parameter"):
        recover(_net(), FinetuneData.from_arrays(x, y), RecoverConfig(),
                masks={"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        RecoverConfig(optimizer="adam")
    bad = x.clone()
    bad[40] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"at epoch 0, step \d+ .*lower the learning"):
        recover(_net(), FinetuneData.from_arrays(bad, y),
                RecoverConfig(optimizer="sgd", batch_size=16))


def test_npz_loading(tmp_path):
    x, y = _data()
    import numpy as np
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy(), x_eval=x[:8].numpy())
    d = FinetuneData.from_npz(tmp_path / "d.npz")
    assert len(d) == 96 and d.has_labels and d.eval_inputs[0].shape == (8, 6)
    np.savez(tmp_path / "bad.npz", inputs=x.numpy())
    with pytest.raises(FinetuneDataError, match="has no 'x' array"):
        FinetuneData.from_npz(tmp_path / "bad.npz")
    assert copy.copy(d) is not None


def test_fixed_batches_keep_their_samples_together_across_epochs():
    from edgecompile.finetune.data import batches
    x, y = _data(50)
    data = FinetuneData.from_arrays(x, y)
    def sets(epoch, fixed):
        return [frozenset(b.ids.tolist()) for b in batches(data, 16, epoch, 0, "cpu", fixed=fixed)]
    first, second = sets(0, True), sets(1, True)
    assert sorted(map(sorted, first)) == sorted(map(sorted, second)) and first != second
    assert set(sets(1, False)) != set(first)  # the default reshuffles samples


def test_auto_picks_the_optimizer_by_model_kind():
    from edgecompile.finetune.optimizers import AUTO, model_kind
    conv = nn.Sequential(nn.Conv1d(1, 16, 3), nn.ReLU(), nn.Conv1d(16, 16, 3),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3))
    seq = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))  # on [N, T, 6]
    assert model_kind(conv, (torch.randn(2, 1, 6),)) == "conv"
    assert model_kind(seq, (torch.randn(2, 5, 6),)) == "sequence"
    assert model_kind(_net(), (torch.randn(2, 6),)) == "dense"
    x, y = _data()
    res = recover(_net(), FinetuneData.from_arrays(x, y), RecoverConfig(epochs=1, device="cpu"))
    assert res.optimizer == AUTO["dense"][0]
    x = torch.randn(48, 1, 6)
    for epochs in (1, 2):  # TWA needs two epochs: one run falls back
        res = recover(copy.deepcopy(conv), FinetuneData.from_arrays(x, y[:48]),
                      RecoverConfig(epochs=epochs, batch_size=16, device="cpu"))
        want = [o for o in AUTO["conv"] + ("adamw",) if o != "twa" or epochs >= 2][0]
        assert res.optimizer == want


def test_twa_v_trains_the_coefficients_on_held_out_samples_only(monkeypatch):
    """TWA-v: the warm-up never sees the held-out share, the subspace phase sees nothing else;
    the split is disjoint, covers every sample and is the same on every call."""
    import importlib

    from edgecompile.finetune import data as data_mod
    from edgecompile.finetune.recover import twa_split
    recover_mod = importlib.import_module("edgecompile.finetune.recover")

    x, y = _data(80)
    data = FinetuneData.from_arrays(x, y, x[:32], y[:32])
    cfg = RecoverConfig(optimizer="twa", epochs=3, twa_warmup_epochs=1, batch_size=16, device="cpu",
                        twa_holdout=0.25)
    warm, held = twa_split(80, cfg)
    assert len(held) == 20 and not set(warm.tolist()) & set(held.tolist())
    assert sorted(warm.tolist() + held.tolist()) == list(range(80))
    assert torch.equal(twa_split(80, cfg)[1], held)
    seen: list[tuple[int, frozenset]] = []
    real = data_mod.batches

    def spy(d, bs, epoch, seed, device, *a, **k):
        for b in real(d, bs, epoch, seed, device, *a, **k):
            if not isinstance(device, str):       # not the step count taken before training ("cpu")
                seen.append((epoch, frozenset(b.ids.tolist())))
            yield b
    monkeypatch.setattr(recover_mod, "batches", spy)
    res = recover(_net(), data, cfg)
    assert len(res.epochs) == 3 and all(e.loss == e.loss for e in res.epochs)
    warm_ids = set().union(*(s for e, s in seen if e == 0))
    twa_ids = set().union(*(s for e, s in seen if e >= 1))
    assert warm_ids == set(warm.tolist()) and twa_ids == set(held.tolist())
    with pytest.raises(ValueError, match="twa_holdout"):
        RecoverConfig(optimizer="twa", epochs=3, twa_holdout=1.0)
