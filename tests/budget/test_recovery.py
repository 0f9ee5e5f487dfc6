from __future__ import annotations

import copy

import pytest
import torch

from energyprune.budget import Distillation, prune_to_energy
from energyprune.errors import UsageError
from energyprune.torch_io import forward_batch
from energyprune.pruning import remove_units, units_for
from tests.budget.models import tiny, tiny_inputs
from tests.budget.scripted import FlopsJudge


def _kl(teacher, student, batches):
    loss = Distillation(teacher=teacher, batches=batches)
    with torch.no_grad():
        return sum(loss.loss(forward_batch(student, b), forward_batch(teacher, b), "logits").item() for b in batches)


def test_distillation_moves_a_pruned_model_back_toward_the_original():
    original = tiny()
    batches = [tiny_inputs(32, seed=s) for s in range(4)]
    pruned, _ = remove_units(original, units_for(original, "block")[:2])  # a copy: the original stays
    before = _kl(original, pruned, batches)
    weights = copy.deepcopy(original.state_dict())
    recovered = Distillation(teacher=original, batches=batches, steps=60, lr=3e-3)(pruned)
    after = _kl(original, recovered, batches)
    assert recovered is pruned and after < 0.5 * before
    assert all(torch.equal(weights[k], v) for k, v in original.state_dict().items())  # the teacher is untouched
    assert not any(p.requires_grad for p in recovered.parameters())


def test_distillation_works_on_weights_made_under_inference_mode():
    original = tiny()
    with torch.inference_mode():
        pruned, _ = remove_units(original, units_for(original, "neuron")[:5])
    batches = [tiny_inputs(16)]
    Distillation(teacher=original, batches=batches, steps=3)(pruned)  # must not raise
    with torch.no_grad():
        assert torch.isfinite(pruned(batches[0])).all()


def test_the_loop_runs_recovery_after_each_removal():
    model, inputs = tiny(), tiny_inputs()
    calls = []

    class Counting(Distillation):
        def __call__(self, student):
            calls.append(sum(p.numel() for p in student.parameters()))
            return super().__call__(student)

    recovery = Counting(teacher=model, batches=[tiny_inputs(16, seed=3)], steps=2)
    result = prune_to_energy(model, "-30%", "magnitude", unit_kind="neuron", inputs=inputs, judge=FlopsJudge(),
                             recovery=recovery, accept_median=True)  # the judge lands exactly on the goal
    assert result.reached and len(calls) == len(result.steps) >= 2
    assert calls == sorted(calls, reverse=True)  # each candidate smaller than the last


@pytest.mark.parametrize("kwargs, match", [({"batches": []}, "data"), ({"steps": 0}, "steps"),
                                           ({"lr": 0.0}, "learning rate"), ({"temperature": 0.0}, "temperature")])
def test_bad_recovery_settings_are_clear_errors(kwargs, match):
    settings = {"teacher": tiny(), "batches": [tiny_inputs()]} | kwargs
    with pytest.raises(UsageError, match=match):
        Distillation(**settings)
