"""Semantic fidelity metrics on tiny models built in code, where the right answer is known."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from energyprune.errors import InputShapeError, MeasurementError, UsageError
from energyprune.metrics import fidelity
from energyprune.metrics.fidelity import (
    AccuracyRetention,
    NextTokenFidelity,
    accuracy_retention,
    agreement,
    embedding_fidelity,
    mean_pool,
    next_token_fidelity,
    perplexity,
    perplexity_ratio,
)

VOCAB = 32


# ---- tiny models --------------------------------------------------------------------------------
@dataclass
class LMOutput:  # the attribute shape of a Hugging Face CausalLMOutput
    logits: torch.Tensor


@dataclass
class EncoderOutput:  # the attribute shape of a Hugging Face BaseModelOutput
    last_hidden_state: torch.Tensor


class TinyLM(nn.Module):
    def __init__(self, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 16)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> LMOutput:
        return LMOutput(self.head(self.drop(torch.tanh(self.embed(input_ids)))))


class FixedLogits(nn.Module):
    """Returns the same logits whatever the input: distributions chosen by the test."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (self.logits,)


class TinyEncoder(nn.Module):
    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8)
        self.mix = nn.Linear(8, 8)
        self.scale = scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        return EncoderOutput(self.scale * self.mix(self.embed(input_ids)))


