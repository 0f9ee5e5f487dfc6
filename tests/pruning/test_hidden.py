"""Hidden-size units (`hidden`): embedding channels removed through every norm, projection,
embedding and a tied lm_head, on Llama, Qwen2, Mistral, GPT-2, OPT and BERT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning import prune
from energyprune.pruning.kinds import remove_units, units_for
from energyprune.pruning.surgery import apply_record, find_hidden, prune_hidden
from tests.pruning.test_surgery import (
    assert_cache_decoding_matches_full_forward,
    assert_generates,
    output,
    tiny,
    tokens,
)

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "opt", "bert"]


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_hidden_channels_shrinks_everything_and_the_model_still_decodes(family: str) -> None:
    model = tiny(family)
    units = units_for(model, "hidden")
    assert len(units) == 32
    pruned, record = remove_units(model, units[3:11])
    spec = find_hidden(pruned)
    assert spec.size == 24
    for name in spec.embeddings:
        assert pruned.get_submodule(name).weight.shape[1] == 24
    for name in spec.norms:
        assert pruned.get_submodule(name).weight.shape == (24,)
    ids, mask = tokens()
    out = output(pruned, ids, mask)
    assert torch.isfinite(out).all()
    assert out.shape[-1] == (24 if family == "bert" else 128)  # BERT's hidden states are its output
    if family != "bert":
        assert_cache_decoding_matches_full_forward(pruned)
        assert_generates(pruned)
    rebuilt = apply_record(model, record)
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(output(rebuilt, ids, mask), out)


def test_a_tied_lm_head_stays_tied_and_save_pretrained_reloads(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=128, tie_word_embeddings=True)).eval()
    assert find_hidden(model).tied
    pruned, record = prune_hidden(model, range(0, 32, 4))
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert pruned.lm_head.weight.shape == (128, 24) and pruned.config.hidden_size == 24
    assert record.ops[0].detail == {"tied_lm_head": True, "config": {"hidden_size": 24}}
    pruned.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = tokens()
    torch.testing.assert_close(output(again, ids, mask), output(pruned, ids, mask))


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_a_pruned_folder_with_a_smaller_hidden_size_reloads(family: str, tmp_path) -> None:
    from energyprune.budget import save_pruned
    from energyprune.models import load_model

    tiny(family).save_pretrained(tmp_path / "base")
    loaded = load_model(str(tmp_path / "base"))
    pruned, record = prune_hidden(loaded.module, [1, 2, 30])
    save_pruned(tmp_path / "out", pruned, record, loaded)
    again = load_model(str(tmp_path / "out")).module
    ids, mask = tokens()
    torch.testing.assert_close(output(again, ids, mask), output(pruned, ids, mask))


@pytest.mark.parametrize("criterion", ["magnitude", "random", "activation", "taylor"])
def test_every_width_criterion_scores_hidden_channels(criterion: str) -> None:
    model = tiny("llama")
    ids, mask = tokens()
    outcome = prune(model, criterion, 0.25, [{"input_ids": ids, "attention_mask": mask}], unit_kind="hidden")
    assert len(outcome.scores) == 32 and len(outcome.removed) == 8
    assert find_hidden(outcome.model).size == 24


def test_hidden_magnitude_counts_every_weight_a_channel_owns() -> None:
    from energyprune.pruning.criteria import MagnitudeCriterion

    model = tiny("llama")
    c = 5
    with torch.no_grad():
        expected = model.model.embed_tokens.weight[:, c].abs().sum() + model.lm_head.weight[:, c].abs().sum()
        expected += model.model.norm.weight[c].abs()
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            expected += layer.input_layernorm.weight[c].abs() + layer.post_attention_layernorm.weight[c].abs()
            expected += sum(p.weight[:, c].abs().sum() for p in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj))
            expected += a.o_proj.weight[c].abs().sum() + m.down_proj.weight[c].abs().sum()
    units = units_for(model, "hidden")
    scores = MagnitudeCriterion("hidden").score(model, units)
    assert scores[units[c]] == pytest.approx(float(expected), rel=1e-6)


def test_a_module_sized_by_the_hidden_size_that_the_surgery_does_not_know_is_named() -> None:
    model = tiny("llama")
    model.model.extra = nn.Linear(7, 32)  # writes into the hidden size: its role is unknown
    with pytest.raises(UsageError, match=r"model\.extra \(Linear\).*unit kinds that apply to this model: "
                                         r"block, attention, neuron, head"):
        units_for(model, "hidden")
    with pytest.raises(UsageError, match="cannot remove all 32 hidden channels"):
        prune_hidden(tiny("llama"), range(32))


def test_a_model_where_neither_heads_nor_hidden_apply_says_what_does() -> None:
    from energyprune.models import load_model

    demo = load_model(None).module  # nn.TransformerEncoderLayer: MultiheadAttention's fused in_proj
    for kind in ("head", "hidden"):
        with pytest.raises(UsageError, match=r"layers\.0\.self_attn \(MultiheadAttention\).*unit kinds that apply "
                                             r"to this model: block, attention, neuron, activation"):
            units_for(demo, kind)


def test_removing_hidden_channels_of_a_model_whose_output_is_its_hidden_state_is_warned(caplog) -> None:
    from energyprune.pruning.surgery.hidden import output_width_warning

    encoder = tiny("bert")  # a BertModel: its output is the last hidden state
    note = output_width_warning(encoder)
    assert note is not None and "narrows it from 32 dimensions" in note and "neuron,head" in note
    for family in ("llama", "gpt2"):  # an lm_head maps the hidden state to the vocabulary: nothing to say
        assert output_width_warning(tiny(family)) is None
    ids, mask = tokens()
    with caplog.at_level("WARNING", logger="energyprune.pruning.oneshot"):
        prune(encoder, "magnitude", 0.25, [{"input_ids": ids, "attention_mask": mask}], unit_kind="hidden")
    assert any("narrows it from 32 dimensions" in r.getMessage() for r in caplog.records)


def test_the_budget_loop_refuses_to_narrow_an_output_it_compares_and_warns_when_told_how_to_judge() -> None:
    from energyprune.budget import prune_to_energy
    from tests.budget.scripted import FlopsJudge

    encoder = tiny("bert")
    ids, mask = tokens()
    inputs = {"input_ids": ids, "attention_mask": mask}
    judge = FlopsJudge()
    # Its default quality, embedding similarity to the original, cannot compare 32 with 29 dimensions.
    with pytest.raises(UsageError, match="narrows it from 32 dimensions.*give evaluate="):
        prune_to_energy(encoder, "-10%", "magnitude", unit_kind="hidden", inputs=inputs, judge=judge)
    assert judge.measures == 0  # refused before measuring
    # With a task score of the user's own, it may; the result says what it did to the output.
    result = prune_to_energy(encoder, "-10%", "magnitude", unit_kind="hidden", inputs=inputs, judge=judge,
                             evaluate=lambda model: 1.0, max_steps=1, accept_median=True)
    assert any("narrows it from 32 dimensions" in w for w in result.warnings)
    assert result.steps and result.steps[0].removed
