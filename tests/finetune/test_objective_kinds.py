"""Distillation by output kind: every output trained with a loss that fits it, the teacher's
outputs cached once, the loss actually used named."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.finetune import FinetuneData, FinetuneDataError, RecoverConfig, recover
from edgecompile.finetune.objective import Objective, Term, choose_objective, distill_term
from edgecompile.finetune.outputs import OutputStats, TeacherOutputs, flatten_outputs


class Detector(nn.Module):
    """Conv front end + GRU: a ``(B, 1)`` speech probability and the ``(B, 8)`` final state
    (``state_batch_axis=1``: the state laid out ``[1, B, 8]`` as recurrent layers give it)."""

    def __init__(self, seed: int, state_batch_axis: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv1d(2, 6, 3, padding=1)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        self.axis = state_batch_axis

    def forward(self, x):
        h, state = self.gru(torch.relu(self.conv(x)).transpose(1, 2))
        prob = torch.sigmoid(self.head(h[:, -1]))
        return prob, (state if self.axis == 1 else state[0])


class Encoder(nn.Module):
    """An embedding model: ``{"embedding": (B, 16)}``."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(10, 24), nn.Linear(24, 16)

    def forward(self, x):
        return {"embedding": self.fc2(torch.tanh(self.fc1(x)))}


def _stream(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 12, generator=g)


def _perturbed(model: nn.Module, scale=0.3, seed=1) -> nn.Module:
    student = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return student


def _stats(t: torch.Tensor) -> OutputStats:
    t = t.detach()
    return OutputStats(float(t.var(unbiased=False)), float(t.min()), float(t.max()),
                       tuple(t.shape[1:]))


def test_scalar_probability_is_trained_not_zero():
    """The old bug: softmax KL over a (B, 1) output is exactly 0.0 for all epochs."""
    teacher, x = Detector(0), _stream()
    student = _perturbed(teacher, 0.5)
    res = recover(student, FinetuneData.from_arrays(x, eval_inputs=x[:32]),
                  RecoverConfig(optimizer="adamw", epochs=4, batch_size=16, lr=1e-2),
                  teacher, output_kinds=["probability", "state"])
    assert res.loss_description == ("distillation: BCE on probability[0] + normalized MSE on "
                                    "state[1]")
    losses = [e.loss for e in res.epochs]
    assert losses[0] > 1e-3 and losses[-1] < 0.5 * losses[0], losses
    assert res.epochs[-1].eval_loss < res.epochs[0].eval_loss
    # A (B, 1) output declared as logits is a binary logit: KL of Bernoulli, not a softmax.
    t = torch.tensor([[2.0], [-1.0]])
    term = distill_term(0, "logits", _stats(t), temperature=2.0)
    assert term.loss == "binary_kl" and float(term.per_sample(t + 1, t).min()) > 0
    assert float(term.per_sample(t, t).abs().max()) < 1e-6


def test_probability_outside_unit_interval_falls_back_to_normalized_mse():
    t = torch.tensor([[0.5], [1.5]])
    assert distill_term(0, "probability", _stats(t)).loss == "nmse"


def test_embedding_loss_is_one_minus_cosine():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    term = distill_term(0, "embedding", _stats(t))
    cos = (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))
    torch.testing.assert_close(term.per_sample(s, t), 1 - cos)
    torch.testing.assert_close(term.per_sample(3 * s, t), 1 - cos)  # scale-free
    with_mse = distill_term(0, "embedding", _stats(t), embedding_mse=0.1)
    extra = 0.1 * (s - t).square().mean(1) / t.var(unbiased=False)
    torch.testing.assert_close(with_mse.per_sample(s, t), 1 - cos + extra)
    # A 1-element "embedding" has no cosine (always 1): normalized MSE instead.
    assert distill_term(0, "embedding", _stats(t[:, :1])).loss == "nmse"


def test_logits_kl_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    term = distill_term(0, "logits", _stats(t), temperature=3.0)
    p, q = F.softmax(t / 3, -1), F.softmax(s / 3, -1)
    torch.testing.assert_close(term.per_sample(s, t), 9 * (p * (p / q).log()).sum(1))
    assert term.description == "KL(T=3) on logits[0]"
    # Unknown kinds and "auto" never get KL: normalized MSE.
    assert distill_term(0, "auto", _stats(t)).loss == "nmse"
    assert distill_term(0, "segmentation", _stats(t)).loss == "nmse"


def test_normalized_mse_weighs_outputs_of_different_scales_alike():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(6, 4, generator=g)
    s = t + 0.1 * torch.randn(6, 4, generator=g)
    small, big = distill_term(0, "regression", _stats(t)), distill_term(1, "state", _stats(1e3 * t))
    torch.testing.assert_close(small.per_sample(s, t), big.per_sample(1e3 * s, 1e3 * t))


def test_every_output_contributes():
    teacher, x = Detector(0), _stream(16)
    outs = tuple(o.detach() for o in flatten_outputs(teacher(x)))
    data = FinetuneData.from_arrays(x)
    obj = choose_objective(data, outs, ("probability", "state"), [_stats(o) for o in outs])
    assert float(obj.loss(outs, None, outs)) < 1e-6
    state_only = (outs[0], outs[1] + 0.1)
    assert float(obj.loss(state_only, None, outs)) > 1e-3
    prob_only = (outs[0] * 0.9, outs[1])
    assert float(obj.loss(prob_only, None, outs)) > 1e-4
    # End to end: a student equal to the teacher except for its state is trained (loss > 0).
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.gru.bias_hh_l0.add_(0.5)
        student.head.bias.copy_(teacher.head.bias)
    res = recover(student, FinetuneData.from_arrays(_stream()),
                  RecoverConfig(optimizer="adamw", epochs=3, batch_size=16, lr=1e-2), teacher,
                  output_kinds=["probability", "state"])
    assert res.epochs[0].loss > 1e-2 and res.epochs[-1].loss < res.epochs[0].loss


