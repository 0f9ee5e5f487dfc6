from __future__ import annotations

import pytest
import torch

from energyprune.errors import UsageError
from energyprune.pruning import apply_record, prune

transformers = pytest.importorskip("transformers")


@pytest.fixture
def llama():
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # block 3 becomes an exact identity on the residual stream
        model.model.layers[3].self_attn.o_proj.weight.zero_()
        model.model.layers[3].mlp.down_proj.weight.zero_()
    return model


@pytest.fixture
def batches():
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 128, (2, 16), generator=generator),
             "attention_mask": torch.ones(2, 16, dtype=torch.long)} for _ in range(2)]


def logits(model, batch):
    with torch.inference_mode():
        return model(**batch).logits


def test_prune_removes_the_planted_identity_block_and_keeps_outputs(llama, batches):
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    pruned, record = prune(llama, "cosine-block", 1, batches)
    assert pruned.config.num_hidden_layers == 5
    assert torch.allclose(logits(pruned, batches[0]), logits(llama, batches[0]), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items()), "user's model changed"
    replayed = apply_record(llama, record)
    assert [p.shape for p in replayed.parameters()] == [p.shape for p in pruned.parameters()]


def test_outcome_names_what_was_removed_and_why(llama, batches):
    outcome = prune(llama, "cosine-block", 1, batches)
    (removed,) = outcome.removed
    assert removed.index == 3
    assert outcome.scores[removed] == min(outcome.scores.values())


def test_fraction_of_neurons_is_taken_per_mlp(llama, batches):
    pruned, _ = prune(llama, "magnitude", 0.25, batches, unit_kind="neuron", scope="per-layer")
    widths = {layer.mlp.down_proj.in_features for layer in pruned.model.layers}
    assert widths == {48}
    assert pruned.config.intermediate_size == 48
    generated = pruned.generate(batches[0]["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_asking_for_more_than_the_candidates_is_a_clear_error(llama, batches):
    # entropy-block protects blocks 0, 1 and 5 by default: at most 3 candidates remain
    with pytest.raises(UsageError, match="at most"):
        prune(llama, "entropy-block", 4, batches, stage="all")


@pytest.mark.parametrize("amount", [0, -1, 1.0, 1.5])
def test_bad_amounts_are_refused(llama, batches, amount):
    with pytest.raises(UsageError):
        prune(llama, "random", amount, batches)


def test_select_removes_minus_inf_first_and_never_plus_inf_or_nan():
    import math

    from energyprune.pruning import Unit, select

    units = [Unit("neuron", "mlp", i) for i in range(6)]
    scores = dict(zip(units, [-math.inf, 0.5, 0.2, 0.9, math.inf, math.nan]))
    assert select(scores, 2, "neuron") == [units[0], units[2]]
    # Per MLP, a fraction: round(0.5 * 6) = 3 of the 4 candidates.
    assert sorted(select(scores, 0.5, "neuron")) == sorted([units[0], units[2], units[1]])
    with pytest.raises(UsageError, match="candidates"):
        select(scores, 5, "neuron")


def test_original_unit_undoes_the_renumbering_of_earlier_removals():
    from energyprune.pruning.base import Unit
    from energyprune.pruning.surgery.record import PruneRecord
    from energyprune.pruning.surgery import prune_mlp_neurons, remove_blocks
    from energyprune.models.demo import build_demo_model

    model = build_demo_model()
    first, r1 = remove_blocks(model, [1])
    second, r2 = remove_blocks(first, [1], inplace=True)  # the original block 2
    record = r1 + r2
    assert PruneRecord(r1.ops, r1.model_class).original_unit(Unit("block", "layers.1", 1)) == Unit("block", "layers.2", 2)
    assert record.original_unit(Unit("block", "layers.1", 1)) == Unit("block", "layers.3", 3)
    # Neurons: the MLP of the block now at 0 is the original's 0; remove neurons 0..9, then neuron 0 is the old 10.
    mlp = "layers.1"
    pruned, r3 = prune_mlp_neurons(second, {mlp: list(range(10))})
    unit = (record + r3).original_unit(Unit("neuron", mlp, 0))
    assert unit == Unit("neuron", "layers.3", 10)


def test_fraction_of_neurons_is_ranked_globally_by_default():
    from energyprune.pruning import Unit, select

    # MLP "a" has the four smallest scores: a global 50% takes three of them (one must stay), then b's lowest.
    units = [Unit("neuron", p, i) for p in ("a", "b") for i in range(4)]
    scores = dict(zip(units, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]))
    assert select(scores, 0.5, "neuron", scope="global-raw") == [units[0], units[1], units[2], units[4]]
    # Normalised by each MLP's mean (0.25 and 0.65): a 0.4, 0.8, 1.2, 1.6; b 0.77, 0.92, 1.08, 1.23.
    chosen = select(scores, 0.5, "neuron")
    assert chosen == [units[0], units[4], units[1], units[5]]
    per_layer = select(scores, 0.5, "neuron", scope="per-layer")
    assert sorted(per_layer) == sorted([units[0], units[1], units[4], units[5]])
    with pytest.raises(UsageError, match="scope must be one of global, global-raw, per-layer"):
        select(scores, 0.5, "neuron", scope="layer")


def test_global_neuron_pruning_gives_uneven_widths_that_still_run(llama, batches):
    pruned, record = prune(llama, "magnitude", 0.25, batches, unit_kind="neuron")
    widths = [layer.mlp.down_proj.in_features for layer in pruned.model.layers]
    assert sum(widths) == round(0.75 * 64 * len(widths))
    assert record.ops[0].detail["layer_sizes"] == {f"model.layers.{i}.mlp": w for i, w in enumerate(widths)}
    generated = pruned.generate(batches[0]["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)
