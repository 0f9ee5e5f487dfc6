"""Criteria rank planted redundant units first; the calibration pass keeps its memory bound.

Models are tiny and random (built from configs, no downloads). A redundant unit is planted
exactly: zeroing a Llama block's o_proj and down_proj makes the block the identity, so its
Block Influence is 0 and its ΔH is 0 under every estimator (its input and output samples are
the same vectors).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Criterion, Unit
from energyprune.pruning.observe.calibration import BlockStates, collect_block_states
from energyprune.pruning.criteria import (
    CRITERIA,
    EntropyBlockCriterion,
    block_units,
    get_criterion,
    neuron_units,
)
from energyprune.pruning.criteria.entropy_block import stage_candidates

VOCAB = 128
IDENTITY = 3  # the planted do-nothing block of the 6-block Llama


def llama(layers: int = 6, seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB)
    return transformers.LlamaForCausalLM(config).eval()


def batches(n: int = 3, batch: int = 4, length: int = 32, pad: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        mask = torch.ones(batch, length, dtype=torch.long)
        if pad:
            mask[0, :pad] = 0  # left padding in the first sequence
        out.append({"input_ids": torch.randint(3, VOCAB, (batch, length), generator=generator),
                    "attention_mask": mask})
    return out


@pytest.fixture(scope="module")
def planted() -> nn.Module:
    """6-block Llama whose block 3 is an exact identity (attention and MLP outputs zeroed)."""
    model = llama()
    with torch.no_grad():
        model.model.layers[IDENTITY].self_attn.o_proj.weight.zero_()
        model.model.layers[IDENTITY].mlp.down_proj.weight.zero_()
    return model


@pytest.fixture(scope="module")
def data() -> list[dict[str, torch.Tensor]]:
    return batches()


def lowest(scores: dict[Unit, float]) -> Unit:
    return min(scores, key=scores.get)


# -------------------------------------------------------------------------- units, registry
def test_block_and_neuron_units_name_paths_from_the_root(planted):
    blocks = block_units(planted)
    assert blocks[3] == Unit("block", "model.layers.3", 3) and len(blocks) == 6
    assert block_units(planted, "attention")[2] == Unit("attention", "model.layers.2.self_attn", 2)
    neurons = neuron_units(planted)
    assert len(neurons) == 6 * 64
    assert neurons[64 + 5] == Unit("neuron", "model.layers.1.mlp", 5)


def test_unknown_criterion_lists_the_known_names():
    with pytest.raises(UsageError) as error:
        get_criterion("entropy-blok")
    for name in CRITERIA:
        assert name in str(error.value)


def test_bad_options_and_kinds_are_usage_errors(planted, data):
    with pytest.raises(UsageError, match="options are"):
        get_criterion("cosine-block", estimator="knn")
    with pytest.raises(UsageError, match="no option bandwidth"):
        get_criterion("entropy-block", estimator="knn", bandwidth=2)
    with pytest.raises(UsageError, match="bucket, gaussian, knn, renyi"):
        get_criterion("entropy-block", estimator="kde")
    with pytest.raises(UsageError, match="unit_kind='neuron'"):
        get_criterion("magnitude").score(planted, neuron_units(planted)[:3], data)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_follows_the_protocol(name):
    criterion = get_criterion(name.replace("-", "_"))  # underscores are accepted too
    assert isinstance(criterion, Criterion)
    assert criterion.name == name


# ---------------------------------------------------------------------------- cosine-block
def test_cosine_block_scores_the_identity_block_lowest(planted, data):
    scores = get_criterion("cosine-block").score(planted, block_units(planted), data)
    assert lowest(scores).index == IDENTITY
    assert scores[Unit("block", "model.layers.3", 3)] < 1e-6
    assert min(v for u, v in scores.items() if u.index != IDENTITY) > 1e-3


def test_cosine_attention_variant(planted, data):
    criterion = get_criterion("cosine-block", unit_kind="attention", protect=(0,))
    scores = criterion.score(planted, block_units(planted, "attention"), data)
    assert lowest(scores).index == IDENTITY
    assert scores[Unit("attention", "model.layers.0.self_attn", 0)] == math.inf


# --------------------------------------------------------------------------- entropy-block
def test_entropy_block_knn_removes_the_identity_first(planted, data):
    criterion = get_criterion("entropy-block", estimator="knn", max_tokens=256)
    scores = criterion.score(planted, block_units(planted), data)
    profile = criterion.last_profile
    assert len(profile.entropies) == 7 and len(profile.delta) == 6
    assert profile.delta[IDENTITY] == pytest.approx(0.0, abs=1e-9)
    assert IDENTITY in profile.candidates  # the residual norm grows: entropy rises to the last boundary
    assert profile.protected == (0, 1, 5)
    assert {u.index for u, v in scores.items() if v == math.inf} >= {0, 1, 5}
    assert lowest(scores).index == IDENTITY


@pytest.mark.parametrize("estimator,options", [
    ("knn", {"normalise": True}), ("bucket", {}), ("renyi", {}), ("gaussian", {}),
])
def test_entropy_delta_of_the_identity_block_is_zero_for_every_estimator(planted, data, estimator, options):
    criterion = EntropyBlockCriterion(estimator, stage="all", protect=(), max_tokens=256, **options)
    profile = criterion.profile(planted, data)
    deltas = [abs(d) for d in profile.delta]
    assert deltas[IDENTITY] == pytest.approx(0.0, abs=1e-9)
    assert deltas[IDENTITY] == min(deltas)
    assert profile.entropies[IDENTITY] == profile.entropies[IDENTITY + 1]
    assert profile.candidates == tuple(range(6))


def test_entropy_attention_variant(planted, data):
    criterion = get_criterion("entropy-block", unit_kind="attention", stage="all", max_tokens=256)
    scores = criterion.score(planted, block_units(planted, "attention"), data)
    assert criterion.last_profile.attention_delta[IDENTITY] == pytest.approx(0.0, abs=1e-9)
    assert lowest(scores).index == IDENTITY


def test_stage_rule_increase_is_the_prefix_up_to_the_last_peak():
    # rises, a dip inside the stage, a flat block at the peak, then falls
    entropies = [1.0, 2.0, 1.9, 3.0, 3.0, 2.5, 2.0]
    delta = [b - a for a, b in zip(entropies, entropies[1:])]
    peak, stage = stage_candidates(entropies, delta, "increase")
    assert peak == 4  # the last of the two maxima
    assert stage == (0, 1, 2, 3)  # block 1's dip and block 3's flat step stay in
    assert stage_candidates(entropies, delta, "positive")[1] == (0, 2, 3)
    assert stage_candidates(entropies, delta, "all")[1] == tuple(range(6))


def synthetic_states(scales: list[float], seed: int = 0) -> BlockStates:
    """States whose knn entropy profile is planted: boundary b holds one Gaussian sample scaled
    by scales[b], so H_b = H_0 + d·log(scales[b]) exactly."""
    base = torch.randn(300, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    bounds = [base * s for s in scales]
    n = len(scales) - 1
    return BlockStates(
        stack_path="layers", block_paths=tuple(f"layers.{i}" for i in range(n)),
        inputs=tuple(bounds[:-1]), outputs=tuple(bounds[1:]), cos_mean=(1.0,) * n,
        attention_paths=None, attention=None, attention_cos_mean=None,
        tokens_seen=300, tokens_kept=300, batches=1, max_tokens=300)


def test_entropy_rising_only_in_block_0_leaves_no_candidate_and_says_so(caplog):
    """DESIGN.md's MiniLM pilot: entropy rises in layer 0 only. With block 0 protected the
    increase stage is empty: every score is +inf, and a warning shows the profile."""
    criterion = EntropyBlockCriterion("knn", k=10)
    with caplog.at_level(logging.WARNING):
        profile = criterion.profile_from_states(synthetic_states([1.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5]))
    assert profile.peak == 1 and profile.in_stage == (0,) and profile.candidates == ()
    assert all(s == math.inf for s in profile.scores)
    assert "no block is a candidate" in caplog.text
    unprotected = EntropyBlockCriterion("knn", k=10, protect=()).profile_from_states(
        synthetic_states([1.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5]))
    assert unprotected.candidates == (0,)
    assert unprotected.delta[0] == pytest.approx(4 * math.log(3.0), abs=1e-9)


# ------------------------------------------------------------------------------- magnitude
def test_magnitude_neuron_with_scaled_down_weights_is_lowest():
    model = llama(layers=4)
    with torch.no_grad():
        mlp = model.model.layers[1].mlp
        mlp.gate_proj.weight[5] *= 0.01
        mlp.up_proj.weight[5] *= 0.01
        mlp.down_proj.weight[:, 5] *= 0.01
    for p in (1, 2):
        scores = get_criterion("magnitude", unit_kind="neuron", p=p).score(model, neuron_units(model), None)
        assert lowest(scores) == Unit("neuron", "model.layers.1.mlp", 5)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_magnitude_neuron_reads_conv1d_and_bert_layouts(family):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=VOCAB))
        with torch.no_grad():  # Conv1D weights are (in, out)
            model.transformer.h[2].mlp.c_fc.weight[:, 7] *= 0.01
            model.transformer.h[2].mlp.c_proj.weight[7, :] *= 0.01
        expected = Unit("neuron", "transformer.h.2.mlp", 7)
    else:
        model = transformers.BertModel(transformers.BertConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB))
        with torch.no_grad():
            model.encoder.layer[2].intermediate.dense.weight[7] *= 0.01
            model.encoder.layer[2].output.dense.weight[:, 7] *= 0.01
        expected = Unit("neuron", "encoder.layer.2", 7)
    scores = get_criterion("magnitude", unit_kind="neuron").score(model, neuron_units(model), None)
    assert lowest(scores) == expected


def test_magnitude_channel_and_block_known_values(planted):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with torch.no_grad():
        net[0].weight[2] *= 0.01
    channels = [Unit("channel", "0", c) for c in range(8)]
    assert lowest(get_criterion("magnitude", unit_kind="channel").score(net, channels, None)).index == 2

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            with torch.no_grad():
                self.layers[0].weight.fill_(-1.0)
                self.layers[1].weight.fill_(3.0)

    stack = Stack()
    l1 = get_criterion("magnitude").score(stack, block_units(stack), None)
    assert list(l1.values()) == [pytest.approx(1.0), pytest.approx(3.0)]  # mean |w|; biases excluded
    scores = get_criterion("magnitude", protect=(0,)).score(planted, block_units(planted), None)
    assert lowest(scores).index == IDENTITY and scores[block_units(planted)[0]] == math.inf


# ---------------------------------------------------------------------------------- random
def test_random_is_reproducible_and_seed_dependent(planted):
    units = neuron_units(planted)[:50]
    first = get_criterion("random", unit_kind="neuron", seed=1).score(planted, units, None)
    again = get_criterion("random", unit_kind="neuron", seed=1).score(planted, list(reversed(units)), None)
    other = get_criterion("random", unit_kind="neuron", seed=2).score(planted, units, None)
    assert first == again
    assert first != other
    assert set(first) == set(units) and all(0.0 <= v < 1.0 for v in first.values())


# ----------------------------------------------------------------------------- calibration
class Block(nn.Module):
    """y = x @ W.T + b, returned as a tuple (like older HF blocks)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(8, 8)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.linear(hidden_states), None


