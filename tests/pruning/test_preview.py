"""The cost preview (issue 12, item 0): what a kind's units hold of one inference's FLOPs, and a
warning before pruning when a target needs most of them."""

from __future__ import annotations

import pytest

from energyprune.errors import UsageError
from energyprune.metrics.flops import count_flops
from energyprune.pruning.preview import preview_cost
from tests.pruning.test_surgery import tiny, tokens


def inputs():
    ids, _ = tokens(1, 16)
    return {"input_ids": ids}


def test_neuron_flops_are_the_mlps_and_the_rest_is_named():
    model = tiny("llama")
    preview = preview_cost(model, inputs(), "neuron", 0.9)
    total = count_flops(model, inputs())
    assert preview.total_flops == total
    # 4 gated MLPs of 32 -> 64 -> 32 on 16 tokens: 3 matrices of 2*32*64 FLOPs per token each.
    mlp = 4 * 3 * 2 * 32 * 64 * 16
    cost = preview.cost
    assert cost.held_flops == mlp and cost.n_units == 4 * 64
    assert cost.removable_flops == pytest.approx(mlp * 63 / 64, abs=1)
    names = dict(preview.fixed_parts)
    assert names["lm_head"] == pytest.approx(2 * 32 * 128 * 16 / total)
    assert "model.layers.*.self_attn" in names
    assert not preview.too_costly  # -10% needs ~18% of the MLP FLOPs


def test_a_target_beyond_half_the_removable_units_is_flagged_with_kinds_that_reach_it():
    model = tiny("llama")
    preview = preview_cost(model, inputs(), "head", 0.7)
    assert preview.needed_share > 1  # heads hold less than 30% of the FLOPs
    assert preview.too_costly and "block" in preview.suggestions
    text = preview.message()
    assert "more than all of them" in text and "kinds that could reach it: hidden (~" in text and "block (~" in text
    assert preview.to_dict()["too_costly"] is True


def test_bad_arguments_are_one_clear_line():
    with pytest.raises(UsageError, match="target_ratio"):
        preview_cost(tiny("llama"), inputs(), "neuron", 1.2)


def test_the_loop_warns_in_its_result_when_the_target_is_costly():
    from energyprune.budget import prune_to_energy
    from tests.budget.scripted import FlopsJudge

    model = tiny("llama")
    result = prune_to_energy(model, "-30%", "magnitude", unit_kind="head", inputs=inputs(), judge=FlopsJudge(),
                             max_steps=1)
    assert any(w.startswith("cost preview") and "head units" in w for w in result.warnings)


def test_the_loop_chooses_among_several_kinds_by_fidelity_lost_per_flop_saved():
    from energyprune.budget import prune_to_energy
    from tests.budget.scripted import FlopsJudge

    model = tiny("llama")
    result = prune_to_energy(model, "-30%", "magnitude", unit_kind="neuron,head", inputs=inputs(),
                             judge=FlopsJudge(), accept_median=True, max_steps=8)
    assert result.unit_kind == "neuron,head"
    accepted = [s for s in result.steps if s.accepted]
    assert accepted and all("chosen by fidelity lost per FLOP saved" in s.note for s in accepted)
    for step in accepted:
        kinds = {u.kind for u in step.removed}
        assert len(kinds) == 1 and kinds <= {"neuron", "head"}
        assert f"kind {kinds.pop()} chosen" in step.note
    assert result.final.energy_ratio < 1
    ids = inputs()["input_ids"]
    assert result.model(input_ids=ids).logits.shape == (1, 16, 128)


def test_several_kinds_need_a_criterion_by_name_and_known_kinds():
    from energyprune.budget import prune_to_energy
    from energyprune.pruning.criteria import MagnitudeCriterion

    with pytest.raises(UsageError, match="several unit kinds need a criterion given by name"):
        prune_to_energy(tiny("llama"), "-30%", MagnitudeCriterion("neuron"), unit_kind="neuron,head",
                        inputs=inputs())
    with pytest.raises(UsageError, match="unit_kind must be one of .*got 'bogus'"):
        prune_to_energy(tiny("llama"), "-30%", "magnitude", unit_kind="neuron,bogus", inputs=inputs())


def test_hidden_channels_hold_nearly_every_flop():
    preview = preview_cost(tiny("llama"), inputs(), "hidden", 0.7)
    assert preview.cost.removable_share > 0.85 and not preview.too_costly  # all projections and lm_head


class AttentionOnlyJudge:
    """Charges 1 nJ per attention parameter: removing MLP neurons saves no energy at all."""

    def __new__(cls, **options):
        from tests.budget.scripted import FlopsJudge, ScriptedMeasurement

        class Judge(FlopsJudge):
            def _measurement(self, model, inputs):
                n = sum(p.numel() for name, p in model.named_parameters() if "self_attn" in name)
                energy = n * 1e-9
                return ScriptedMeasurement(energy, {"median": n * 1e-9}, 20.0, (energy * 0.99, energy * 1.01))

        return Judge(**options)


def test_choosing_kinds_by_energy_measures_each_candidate_and_follows_the_joules():
    from energyprune.budget import prune_to_energy

    judge = AttentionOnlyJudge()
    result = prune_to_energy(tiny("llama"), "-30%", "magnitude", unit_kind="neuron,head", inputs=inputs(),
                             judge=judge, accept_median=True, max_steps=8, kind_choice="energy")
    accepted = [s for s in result.steps if s.accepted]
    assert accepted and all("chosen by fidelity lost per joule saved" in s.note for s in accepted)
    assert all({u.kind for u in s.removed} == {"head"} for s in accepted)  # neurons save no joule here
    assert "neuron: " in accepted[0].note and "saving not resolved" in accepted[0].note
    # Two candidates compared per step, the chosen one's comparison being the step's own (not a
    # third), and one confirmation of the final model against the original.
    assert result.outcome == "reached" and judge.compares == 2 * len(result.steps) + 1
    assert result.final.energy_ratio <= 0.7 * 1.02


def test_choosing_kinds_by_energy_falls_back_to_flops_when_no_saving_is_resolved():
    from energyprune.budget import prune_to_energy
    from tests.budget.scripted import FlopsJudge

    result = prune_to_energy(tiny("llama"), "-30%", "magnitude", unit_kind="neuron,head", inputs=inputs(),
                             judge=FlopsJudge(half_width=0.5), accept_median=True, max_steps=2, kind_choice="energy")
    assert result.steps and all("no kind's energy saving was resolved" in s.note for s in result.steps)
    with pytest.raises(UsageError, match="kind_choice must be one of flops, energy"):
        prune_to_energy(tiny("llama"), "-30%", "magnitude", unit_kind="neuron,head", inputs=inputs(),
                        judge=FlopsJudge(), kind_choice="joules")
