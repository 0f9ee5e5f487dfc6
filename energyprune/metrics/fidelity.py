"""Semantic fidelity of a pruned model against its original, on the same inputs (DESIGN §5).

Each figure compares the two models on identical inputs and lies in [0, 1], 1 meaning "the pruned
model still says what the original said":

- encoders: :func:`embedding_fidelity`, the mean cosine of sentence embeddings;
- language models: :func:`next_token_fidelity` (exp(−KL) of the next-token distributions and the
  top-1 agreement), :func:`perplexity` and :func:`perplexity_ratio`;
- classifiers: :func:`accuracy_retention` where labels exist, :func:`agreement` where they don't.

Conventions shared by every function here:

- ``batches`` is an iterable of model inputs, iterated **once** (a generator is fine). A batch is a
  mapping (the model is called as ``model(**batch)``, after removing a ``labels`` key), a tuple or
  list (``model(*batch)``) or a tensor (``model(batch)``). Tensors are moved to each model's device
  (that of its first parameter, else its first buffer, else the CPU), so the original and the pruned
  model may sit on different devices.
- Token positions that count are those where the batch's ``attention_mask`` is 1; with no
  ``attention_mask`` every position counts.
- The models are switched to eval mode for the measurement (dropout off: otherwise a model would
  not even agree with itself) and given back in the train/eval mode each submodule had. Everything
  runs under ``torch.inference_mode()``.
- Memory is bounded by one batch: only sums are carried across batches (in float64), logits are
  never kept, and per-position work over the vocabulary is done in row chunks of about 4M elements.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import InputShapeError, MeasurementError, UsageError
from energyprune.torch_io import forward_batch, model_device, to_device

logger = logging.getLogger(__name__)

__all__ = [
    "AccuracyRetention",
    "ClassReference",
    "EmbeddingReference",
    "NextTokenFidelity",
    "NextTokenReference",
    "auto_fidelity",
    "accuracy_retention",
    "agreement",
    "embedding_fidelity",
    "evaluating",
    "forward_batch",
    "mean_pool",
    "model_device",
    "next_token_fidelity",
    "perplexity",
    "perplexity_ratio",
    "to_device",
]

# Rows of (rows × vocabulary) work per step: 4M float32 elements, 16 MB per intermediate.
_CHUNK_ELEMENTS = 1 << 22

_POOLINGS = ("mean", "cls")


# ---- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NextTokenFidelity:
    """Agreement of two language models' next-token distributions over ``n_positions`` positions.

    ``top1_agreement`` = (1/N) Σ_t [argmax_v p_o(v|t) = argmax_v q(v|t)], over the N unmasked
    positions t of every sequence.

    ``kl_nats`` = (1/N) Σ_t KL(p_o(·|t) ‖ q(·|t)) = (1/N) Σ_t Σ_v p_o(v|t) (ln p_o(v|t) − ln q(v|t)),
    with p_o the original model's softmax and q the pruned one's (nats; +inf where the pruned model
    gives probability 0 to a token the original gives any).

    ``exp_neg_kl`` = exp(−kl_nats), in (0, 1] (0 only for an infinite KL); it is the exponential of
    the mean KL, not the mean of per-position exp(−KL).

    ``fidelity`` is ``exp_neg_kl``: the whole distribution counts, not only its argmax.
    """

    top1_agreement: float
    kl_nats: float
    n_positions: int

    @property
    def exp_neg_kl(self) -> float:
        return math.exp(-self.kl_nats)

    @property
    def fidelity(self) -> float:
        """The semantic fidelity of a language model: ``exp_neg_kl`` = exp(−mean KL)."""
        return self.exp_neg_kl

    def __float__(self) -> float:
        return self.fidelity

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1_agreement": self.top1_agreement,
            "kl_nats": self.kl_nats,
            "exp_neg_kl": self.exp_neg_kl,
            "fidelity": self.fidelity,
            "n_positions": self.n_positions,
        }


@dataclass(frozen=True)
class AccuracyRetention:
    """Task accuracy of the pruned model relative to the original, from exact counts.

    ``accuracy_original`` = correct_original / n_samples, ``accuracy_pruned`` likewise;
    ``retention`` = accuracy_pruned / accuracy_original = correct_pruned / correct_original (it may
    exceed 1 when pruning happens to help); ``fidelity`` = min(1, retention), in [0, 1].
    ``float(result)`` is ``retention``.
    """

    correct_original: int
    correct_pruned: int
    n_samples: int

    @property
    def accuracy_original(self) -> float:
        return self.correct_original / self.n_samples

    @property
    def accuracy_pruned(self) -> float:
        return self.correct_pruned / self.n_samples

    @property
    def retention(self) -> float:
        return self.correct_pruned / self.correct_original

    @property
    def fidelity(self) -> float:
        return min(1.0, self.retention)

    def __float__(self) -> float:
        return self.retention

    def to_dict(self) -> dict[str, Any]:
        return {
            "correct_original": self.correct_original,
            "correct_pruned": self.correct_pruned,
            "n_samples": self.n_samples,
            "accuracy_original": self.accuracy_original,
            "accuracy_pruned": self.accuracy_pruned,
            "retention": self.retention,
            "fidelity": self.fidelity,
        }


# ---- encoders -----------------------------------------------------------------------------------
def embedding_fidelity(
    original: nn.Module,
    pruned: nn.Module,
    batches: Iterable[Any],
    pooling: str = "mean",
) -> float:
    """Mean cosine similarity of the two models' sentence embeddings, in [0, 1].

    F_emb = (1/N) Σ_i clip(ê_o,i · ê_p,i, 0, 1), with ê = e / ‖e‖₂ and, for token states h_i,t
    and attention mask m_i,t (all ones without an ``attention_mask``):

    - ``pooling="mean"``: e_i = Σ_t m_i,t h_i,t / max(Σ_t m_i,t, 1e-9) (sentence-transformers' mean
      pooling);
    - ``pooling="cls"``: e_i = h_i,0.

    Each pair's cosine is clipped to [0, 1] before averaging: an embedding pointing away from the
    original keeps no more meaning than an orthogonal one. Cosine is scale-invariant, so a pruned
    model whose outputs are only rescaled scores 1. The model output may be a Hugging Face encoder
    output (``last_hidden_state``), a mapping with ``sentence_embedding``, a tuple (first element),
    or a plain tensor: (batch, tokens, dim) is pooled, (batch, dim) is taken as the embedding as is.
    Computed in float64; identical models give 1 up to float64 rounding (~1e-15).
    """
    if pooling not in _POOLINGS:
        raise UsageError(f"pooling must be one of {', '.join(_POOLINGS)}, not {pooling!r}")
    total = 0.0
    n = 0
    with evaluating(original, pruned):
        for batch in _nonempty(batches):
            eo = _sentence_embedding(forward_batch(original, batch), batch, pooling)
            ep = _sentence_embedding(forward_batch(pruned, batch), batch, pooling)
            if eo.shape != ep.shape:
                raise InputShapeError(
                    f"the models' embeddings differ in shape: {tuple(eo.shape)} vs {tuple(ep.shape)}"
                )
            eo = F.normalize(eo.double().cpu(), dim=-1, eps=1e-12)
            ep = F.normalize(ep.double().cpu(), dim=-1, eps=1e-12)
            cos = (eo * ep).sum(-1).clamp(0.0, 1.0)
            total += float(cos.sum())
            n += cos.numel()
    if n == 0:
        raise MeasurementError("the batches hold no sample")
    return total / n


def _sentence_embedding(out: Any, batch: Any, pooling: str) -> torch.Tensor:
    h = _output_tensor(out, ("last_hidden_state", "sentence_embedding"), "encoder")
    if h.dim() == 2:
        return h
    if h.dim() != 3:
        raise InputShapeError(
            f"an encoder output must be (batch, tokens, dim) or (batch, dim), not {tuple(h.shape)}"
        )
    if pooling == "cls":
        return h[:, 0]
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mean_pool(h, mask)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked mean over tokens: e = Σ_t m_t h_t / max(Σ_t m_t, 1e-9), (batch, tokens, dim) → (batch, dim).

    With no mask every token counts. This is sentence-transformers' mean pooling; normalise the
    result (``torch.nn.functional.normalize``) for cosine work.
    """
    mask = _token_mask({"attention_mask": attention_mask}, hidden.shape[:2], hidden.device)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