class Toy(nn.Module):
    def __init__(self, between: float = 1.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(0), Block(1), Block(2)])
        self.between = between  # a scale applied between blocks 0 and 1, outside the blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](x)[0] * self.between
        for block in self.blocks[1:]:
            x = block(x)[0]
        return x


def counting_batches(n: int = 10, batch: int = 4, length: int = 50) -> list[torch.Tensor]:
    """Feature 0 holds the token's position in the whole stream."""
    out, start = [], 0
    generator = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(batch, length, 8, generator=generator)
        x[..., 0] = torch.arange(start, start + batch * length, dtype=torch.float32).reshape(batch, length)
        start += batch * length
        out.append(x)
    return out


def test_calibration_memory_bound_and_pairing():
    model = Toy()
    states = collect_block_states(model, counting_batches(), max_tokens=100)
    assert states.tokens_seen == 2000 and states.tokens_kept == 100 and states.batches == 10
    for sample in (*states.inputs, *states.outputs):
        assert sample.shape == (100, 8)
    # every kept row of a block's output is that block applied to the same row of its input
    for i, block in enumerate(model.blocks):
        with torch.no_grad():
            assert torch.allclose(block.linear(states.inputs[i]), states.outputs[i], atol=1e-5)
    assert states.inputs[1] is states.outputs[0]  # one buffer for a shared boundary
    # a reservoir over the whole stream, not the first 100 tokens
    positions = states.inputs[0][:, 0]
    assert len(set(positions.tolist())) == 100
    assert positions.max() > 1500 and 700 < positions.mean() < 1300
    # cosine means use every token: compare with a direct computation on all of them
    with torch.no_grad():
        x = torch.cat([b.reshape(-1, 8) for b in counting_batches()])
        y = model.blocks[0].linear(x)
    assert states.cos_mean[0] == pytest.approx(nn.functional.cosine_similarity(x, y).double().mean().item(), rel=1e-5)


