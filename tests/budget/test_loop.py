"""The loop on tiny models with a scripted judge (energy proportional to FLOPs)."""

from __future__ import annotations

import json

import pytest
import torch

from energyprune.budget import PruneResult, next_step_size, prune_to_energy
from energyprune.models.demo import DemoTransformer
from energyprune.errors import UsageError
from tests.budget.models import tiny, tiny_inputs
from tests.budget.scripted import FlopsJudge


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- the step-size schedule ---------------------------------------------------------------------
def test_first_step_uses_the_prior_and_later_steps_the_measured_saving():
    # Prior: each of 100 units costs 1/100 of the model; -30% needs 30 units, 0.75 of them taken.
    assert next_step_size(n_available=100, n_total=100, ratio_now=1.0, ratio_goal=0.7) == 23
    # Measured: 20 units saved 10% of the original, 0.5% each: 0.72 -> 0.7 needs 4 units, 0.75 of it -> 3.
    assert next_step_size(n_available=80, n_total=100, ratio_now=0.72, ratio_goal=0.7,
                          history=[(20, 0.1)]) == 3


def test_steps_shrink_as_the_target_nears_and_stay_within_bounds():
    sizes = [next_step_size(n_available=100, n_total=100, ratio_now=r, ratio_goal=0.5, history=[(10, 0.05)])
             for r in (1.0, 0.8, 0.6, 0.52, 0.501)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1] == 1
    assert next_step_size(n_available=3, n_total=100, ratio_now=1.0, ratio_goal=0.1) == 3
    assert next_step_size(n_available=0, n_total=100, ratio_now=1.0, ratio_goal=0.1) == 0
    # A history that saved nothing falls back on the prior instead of dividing by zero.
    assert next_step_size(n_available=50, n_total=50, ratio_now=1.0, ratio_goal=0.9, history=[(5, 0.0)]) == 4


# ---- reaching a target --------------------------------------------------------------------------
def test_reaches_30_percent_with_shrinking_steps_and_leaves_the_model_alone():
    model, inputs = tiny(), tiny_inputs()
    before = snapshot(model)
    judge = FlopsJudge()
    lines = []
    # The judge lands exactly on 0.7 with a +-1% interval: accepted on the median (tested apart below).
    result = prune_to_energy(model, "-30%", "magnitude", unit_kind="neuron", inputs=inputs, judge=judge,
                             progress=lambda phase, fraction, message: lines.append((phase, message)),
                             accept_median=True)
    assert result.reached and result.stop_reason == "median-reached" and result.outcome == "median-only"
    assert result.final.energy_ratio <= 0.7
    assert result.final.comparison is not None  # the figure of record: original vs final, directly
    assert judge.measures == 1  # the original once; every later figure is a comparison
    sizes = [len(s.removed) for s in result.steps]
    assert len(sizes) >= 2 and sizes[0] > sizes[-1] and sizes == sorted(sizes, reverse=True)
    # The product of the step ratios is the FLOP ratio (the judge is exact).
    assert result.steps[-1].energy_ratio == pytest.approx(result.final.energy_ratio, rel=1e-9)
    assert result.steps[-1].energy_ratio_ci95[0] < result.steps[-1].energy_ratio < result.steps[-1].energy_ratio_ci95[1]
    # The caller's model is untouched; the result holds a new, smaller one.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.model is not model and n_params(result.model) == result.final.n_params < n_params(model)
    assert [p for p, _ in lines].count("step") == len(result.steps)
    assert "target -30% met by the median only" in result.message and "accepted" in result.message
    assert "ESTIMATED" in result.message
    assert result.provenance == "estimated"


@pytest.mark.parametrize("half_width, target, outcome, reached", [
    (0.001, "-29.7%", "reached", True),          # lands under the goal 0.703 with the interval
    (0.01, "-30%", "median-only", False),        # 0.700 [0.693, 0.707]: the interval reaches above 0.7
])
def test_reached_only_when_the_whole_interval_meets_the_goal(half_width, target, outcome, reached):
    result = prune_to_energy(tiny(), target, "magnitude", unit_kind="neuron", inputs=tiny_inputs(),
                             judge=FlopsJudge(half_width=half_width))
    assert result.outcome == outcome and result.reached is reached
    assert result.final.energy_ratio <= result.target.goal_ratio(result.original.per_inference_j)
    if outcome == "median-only":
        assert result.stop_reason == "median-reached"
        assert "not confirmed at 95%" in " ".join(result.warnings)
        assert result.model is not None  # the best model is still there
        accepted = prune_to_energy(tiny(), target, "magnitude", unit_kind="neuron", inputs=tiny_inputs(),
                                   judge=FlopsJudge(half_width=half_width), accept_median=True)
        assert accepted.reached and accepted.outcome == "median-only"
    data = result.to_dict()
    assert data["outcome"] == outcome and PruneResult.from_dict(data).outcome == outcome