class Threshold(nn.Module):
    """Two-class classifier on a scalar: class 0 when x > t, else class 1."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(float(t)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x - self.t, self.t - x], dim=-1)


def lm_batches(n: int = 3, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0  # right padding on the second row
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def perturbed(model: nn.Module, scale: float = 0.5, seed: int = 7) -> nn.Module:
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


# ---- language models ----------------------------------------------------------------------------
def test_identical_language_models_score_exactly_one() -> None:
    model = TinyLM()
    batches = lm_batches()
    for other in (model, copy.deepcopy(model)):
        result = next_token_fidelity(model, other, batches)
        assert result.top1_agreement == 1.0
        assert result.kl_nats == 0.0
        assert result.exp_neg_kl == 1.0
        assert result.fidelity == 1.0
        assert float(result) == 1.0
        assert result.n_positions == 3 * (9 + 6)  # attention-mask aware
        assert perplexity_ratio(model, other, batches) == 1.0


def test_perturbed_language_model_scores_below_one() -> None:
    model = TinyLM()
    result = next_token_fidelity(model, perturbed(model), lm_batches())
    assert result.kl_nats > 0.0
    assert 0.0 < result.fidelity < 1.0
    assert result.fidelity == result.exp_neg_kl == pytest.approx(math.exp(-result.kl_nats))
    assert 0.0 <= result.top1_agreement < 1.0
    assert perplexity_ratio(model, perturbed(model), lm_batches()) != 1.0
    assert set(result.to_dict()) == {"top1_agreement", "kl_nats", "exp_neg_kl", "fidelity", "n_positions"}


def test_kl_and_top1_match_hand_computed_values_and_skip_masked_positions() -> None:
    # Positions 0-1 identical; position 2: p = (1/3, 2/3) vs q = (3/4, 1/4); position 3 masked,
    # with a wildly different q there that must not count.
    p2 = [0.0, math.log(2.0)]
    q2 = [math.log(3.0), 0.0]
    original = FixedLogits(torch.tensor([[[1.0, 0.0], [0.0, 1.0], p2, [0.0, 0.0]]]))
    pruned = FixedLogits(torch.tensor([[[1.0, 0.0], [0.0, 1.0], q2, [-50.0, 50.0]]]))
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    result = next_token_fidelity(original, pruned, [batch])
    kl_2 = (1 / 3) * math.log((1 / 3) / (3 / 4)) + (2 / 3) * math.log((2 / 3) / (1 / 4))
    assert result.n_positions == 3
    assert result.kl_nats == pytest.approx(kl_2 / 3, rel=1e-6)
    assert result.top1_agreement == pytest.approx(2 / 3)


def test_zero_probability_in_the_original_gives_no_nan() -> None:
    original = FixedLogits(torch.tensor([[[0.0, float("-inf")]]]))
    pruned = FixedLogits(torch.tensor([[[0.0, 0.0]]]))
    result = next_token_fidelity(original, pruned, [torch.zeros(1, 1, dtype=torch.long)])
    assert result.kl_nats == pytest.approx(math.log(2.0))  # 1 · ln(1 / 0.5); 0 · ln 0 counts as 0


def test_chunked_vocabulary_work_gives_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    model, other = TinyLM(), perturbed(TinyLM())
    whole = next_token_fidelity(model, other, lm_batches())
    ppl = perplexity(other, lm_batches())
    monkeypatch.setattr(fidelity, "_CHUNK_ELEMENTS", VOCAB * 2)  # two rows at a time
    chunked = next_token_fidelity(model, other, lm_batches())
    assert chunked.n_positions == whole.n_positions
    assert chunked.top1_agreement == whole.top1_agreement
    assert chunked.kl_nats == pytest.approx(whole.kl_nats, rel=1e-9)
    assert perplexity(other, lm_batches()) == pytest.approx(ppl, rel=1e-9)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    uniform = FixedLogits(torch.zeros(2, 5, VOCAB))
    # float32 softmax: ln 32 to ~1e-8 relative
    assert perplexity(uniform, [torch.zeros(2, 5, dtype=torch.long)]) == pytest.approx(VOCAB, rel=1e-6)


def test_perplexity_counts_only_unmasked_targets_and_honours_ignored_labels() -> None:
    logits = torch.zeros(1, 6, VOCAB)
    logits[..., 0] = 10.0  # always predicts token 0
    model = FixedLogits(logits)
    ids = torch.tensor([[0, 0, 0, 0, 5, 5]])  # the two 5s are padding
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    expected = (math.exp(10.0) + VOCAB - 1) / math.exp(10.0)  # 1 / p(0)
    assert perplexity(model, [{"input_ids": ids, "attention_mask": mask}]) == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, [{"input_ids": ids}]) > 50 * expected  # the 5s count when unmasked
    labels = torch.tensor([[0, 0, 0, 0, -100, -100]])
    assert perplexity(model, [{"input_ids": ids, "labels": labels}]) == pytest.approx(expected, rel=1e-6)


def test_perplexity_ratio_is_the_ratio_of_perplexities() -> None:
    model, other = TinyLM(), perturbed(TinyLM())
    ratio = perplexity_ratio(model, other, lm_batches())
    assert ratio == pytest.approx(perplexity(other, lm_batches()) / perplexity(model, lm_batches()), rel=1e-9)


def test_dropout_is_off_during_measurement_and_train_mode_is_restored() -> None:
    model = TinyLM(dropout=0.5).train()
    result = next_token_fidelity(model, copy.deepcopy(model), lm_batches())
    assert result.fidelity == 1.0
    assert model.training and model.drop.training


def test_batches_may_be_a_generator_and_must_not_be_empty() -> None:
    model = TinyLM()
    result = next_token_fidelity(model, model, (b for b in lm_batches()))
    assert result.n_positions == 45
    with pytest.raises(UsageError):
        next_token_fidelity(model, model, [])
    with pytest.raises(UsageError):
        perplexity(model, lm_batches()[0])  # one batch, not an iterable of batches


def test_mismatched_logits_are_refused() -> None:
    with pytest.raises(InputShapeError):
        next_token_fidelity(FixedLogits(torch.zeros(1, 3, 4)), FixedLogits(torch.zeros(1, 3, 5)), [torch.zeros(1, 3)])


# ---- encoders -----------------------------------------------------------------------------------
def test_embedding_fidelity_is_one_for_itself_and_for_rescaled_outputs() -> None:
    model = TinyEncoder()
    batches = lm_batches()
    assert embedding_fidelity(model, model, batches) == pytest.approx(1.0, abs=1e-12)
    assert embedding_fidelity(model, TinyEncoder(scale=3.7), batches) == pytest.approx(1.0, abs=1e-12)
    assert embedding_fidelity(model, TinyEncoder(scale=3.7), batches, pooling="cls") == pytest.approx(1.0, abs=1e-12)


def test_embedding_fidelity_drops_for_a_perturbed_encoder_and_clips_opposite_ones_to_zero() -> None:
    model = TinyEncoder()
    value = embedding_fidelity(model, perturbed(model), lm_batches())
    assert 0.0 < value < 0.999
    assert embedding_fidelity(model, TinyEncoder(scale=-1.0), lm_batches()) == 0.0


def test_embedding_mean_pooling_ignores_padding() -> None:
    class NoisyPadding(nn.Module):
        """The encoder's states, with garbage at the positions lm_batches() pads (row 1, 6:)."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
            h = self.inner(input_ids).last_hidden_state.clone()
            h[1, 6:] += 100.0
            return EncoderOutput(h)

    model = TinyEncoder()
    batches = lm_batches()
    assert embedding_fidelity(model, NoisyPadding(model), batches) == pytest.approx(1.0, abs=1e-12)
    without_mask = [{"input_ids": b["input_ids"]} for b in batches]
    assert embedding_fidelity(model, NoisyPadding(model), without_mask) < 0.99
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 1.0]]
    assert mean_pool(h)[0].tolist() == pytest.approx([104 / 3, 34.0])


