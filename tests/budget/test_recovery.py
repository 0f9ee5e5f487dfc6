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
        return sum(loss.loss(_logits(forward_batch(student, b)), _logits(forward_batch(teacher, b)), "logits").item()
                   for b in batches)


def _logits(out):
    return getattr(out, "logits", out)


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


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _llama_batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(n)]


def test_lora_recovery_is_merged_back_and_moves_the_model_toward_the_original():
    pytest.importorskip("transformers")
    original = _tiny_llama()
    batches = _llama_batches()
    pruned, _ = remove_units(original, units_for(original, "block")[1:3])
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    before = _kl(original, pruned, batches)
    Distillation(teacher=original, batches=batches, steps=40, lr=1e-2, lora_rank=4)(pruned)
    after = _kl(original, pruned, batches)
    assert after < before
    assert {k: v.shape for k, v in pruned.state_dict().items()} == shapes  # no adapter left behind
    assert not any("lora" in name for name, _ in pruned.named_parameters())


def test_hidden_state_distillation_adds_the_mse_of_the_last_hidden_states():
    pytest.importorskip("transformers")
    original = _tiny_llama()
    batches = _llama_batches(1)
    pruned, _ = remove_units(original, units_for(original, "block")[1:2])
    with_hidden = Distillation(teacher=original, batches=batches, hidden_weight=2.0)
    logits_only = Distillation(teacher=original, batches=batches)
    with torch.no_grad():
        ask = with_hidden._asking_hidden(batches[0])
        s, t = pruned(**ask), original(**ask)
        mse = torch.nn.functional.mse_loss(s.hidden_states[-1], t.hidden_states[-1])
        assert with_hidden.total_loss(s, t) == pytest.approx(float(logits_only.total_loss(s, t) + 2.0 * mse), rel=1e-5)
    with pytest.raises(UsageError, match="needs the models' hidden states"):
        Distillation(teacher=tiny(), batches=[tiny_inputs(4)], hidden_weight=1.0).total_loss(
            tiny()(tiny_inputs(4)), tiny()(tiny_inputs(4)))
    with pytest.raises(UsageError, match="one of them > 0"):
        Distillation(teacher=original, batches=batches, kl_weight=0.0)


def test_each_step_and_the_end_record_fidelity_before_and_after_recovery():
    model, inputs = tiny(), tiny_inputs()
    batches = [tiny_inputs(16, seed=s) for s in range(3)]
    result = prune_to_energy(model, "-30%", "magnitude", unit_kind="neuron", inputs=inputs, judge=FlopsJudge(),
                             recovery=Distillation(teacher=model, batches=batches, steps=3, lr=1e-3),
                             final_recovery=Distillation(teacher=model, batches=batches, steps=30, lr=3e-3),
                             accept_median=True)
    assert all(s.fidelity_before_recovery is not None for s in result.steps)
    assert result.recovery is not None
    assert result.recovery["fidelity_after"] == result.final.fidelity
    assert result.recovery["fidelity_before"] == result.steps[-1].fidelity
    data = result.to_dict()
    assert data["final_recovery"]["fidelity_after"] == result.final.fidelity
    assert "fidelity_before_recovery" in data["steps"][0]