def test_result_json_has_the_agreed_keys_and_round_trips():
    result = prune_to_energy(tiny(), "0.7x", "magnitude", unit_kind="neuron", inputs=tiny_inputs(),
                             judge=FlopsJudge())
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["schema"] == "energyprune.prune_result/1"
    assert set(data) >= {"model", "criterion", "unit_kind", "target", "reached", "stop_reason", "message",
                         "provenance", "original", "steps", "final", "record", "duration_s", "warnings"}
    assert set(data["target"]) == {"text", "kind", "value", "target_j"}
    assert data["target"]["target_j"] == pytest.approx(0.7 * data["original"]["per_inference_j"])
    assert set(data["original"]) >= {"per_inference_j", "ci95_j", "latency_s", "mean_power_w", "n_params", "flops",
                                     "quality", "measurement"}
    step = data["steps"][0]
    assert set(step) >= {"index", "removed", "n_removed_total", "n_params", "flops", "step_ratio", "step_ratio_ci95",
                         "energy_ratio", "energy_ratio_ci95", "per_inference_j", "latency_s", "quality", "fidelity",
                         "accepted", "note", "duration_s"}
    assert set(step["removed"][0]) == {"kind", "path", "index"}
    assert "windows" not in step["comparison"]["a"] and "power_trace" not in step["comparison"]["b"]
    assert data["original"]["measurement"]["power_trace"] is not None  # the trace lives here only
    assert set(data["final"]) >= {"energy_ratio", "energy_ratio_ci95", "per_inference_j", "n_params", "flops",
                                  "quality", "comparison"}
    again = PruneResult.from_dict(data)
    assert again.to_dict() == data
    assert again == result  # the model is not part of equality or of the JSON


def test_latency_target():
    # The scripted latency is 1 ns per FLOP, so 70% of the original's latency is -30% of its FLOPs.
    judge = FlopsJudge()
    model, inputs = tiny(), tiny_inputs()
    latency = judge.measure(model, inputs).latency_s["median"]
    result = prune_to_energy(model, f"latency<={latency * 0.7 * 1e3:.6f}ms", "magnitude", unit_kind="neuron",
                             inputs=inputs, judge=judge)
    assert result.reached and result.final.latency_ratio <= 0.7 + 1e-9
    assert result.to_dict()["target"]["target_j"] is None


# ---- stopping without the target -----------------------------------------------------------------
def test_quality_floor_is_never_broken_and_refused_steps_are_not_measured():
    model, inputs = tiny(), tiny_inputs()
    total = n_params(model)

    def kept(m):  # quality: the share of parameters kept
        return n_params(m) / total

    judge = FlopsJudge()
    result = prune_to_energy(model, "-60%", "magnitude", unit_kind="neuron", inputs=inputs, judge=judge,
                             evaluate=kept, quality_floor=0.8)
    assert not result.reached and result.stop_reason == "quality-floor"
    assert result.final.quality >= 0.8 and kept(result.model) >= 0.8
    refused = [s for s in result.steps if not s.accepted]
    assert refused and all(s.quality < 0.8 for s in refused)
    assert all(s.step_ratio is None and s.energy_ratio is None for s in refused)  # nothing measured, nothing given
    assert judge.compares == len(result.accepted_steps) + 1  # + the final comparison with the original
    assert len(refused[-1].removed) == 1  # halved down to a single unit before giving up
    assert "below the floor 0.8" in result.message and "not reached" in result.message
    json.dumps(result.to_dict(), allow_nan=False)


