"""Semantic entropy of a language model's answers: entropy over meanings, next to entropy over strings.

For a prompt, N answers are sampled (temperature, ``max_new_tokens``, seeded). Two plug-in entropies,
in bits, are taken over the empirical distribution of those N samples:

- **H**, over distinct generated token sequences s: p̂(s) = count(s) / N, H = −Σ_s p̂(s) log₂ p̂(s);
- **H_s**, over meaning clusters C: p̂(C) = Σ_{s∈C} p̂(s), H_s = −Σ_C p̂(C) log₂ p̂(C).

The clusters come from the sentence embeddings of the decoded texts (the all-MiniLM-L6-v2 encoder of
:mod:`energyprune.models.zoo` by default; any callable texts → (n, d) embeddings can be injected), by
greedy leader clustering at a stated cosine threshold: distinct sequences are visited by decreasing
count (ties: first sampled first); each joins the existing cluster whose leader (first member) is
the most similar to it if that cosine is ≥ ``threshold``, else it leads a new cluster. Farquhar et
al. (Nature 2024) group by bidirectional entailment with an NLI model; embedding similarity is the
offline stand-in here, and it is weaker: "The capital is Paris" and "The capital is Lyon" have a
MiniLM cosine of 0.75, two paraphrases ≈ 0.94-0.99, so the default threshold 0.85 separates those
cases but no threshold separates every contradiction from every paraphrase.

**H_s ≤ H by construction.** The clustering is a partition of the distinct sequences (each lies in
exactly one cluster), so C is a function of s and H(S) = H(C) + H(S | C) ≥ H(C): merging outcomes
never raises the entropy of a distribution (the grouping property). Equality holds when every
cluster holds one sequence. :func:`entropy_from_generations` checks it on every result.

Both are plug-in estimates from N samples: they are biased low and at most log₂ N bits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import InputShapeError, UsageError

logger = logging.getLogger(__name__)

#: texts -> (n, d) embeddings (tensor, array or nested lists); rows need not be normalised.
Encoder = Callable[[Sequence[str]], Any]

DEFAULT_THRESHOLD = 0.85

__all__ = [
    "DEFAULT_THRESHOLD",
    "Encoder",
    "SemanticEntropy",
    "SemanticEntropyReport",
    "entropy_bits",
    "entropy_from_generations",
    "sample_generations",
    "semantic_entropy",
]


def entropy_bits(counts: Sequence[int]) -> float:
    """Plug-in Shannon entropy, in bits, of the empirical distribution with these counts."""
    total = sum(counts)
    if total <= 0 or any(c < 0 for c in counts):
        raise UsageError(f"counts must be non-negative with a positive total, got {list(counts)}")
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts if c > 0))


@dataclass(frozen=True)
class SemanticEntropy:
    """H and H_s of one prompt's N samples, with the partition that defines H_s."""

    prompt: str
    generations: tuple[str, ...]  # the N decoded answers, in sampling order
    distinct: tuple[str, ...]  # one text per distinct sequence, in visiting order
    counts: tuple[int, ...]  # samples per distinct sequence
    clusters: tuple[int, ...]  # the cluster of each distinct sequence
    threshold: float

    @property
    def n_samples(self) -> int:
        return sum(self.counts)

    @property
    def n_clusters(self) -> int:
        return len(set(self.clusters))

    @property
    def cluster_counts(self) -> tuple[int, ...]:
        totals: dict[int, int] = {}
        for cluster, count in zip(self.clusters, self.counts):
            totals[cluster] = totals.get(cluster, 0) + count
        return tuple(totals[c] for c in sorted(totals))

    @property
    def entropy_bits(self) -> float:
        """H over distinct sequences."""
        return entropy_bits(self.counts)

    @property
    def semantic_entropy_bits(self) -> float:
        """H_s over meaning clusters (≤ H, see the module note)."""
        return entropy_bits(self.cluster_counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "n_samples": self.n_samples,
            "n_distinct": len(self.distinct),
            "n_clusters": self.n_clusters,
            "entropy_bits": self.entropy_bits,
            "semantic_entropy_bits": self.semantic_entropy_bits,
            "max_entropy_bits": math.log2(self.n_samples) if self.n_samples else 0.0,
            "threshold": self.threshold,
            "distinct": [{"text": t, "count": c, "cluster": k}
                         for t, c, k in zip(self.distinct, self.counts, self.clusters)],
        }


def _embeddings(encoder: Encoder, texts: Sequence[str]) -> torch.Tensor:
    raw = encoder(list(texts))
    emb = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(raw)
    emb = emb.detach().to(device="cpu", dtype=torch.float64)
    if emb.dim() != 2 or emb.shape[0] != len(texts):
        raise InputShapeError(f"the encoder must return ({len(texts)}, dim) embeddings for {len(texts)} "
                              f"texts, got shape {tuple(emb.shape)}")
    return F.normalize(emb, dim=-1, eps=1e-12)