# ---- language models ----------------------------------------------------------------------------
def next_token_fidelity(
    original: nn.Module, pruned: nn.Module, batches: Iterable[Any]
) -> NextTokenFidelity:
    """Agreement of the next-token distributions of two causal language models.

    Over every position t whose ``attention_mask`` is 1 (N positions in all):
    top1_agreement = (1/N) Σ_t [argmax p_o(·|t) = argmax q(·|t)],
    kl_nats = (1/N) Σ_t Σ_v p_o(v|t) (ln p_o(v|t) − ln q(v|t)), and
    fidelity = exp_neg_kl = exp(−kl_nats) ∈ (0, 1]. See :class:`NextTokenFidelity`.

    The models' outputs must carry ``logits`` of shape (batch, tokens, vocabulary) (a Hugging Face
    causal-LM output, a tuple whose first element is the logits, or the tensor itself). Softmaxes
    are taken in float32 whatever the models' dtype; identical models give exactly 1, 0 and 1.
    """
    kl_sum = 0.0
    agree = 0
    n = 0
    with evaluating(original, pruned):
        for batch in _nonempty(batches):
            lo = _logits(forward_batch(original, batch))
            lp = _logits(forward_batch(pruned, batch))
            if lo.shape != lp.shape:
                raise InputShapeError(
                    f"the models' logits differ in shape: {tuple(lo.shape)} vs {tuple(lp.shape)}"
                )
            if lo.dim() != 3:
                raise InputShapeError(
                    f"next-token logits must be (batch, tokens, vocabulary), not {tuple(lo.shape)}"
                )
            lp = lp.to(lo.device)
            vocab = lo.shape[-1]
            keep = _token_mask(batch, lo.shape[:2], lo.device).reshape(-1).nonzero().squeeze(1)
            flat_o = lo.reshape(-1, vocab)
            flat_p = lp.reshape(-1, vocab)
            for sel in _row_chunks(keep, vocab):
                a = flat_o.index_select(0, sel).float()
                b = flat_p.index_select(0, sel).float()
                agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                log_p = F.log_softmax(a, dim=-1)
                log_q = F.log_softmax(b, dim=-1)
                p = log_p.exp()
                # p·(ln p − ln q), with 0·ln 0 = 0 (no NaN where p underflows to 0).
                terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
                kl_sum += float(terms.sum(-1).clamp_min(0.0).double().sum())
            n += keep.numel()
    if n == 0:
        raise MeasurementError("no token position to compare: every attention_mask is all zeros")
    return NextTokenFidelity(top1_agreement=agree / n, kl_nats=kl_sum / n, n_positions=n)