def test_nothing_left_keeps_one_block():
    result = prune_to_energy(tiny(), "0.05x", "magnitude", unit_kind="block", inputs=tiny_inputs(),
                             judge=FlopsJudge())
    assert not result.reached and result.stop_reason == "nothing-left"
    assert len(result.model.layers) == 1
    assert "needed 0.050x" in result.message and "one block is left" in result.message


def test_too_coarse_when_step_intervals_contain_one():
    judge = FlopsJudge(half_width=0.5)  # every step's interval reaches 1
    result = prune_to_energy(tiny(), "-30%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge)
    assert result.stop_reason == "too-coarse" and not result.reached
    assert len(result.steps) == 2 and all("not resolved" in s.note for s in result.steps)
    assert "cannot resolve" in result.message


def test_max_steps():
    judge = FlopsJudge()
    result = prune_to_energy(tiny(), "-60%", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge,
                             max_steps=1)
    assert result.stop_reason == "max-steps" and len(result.steps) == 1
    assert result.final.comparison is not None and judge.compares == 2
    assert "step limit (1)" in result.message


# ---- refusing before any measuring ---------------------------------------------------------------
class _LinearStack(torch.nn.Module):
    """Blocks without an MLP: neuron criteria have nothing to prune here."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def test_a_criterion_that_does_not_apply_fails_before_measuring():
    torch.manual_seed(0)
    demo = DemoTransformer(vocab_size=50, d_model=16, n_heads=2, n_layers=2, d_ff=32).eval()
    judge = FlopsJudge()
    with pytest.raises(UsageError, match="no MLP"):
        prune_to_energy(_LinearStack().eval(), "-30%", "magnitude", unit_kind="neuron", inputs=torch.randn(2, 8),
                        judge=judge)
    with pytest.raises(UsageError, match="unit_kind must be one of block, attention"):
        prune_to_energy(demo, "-30%", "cosine-block", unit_kind="neuron", inputs=demo.example_inputs(1, 8), judge=judge)
    with pytest.raises(UsageError, match="unknown criterion"):
        prune_to_energy(demo, "-30%", "no-such-criterion", inputs=demo.example_inputs(1, 8), judge=judge)
    assert judge.measures == 0 and judge.compares == 0


def test_a_target_the_original_meets_is_refused_after_one_measurement():
    judge = FlopsJudge()
    with pytest.raises(UsageError, match="already costs"):
        prune_to_energy(tiny(), "1J", "magnitude", unit_kind="neuron", inputs=tiny_inputs(), judge=judge)
    assert judge.measures == 1 and judge.compares == 0


def test_argument_mistakes_are_one_line_errors():
    model, inputs = tiny(), tiny_inputs()
    with pytest.raises(UsageError, match="max_steps"):
        prune_to_energy(model, "-30%", "magnitude", inputs=inputs, judge=FlopsJudge(), max_steps=0)
    with pytest.raises(UsageError, match="default judge"):
        prune_to_energy(model, "-30%", "magnitude", inputs=inputs, judge=FlopsJudge(), backend="estimated")
    with pytest.raises(UsageError, match="resume=True needs"):
        prune_to_energy(model, "-30%", "magnitude", inputs=inputs, judge=FlopsJudge(), resume=True)
    with pytest.raises(UsageError, match="already below the quality floor"):
        prune_to_energy(model, "-30%", "magnitude", inputs=inputs, judge=FlopsJudge(), evaluate=lambda m: 0.5,
                        quality_floor=0.9)


def test_steps_name_removed_blocks_as_the_original_numbers_them():
    model = tiny(n=8)
    result = prune_to_energy(model, "-60%", "random", unit_kind="block", inputs=tiny_inputs(), judge=FlopsJudge(),
                             seed=3)
    accepted = result.accepted_steps
    assert len(accepted) >= 2
    originals = [u.index for s in accepted for u in s.removed_original]
    assert len(set(originals)) == len(originals)  # never the same block twice
    # Removing those original blocks in one go gives the same model as the run.
    from energyprune.pruning.surgery import remove_blocks

    again, _ = remove_blocks(model, originals)
    x = tiny_inputs()
    with torch.inference_mode():
        assert torch.allclose(again(x), result.model(x))
    later = accepted[1]
    assert [u.path for u in later.removed_original] == [f"layers.{u.index}" for u in later.removed_original]
    assert later.to_dict()["removed_original"][0]["index"] == later.removed_original[0].index
