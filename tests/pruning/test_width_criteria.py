"""Activation (Minitron) and first-order Taylor importance for neurons and head groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning import prune
from energyprune.pruning.criteria import ActivationCriterion, TaylorCriterion, get_criterion
from energyprune.pruning.criteria.taylor import TAYLOR_SCORERS
from energyprune.pruning.kinds import units_for
from tests.pruning.test_surgery import output, tiny, tokens


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(n):
        ids, mask = tokens(2, 8)
        out.append({"input_ids": (ids + seed) % 128, "attention_mask": mask})
    return out


def test_activation_of_a_neuron_is_its_mean_absolute_value_where_the_consumer_reads_it() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    data = [torch.randn(5, 4), torch.randn(7, 4)]
    units = units_for(mlp, "neuron")
    scores = ActivationCriterion("neuron").score(mlp, units, data)
    with torch.no_grad():
        hidden = torch.cat([torch.relu(mlp[0](x)) for x in data])
    expected = hidden.abs().mean(dim=0)
    for unit in units:
        assert scores[unit] == pytest.approx(float(expected[unit.index]), rel=1e-6)


def test_activation_of_a_head_group_is_the_mean_norm_of_its_output_slice() -> None:
    model = tiny("llama")
    seen = []
    handle = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    data = [{"input_ids": tokens(1, 8)[0]}]
    with torch.no_grad():
        model(**data[0])
    handle.remove()
    units = [u for u in units_for(model, "head") if u.path == "model.layers.1.self_attn"]
    scores = ActivationCriterion("head").score(model, units, data)
    rows = seen[0].reshape(-1, 32)
    for g in range(2):
        expected = rows[:, 16 * g:16 * (g + 1)].norm(dim=1).mean()
        assert scores[units[g]] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("estimator", ["abs", "fo-squared"])
@pytest.mark.parametrize("kind", ["neuron", "head"])
def test_taylor_gives_zero_to_a_unit_that_contributes_nothing(kind: str, estimator: str) -> None:
    model = tiny("llama")
    with torch.no_grad():
        if kind == "neuron":
            model.model.layers[2].mlp.down_proj.weight[:, 5] = 0
        else:
            model.model.layers[2].self_attn.o_proj.weight[:, 16:32] = 0
    flags = [p.requires_grad for p in model.parameters()]
    units = units_for(model, kind)
    criterion = TaylorCriterion(kind, estimator=estimator)
    scores = criterion.score(model, units, batches())
    silent = next(u for u in units if u.path.startswith("model.layers.2") and u.index == (5 if kind == "neuron" else 1))
    assert scores[silent] == 0.0
    assert sum(1 for s in scores.values() if s > 0) == len(units) - 1
    assert criterion.last_loss is not None and criterion.last_loss > 0
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_taylor_of_a_neuron_sums_weight_times_gradient_over_what_it_owns() -> None:
    model = tiny("llama")
    data = batches(1)
    from energyprune.pruning.criteria.taylor import calibration_loss

    model.zero_grad()
    calibration_loss(model, data[0]).backward()
    mlp = model.model.layers[0].mlp
    j = 7
    with torch.no_grad():
        expected = sum(float((layer.weight * layer.weight.grad).abs()[j].sum()) for layer in (mlp.gate_proj, mlp.up_proj))
        expected += float((mlp.down_proj.weight * mlp.down_proj.weight.grad).abs()[:, j].sum())
    model.zero_grad(set_to_none=True)
    units = [u for u in units_for(model, "neuron") if u.path == "model.layers.0.mlp"]
    scores = TaylorCriterion("neuron", estimator="abs").score(model, units, data)
    assert scores[units[j]] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2", "bert"])
@pytest.mark.parametrize("name", ["activation", "taylor"])
@pytest.mark.parametrize("kind", ["neuron", "head"])
def test_width_criteria_prune_every_family(family: str, name: str, kind: str) -> None:
    model = tiny(family)
    outcome = prune(model, name, 0.25, batches(), unit_kind=kind)
    assert len(outcome.removed) == round(0.25 * len(outcome.scores))
    ids, mask = tokens()
    out = output(outcome.model, ids, mask)
    assert torch.isfinite(out).all()
    if family != "bert":
        generated = outcome.model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert generated.shape == (1, 7)


def test_taylor_is_one_entry_per_kind_and_refuses_others() -> None:
    assert set(TAYLOR_SCORERS) >= {"neuron", "head"}
    with pytest.raises(UsageError, match="unit_kind must be one of"):
        get_criterion("taylor", unit_kind="block")
    with pytest.raises(UsageError, match="unit_kind must be one of neuron, head"):
        get_criterion("activation", unit_kind="channel")


def test_taylor_fo_squared_is_the_mean_over_batches_of_activation_times_gradient_squared() -> None:
    model = tiny("llama")
    data = batches(2)
    from energyprune.pruning.criteria.taylor import calibration_loss

    mlp = model.model.layers[0].mlp
    j = 7
    per_batch = []
    for batch in data:
        seen: list[torch.Tensor] = []
        # the neuron's activation as down_proj reads it, kept in the graph for its gradient
        handle = mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]) or a[0].retain_grad())
        model.zero_grad()
        calibration_loss(model, batch).backward()
        handle.remove()
        a = seen[0]
        per_batch.append(float((a.detach() * a.grad)[..., j].sum()) ** 2)
    model.zero_grad(set_to_none=True)
    units = [u for u in units_for(model, "neuron") if u.path == "model.layers.0.mlp"]
    scores = TaylorCriterion("neuron", estimator="fo-squared").score(model, units, data)
    assert scores[units[j]] == pytest.approx(sum(per_batch) / 2, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["neuron", "head", "hidden"])
def test_taylor_fo_squared_prunes_every_width_kind(kind: str) -> None:
    model = tiny("llama")
    outcome = prune(model, "taylor", 0.25, batches(), unit_kind=kind, estimator="fo-squared")
    assert outcome.removed and all(s >= 0 for s in outcome.scores.values())
    ids, mask = tokens()
    assert torch.isfinite(output(outcome.model, ids, mask)).all()


def test_taylor_defaults_to_fo_squared_except_for_cnn_channels() -> None:
    # fo-squared beat abs on SmolLM2's neurons, KV groups and hidden channels (taylor's module note);
    # a CNN channel has abs only.
    for kind in ("neuron", "head", "hidden"):
        assert get_criterion("taylor", unit_kind=kind).estimator == "fo-squared"
    assert get_criterion("taylor", unit_kind="channel").estimator == "abs"
    assert get_criterion("taylor", unit_kind="neuron", estimator="abs").estimator == "abs"


def test_taylor_estimators_are_checked() -> None:
    with pytest.raises(UsageError, match="estimator must be one of abs, fo-squared"):
        get_criterion("taylor", unit_kind="neuron", estimator="second")
    with pytest.raises(UsageError, match="CNN channels use 'abs'"):
        get_criterion("taylor", unit_kind="channel", estimator="fo-squared")
