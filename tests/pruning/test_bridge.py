"""Block removal with a least-squares linear bridge (`surgery.bridge`, ReplaceMe): the fit, the fold
into the block before each removed run, and everything a removal must keep working."""

from __future__ import annotations

import pytest
import torch

from energyprune.errors import UsageError
from energyprune.pruning.kinds import remove_units, units_for
from energyprune.pruning.surgery import apply_record, remove_blocks
from energyprune.pruning.surgery.bridge import remove_blocks_bridged, runs_of
from tests.pruning.test_surgery import assert_cache_decoding_matches_full_forward, assert_generates, output, tiny, tokens

PRE_NORM = ["llama", "qwen2", "mistral", "gpt2", "neox"]


def batches(n: int = 6, length: int = 16) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    return [{"input_ids": torch.randint(3, 128, (4, length), generator=generator)} for _ in range(n)]


def stack_input_of(model: torch.nn.Module, index: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden state that enters block `index` (the output of the block before it)."""
    from energyprune.pruning.surgery.discovery import find_block_stack

    got = []
    block = find_block_stack(model).blocks[index - 1]
    handle = block.register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return got[0].reshape(-1, got[0].shape[-1]).double()


def test_runs_of_consecutive_blocks():
    assert runs_of([9, 3, 5, 6]) == [(3, 3), (5, 6), (9, 9)]
    assert runs_of([]) == []


@pytest.mark.parametrize("family", PRE_NORM)
def test_the_bridge_brings_the_next_blocks_input_closer_to_the_original_and_keeps_everything_working(family):
    model = tiny(family)
    calibration = batches()
    plain, plain_record = remove_blocks(model, [1, 2])
    bridged, record = remove_blocks_bridged(model, [1, 2], calibration, ridge=1e-6)
    # Same shapes and the same record structure as plain removal: the same size and cost.
    assert {k: v.shape for k, v in bridged.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert record.ops[0].same_structure(plain_record.ops[0])
    run = record.ops[0].detail["bridge"]["runs"][0]
    assert run["bridged"] and run["blocks"] == [1, 2] and run["tokens"] == 6 * 4 * 16
    assert run["relative_error_bridged"] < run["relative_error_plain"]
    # What block 3 (now 1) receives is nearer what it received in the original, on held-out tokens.
    held_out = {"input_ids": torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(9))}
    want = stack_input_of(model, 3, held_out)
    error = {name: float(((stack_input_of(m, 1, held_out) - want) ** 2).sum())
             for name, m in (("plain", plain), ("bridged", bridged))}
    assert error["bridged"] < error["plain"]
    assert model.config.num_hidden_layers == 4  # the caller's model untouched
    assert_cache_decoding_matches_full_forward(bridged)
    assert_generates(bridged)
    # Replaying the record and loading the bridged weights gives the bridged model back.
    rebuilt = apply_record(model, record)
    rebuilt.load_state_dict(bridged.state_dict())
    ids, mask = tokens()
    torch.testing.assert_close(output(rebuilt, ids, mask), output(bridged, ids, mask))


def test_a_bridged_model_saves_and_reloads_as_an_ordinary_one(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny("llama")
    bridged, _ = remove_blocks_bridged(model, [2], batches())
    bridged.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = tokens()
    torch.testing.assert_close(output(again, ids, mask), output(bridged, ids, mask))


def test_identity_blocks_get_the_identity_bridge():
    """Blocks that add nothing: the fitted map is the identity and the model is unchanged."""
    model = tiny("llama")
    with torch.no_grad():
        for block in (model.model.layers[1], model.model.layers[2]):
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    bridged, _ = remove_blocks_bridged(model, [1, 2], batches(), ridge=0.0)
    ids, mask = tokens()
    torch.testing.assert_close(output(bridged, ids, mask), output(model, ids, mask), atol=1e-4, rtol=1e-4)


def test_a_run_from_block_zero_is_removed_plainly_and_says_so():
    model = tiny("llama")
    bridged, record = remove_blocks_bridged(model, [0, 2], batches())
    runs = record.ops[0].detail["bridge"]["runs"]
    assert runs[0] == {"blocks": [0, 0], "bridged": False, "why": "no block before it to carry the map"}
    assert runs[1]["bridged"] and runs[1]["into"] == "model.layers.1.mlp.down_proj"
    alone, _ = remove_blocks_bridged(model, [0], batches())
    plain, _ = remove_blocks(model, [0])
    ids, mask = tokens()
    torch.testing.assert_close(output(alone, ids, mask), output(plain, ids, mask))


def test_padding_is_left_out_of_the_fit():
    model = tiny("llama")
    calibration = batches(2)
    for batch in calibration:
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        batch["attention_mask"][:, :4] = 0
    _, record = remove_blocks_bridged(model, [2], calibration)
    assert record.ops[0].detail["bridge"]["runs"][0]["tokens"] == 2 * 4 * 12


def test_bad_bridges_are_clear_errors():
    with pytest.raises(UsageError, match="post-norm"):
        remove_blocks_bridged(tiny("bert"), [2], [{"input_ids": torch.randint(3, 128, (2, 8))}])
    with pytest.raises(UsageError, match="calibration"):
        remove_blocks_bridged(tiny("llama"), [2], [])
    with pytest.raises(UsageError, match="ridge"):
        remove_blocks_bridged(tiny("llama"), [2], batches(1), ridge=-1.0)


def test_remove_units_bridges_blocks_only_when_asked():
    model = tiny("llama")
    units = [u for u in units_for(model, "block") if u.index == 2]
    _, plain = remove_units(model, units, calibration=batches(2))
    _, bridged = remove_units(model, units, calibration=batches(2), bridge=True)
    assert "bridge" not in plain.ops[0].detail and bridged.ops[0].detail["bridge"]["runs"][0]["bridged"]


def test_the_budget_loop_bridges_its_block_steps_and_refuses_a_bridge_without_blocks():
    from energyprune.budget import prune_to_energy
    from tests.budget.scripted import FlopsJudge

    model = tiny("llama")
    calibration = batches(3)
    inputs = calibration[0]
    result = prune_to_energy(model, "-40%", "cosine-block", inputs=inputs, calibration=calibration,
                             judge=FlopsJudge(), bridge=True, accept_median=True)
    assert result.steps and all(op.kind == "remove_blocks" and "bridge" in op.detail for op in result.record.ops)
    with pytest.raises(UsageError, match="bridge replaces removed blocks"):
        prune_to_energy(model, "-30%", "magnitude", unit_kind="neuron", inputs=inputs, judge=FlopsJudge(), bridge=True)


def test_the_cli_flag_defines_the_run_and_comes_back_in_the_resume_command():
    from energyprune.cli.main import build_parser
    from energyprune.cli.prune import _resume_command, _run_options

    args = build_parser().parse_args(["prune", "demo", "--target=-30%", "--criterion", "cosine-block",
                                      "--bridge", "--out", "run"])
    assert args.bridge and _run_options(args)["bridge"] is True
    assert "--bridge" in _resume_command(args).split()
    plain = build_parser().parse_args(["prune", "demo", "--target=-30%", "--criterion", "cosine-block"])
    assert "bridge" not in _run_options(plain)  # checkpoints from before the flag still resume


def test_a_bf16_model_is_not_refused_for_its_rounding():
    model = tiny("llama").to(torch.bfloat16)
    bridged, record = remove_blocks_bridged(model, [2], batches(2))
    assert record.ops[0].detail["bridge"]["runs"][0]["bridged"]
    assert next(bridged.parameters()).dtype == torch.bfloat16
