"""Surgery on tiny random models: what is removed is really gone, and what should not change does not.

Hugging Face models are built from configs with random weights (no downloads). Exactness checks
make the removed part an exact identity first (zero output projections, zero down-projection
columns, zeroed channels), so the pruned model must match the original to float tolerance.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.discovery import find_block_stack
from energyprune.pruning.surgery import (
    PruneRecord,
    RemovedAttention,
    apply_record,
    count_parameters,
    find_mlps,
    fold_activation,
    prune_channels,
    prune_mlp_neurons,
    remove_attention,
    remove_blocks,
    remove_dead_neurons,
)

CAUSAL = ["llama", "qwen2", "mistral", "gpt2", "opt", "neox"]
FAMILIES = [*CAUSAL, "bert"]
VOCAB = 128

#: Per family, the output projections of a block's attention and MLP (relative to the block).
OUTPUT_PROJECTIONS = {
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "opt": ("self_attn.out_proj", "fc2"),
    "neox": ("attention.dense", "mlp.dense_4h_to_h"),
}
#: Parameters one hidden neuron holds (hidden size 32): gated = 3 matrices, else 2 plus a bias.
PARAMS_PER_NEURON = {"llama": 96, "qwen2": 96, "mistral": 96, "gpt2": 65, "opt": 65, "neox": 65, "bert": 65}


def tiny(family: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, vocab_size=VOCAB)
    if family in ("llama", "qwen2", "mistral"):
        config_cls, model_cls = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        }[family]
        model = model_cls(config_cls(**common, num_key_value_heads=2, intermediate_size=64))
    elif family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=32, n_layer=4, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2))
    elif family == "opt":
        model = transformers.OPTForCausalLM(transformers.OPTConfig(
            **common, ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32))
    elif family == "neox":
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            **common, intermediate_size=64, max_position_embeddings=64))
    elif family == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            **common, intermediate_size=64, max_position_embeddings=64))
    else:
        raise AssertionError(family)
    return model.eval()


def tokens(batch: int = 2, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[1, :3] = 0  # left padding in the second row
    return ids, mask


def output(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.zero_()


def cache_kwarg(model: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def assert_cache_decoding_matches_full_forward(model: nn.Module) -> None:
    """Decoding token by token with the KV cache gives the logits of one full forward pass."""
    ids, mask = tokens(2, 8)
    full = output(model, ids, mask)
    key = cache_kwarg(model)
    with torch.no_grad():
        out = model(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        for t in range(5, 8):
            past = getattr(out, "cache", None) or out.past_key_values
            out = model(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], use_cache=True, **{key: past})
            torch.testing.assert_close(out.logits[:, -1], full[:, t], atol=1e-5, rtol=1e-5)


def assert_generates(model: nn.Module) -> None:
    ids, mask = tokens(2, 6)
    kwargs = dict(attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (2, 11)
    assert torch.equal(cached, uncached)


def attention_layer_indices(model: nn.Module) -> list[int]:
    stack = find_block_stack(model)
    assert stack is not None
    out = []
    for block in stack.blocks:
        for name in ("self_attn", "attn", "attention"):
            attention = getattr(block, name, None)
            if attention is not None:
                out.append(attention.layer_idx if hasattr(attention, "layer_idx") else attention.self.layer_idx)
                break
    return out


# ------------------------------------------------------------------------------------ blocks
@pytest.mark.parametrize("family", FAMILIES)
def test_remove_blocks_shrinks_stack_and_config_and_keeps_model_runnable(family: str) -> None:
    model = tiny(family)
    before = snapshot(model)
    stack = find_block_stack(model)
    removed_params = sum(p.numel() for i in (1, 2) for p in stack.blocks[i].parameters())

    pruned, record = remove_blocks(model, [2, 1])

    assert len(find_block_stack(pruned)) == 2
    assert pruned.config.num_hidden_layers == 2
    assert model.config.num_hidden_layers == 4  # the user's model keeps its depth and weights
    assert_same_state(model, before)
    assert attention_layer_indices(pruned) == [0, 1]
    assert count_parameters(model) - count_parameters(pruned) == removed_params
    (op,) = record.ops
    assert (op.kind, op.indices, op.sizes_before, op.sizes_after) == ("remove_blocks", ((1, 2),), (4,), (2,))
    assert op.params_removed == removed_params
    # The config describes the pruned model: a fresh model built from it has the same shapes.
    assert shapes(type(model)(pruned.config)) == shapes(pruned)
    ids, mask = tokens()
    assert output(pruned, ids, mask).shape[:2] == ids.shape
    if family in CAUSAL:
        assert_generates(pruned)
        assert_cache_decoding_matches_full_forward(pruned)


def test_remove_blocks_cuts_per_layer_config_lists() -> None:
    model = tiny("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    pruned, record = remove_blocks(model, [0])
    assert pruned.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert record.ops[0].detail["config"]["layer_types"] == pruned.config.layer_types
    assert model.config.layer_types[0] == "full_attention"


@pytest.mark.parametrize("family", CAUSAL)
def test_removing_an_identity_block_leaves_logits_unchanged(family: str) -> None:
    model = tiny(family)
    block = find_block_stack(model).blocks[1]
    for name in OUTPUT_PROJECTIONS[family]:
        zero_(block.get_submodule(name))  # attention and MLP now add 0 to the residual stream
    ids, mask = tokens()
    expected = output(model, ids, mask)

    pruned, _ = remove_blocks(model, [1])

    torch.testing.assert_close(output(pruned, ids, mask), expected, atol=1e-5, rtol=1e-5)


def test_remove_blocks_refuses_to_remove_everything_and_bad_indices() -> None:
    model = tiny("llama")
    with pytest.raises(UsageError, match="at least one must stay"):
        remove_blocks(model, range(4))
    with pytest.raises(UsageError, match="out of range"):
        remove_blocks(model, [4])
    with pytest.raises(UsageError, match="not an integer"):
        remove_blocks(model, [1.5])
    with pytest.raises(UsageError, match="no stack"):
        remove_blocks(nn.Sequential(nn.Linear(2, 2)), [0])


def test_remove_blocks_inplace_changes_the_given_model() -> None:
    model = tiny("gpt2")
    pruned, _ = remove_blocks(model, [0], inplace=True)
    assert pruned is model
    assert len(model.transformer.h) == 3 and model.config.n_layer == 3


# --------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("family", CAUSAL)
def test_remove_attention_keeps_generate_and_cache_exact(family: str) -> None:
    model = tiny(family)
    before = snapshot(model)
    stack = find_block_stack(model)
    attention_params = 0
    for i in (0, 2):
        attention_params += sum(p.numel() for p in stack.blocks[i].get_submodule(
            OUTPUT_PROJECTIONS[family][0].split(".")[0]).parameters())

    pruned, record = remove_attention(model, [0, 2])

    assert_same_state(model, before)
    assert count_parameters(model) - count_parameters(pruned) == attention_params
    blocks = find_block_stack(pruned).blocks
    removed = [m for m in pruned.modules() if isinstance(m, RemovedAttention)]
    assert [m.layer_idx for m in removed] == [0, 2] and {m.mode for m in removed} == {"zero"}
    assert not any(isinstance(m, RemovedAttention) for m in blocks[1].modules())
    assert record.ops[0].sizes_before == (4,) and record.ops[0].sizes_after == (2,)
    # Block 0's attention is gone: the cache must still count tokens (from the first real layer).
    assert_cache_decoding_matches_full_forward(pruned)
    assert_generates(pruned)


@pytest.mark.parametrize("family", CAUSAL)
def test_removing_a_zero_output_attention_leaves_logits_unchanged(family: str) -> None:
    model = tiny(family)
    zero_(find_block_stack(model).blocks[1].get_submodule(OUTPUT_PROJECTIONS[family][0]))
    ids, mask = tokens()
    expected = output(model, ids, mask)
    pruned, _ = remove_attention(model, [1])
    torch.testing.assert_close(output(pruned, ids, mask), expected, atol=1e-5, rtol=1e-5)


def test_remove_attention_then_blocks_renumbers_the_placeholder() -> None:
    model = tiny("llama")
    pruned, first = remove_attention(model, [3])
    pruned, second = remove_blocks(pruned, [0], inplace=True)
    assert pruned.model.layers[2].self_attn.layer_idx == 2
    assert_cache_decoding_matches_full_forward(pruned)
    assert [op.kind for op in (first + second).ops] == ["remove_attention", "remove_blocks"]


def test_bert_attention_removal_skips_the_whole_sublayer() -> None:
    model = tiny("bert")
    pruned, record = remove_attention(model, [1])
    assert record.ops[0].detail["modes"] == ["skip"]
    layer = pruned.encoder.layer[1]
    hidden = torch.randn(2, 5, 32)
    with torch.no_grad():
        got = layer(hidden)
        got = got[0] if isinstance(got, tuple) else got  # transformers 4 returns a tuple
        expected = layer.output(layer.intermediate(hidden), hidden)  # the feed-forward alone
    torch.testing.assert_close(got, expected)
    ids, mask = tokens()
    assert output(pruned, ids, mask).shape == (2, 8, 32)


def test_remove_attention_refusals() -> None:
    model = tiny("llama")
    with pytest.raises(UsageError, match="every block of a generating model"):
        remove_attention(model, range(4))
    pruned, _ = remove_attention(model, [1])
    with pytest.raises(UsageError, match="already removed"):
        remove_attention(pruned, [1])
    # An encoder may lose the attention of every block.
    bert, _ = remove_attention(tiny("bert"), range(4))
    assert sum(isinstance(m, RemovedAttention) for m in bert.modules()) == 4


# ------------------------------------------------------------------------------------ neurons
def zero_hidden_columns(consumer: nn.Module, neurons: list[int]) -> None:
    with torch.no_grad():
        if isinstance(consumer, nn.Linear):
            consumer.weight[:, neurons] = 0
        else:  # HF Conv1D: weight is (in, out)
            consumer.weight[neurons, :] = 0


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_neurons_with_zero_down_columns_is_exact(family: str) -> None:
    model = tiny(family)
    spec = find_mlps(model)[0]
    neurons = [3, 7, 10]
    zero_hidden_columns(model.get_submodule(spec.full(spec.consumer)), neurons)
    before = snapshot(model)
    ids, mask = tokens()
    expected = output(model, ids, mask)

    pruned, record = prune_mlp_neurons(model, {spec.path: neurons})

    assert_same_state(model, before)
    torch.testing.assert_close(output(pruned, ids, mask), expected, atol=1e-5, rtol=1e-5)
    assert count_parameters(model) - count_parameters(pruned) == 3 * PARAMS_PER_NEURON[family]
    assert find_mlps(pruned)[0].hidden_size == spec.hidden_size - 3
    (op,) = record.ops
    assert op.indices == ((3, 7, 10),) and op.sizes_after == (spec.hidden_size - 3,)
    # Layers now differ in width: the config keeps the old width, the record has every width.
    assert op.detail["config"] == {}
    assert op.detail["layer_sizes"][spec.path] == spec.hidden_size - 3
    if family in CAUSAL:
        assert_generates(pruned)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bert"])
def test_uniform_neuron_pruning_updates_the_config(family: str) -> None:
    model = tiny(family)
    pruned, record = prune_mlp_neurons(model, {spec.path: [0, 5] for spec in find_mlps(model)})
    widths = {spec.hidden_size for spec in find_mlps(pruned)}
    assert len(widths) == 1
    (width,) = widths
    assert list(record.ops[0].detail["config"].values()) == [width]
    assert shapes(type(model)(pruned.config)) == shapes(pruned)


def test_neurons_of_a_plain_sequential_mlp() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4)).eval()
    zero_hidden_columns(mlp[3], [0, 15])
    x = torch.randn(5, 8)
    expected = mlp(x)
    pruned, record = remove_dead_neurons(mlp, {"": [0, 15]})
    assert pruned[0].weight.shape == (14, 8) and pruned[3].weight.shape == (4, 14)
    assert pruned[0].out_features == 14 and pruned[3].in_features == 14
    torch.testing.assert_close(pruned(x), expected)
    assert record.ops[0].params_removed == 2 * (8 + 1 + 4)


def test_neuron_pruning_refusals() -> None:
    model = tiny("llama")
    with pytest.raises(UsageError, match="not an MLP"):
        prune_mlp_neurons(model, {"model.layers.0.self_attn": [0]})
    with pytest.raises(UsageError, match="all 64 neurons"):
        prune_mlp_neurons(model, {"model.layers.0.mlp": range(64)})
    with pytest.raises(UsageError, match="no submodule"):
        prune_mlp_neurons(model, {"model.layers.9.mlp": [0]})


# --------------------------------------------------------------------------------------- fold
def test_fold_with_identity_activation_is_exact() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 64), nn.Identity(), nn.Linear(64, 8)).eval()
    x = torch.randn(10, 16)
    expected = mlp(x)
    folded, record = fold_activation(mlp, "")
    assert isinstance(folded[0], nn.Linear) and folded[0].weight.shape == (8, 16)
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    assert record.ops[0].params_removed == (16 * 64 + 64 + 64 * 8 + 8) - (16 * 8 + 8)


def test_fold_with_relu_always_on_is_exact() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    with torch.no_grad():
        mlp[0].bias.fill_(5.0)  # |W x| stays far below 5 for these inputs
    x = torch.rand(10, 16) * 0.1
    assert (mlp[0](x) > 0).all()  # every rectifier ON: ReLU is the identity here
    expected = mlp(x)
    folded, _ = fold_activation(nn.Sequential(nn.Linear(4, 4), mlp), "1")
    torch.testing.assert_close(folded[1](x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(folded[1][1], nn.Identity) and isinstance(folded[1][2], nn.Identity)


@pytest.mark.parametrize("family", ["gpt2", "opt", "neox", "bert"])
def test_fold_hf_mlp_where_the_activation_is_the_identity_on_the_data(family: str) -> None:
    model = tiny(family)
    spec = find_mlps(model)[1]
    producer = model.get_submodule(spec.full(spec.producers[0]))
    with torch.no_grad():
        producer.bias.add_(30.0)  # GELU(z) = z and ReLU(z) = z to float precision for z near 30
    ids, mask = tokens()
    expected = output(model, ids, mask)
    before = snapshot(model)

    folded, record = fold_activation(model, spec.path)

    assert_same_state(model, before)
    torch.testing.assert_close(output(folded, ids, mask), expected, atol=1e-4, rtol=1e-4)
    d, h = 32, spec.hidden_size
    assert record.ops[0].params_removed == (d * h + h + h * d + d) - (d * d + d)
    assert isinstance(folded.get_submodule(spec.full(spec.consumer)), nn.Identity)


def test_fold_refuses_gated_mlp() -> None:
    with pytest.raises(UsageError, match="gated MLP.*cannot be folded exactly"):
        fold_activation(tiny("llama"), "model.layers.0.mlp")


# ----------------------------------------------------------------------------------- channels
def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def zero_channel_(conv: nn.Conv2d, bn: nn.BatchNorm2d, channel: int) -> None:
    with torch.no_grad():
        conv.weight[channel] = 0
        conv.bias[channel] = 0
        bn.weight[channel] = 0
        bn.bias[channel] = 0


def test_pruning_zeroed_channels_is_exact_and_shrinks_everything_downstream() -> None:
    model = cnn()
    zero_channel_(model[0], model[1], 2)
    zero_channel_(model[0], model[1], 5)
    zero_channel_(model[3], model[4], 1)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    before = snapshot(model)
    mean4 = model[4].running_mean.clone()

    pruned, record = prune_channels(model, {"0": [2, 5], "3": [1]})

    assert_same_state(model, before)
    torch.testing.assert_close(pruned(x), expected, atol=1e-5, rtol=1e-5)
    assert pruned[0].weight.shape == (6, 3, 3, 3) and pruned[1].num_features == 6
    assert pruned[3].weight.shape == (15, 6, 3, 3) and pruned[4].running_var.shape == (15,)
    assert pruned[8].weight.shape == (10, 15 * 16)
    assert torch.equal(pruned[4].running_mean, torch.cat([mean4[:1], mean4[2:]]))
    # conv0: 2 x (27 + 1) + BN 2 x 2 + conv3 inputs 2 x 16 x 9; conv3: 1 x (6 x 9 + 1) + BN 2 + Linear 16 x 10
    assert record.ops[0].params_removed == (56 + 4 + 288) + (55 + 2 + 160)
    assert record.ops[0].detail["3"]["consumer"] == "8"


def test_channel_pruning_through_a_depthwise_convolution() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.SiLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.SiLU()),
        nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()
    zero_channel_(model[0], model[1], 3)
    zero_channel_(model[3][0], model[3][1], 3)
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    pruned, _ = prune_channels(model, {"0": [3]})
    depthwise = pruned[3][0]
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (7, 7, 7)
    assert pruned[3][1].num_features == 7 and pruned[4].in_channels == 7
    torch.testing.assert_close(pruned(x), expected, atol=1e-5, rtol=1e-5)


def test_channel_pruning_refusals_name_the_layer() -> None:
    grouped = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(UsageError, match=r"^1 is a grouped convolution"):
        prune_channels(grouped, {"0": [1]})
    norm = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 3))
    with pytest.raises(UsageError, match=r"1 \(GroupNorm\)"):
        prune_channels(norm, {"0": [1]})
    with pytest.raises(UsageError, match="end of the nn.Sequential"):
        prune_channels(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU()), {"0": [1]})
    with pytest.raises(UsageError, match="depthwise"):
        prune_channels(nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 2, 1)), {"0": [1]})

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x)

    with pytest.raises(UsageError, match="not inside an nn.Sequential"):
        prune_channels(Residual(), {"conv": [1]})


# ------------------------------------------------------------------------------------- record
def test_record_json_round_trip_and_path_mapping() -> None:
    model = tiny("llama")
    pruned, first = remove_blocks(model, [0, 2])
    pruned, second = prune_mlp_neurons(pruned, {"model.layers.0.mlp": [1, 2]}, inplace=True)
    record = first + second
    again = PruneRecord.from_json(json.dumps(json.loads(record.to_json())))
    assert again == record
    assert record.model_class == "LlamaForCausalLM"
    assert record.params_before == count_parameters(model)
    assert record.params_after == count_parameters(pruned)
    assert record.map_path("model.layers.1.mlp") == "model.layers.0.mlp"
    assert record.map_path("model.layers.3") == "model.layers.1"
    assert record.map_path("model.layers.2.self_attn") is None
    assert record.map_path("lm_head") == "lm_head"
    with pytest.raises(UsageError, match="not a prune record"):
        PruneRecord.from_dict({"format": "something else"})


def test_apply_record_replays_a_mixed_llama_run() -> None:
    original = tiny("llama")
    model, record = remove_blocks(original, [1])
    for step in (
        lambda m: remove_attention(m, [0], inplace=True),
        lambda m: prune_mlp_neurons(m, {"model.layers.2.mlp": [0, 1, 2], "model.layers.0.mlp": [9]}, inplace=True),
        lambda m: remove_blocks(m, [1], inplace=True),
    ):
        model, op = step(model)
        record = record + op
    with torch.no_grad():  # train the pruned model a little: replay must carry shapes, not values
        for p in model.parameters():
            p.add_(0.01)

    replayed = apply_record(original, PruneRecord.from_json(record.to_json()))

    assert shapes(replayed) == shapes(model)
    assert len(original.model.layers) == 4
    replayed.load_state_dict(model.state_dict())
    ids, mask = tokens()
    torch.testing.assert_close(output(replayed, ids, mask), output(model, ids, mask))
    assert_cache_decoding_matches_full_forward(replayed)


def test_apply_record_replays_folds_and_channels() -> None:
    gpt2 = tiny("gpt2")
    folded, record = fold_activation(gpt2, "transformer.h.2.mlp")
    replayed = apply_record(gpt2, record)
    assert shapes(replayed) == shapes(folded)
    ids, mask = tokens()
    torch.testing.assert_close(output(replayed, ids, mask), output(folded, ids, mask))

    conv = cnn()
    pruned, record = prune_channels(conv, {"0": [0, 1], "3": [4]})
    replayed = apply_record(conv, record)
    assert shapes(replayed) == shapes(pruned)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(replayed(x), pruned(x))


def test_apply_record_refuses_a_model_that_does_not_match() -> None:
    _, record = remove_blocks(tiny("llama"), [3])
    with pytest.raises(UsageError, match="made on a LlamaForCausalLM"):
        apply_record(tiny("gpt2"), record)
    _, neurons = prune_mlp_neurons(tiny("llama"), {"model.layers.0.mlp": [0]})
    narrower = tiny("llama")
    prune_mlp_neurons(narrower, {"model.layers.0.mlp": [5]}, inplace=True)
    with pytest.raises(UsageError, match="does not match this model"):
        apply_record(narrower, neurons)


# ------------------------------------------------------------- attention removal and the KV cache
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attention_removed_in_two_steps_keeps_cache_slots_consecutive(family: str) -> None:
    model = tiny(family)
    pruned, _ = remove_attention(model, [0])
    pruned, _ = remove_attention(pruned, [2], inplace=True)
    removed = [m for m in pruned.modules() if isinstance(m, RemovedAttention)]
    assert [m.layer_idx for m in removed] == [0, 2]  # the blocks they stand in
    assert_cache_decoding_matches_full_forward(pruned)
    assert_generates(pruned)
    pruned, _ = remove_blocks(pruned, [1], inplace=True)  # slots move with the blocks
    assert_cache_decoding_matches_full_forward(pruned)


def test_beam_search_runs_with_removed_attention() -> None:
    model = tiny("llama")
    pruned, _ = remove_attention(model, [0, 1])
    ids, mask = tokens(2, 6)
    with torch.no_grad():
        out = pruned.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, num_beams=3,
                              do_sample=False, pad_token_id=0)
    assert out.shape == (2, 10)


def test_attention_removal_refused_where_cache_slot_types_would_mix() -> None:
    model = tiny("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    with pytest.raises(UsageError, match="mixes attention types"):
        remove_attention(model, [0])
    # Removing the last block's attention moves no slot: allowed.
    pruned, _ = remove_attention(model, [3])
    assert sum(isinstance(m, RemovedAttention) for m in pruned.modules()) == 1