def entropy_from_generations(
    generations: Sequence[str],
    encoder: Encoder,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    keys: Sequence[Hashable] | None = None,
    prompt: str = "",
) -> SemanticEntropy:
    """H and H_s of N sampled answers. Two samples are the same sequence when their `keys` are
    equal (the generated token ids; default: the texts). Clustering as in the module note."""
    if isinstance(generations, str):
        raise UsageError("generations must be a list of answers, not one string")
    if not generations:
        raise UsageError("no generations were given")
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"the cosine threshold must lie in [0, 1], got {threshold}")
    keys = list(keys) if keys is not None else list(generations)
    if len(keys) != len(generations):
        raise UsageError(f"{len(keys)} keys for {len(generations)} generations")
    first: dict[Hashable, int] = {}
    counts: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
        counts[key] = counts.get(key, 0) + 1
    order = sorted(counts, key=lambda k: (-counts[k], first[k]))
    texts = [generations[first[k]] for k in order]
    emb = _embeddings(encoder, texts)
    leaders: list[int] = []  # index into `order` of each cluster's leader
    clusters: list[int] = []
    for i in range(len(order)):
        best, best_cos = -1, -math.inf
        for c, leader in enumerate(leaders):
            cos = float(emb[i] @ emb[leader])
            if cos > best_cos:
                best, best_cos = c, cos
        if best >= 0 and best_cos >= threshold:
            clusters.append(best)
        else:
            clusters.append(len(leaders))
            leaders.append(i)
    result = SemanticEntropy(prompt=prompt, generations=tuple(generations), distinct=tuple(texts),
                             counts=tuple(counts[k] for k in order), clusters=tuple(clusters),
                             threshold=threshold)
    # A partition can only merge outcomes: this cannot fail unless the code above is wrong.
    assert result.semantic_entropy_bits <= result.entropy_bits + 1e-12
    return result


# ---- sampling from a model ----------------------------------------------------------------------
def sample_generations(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    n_samples: int = 10,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    chat_template: bool = False,
) -> tuple[list[str], list[tuple[int, ...]]]:
    """N answers to `prompt` by pure ancestral sampling (``top_k=0``, ``top_p=1``: the model's own
    distribution at `temperature`), seeded; returns the decoded texts and the generated token ids
    (cut at the first end-of-sequence token, which is not kept)."""
    if n_samples < 1 or max_new_tokens < 1:
        raise UsageError("n_samples and max_new_tokens must be at least 1")
    if not temperature > 0:
        raise UsageError(f"the sampling temperature must be positive, got {temperature}")
    if not hasattr(model, "generate"):
        raise UsageError(f"{type(model).__name__} has no generate(): semantic entropy needs a language model")
    text = prompt
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError("the tokenizer has no chat template: pass chat_template=False")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    encoded = tokenizer(text, return_tensors="pt")
    ids = encoded["input_ids"].to(device)
    mask = encoded.get("attention_mask")
    mask = mask.to(device) if mask is not None else torch.ones_like(ids)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    devices = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        # fork_rng: the caller's random state is left as it was.
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 num_return_sequences=n_samples, pad_token_id=pad)
    finally:
        model.train(was_training)
    sequences = out.sequences if hasattr(out, "sequences") else out
    texts: list[str] = []
    token_ids: list[tuple[int, ...]] = []
    for row in sequences[:, ids.shape[1]:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        token_ids.append(tuple(row))
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts, token_ids


@dataclass(frozen=True)
class SemanticEntropyReport:
    """H and H_s for each prompt, and the settings that define them."""

    prompts: tuple[SemanticEntropy, ...]
    n_samples: int
    temperature: float
    max_new_tokens: int
    seed: int
    threshold: float
    encoder: str
    assumptions: tuple[str, ...]

    @property
    def mean_entropy_bits(self) -> float:
        return sum(p.entropy_bits for p in self.prompts) / len(self.prompts)

    @property
    def mean_semantic_entropy_bits(self) -> float:
        return sum(p.semantic_entropy_bits for p in self.prompts) / len(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "energyprune.semantic_entropy/1",
            "mean_entropy_bits": self.mean_entropy_bits,
            "mean_semantic_entropy_bits": self.mean_semantic_entropy_bits,
            "n_samples": self.n_samples,
            "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "threshold": self.threshold,
            "encoder": self.encoder,
            "prompts": [p.to_dict() for p in self.prompts],
            "assumptions": list(self.assumptions),
        }


def semantic_entropy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    n_samples: int = 10,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    encoder: Encoder | None = None,
    chat_template: bool = False,
) -> SemanticEntropyReport:
    """Sample `n_samples` answers per prompt (prompt i seeded with ``seed + i``) and take H and H_s
    of each (module note). `encoder` clusters the answers by meaning: pass one, e.g.
    `energyprune.models.zoo.minilm_encoder()` (all-MiniLM-L6-v2, offline)."""
    if isinstance(prompts, str) or not prompts:
        raise UsageError("prompts must be a non-empty list of strings")
    if encoder is None:
        raise UsageError("semantic_entropy needs an encoder (texts -> embeddings) to group answers by meaning: pass "
                         "encoder=energyprune.models.zoo.minilm_encoder()")
    description = getattr(encoder, "description", None) or getattr(encoder, "__name__", type(encoder).__name__)
    results = []
    for i, prompt in enumerate(prompts):
        texts, ids = sample_generations(model, tokenizer, prompt, n_samples=n_samples, temperature=temperature,
                                        max_new_tokens=max_new_tokens, seed=seed + i, chat_template=chat_template)
        results.append(entropy_from_generations(texts, encoder, threshold=threshold, keys=ids, prompt=prompt))
    assumptions = (
        "H: plug-in entropy (bits) of the empirical distribution of distinct generated token sequences "
        f"over {n_samples} samples (biased low; at most log2 {n_samples} = {math.log2(n_samples):.2f} bits)",
        f"H_s: the same over meaning clusters: greedy leader clustering of the decoded texts, cosine of "
        f"{description} embeddings >= {threshold} joins a cluster (an offline stand-in for the "
        "bidirectional entailment of Farquhar et al. 2024)",
        "H_s <= H by construction: the clusters partition the distinct sequences",
        f"pure ancestral sampling: temperature {temperature}, top_k 0, top_p 1, up to {max_new_tokens} new "
        f"tokens, cut at the first EOS; prompt i seeded with {seed} + i",
    )
    return SemanticEntropyReport(prompts=tuple(results), n_samples=n_samples, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed, threshold=threshold,
                                 encoder=str(description), assumptions=assumptions)
