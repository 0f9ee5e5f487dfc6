"""One ranking rule for grouped units: raw where a criterion's scores compare across layers
(Taylor), normalised per layer otherwise - in one-shot `prune` and in the budget loop alike."""

from __future__ import annotations

import pytest

from energyprune.errors import UsageError
from energyprune.pruning.base import Unit
from energyprune.pruning.criteria import get_criterion
from energyprune.pruning.ranking import default_scope, ranking_scores

# MLP "a" scores small overall, MLP "b" large: raw, a's neurons all come first; normalised by each
# MLP's mean (0.25 and 2.5), a's 0.1 -> 0.4 and b's 1.0 -> 0.4, 1.5 -> 0.6, so they interleave.
UNITS = [Unit("neuron", p, i) for p in ("a", "b") for i in range(4)]
SCORES = dict(zip(UNITS, [0.1, 0.2, 0.3, 0.4, 1.0, 1.5, 3.5, 4.0]))


def test_taylor_ranks_raw_and_activation_normalised():
    assert default_scope(get_criterion("taylor", unit_kind="neuron")) == "global-raw"
    assert default_scope(get_criterion("taylor", unit_kind="neuron", estimator="fo-squared")) == "global-raw"
    assert default_scope(get_criterion("activation", unit_kind="neuron")) == "global"
    assert default_scope(get_criterion("magnitude", unit_kind="neuron")) == "global"


def test_ranking_scores_normalise_grouped_kinds_under_global_only():
    raw = ranking_scores(SCORES, "neuron", "global-raw")
    assert raw == SCORES
    normalised = ranking_scores(SCORES, "neuron", "global")
    assert normalised[UNITS[0]] == pytest.approx(0.4) and normalised[UNITS[4]] == pytest.approx(0.4)
    assert normalised[UNITS[5]] == pytest.approx(0.6)
    # Blocks are not grouped: one ranking whatever the scope.
    blocks = {Unit("block", "layers", i): float(i) for i in range(3)}
    assert ranking_scores(blocks, "block", "global") == blocks
    with pytest.raises(UsageError, match="scope must be one of"):
        ranking_scores(SCORES, "neuron", "layer")


def test_the_budget_loop_ranks_as_one_shot_prune_does():
    from energyprune.budget.loop import _eligible
    from energyprune.pruning.oneshot import select

    taylor = get_criterion("taylor", unit_kind="neuron")
    activation = get_criterion("activation", unit_kind="neuron")
    # Raw (Taylor): a's three removable neurons first (one of each MLP stays), then b's lowest.
    assert _eligible(SCORES, UNITS, "neuron", taylor)[:4] == [UNITS[0], UNITS[1], UNITS[2], UNITS[4]]
    assert select(SCORES, 4, "neuron", scope=default_scope(taylor)) == [UNITS[0], UNITS[1], UNITS[2], UNITS[4]]
    # Normalised (activation): b's 1.0 ties a's 0.1 and b's 1.5 comes before a's 0.2.
    loop_order = _eligible(SCORES, UNITS, "neuron", activation)[:4]
    assert set(loop_order[:2]) == {UNITS[0], UNITS[4]} and loop_order[2] == UNITS[5]
    assert select(SCORES, 4, "neuron", scope=default_scope(activation)) == loop_order


def test_one_shot_prune_takes_the_criterions_scope_unless_told():
    transformers = pytest.importorskip("transformers")
    import torch

    from energyprune.pruning import prune

    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 128, (2, 16), generator=generator)} for _ in range(2)]
    for name, other in (("taylor", "global"), ("activation", "global-raw")):
        default = prune(model, name, 0.25, batches, unit_kind="neuron")
        scope = default_scope(get_criterion(name, unit_kind="neuron"))
        told = prune(model, name, 0.25, batches, unit_kind="neuron", scope=scope)
        assert default.removed == told.removed, name
        # On this model the two global scopes choose differently, so the default is really the criterion's.
        assert default.removed != prune(model, name, 0.25, batches, unit_kind="neuron", scope=other).removed, name