def test_calibration_splits_a_boundary_that_changes_between_blocks():
    states = collect_block_states(Toy(between=2.0), counting_batches(3), max_tokens=64)
    assert states.inputs[1] is not states.outputs[0]
    assert torch.allclose(states.inputs[1], 2 * states.outputs[0])
    assert states.inputs[2] is states.outputs[1]


def test_calibration_without_samples_keeps_the_cosine_means():
    states = collect_block_states(Toy(), counting_batches(2), max_tokens=0)
    assert states.tokens_kept == 0 and states.outputs[0].numel() == 0
    assert all(math.isfinite(c) for c in states.cos_mean)


def test_calibration_skips_padding_and_hooks_attention(planted):
    data = batches(n=2, batch=2, length=16, pad=5)
    states = collect_block_states(planted, data, max_tokens=1000, attention=True)
    assert states.tokens_seen == 2 * (2 * 16 - 5)
    assert states.attention_paths[0] == "model.layers.0.self_attn"
    # the identity block's attention adds 0: the post-attention state is its input, exactly
    assert torch.equal(states.attention[IDENTITY], states.inputs[IDENTITY])
    assert states.attention_influence[IDENTITY] < 1e-6 < states.attention_influence[2]
    # the model is left as it was: no hooks, eval mode kept
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in planted.model.layers)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_calibration_attention_hooks_on_other_families(family):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=VOCAB))
    else:  # BERT's attention module applies the residual and LayerNorm itself
        model = transformers.BertModel(transformers.BertConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB))
    model.train()
    states = collect_block_states(model, [torch.randint(3, VOCAB, (2, 8))], max_tokens=64, attention=True)
    assert model.training  # mode restored
    assert states.tokens_seen == 16
    assert all(a is not None and a.shape == (16, 32) for a in states.attention)
    assert all(math.isfinite(c) for c in states.attention_cos_mean)


def test_calibration_errors():
    with pytest.raises(UsageError, match="no stack of repeated blocks"):
        collect_block_states(nn.Linear(2, 2), [torch.zeros(1, 2)])
    with pytest.raises(UsageError, match="no tokens"):
        collect_block_states(Toy(), [])