def test_embedding_fidelity_accepts_plain_sentence_embeddings() -> None:
    a = nn.Linear(4, 3)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.weight.mul_(2.0)
        b.bias.mul_(2.0)
    x = [torch.randn(5, 4), torch.randn(2, 4)]
    assert embedding_fidelity(a, b, x) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(UsageError):
        embedding_fidelity(a, b, x, pooling="max")


# ---- classifiers --------------------------------------------------------------------------------
X = torch.tensor([-2.0, -1.0, 1.0, 2.0, 3.0, -3.0, 0.5, 4.0])
# True classes: 1 for x <= 0; the label of x = 4.0 is deliberately wrong (1), so the original gets 7/8.
Y = [1, 1, 0, 0, 0, 1, 0, 1]


def classifier_batches() -> list[torch.Tensor]:
    return [X[:3], X[3:6], X[6:]]


def test_accuracy_retention_on_a_known_classifier() -> None:
    original, pruned = Threshold(0.0), Threshold(1.5)  # pruned also misses x = 1.0 and x = 0.5
    result = accuracy_retention(original, pruned, classifier_batches(), Y)
    assert isinstance(result, AccuracyRetention)
    assert (result.correct_original, result.correct_pruned, result.n_samples) == (7, 5, 8)
    assert result.accuracy_original == 7 / 8
    assert result.accuracy_pruned == 5 / 8
    assert result.retention == float(result) == 5 / 7
    assert result.fidelity == 5 / 7
    assert agreement(original, pruned, classifier_batches()) == 6 / 8
    assert agreement(original, copy.deepcopy(original), classifier_batches()) == 1.0


def test_accuracy_retention_label_forms_and_counts() -> None:
    original, pruned = Threshold(0.0), Threshold(1.5)
    flat = accuracy_retention(original, pruned, classifier_batches(), torch.tensor(Y))
    per_batch = accuracy_retention(original, pruned, classifier_batches(), [torch.tensor(Y[:3]), Y[3:6], Y[6:]])
    assert flat == per_batch
    better = accuracy_retention(pruned, original, classifier_batches(), Y)
    assert better.retention == 7 / 5 and better.fidelity == 1.0
    with pytest.raises(UsageError):
        accuracy_retention(original, pruned, classifier_batches(), Y[:-1])
    with pytest.raises(UsageError):
        accuracy_retention(original, pruned, classifier_batches(), Y + [0])


def test_accuracy_retention_is_undefined_when_the_original_gets_nothing_right() -> None:
    with pytest.raises(MeasurementError, match="agreement"):
        accuracy_retention(Threshold(0.0), Threshold(1.0), classifier_batches(), [1 - y for y in Y[:7]] + [1])


def test_result_types_are_frozen() -> None:
    result = NextTokenFidelity(top1_agreement=1.0, kl_nats=0.0, n_positions=1)
    with pytest.raises(AttributeError):
        result.kl_nats = 1.0  # type: ignore[misc]


# ---- the cached references: the same definitions as the functions ------------------------------
def test_class_fidelity_is_one_for_the_original_and_falls_with_damage():
    import copy

    from energyprune.metrics.fidelity import ClassReference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    batches = [torch.randn(5, 3, 8, 8) for _ in range(2)]
    reference = ClassReference(model, batches)
    assert reference(model)["exp_neg_kl"] == pytest.approx(1.0, abs=1e-12)
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        damaged[4].weight.mul_(-3.0)
    assert 0.0 < reference(damaged)["exp_neg_kl"] < 0.99
    assert reference(damaged)["top1_agreement"] == pytest.approx(fidelity.agreement(model, damaged, batches))


def test_the_references_agree_with_the_functions():
    from energyprune.metrics.fidelity import EmbeddingReference, NextTokenReference

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=100)
    original = transformers.LlamaForCausalLM(config).eval()
    pruned = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    batches = [{"input_ids": ids, "attention_mask": mask}]
    ref = NextTokenReference(original, batches)(pruned)
    lib = fidelity.next_token_fidelity(original, pruned, batches)
    assert ref["exp_neg_kl"] == pytest.approx(lib.exp_neg_kl, rel=1e-5)
    assert ref["top1_agreement"] == pytest.approx(lib.top1_agreement, rel=1e-9)
    assert ref["perplexity"] == pytest.approx(fidelity.perplexity(pruned, batches), rel=1e-5)
    encoder = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                             intermediate_size=64, vocab_size=100)).eval()
    other = transformers.BertModel(encoder.config).eval()
    emb = EmbeddingReference(encoder, batches)(other)["embedding_cosine"]
    assert emb == pytest.approx(fidelity.embedding_fidelity(encoder, other, batches), rel=1e-6)
