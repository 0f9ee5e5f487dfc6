"""Attention-head units (`head`): one KV group per unit, removed so that forward, generate, the KV
cache, save and reload keep working on every family the surgery knows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.kinds import applicable_kinds, remove_units, units_for
from energyprune.pruning.surgery import apply_record, find_attention_heads, prune_heads
from energyprune.pruning.surgery.slicing import get_module
from tests.pruning.test_surgery import (
    assert_cache_decoding_matches_full_forward,
    assert_generates,
    output,
    tiny,
    tokens,
)

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "opt", "bert"]


def zero_group_output(model: nn.Module, path: str, group: int) -> None:
    """Zero the output projection's columns that read group `group`: removing it is then exact."""
    spec = find_attention_heads(model, path)
    module = get_module(model, spec.full(spec.output))
    with torch.no_grad():
        columns = spec.query_columns(group)
        if isinstance(module, nn.Linear):
            module.weight[:, columns] = 0
        else:  # HF Conv1D: weight (in, out)
            module.weight[columns, :] = 0


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_a_silent_head_group_is_exact_and_the_model_still_decodes(family: str) -> None:
    model = tiny(family)
    units = units_for(model, "head")
    paths = sorted({u.path for u in units})
    assert len(paths) == 4
    spec = find_attention_heads(model, paths[1])
    # Llama-family tiny models have 4 query heads over 2 KV heads: 2 groups of 2.
    assert spec.groups == (2 if family in ("llama", "qwen2", "mistral") else 4)
    assert spec.group_size * spec.groups == spec.num_heads == 4
    zero_group_output(model, paths[1], 1)
    ids, mask = tokens()
    before = output(model, ids, mask)
    pruned, record = remove_units(model, [u for u in units if u.path == paths[1] and u.index == 1])
    after = output(pruned, ids, mask)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert record.params_after < record.params_before
    left = find_attention_heads(pruned, paths[1])
    assert (left.num_heads, left.groups) == (spec.num_heads - spec.group_size, spec.groups - 1)
    if family != "bert":
        assert_cache_decoding_matches_full_forward(pruned)
        assert_generates(pruned)
    # The replayed record gives the same shapes; with the pruned weights, the same outputs.
    rebuilt = apply_record(model, record)
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(output(rebuilt, ids, mask), after)


def test_gqa_removes_the_kv_head_with_its_whole_query_group() -> None:
    model = tiny("llama")
    attn = model.model.layers[0].self_attn
    q_rows = attn.q_proj.weight[16:32].clone()  # group 1: query heads 2, 3 (head size 8)
    k_rows = attn.k_proj.weight[8:16].clone()  # KV head 1
    pruned, _ = prune_heads(model, {"model.layers.0.self_attn": [0]})
    kept = pruned.model.layers[0].self_attn
    assert kept.q_proj.weight.shape == (16, 32) and kept.k_proj.weight.shape == (8, 32)
    assert kept.v_proj.weight.shape == (8, 32) and kept.o_proj.weight.shape == (32, 16)
    assert torch.equal(kept.q_proj.weight, q_rows) and torch.equal(kept.k_proj.weight, k_rows)
    assert kept.num_key_value_groups == 2  # each KV head still serves 2 query heads


def test_uniform_llama_heads_update_the_config_and_save_pretrained_reloads(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    model = tiny("llama")
    groups = {f"model.layers.{i}.self_attn": [i % 2] for i in range(4)}
    pruned, record = prune_heads(model, groups)
    assert pruned.config.num_attention_heads == 2 and pruned.config.num_key_value_heads == 1
    assert record.ops[0].detail["config"] == {"num_attention_heads": 2, "num_key_value_heads": 1}
    pruned.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = tokens()
    torch.testing.assert_close(output(again, ids, mask), output(pruned, ids, mask))


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_a_pruned_folder_with_uneven_heads_reloads(family: str, tmp_path) -> None:
    from energyprune.budget import save_pruned
    from energyprune.models import load_model

    original = tiny(family)
    original.save_pretrained(tmp_path / "base")
    loaded = load_model(str(tmp_path / "base"))
    units = units_for(loaded.module, "head")
    first = sorted({u.path for u in units})[0]
    pruned, record = remove_units(loaded.module, [u for u in units if u.path == first][:1])
    save_pruned(tmp_path / "out", pruned, record, loaded)
    again = load_model(str(tmp_path / "out")).module
    ids, mask = tokens()
    torch.testing.assert_close(output(again, ids, mask), output(pruned, ids, mask))
    assert find_attention_heads(again, first).groups == find_attention_heads(original, first).groups - 1


def test_removing_every_group_of_a_module_is_refused() -> None:
    model = tiny("llama")
    with pytest.raises(UsageError, match="cannot remove all 2 head groups.*attention"):
        prune_heads(model, {"model.layers.0.self_attn": [0, 1]})
    units = units_for(model, "head")
    from energyprune.pruning.kinds import get_kind

    eligible = get_kind("head").eligible(units, units)
    assert len(eligible) == 4  # one group of each of the 4 modules stays


def test_an_unknown_attention_layout_names_the_module_and_the_kinds_that_apply() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)  # neither separate q/k/v nor a c_attn Conv1D

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = Odd()
            self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(Block() for _ in range(2))

    model = Net()
    with pytest.raises(UsageError, match=r"layers\.0\.self_attn \(Odd\).*unit kinds that apply to this model: "
                                         r"block, attention, neuron") as caught:
        units_for(model, "head")
    assert "Traceback" not in str(caught.value)
    assert "head" not in applicable_kinds(model)


@pytest.mark.parametrize("criterion", ["magnitude", "random"])
def test_weight_criteria_score_head_groups_and_prune_runs(criterion: str) -> None:
    from energyprune.pruning import prune

    model = tiny("llama")
    outcome = prune(model, criterion, 3, unit_kind="head")
    assert len(outcome.scores) == 8 and len(outcome.removed) == 3
    assert all(u.kind == "head" for u in outcome.removed)
    ids, mask = tokens()
    assert output(outcome.model, ids, mask).shape == (2, 8, 128)


def test_head_magnitude_is_the_norm_of_what_the_group_owns() -> None:
    from energyprune.pruning.criteria import MagnitudeCriterion

    model = tiny("llama")
    attn = model.model.layers[2].self_attn
    units = [u for u in units_for(model, "head") if u.path == "model.layers.2.self_attn"]
    scores = MagnitudeCriterion("head").score(model, units)
    with torch.no_grad():
        expected = (attn.q_proj.weight[16:32].abs().sum() + attn.k_proj.weight[8:16].abs().sum()
                    + attn.v_proj.weight[8:16].abs().sum() + attn.o_proj.weight[:, 16:32].abs().sum())
    assert scores[units[1]] == pytest.approx(float(expected), rel=1e-6)
