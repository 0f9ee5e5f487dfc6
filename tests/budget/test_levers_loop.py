"""Lossless first: the loop tries levers on the original, runs every later model with the ones
worth it, and prunes only for what is still missing (scripted judge: energy from FLOPs, scaled by
what a lever is said to save)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from energyprune.budget import PruneResult, prune_to_energy
from energyprune.errors import UsageError
from tests.budget.models import tiny, tiny_inputs
from tests.budget.scripted import FlopsJudge


class Scaled(nn.Module):
    """The model, run by a lever that makes each inference cost `scale` of its energy."""

    def __init__(self, inner: nn.Module, scale: float, noise: float = 0.0) -> None:
        super().__init__()
        self.inner, self.scale, self.noise = inner, scale, noise

    def forward(self, x):
        out = self.inner(x)
        return out + self.noise * torch.ones_like(out) if self.noise else out


class ScaleLever:
    def __init__(self, name: str, scale: float, noise: float = 0.0) -> None:
        self.name, self.scale, self.noise, self.lossy = name, scale, noise, noise > 0

    def applies_to(self, model, context):
        return None

    def apply(self, model, context):
        return Scaled(model, self.scale, self.noise)

    def recipe(self):
        return {"lever": self.name}


class ScaledJudge(FlopsJudge):
    def _measurement(self, model, inputs):
        m = super()._measurement(model, inputs)
        scale = 1.0
        while isinstance(model, Scaled):
            scale *= model.scale
            model = model.inner
        return type(m)(m.per_inference_j * scale, m.latency_s, m.mean_power_w,
                       (m.ci95_j[0] * scale, m.ci95_j[1] * scale))


def test_levers_that_reach_the_target_alone_leave_the_model_unpruned():
    model = tiny()
    result = prune_to_energy(model, "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(),
                             judge=ScaledJudge(), levers=[ScaleLever("graphs", 0.5)])
    assert result.outcome == "reached" and result.applied_levers == ["graphs"]
    assert result.steps == () and result.final.energy_ratio == pytest.approx(0.5)
    assert result.levers["ratio"] == pytest.approx(0.5) and result.pruning_ratio == 1.0
    assert sum(p.numel() for p in result.model.parameters()) == sum(p.numel() for p in model.parameters())
    assert "levers graphs 0.500x (their own comparison), pruning 1.000x" in result.message


def test_pruning_finds_only_what_the_levers_left_and_the_ratios_are_shown_apart():
    judge = ScaledJudge()
    result = prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge,
                             levers=[ScaleLever("fuse", 0.9), ScaleLever("noisy", 0.5, noise=10.0),
                                     ScaleLever("nothing", 1.0)], accept_median=True)
    tried = {t["name"]: t for t in result.levers["tried"]}
    assert tried["noisy"]["verdict"].startswith("refused: fidelity")  # the loop refuses a lever that changes outputs
    assert not tried["nothing"]["worth_it"]
    assert result.applied_levers == ["fuse"]
    assert result.reached and result.final.energy_ratio <= 0.7 + 1e-9
    # the pruning needed only 0.7 / 0.9 of the rest; its steps' product and the levers' ratio make
    # the figure of record (the scripted judge is exact)
    assert result.pruning_ratio == pytest.approx(result.final.energy_ratio / 0.9)
    assert result.pruning_ratio == pytest.approx(math.prod(s.step_ratio for s in result.accepted_steps))
    assert result.levers["ratio"] * result.pruning_ratio == pytest.approx(result.final.energy_ratio)
    data = result.to_dict()
    assert data["energy_ratio_from_levers"] == pytest.approx(0.9)
    back = PruneResult.from_dict(data)
    assert back.applied_levers == ["fuse"] and back.pruning_ratio == pytest.approx(result.pruning_ratio)
    # every step compared levered models with each other: no step ratio counts the lever again
    first = result.steps[0]
    assert first.energy_ratio == pytest.approx(0.9 * first.step_ratio)
    # against pruning alone, the levers leave more of the model
    alone = prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(),
                            judge=ScaledJudge(), accept_median=True)
    assert sum(p.numel() for p in result.model.parameters()) > sum(p.numel() for p in alone.model.parameters())


def test_batch_levers_and_non_levers_are_refused_before_any_measuring():
    judge = ScaledJudge()
    with pytest.raises(UsageError, match="batch size is the deployment's choice"):
        prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge,
                        levers="batch:8")
    with pytest.raises(UsageError, match="is not a lever"):
        prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge,
                        levers=[object()])
    with pytest.raises(UsageError, match="unknown lever"):
        prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge,
                        levers="compile,turbo")
    assert judge.measures == 0 and judge.compares == 0


def test_a_resumed_run_keeps_running_with_its_levers(tmp_path):
    lever = ScaleLever("fuse", 0.9)
    judge = ScaledJudge(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge,
                        levers=[lever], checkpoint_dir=tmp_path / "run", accept_median=True)
    result = prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(),
                             judge=ScaledJudge(), levers=[lever], checkpoint_dir=tmp_path / "run", resume=True,
                             accept_median=True)
    assert result.applied_levers == ["fuse"] and result.reached
    assert result.levers["ratio"] * result.pruning_ratio == pytest.approx(result.final.energy_ratio)
