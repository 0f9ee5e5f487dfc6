"""Checkpoints: Ctrl-C saves the trajectory, resume continues it, damaged ones are refused."""

from __future__ import annotations

import json

import pytest
import torch

from energyprune.budget import PruneInterrupted, prune_to_energy
from energyprune.errors import UsageError
from tests.budget.models import tiny, tiny_inputs
from tests.budget.scripted import FlopsJudge

# The scripted judge lands exactly on the goal, with a +-1% interval: met by the median, not
# confirmed at 95%. These tests are about checkpoints, so they accept the median (--accept-median).
ARGS = dict(target="-45%", criterion="magnitude", unit_kind="neuron", accept_median=True)


def run(model, judge, **kwargs):
    options = {**ARGS, **kwargs}
    return prune_to_energy(model, options.pop("target"), options.pop("criterion"), inputs=tiny_inputs(),
                           judge=judge, **options)


def shapes(model):
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def test_interrupt_saves_the_trajectory_and_resume_gives_the_same_model(tmp_path):
    straight = run(tiny(), FlopsJudge())
    assert len(straight.accepted_steps) >= 3

    with pytest.raises(PruneInterrupted) as caught:
        run(tiny(), FlopsJudge(interrupt_at=3), checkpoint_dir=tmp_path)  # Ctrl-C inside the third step
    partial = caught.value.result
    assert isinstance(caught.value, KeyboardInterrupt)
    assert partial.stop_reason == "interrupted" and not partial.reached and len(partial.steps) == 2
    assert "product of step ratios, not confirmed" in partial.message
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["status"] == "interrupted" and len(saved["state"]["steps"]) == 2
    assert saved["result"]["stop_reason"] == "interrupted"
    assert not (tmp_path / "checkpoint-weights.safetensors").exists()  # no recovery hook: the record suffices

    judge = FlopsJudge()
    resumed = run(tiny(), judge, checkpoint_dir=tmp_path, resume=True)
    assert judge.measures == 0  # the original's figures come from the checkpoint
    assert resumed.reached and resumed.steps[:2] == partial.steps
    assert [s.removed for s in resumed.steps] == [s.removed for s in straight.steps]
    assert shapes(resumed.model) == shapes(straight.model)
    assert resumed.record == straight.record
    x = tiny_inputs()
    with torch.inference_mode():
        assert torch.allclose(resumed.model(x), straight.model(x))


def test_resuming_a_finished_run_measures_nothing(tmp_path):
    first = run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path)
    judge = FlopsJudge()
    again = run(tiny(), judge, checkpoint_dir=tmp_path, resume=True)
    assert judge.measures == judge.compares == 0
    assert again == first and shapes(again.model) == shapes(first.model)


def test_max_steps_run_continues_with_a_higher_limit(tmp_path):
    first = run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, max_steps=1)
    assert first.stop_reason == "max-steps"
    more = run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, resume=True, max_steps=20)
    assert more.reached and len(more.steps) > 1 and more.steps[0] == first.steps[0]


def test_a_damaged_checkpoint_is_refused_and_kept(tmp_path):
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"cannot be read .*nothing was deleted"):
        run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, resume=True)
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": "energyprune.prune-checkpoint/1"}))
    with pytest.raises(UsageError, match="damaged"):
        run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, resume=True)
    assert (tmp_path / "checkpoint.json").read_text() == json.dumps({"format": "energyprune.prune-checkpoint/1"})


def test_a_checkpoint_of_another_model_or_target_is_refused(tmp_path):
    run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, max_steps=1)
    with pytest.raises(UsageError, match="other weights"):
        run(tiny(seed=7), FlopsJudge(), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(UsageError, match="another architecture"):
        run(tiny(h=16), FlopsJudge(), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(UsageError, match="made for the target '-45%'"):
        run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, resume=True, target="-20%")
    with pytest.raises(UsageError, match="criterion magnitude on neuron"):
        run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, resume=True, unit_kind="block")


def test_an_existing_checkpoint_is_never_overwritten(tmp_path):
    run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, max_steps=1)
    before = (tmp_path / "checkpoint.json").read_text()
    with pytest.raises(UsageError, match="already holds a run"):
        run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.json").read_text() == before
    with pytest.raises(UsageError, match="no checkpoint to resume"):
        run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path / "empty", resume=True)


def test_a_recovery_hook_runs_on_each_candidate_and_its_weights_are_checkpointed(tmp_path):
    calls = []

    def recovery(model):
        calls.append(sum(p.numel() for p in model.parameters()))
        with torch.no_grad():
            model.head.bias.add_(0.01)  # a stand-in for fine-tuning: weights the record cannot replay

    with pytest.raises(PruneInterrupted):
        run(tiny(), FlopsJudge(interrupt_at=3), checkpoint_dir=tmp_path, recovery=recovery)
    assert len(calls) == 3 and (tmp_path / "checkpoint-weights.safetensors").exists()
    resumed = run(tiny(), FlopsJudge(), checkpoint_dir=tmp_path, resume=True, recovery=recovery)
    # Two recovered steps before the interrupt and every one after: the bias moved by 0.01 per step.
    original_bias = tiny().head.bias
    steps = len(resumed.accepted_steps)
    assert torch.allclose(resumed.model.head.bias, original_bias + 0.01 * steps, atol=1e-6)