def perplexity(model: nn.Module, batches: Iterable[Any]) -> float:
    """Perplexity of a causal language model on a text set: exp of the token-weighted mean NLL.

    PPL = exp( Σ_b Σ_t −ln p(x_t+1 | x_≤t) / N ), summed over every predicted token of every batch
    (N of them), not averaged per batch, so batches of different lengths weigh by their tokens.
    Targets are ``labels`` when the batch has them (Hugging Face convention: unshifted, −100 =
    ignore), else ``input_ids``; a target counts when it and the position predicting it are both
    unmasked. A batch that is a tensor is taken as the input ids.
    """
    nll, n = 0.0, 0
    with evaluating(model):
        for batch in _nonempty(batches):
            s, k = _nll_sum(_logits(forward_batch(model, batch)), batch)
            nll += s
            n += k
    if n == 0:
        raise MeasurementError(
            "no token to predict: every sequence is masked or shorter than 2 tokens"
        )
    return math.exp(nll / n)


def perplexity_ratio(original: nn.Module, pruned: nn.Module, batches: Iterable[Any]) -> float:
    """PPL(pruned) / PPL(original) on the same batches = exp(NLL̄_pruned − NLL̄_original).

    1 means unchanged, above 1 worse (1/ratio, capped at 1, is a fidelity in [0, 1] if one is
    wanted). Both models run on each batch in a single pass, so ``batches`` may be a generator;
    identical models give exactly 1. Same token conventions as :func:`perplexity`.
    """
    nll_o = nll_p = 0.0
    n = 0
    with evaluating(original, pruned):
        for batch in _nonempty(batches):
            so, k = _nll_sum(_logits(forward_batch(original, batch)), batch)
            sp, _ = _nll_sum(_logits(forward_batch(pruned, batch)), batch)
            nll_o += so
            nll_p += sp
            n += k
    if n == 0:
        raise MeasurementError(
            "no token to predict: every sequence is masked or shorter than 2 tokens"
        )
    return math.exp(nll_p / n - nll_o / n)