def test_state_with_batch_on_axis_1_is_trained_per_sample():
    teacher, x = Detector(0, state_batch_axis=1), _stream()
    res = recover(_perturbed(teacher), FinetuneData.from_arrays(x),
                  RecoverConfig(optimizer="fngd", epochs=3, batch_size=16), teacher,
                  output_kinds=["probability", "state"])
    assert res.epochs[-1].loss < res.epochs[0].loss


def test_labels_train_the_right_output_and_say_so():
    teacher, x = Detector(0), _stream()
    y = teacher(x)[0].detach().squeeze(1) + 0.05
    res = recover(_perturbed(teacher), FinetuneData.from_arrays(x, y.unsqueeze(1)),
                  RecoverConfig(optimizer="adamw", epochs=2, batch_size=16, lr=1e-2),
                  output_kinds=["probability", "state"])
    assert res.loss_description == "MSE on float labels (probability[0])"
    logits = torch.randn(4, 3)
    obj = choose_objective(FinetuneData.from_arrays(torch.zeros(4, 2), torch.tensor([0, 1, 2, 0])),
                           (torch.randn(4, 8), logits), ("embedding", "logits"), None)
    assert obj.description == "cross-entropy on integer labels (logits[1])"
    assert obj.label_index == 1


class CountingTeacher(nn.Module):
    """Counts the samples it is run on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


@pytest.mark.parametrize("cap, cached", [(None, True), (0, False)])
def test_teacher_outputs_are_computed_once(cap, cached):
    x = _stream(64)
    rows = {}
    for epochs in (1, 3):
        teacher = CountingTeacher(Encoder(0))
        cfg = RecoverConfig(optimizer="sgd", epochs=epochs, batch_size=16,
                            **({} if cap is None else {"teacher_cache_bytes": cap}))
        res = recover(_perturbed(teacher.model), FinetuneData.from_arrays(
            x.flatten(1)[:, :10], eval_inputs=x.flatten(1)[:16, :10]), cfg, teacher,
            output_kinds=["embedding"])
        assert res.teacher_cached is cached and res.loss_description == \
            "distillation: 1-cos on embedding[0]"
        rows[epochs] = teacher.rows
    if cached:  # 64 + 16 samples once, + 5 to find the batch axes, whatever the epochs
        assert rows[1] == rows[3] == 64 + 16 + 5
    else:  # recomputed: 64 + 16 more per epoch
        assert rows[3] - rows[1] == 2 * (64 + 16)


def test_teacher_cache_matches_the_teacher():
    teacher, x = Detector(0, state_batch_axis=1), _stream(20)
    cache = TeacherOutputs(teacher, (x,), (0, 1), 8, torch.device("cpu"))
    ids = torch.tensor([3, 17, 0])
    prob, state = teacher(x[ids])
    got = cache.get(ids, (x[ids],))
    torch.testing.assert_close(got[0], prob)
    torch.testing.assert_close(got[1], state.movedim(1, 0))
    assert cache.nbytes == 20 * (1 + 8) * 4 and cache.stats[1].sample_shape == (1, 8)


def test_fngd_trains_the_summed_per_sample_loss():
    """Three outputs of three kinds, one summed per-sample loss; FNGD's solve and reuse steps."""

    class Three(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.body, self.prob, self.emb = nn.Linear(10, 16), nn.Linear(16, 1), nn.Linear(16, 6)

        def forward(self, x):
            h = torch.tanh(self.body(x))
            return torch.sigmoid(self.prob(h)), self.emb(h), h

    teacher = Three(0)
    x = torch.randn(96, 10, generator=torch.Generator().manual_seed(3))
    res = recover(_perturbed(teacher, 0.6), FinetuneData.from_arrays(x, eval_inputs=x[:32]),
                  RecoverConfig(optimizer="fngd", epochs=4, batch_size=16), teacher,
                  output_kinds=("probability", "embedding", "state"))
    assert res.loss_description.count(" + ") == 2
    losses = [e.loss for e in res.epochs]
    assert losses[-1] < 0.5 * losses[0], losses


def test_wrong_number_of_kinds_is_an_error():
    teacher, x = Detector(0), _stream(16)
    with pytest.raises(ValueError, match="1 output kinds .* 2 outputs"):
        recover(_perturbed(teacher), FinetuneData.from_arrays(x), RecoverConfig(), teacher,
                output_kinds=["probability"])


def test_objective_without_terms_is_plain_sum():
    o = Objective((Term(0, "state", "nmse", 2.0), Term(1, "regression", "nmse", 1.0)))
    a, b = torch.ones(3, 2), torch.zeros(3, 2)
    torch.testing.assert_close(o.per_sample((a, a), None, (b, b)), torch.full((3,), 3.0))


def test_outputs_must_match_one_to_one():
    teacher, x = Detector(0), _stream(16)

    class ProbabilityOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _perturbed(teacher)

        def forward(self, x):
            return self.inner(x)[0]

    with pytest.raises(FinetuneDataError, match="original model has 2 outputs, the compressed "
                                                "one 1"):
        recover(ProbabilityOnly(), FinetuneData.from_arrays(x), RecoverConfig(), teacher)