def _nll_sum(logits: torch.Tensor, batch: Any) -> tuple[float, int]:
    """Σ −ln p(target) over the counted targets of one batch, and how many there were."""
    if logits.dim() != 3:
        raise InputShapeError(
            f"causal-LM logits must be (batch, tokens, vocabulary), not {tuple(logits.shape)}"
        )
    targets = _targets(batch).to(logits.device)
    bsz, seq, vocab = logits.shape
    if targets.shape != (bsz, seq):
        raise InputShapeError(
            f"targets of shape {tuple(targets.shape)} do not match logits {tuple(logits.shape)}"
        )
    mask = _token_mask(batch, (bsz, seq), logits.device)
    valid = (targets[:, 1:] != -100) & mask[:, 1:] & mask[:, :-1]
    total = 0.0
    count = 0
    for row in range(bsz):
        keep = valid[row].nonzero().squeeze(1)
        row_logits = logits[row, :-1]  # position t predicts token t+1
        row_targets = targets[row, 1:]
        for sel in _row_chunks(keep, vocab):
            nll = F.cross_entropy(
                row_logits.index_select(0, sel).float(),
                row_targets.index_select(0, sel),
                reduction="none",
            )
            total += float(nll.double().sum())
        count += keep.numel()
    return total, count


def _targets(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        if batch.get("labels") is not None:
            return batch["labels"]
        if batch.get("input_ids") is not None:
            return batch["input_ids"]
        raise InputShapeError("a perplexity batch needs `input_ids` (or `labels`)")
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise InputShapeError(f"cannot find token ids in a batch of type {type(batch).__name__}")


# ---- classifiers --------------------------------------------------------------------------------
def accuracy_retention(
    original: nn.Module, pruned: nn.Module, batches: Iterable[Any], labels: Any
) -> AccuracyRetention:
    """Accuracy of the pruned classifier relative to the original's, on labelled batches.

    retention = acc(pruned) / acc(original), acc(m) = (1/N) Σ_i [argmax_c m(x_i)_c = y_i]
    (see :class:`AccuracyRetention`; ``float(result)`` is the retention, ``.fidelity`` is it capped
    at 1). ``labels`` is either every label in batch order (a 1-D tensor, array or list of ints,
    consumed batch by batch) or an iterable of one label tensor per batch. Outputs are logits
    (batch, classes) or anything with ``logits``; predictions are the argmax over the last axis.
    Raises MeasurementError when the original model gets no sample right (retention undefined:
    use :func:`agreement`).
    """
    feed = _LabelFeed(labels)
    right_o = right_p = n = 0
    with evaluating(original, pruned):
        for batch in _nonempty(batches):
            po = _logits(forward_batch(original, batch)).argmax(-1)
            pp = _logits(forward_batch(pruned, batch)).argmax(-1).to(po.device)
            if po.shape != pp.shape:
                raise InputShapeError(
                    f"the models' predictions differ in shape: {tuple(po.shape)} vs {tuple(pp.shape)}"
                )
            y = feed.take(po.numel()).to(po.device).reshape(po.shape)
            right_o += int((po == y).sum())
            right_p += int((pp == y).sum())
            n += po.numel()
    feed.finish(n)
    if right_o == 0:
        raise MeasurementError(
            f"the original model classifies none of the {n} samples correctly, so accuracy retention "
            "is undefined: check the labels, or use agreement() instead"
        )
    return AccuracyRetention(correct_original=right_o, correct_pruned=right_p, n_samples=n)


def agreement(original: nn.Module, pruned: nn.Module, batches: Iterable[Any]) -> float:
    """Top-1 agreement of class predictions, for when no labels exist: in [0, 1].

    A = (1/N) Σ_i [argmax_c original(x_i)_c = argmax_c pruned(x_i)_c] over the N samples (for
    outputs with more axes, over every element of all but the last axis). Outputs as in
    :func:`accuracy_retention`. For language models use ``next_token_fidelity(...).top1_agreement``,
    which respects the attention mask.
    """
    same = n = 0
    with evaluating(original, pruned):
        for batch in _nonempty(batches):
            po = _logits(forward_batch(original, batch)).argmax(-1)
            pp = _logits(forward_batch(pruned, batch)).argmax(-1).to(po.device)
            if po.shape != pp.shape:
                raise InputShapeError(
                    f"the models' predictions differ in shape: {tuple(po.shape)} vs {tuple(pp.shape)}"
                )
            same += int((po == pp).sum())
            n += po.numel()
    if n == 0:
        raise MeasurementError("the batches hold no sample")
    return same / n


class _LabelFeed:
    """Hands out labels batch by batch, from one flat sequence or from one tensor per batch."""

    def __init__(self, labels: Any) -> None:
        self._flat: torch.Tensor | None = None
        self._iter: Iterator[Any] | None = None
        self._offset = 0
        if isinstance(labels, torch.Tensor):
            self._flat = labels.reshape(-1)
        elif hasattr(labels, "__array__"):
            self._flat = torch.as_tensor(labels).reshape(-1)
        elif isinstance(labels, Sequence) and all(isinstance(y, numbers.Integral) for y in labels):
            self._flat = torch.tensor([int(y) for y in labels], dtype=torch.long)
        else:
            self._iter = iter(labels)

    def take(self, count: int) -> torch.Tensor:
        if self._flat is not None:
            chunk = self._flat[self._offset : self._offset + count]
            if chunk.numel() != count:
                raise UsageError(f"labels ran out: {self._flat.numel()} labels for more samples than that")
            self._offset += count
            return chunk
        assert self._iter is not None
        try:
            chunk = torch.as_tensor(next(self._iter))
        except StopIteration:
            raise UsageError("labels ran out: fewer label batches than input batches") from None
        if chunk.numel() != count:
            raise UsageError(f"a label batch holds {chunk.numel()} labels for {count} predictions")
        return chunk.reshape(-1)

    def finish(self, n_samples: int) -> None:
        if self._flat is not None and self._offset != self._flat.numel():
            raise UsageError(f"{self._flat.numel()} labels were given for {n_samples} samples")
        if self._iter is not None and next(self._iter, None) is not None:
            raise UsageError("more label batches than input batches were given")


# ---- shared plumbing ----------------------------------------------------------------------------
@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode()`` for the block; each submodule's train flag restored after."""
    saved = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
        with torch.inference_mode():
            yield
    finally:
        for module, flag in saved:
            module.training = flag


def _nonempty(batches: Iterable[Any]) -> Iterator[Any]:
    if isinstance(batches, (torch.Tensor, Mapping)):
        raise UsageError("batches must be an iterable of batches (e.g. a list of one tensor or dict)")
    seen = False
    for batch in batches:
        seen = True
        yield batch
    if not seen:
        raise UsageError("no batches were given")


def _output_tensor(out: Any, names: tuple[str, ...], what: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for name in names:
        value = out.get(name) if isinstance(out, Mapping) else getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise InputShapeError(
        f"cannot read the {what} output: expected a tensor, a tuple starting with one, or an "
        f"object with {' or '.join(names)}; got {type(out).__name__}"
    )


def _logits(out: Any) -> torch.Tensor:
    return _output_tensor(out, ("logits",), "logits")


def _token_mask(batch: Any, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Boolean (batch, tokens) mask of the positions that count: the attention_mask, or all."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is None:
        return torch.ones(tuple(shape), dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask).to(device).bool()
    if tuple(mask.shape) != tuple(shape):
        raise InputShapeError(
            f"attention_mask of shape {tuple(mask.shape)} does not match outputs {tuple(shape)}"
        )
    return mask


def _row_chunks(index: torch.Tensor, width: int) -> Iterator[torch.Tensor]:
    """Slices of a 1-D index tensor, each selecting about _CHUNK_ELEMENTS elements of rows of `width`."""
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    for start in range(0, index.numel(), step):
        yield index[start : start + step]


# ---- against a cached reference -------------------------------------------------------------------
# When one original is compared with many pruned models (a benchmark, the budget loop), its outputs
# are computed once and kept: each pruned model then costs one forward per batch, not two. The
# definitions are those of the functions above (a test checks them against each other).
class NextTokenReference:
    """exp(−KL) of next-token distributions (KL averaged over the positions that count), top-1
    agreement and perplexity (exp of the mean next-token NLL) of a causal LM, against the
    original's cached log-probabilities."""

    def __init__(self, original: nn.Module, batches: Sequence[Any]) -> None:
        self.batches = list(batches)
        with evaluating(original):
            self.reference = [F.log_softmax(_logits(forward_batch(original, b)).float(), dim=-1) for b in self.batches]

    def __call__(self, model: nn.Module, *, kl_only: bool = False) -> dict[str, float]:
        kl_sum = agree = n = 0.0
        nll_sum = n_nll = 0.0
        with evaluating(model):
            for batch, log_p in zip(self.batches, self.reference):
                log_q = F.log_softmax(_logits(forward_batch(model, batch)).float(), dim=-1).to(log_p.device)
                mask = _token_mask(batch, log_p.shape[:2], log_p.device)
                p = log_p.exp()
                kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1).clamp_min(0.0)
                kl_sum += float(kl[mask].double().sum())
                n += int(mask.sum())
                if kl_only:
                    continue
                agree += int((log_p.argmax(-1) == log_q.argmax(-1))[mask].sum())
                if isinstance(batch, Mapping) and "input_ids" in batch:
                    targets = torch.as_tensor(batch["input_ids"]).to(log_q.device)[:, 1:]
                    counted = mask[:, 1:] & mask[:, :-1]
                    nll = -log_q[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                    nll_sum += float(nll[counted].double().sum())
                    n_nll += int(counted.sum())
        if n == 0:
            raise MeasurementError("no token position counts (every attention_mask entry is 0)")
        out = {"exp_neg_kl": math.exp(-kl_sum / n), "kl_nats": kl_sum / n}
        if not kl_only:
            out.update(top1_agreement=agree / n, positions=int(n))
            if n_nll:
                out["perplexity"] = math.exp(nll_sum / n_nll)
        return out


class EmbeddingReference:
    """Mean cosine (clipped to [0, 1]) of mean-pooled, L2-normalised sentence embeddings against
    the original's (as `embedding_fidelity`). `embed(model)` gives the embeddings themselves (on
    the CPU, float64) for whoever scores them further (similarity against human judgements...)."""

    def __init__(self, original: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self.batches = list(batches)
        self.reference = self.embed(original)

    def embed(self, model: nn.Module) -> torch.Tensor:
        out = []
        with evaluating(model):
            for batch in self.batches:
                hidden = _output_tensor(forward_batch(model, batch), ("last_hidden_state",), "hidden-state")
                mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                pooled = mean_pool(hidden, None if mask is None else mask.to(hidden.device)).double()
                out.append(F.normalize(pooled, dim=-1).cpu())
        return torch.cat(out)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return {"embedding_cosine": float((self.embed(model) * self.reference).sum(-1).clamp(0.0, 1.0).mean())}


class ClassReference:
    """An image classifier against the original's class distributions, where no labels exist:
    exp(−mean KL(p_original ‖ p_pruned)), top-1 agreement and top-5 agreement (the original's top
    class among the pruned model's five best)."""

    def __init__(self, original: nn.Module, batches: Sequence[Any]) -> None:
        self.batches = list(batches)
        self.reference = [F.log_softmax(logits, -1) for logits in self._logits(original)]

    def _logits(self, model: nn.Module) -> list[torch.Tensor]:
        with evaluating(model):
            return [_logits(forward_batch(model, b)).double().cpu() for b in self.batches]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        kl_sum = top1 = top5 = n = 0.0
        for log_p, logits in zip(self.reference, self._logits(model)):
            log_q = F.log_softmax(logits, -1)
            kl_sum += float((log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).sum())
            label = log_p.argmax(-1)
            top1 += int((log_q.argmax(-1) == label).sum())
            k = min(5, log_q.shape[-1])
            top5 += int((log_q.topk(k, -1).indices == label.unsqueeze(-1)).any(-1).sum())
            n += len(label)
        return {"exp_neg_kl": math.exp(-kl_sum / n), "kl_nats": kl_sum / n, "top1_agreement": top1 / n,
                "top5_agreement": top5 / n, "images": int(n)}


def auto_fidelity(original: nn.Module, candidate: nn.Module, batches: Sequence[Any]) -> float:
    """The fidelity that fits the model's output, in [0, 1]: exp(−KL) of next-token distributions
    for language models (logits of shape batch x tokens x vocabulary), top-1 agreement for
    classifiers (batch x classes), embedding cosine otherwise."""
    kind = _output_kind(original, batches[0])
    if kind == "next-token":
        return float(next_token_fidelity(original, candidate, batches).fidelity)
    if kind == "class":
        return float(agreement(original, candidate, batches))
    return float(embedding_fidelity(original, candidate, batches))


#: What `auto_fidelity` computes for each kind of output.
FIDELITY_METRICS = {"next-token": "exp(-KL) of next-token distributions", "class": "top-1 agreement",
                    "embedding": "embedding cosine"}


def _output_kind(original: nn.Module, batch: Any) -> str:
    """"next-token" (logits batch x tokens x vocabulary), "class" (batch x classes) or "embedding"."""
    with evaluating(original):
        output = forward_batch(original, batch)
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, torch.Tensor) and output.ndim == 3 and _has_token_ids(batch):
        logits = output
    if isinstance(logits, torch.Tensor) and logits.ndim == 3:
        return "next-token"
    if isinstance(logits, torch.Tensor) and logits.ndim == 2:
        return "class"
    return "embedding"


def _has_token_ids(batch: Any) -> bool:
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else batch
    return isinstance(ids, torch.Tensor) and ids.ndim == 2 and not ids.is_floating_point()


def main_output(out: Any) -> torch.Tensor:
    """The tensor a model's output is about: its logits, its last hidden state, or itself."""
    return _output_tensor(out, ("logits", "last_hidden_state"), "main")


def output_fidelity(original: nn.Module, candidate: nn.Module, batches: Sequence[Any]) -> dict[str, Any]:
    """How close a transformed model's outputs are to the original's on the same inputs: the
    fidelity that fits the output (`auto_fidelity`: exp(−KL), top-1 agreement or embedding cosine,
    named in `metric`) and the largest absolute difference of the main output tensor, which shows
    a change in the last bits (bf16) that a fidelity of 1.000 would hide."""
    metric = FIDELITY_METRICS[_output_kind(original, batches[0])]
    value = auto_fidelity(original, candidate, batches)
    worst = 0.0
    with evaluating(original, candidate):
        for batch in batches:
            a = main_output(forward_batch(original, batch)).float()
            b = main_output(forward_batch(candidate, batch)).float()
            if a.shape != b.shape:
                raise InputShapeError(f"the outputs differ in shape: {tuple(a.shape)} against {tuple(b.shape)}")
            worst = max(worst, float((a - b.to(a.device)).abs().max()))
    return {"metric": metric, "fidelity": value, "max_abs_error": worst}
