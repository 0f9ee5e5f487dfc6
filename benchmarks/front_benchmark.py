"""The fidelity-energy front of a pretrained model: depth, width and both, at several cuts, with
and without distillation (issue 12's deciding benchmark, the parts a 2-core CPU can run).

    python benchmarks/front_benchmark.py                                  # SmolLM2, -10/-20/-30/-40%, distil at -30%
    python benchmarks/front_benchmark.py --model minilm                   # all-MiniLM-L6-v2
    python benchmarks/front_benchmark.py --model efficientnet             # EfficientNet-Lite0 (a CNN)
    python benchmarks/front_benchmark.py --cuts 30 --recover-steps 0,100,400 --families width
    python benchmarks/front_benchmark.py --only depth:30                  # rerun one row, keep the others
    python benchmarks/front_benchmark.py --distil-data generated --out-dir <dir> --only depth-bridge:30
                                        # distil on text the original writes (see teacher_batches)
    python benchmarks/front_benchmark.py --model efficientnet --distil-data mixup --out-dir <dir>
                                        # distil on fresh blended crops (see MixedCrops)

Families (the cost proxy is the FLOPs ratio at 1 x 128 tokens; every family prunes to the smallest
amount whose FLOPs ratio is at or below 1 - cut):
* depth: whole decoder blocks by cosine-block (ShortGPT), as many as needed;
* depth-bridge: the same blocks, each removed run replaced by a least-squares linear map fitted on 16
  training batches and folded into the output projection of the block before it (ReplaceMe; pre-norm
  decoders only, same FLOPs as depth);
* width: attention KV groups, MLP neurons and hidden channels, the same fraction of each kind, ranked
  across layers by first-order Taylor importance scored once on the original (Minitron scores once
  too), the fraction found by bisection;
* mixed: blocks by cosine-block until half the cut is reached, then width (rescored on that model)
  for the rest.

SmolLM2-135M: gensim's Lee corpus split by document: calibration and distillation from the first
half, every figure from the second (8 x 256 tokens): held-out exp(-KL) and top-1 agreement against
the original, perplexity ratio, and greedy answers to ten fixed questions; distillation is KL on
logits, 4 x 128 tokens a step. all-MiniLM-L6-v2: calibration and distillation on lee_background
documents (16 a step, 128 tokens), figures on the 50 lee.cor documents: embedding cosine against the
original and the Pearson r of their 1225 pairwise cosines with human similarity scores;
distillation is MSE of the last hidden state. EfficientNet-Lite0: width is channels of every group of
coupled layers (torch-pruning's DependencyGraph), depth its shape-preserving blocks; calibration and
distillation on crops of six scikit-image photographs, figures (top-1 / top-5 agreement with the
original's classes, exp(-KL)) on crops of the other twelve; distillation is KL on the class
distributions, 8 crops a step. Distillation (AdamW) runs at `--recover-at` cuts only,
each step count cumulative.
`--energy` adds an interleaved comparison with the original per row (ESTIMATED on a machine without
counters, and labelled so; the FLOPs ratio stands beside it). The JSON and Markdown are rewritten
after every row, so an interrupted run keeps what it measured.
Results: benchmarks/results/<device>/front-<model>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Callable, overload

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prune_benchmark import EmbeddingReference, lee_human_scores  # noqa: E402
from recovery_benchmark import QUESTIONS, answers  # noqa: E402

from energyprune.bench.session import device_record, load_json, resolve_device, results_dir, save  # noqa: E402
from energyprune.budget.recovery import Distillation  # noqa: E402
from energyprune.metrics.fidelity import NextTokenReference  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.models import zoo  # noqa: E402
from energyprune.pruning import units_for  # noqa: E402
from energyprune.pruning.criteria import get_criterion  # noqa: E402
from energyprune.pruning.kinds import remove_units  # noqa: E402
from energyprune.pruning.oneshot import select  # noqa: E402
from energyprune.pruning.ranking import default_scope  # noqa: E402
from energyprune.torch_io import model_device, to_device  # noqa: E402

#: `--distil-data`: each model's own default, or the teacher's text (SmolLM2), or mixup crops (EfficientNet).
DISTIL_DATA = ("default", "generated", "mixup")
FAMILIES = ("depth", "depth-bridge", "width", "mixed", "width-no-hidden")
#: Batches the depth-bridge family fits its linear maps on (from the training split): a 576 x 576 map
#: wants several thousand tokens (4 batches, 2,048 tokens: exp(-KL) 0.18 at -30%; 16: 0.28).
BRIDGE_FIT_BATCHES = 16
WIDTH_KINDS = ("neuron", "head", "hidden")
#: What ranks the width units, with its defaults (`taylor`: estimator and ranking scope its own).
WIDTH_CRITERION = "taylor"


class Unreachable(Exception):
    """No amount of a family's units reaches the FLOPs goal (the row is recorded as such)."""
SCHEMA = "energyprune.front-benchmark/1"

Batches = list[Any]  # dicts of tensors (language models) or image tensors


@dataclass
class Subject:
    """A model under test with its data and figures. `evaluate(model)` gives the figures (the
    primary one first in `metrics`); `answers(model)` greedy answers, for language models only."""

    key: str
    title: str
    model: torch.nn.Module
    calibration: Batches
    train: Batches
    probe: dict[str, Any] | torch.Tensor
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    metrics: tuple[tuple[str, str, str], ...]  # (key, label, format)
    goal: str
    recovery: str
    data: str
    answers: Callable[[torch.nn.Module], list[str]] | None = None
    width_kinds: tuple[str, ...] = WIDTH_KINDS  # what "width" removes in this model
    families: tuple[str, ...] = FAMILIES  # the families that apply to it
    bridge_fit: Batches | None = None  # what depth-bridge fits on (default: `train`)


#: Teacher-generated distillation text (`--distil-data generated`): each sequence continues a
#: PREFIX_TOKENS-token window of the training half, sampled from the original at T = 1.
PREFIX_TOKENS = 16
GENERATED_SEQUENCES = 2048


def teacher_batches(teacher: torch.nn.Module, text_batches: Batches, n_sequences: int, *, seq_len: int = 128,
                    batch_size: int = 4, prefix_tokens: int = PREFIX_TOKENS, seed: int = 0,
                    chunk: int = 64, cache: Path | None = None) -> Batches:
    """`n_sequences` rows of `seq_len` tokens written by `teacher`, each the continuation of a
    `prefix_tokens` window of `text_batches` (disjoint windows, in order; sampled at T = 1 with a
    seeded generator), packed `batch_size` rows a batch. The 38k training tokens of the Lee corpus
    are a few epochs of 400 distillation steps; the original's own text is as much as we want of
    what the student should imitate, with no data that is not ours.

    Writing is slow on a CPU (1,600 sequences: 22 min on 2 cores), so `cache` (a file) keeps the
    token ids: read back (tensors only, `weights_only`) when it holds `n_sequences` rows of
    `seq_len` that start with these prefixes, else (re)written."""
    rows = torch.cat([b["input_ids"] for b in text_batches])
    windows = rows[:, : rows.shape[1] // prefix_tokens * prefix_tokens].reshape(-1, prefix_tokens)
    if len(windows) < n_sequences:
        raise ValueError(f"{len(windows)} prefixes of {prefix_tokens} tokens, {n_sequences} asked")
    ids = _cached_ids(cache, windows[:n_sequences], seq_len, seed)
    if ids is None:
        torch.manual_seed(seed)
        out = []
        with torch.inference_mode():
            for start in range(0, n_sequences, chunk):
                prefix = windows[start:min(start + chunk, n_sequences)].to(model_device(teacher))
                out.append(teacher.generate(prefix, attention_mask=torch.ones_like(prefix), do_sample=True,
                                            temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=seq_len - prefix_tokens,
                                            min_new_tokens=seq_len - prefix_tokens, pad_token_id=0).cpu())
        ids = torch.cat(out)
        if cache is not None:
            _save_ids(cache, ids, seed)
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": torch.ones_like(ids[i:i + batch_size]),
             "use_cache": False} for i in range(0, len(ids), batch_size)]


def repack(batches: Batches, rows: int) -> Batches:
    """Token batches re-cut to `rows` rows each (the last may hold fewer): a GPU distils on more rows
    a step than the CPU's 4. Every row is kept, in order."""
    ids = torch.cat([b["input_ids"] for b in batches])
    masks = torch.cat([b.get("attention_mask", torch.ones_like(b["input_ids"])) for b in batches])
    extra = {k: v for k, v in batches[0].items() if k not in ("input_ids", "attention_mask")}
    return [{"input_ids": ids[i:i + rows], "attention_mask": masks[i:i + rows], **extra}
            for i in range(0, len(ids), rows)]


def _cached_ids(cache: Path | None, prefixes: torch.Tensor, seq_len: int, seed: int) -> torch.Tensor | None:
    """The ids in `cache` when they were written for these prefixes, length and seed; else None."""
    if cache is None or not cache.exists():
        return None
    try:
        saved = torch.load(cache, weights_only=True)
    except Exception as error:  # not a tensor file, cut short, or holding more than tensors
        print(f"{cache} cannot be read as written token ids ({type(error).__name__}): writing the text again",
              flush=True)
        return None
    ids = saved.get("ids") if isinstance(saved, dict) else None
    if (not isinstance(ids, torch.Tensor) or saved.get("seed") != seed or ids.shape != (len(prefixes), seq_len)
            or not torch.equal(ids[:, : prefixes.shape[1]], prefixes)):
        print(f"{cache} was written for other prefixes, lengths or seed: writing the text again", flush=True)
        return None
    return ids


def _save_ids(cache: Path, ids: torch.Tensor, seed: int) -> None:
    import io

    from energyprune.files import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save({"ids": ids, "seed": seed}, buffer)
    write_bytes_atomic(cache, buffer.getvalue())


def smollm2_subject(distil_data: str = "default", generated_sequences: int = GENERATED_SEQUENCES,
                    generated_cache: Path | None = None, device: torch.device = torch.device("cpu"),
                    distil_rows: int = 4, generation_chunk: int = 64) -> Subject:
    model, tokenizer = zoo.load_smollm2()
    model = model.to(device)
    docs = zoo.text_corpus("lee_background")
    half = len(docs) // 2
    train = zoo.calibration_batches(tokenizer, docs[:half], seq_len=128, batch_size=4, n_batches=64)
    for batch in train:
        batch["use_cache"] = False
    calibration, lee_train = to_device(train[:4], device), train
    distil_text = f"distillation: lee_background documents 0-{half - 1}, packed"
    if distil_data == "generated":
        train = teacher_batches(model, train, generated_sequences, cache=generated_cache, chunk=generation_chunk)
        distil_text = (f"distillation: {generated_sequences} x 128 tokens written by the original (T = 1, seed 0), "
                       f"each continuing a {PREFIX_TOKENS}-token window of lee_background documents 0-{half - 1}")
    if distil_rows != 4:
        train = repack(train, distil_rows)
    heldout = zoo.calibration_batches(tokenizer, docs[half:], seq_len=256, batch_size=8, n_batches=1)
    heldout[0]["use_cache"] = False
    reference = NextTokenReference(model, heldout)
    original_ppl = reference(model)["perplexity"]

    def evaluate(pruned: torch.nn.Module) -> dict[str, float]:
        figures = reference(pruned)
        figures["perplexity_ratio"] = figures["perplexity"] / original_ppl
        return figures

    return Subject(
        key="smollm2", title="SmolLM2-135M-Instruct", model=model, calibration=calibration, train=train,
        probe={"input_ids": heldout[0]["input_ids"][:1, :128].to(device), "use_cache": False}, evaluate=evaluate,
        metrics=(("exp_neg_kl", "held-out exp(-KL)", ".3f"), ("top1_agreement", "top-1 agreement", ".3f"),
                 ("perplexity_ratio", "ppl ratio", ".2f")),
        goal="Goal (issue 12, at -30% energy): exp(-KL) >= 0.8 and perplexity <= 1.5x the original's.",
        recovery=f"AdamW, KL on logits at T=1, all weights, batches of {distil_rows} x 128 tokens",
        data=f"calibration: 4 batches of lee_background documents 0-{half - 1}, packed; {distil_text}; "
             f"held-out: documents {half}-{len(docs) - 1}, 8 x 256 tokens; original held-out perplexity "
             f"{original_ppl:.2f}",
        answers=lambda pruned: answers(pruned, tokenizer, 24), bridge_fit=lee_train)


def minilm_subject() -> Subject:
    model, tokenizer = zoo.load_minilm()
    background = zoo.text_corpus("lee_background")
    lee = zoo.text_corpus("lee")
    human = lee_human_scores()
    train = zoo.calibration_batches(tokenizer, background, seq_len=128, batch_size=16, pack=False)
    heldout = zoo.calibration_batches(tokenizer, lee, seq_len=256, batch_size=25, pack=False)
    reference = EmbeddingReference(model, heldout, human)
    original = reference(model)

    def evaluate(pruned: torch.nn.Module) -> dict[str, float]:
        figures = reference(pruned)
        figures["lee_pearson_ratio"] = figures["lee_pearson"] / original["lee_pearson"]
        return figures

    probe = zoo.calibration_batches(tokenizer, lee[:8], seq_len=128, batch_size=8, pack=False)[0]
    return Subject(
        key="minilm", title="all-MiniLM-L6-v2", model=model, calibration=train[:4], train=train,
        probe=dict(probe), evaluate=evaluate,
        metrics=(("embedding_cosine", "held-out embedding cosine", ".3f"), ("lee_pearson", "Lee Pearson r", ".3f"),
                 ("lee_pearson_ratio", "r / original r", ".3f")),
        goal=f"The original's Lee Pearson r with the human similarity scores: {original['lee_pearson']:.3f}.",
        recovery="AdamW, MSE of the last hidden state, all weights, batches of 16 documents x 128 tokens",
        data=f"calibration (4 batches) and distillation: the {len(background)} lee_background documents, one per "
             f"row, 128 tokens; held-out: the 50 lee.cor documents (disjoint), 256 tokens, and the human "
             f"similarity scores of their 1225 pairs",
        # The embedding is the product: its width is what a downstream index stores, and the cosine
        # against the original needs the same dimensions, so width here is heads and neurons only.
        width_kinds=("head", "neuron"), families=("depth", "width", "mixed"))


#: EfficientNet's photographs split by source (the channels benchmark's split): calibration and
#: distillation crops come from these six, every figure from the other twelve.
CALIBRATION_PHOTOS = ("coffee", "rocket", "camera", "coins", "brick", "grass")


#: `--distil-data mixup` on EfficientNet: as many made-on-demand batches as the most steps asked.
MIXUP_BATCHES = 4096


def efficientnet_subject(distil_data: str = "default") -> Subject:
    from energyprune.metrics.fidelity import ClassReference

    model = zoo.load_efficientnet_lite0().eval()
    heldout_photos = tuple(s for s in zoo.IMAGE_SOURCES if s not in CALIBRATION_PHOTOS)
    calibration, _ = zoo.image_crops(CALIBRATION_PHOTOS, 2, seed=0)
    train, _ = zoo.image_crops(CALIBRATION_PHOTOS, 64, seed=2)
    batches: Batches | MixedCrops = list(train.split(8))
    distil_text = "distillation: 64 other crops of the same photographs (seed 2)"
    if distil_data == "mixup":
        batches = MixedCrops(CALIBRATION_PHOTOS, 8, MIXUP_BATCHES)
        distil_text = ("distillation: fresh crops of the same photographs for every batch, each blended with another "
                       "(mixup, weight ~ U(0, 1); seeded)")
    heldout, _ = zoo.image_crops(heldout_photos, 4, seed=1)
    reference = ClassReference(model, list(heldout.split(24)))
    return Subject(
        key="efficientnet", title="EfficientNet-Lite0", model=model, calibration=list(calibration.split(6)),
        train=batches, probe=heldout[:1], evaluate=reference,
        metrics=(("top1_agreement", "held-out top-1 agreement", ".3f"), ("top5_agreement", "top-5 agreement", ".3f"),
                 ("exp_neg_kl", "held-out exp(-KL)", ".3f")),
        goal="No ImageNet labels offline: agreement with the unpruned model's classes on photographs it never "
             "saw in calibration or distillation.",
        recovery="AdamW, KL on the class distributions at T=1, all weights (BatchNorm statistics frozen), "
                 "batches of 8 crops",
        data=f"calibration (Taylor gradients): scikit-image photographs {', '.join(CALIBRATION_PHOTOS)}, 2 random "
             f"resized crops each (seed 0); {distil_text}; "
             f"held-out: the other {len(heldout_photos)} photographs, 4 crops each ({len(heldout)} images, seed 1)",
        width_kinds=("channel",), families=("depth", "width", "mixed"))


class MixedCrops(Sequence[torch.Tensor]):
    """`n_batches` batches made on demand (`--distil-data mixup`): each `batch_size` fresh random
    resized crops of `sources` (seeded by the batch's index), every crop blended with another of the
    batch, λ ~ U(0, 1) (mixup as "function matching", Beyer et al., arXiv 2106.05237: teacher and
    student see the same blended image, so six photographs give as many distinct inputs as steps)."""

    def __init__(self, sources: tuple[str, ...], batch_size: int, n_batches: int, seed: int = 3,
                 crops: Callable[..., tuple[torch.Tensor, Any]] | None = None) -> None:
        self.sources, self.batch_size, self.n_batches, self.seed = sources, batch_size, n_batches, seed
        self.crops = crops or zoo.image_crops  # (sources, crops_per_image, seed=) -> (images, names)

    def __len__(self) -> int:
        return self.n_batches

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[torch.Tensor]: ...

    def __getitem__(self, index: int | slice) -> torch.Tensor | Sequence[torch.Tensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n_batches))]
        if not -self.n_batches <= index < self.n_batches:
            raise IndexError(index)
        index %= self.n_batches
        seed = self.seed * 1_000_003 + index
        per_source = -(-self.batch_size // len(self.sources))
        crops, _ = self.crops(self.sources, per_source, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        chosen = crops[torch.randperm(len(crops), generator=generator)[: self.batch_size]]
        partner = chosen[torch.randperm(len(chosen), generator=generator)]
        blend = torch.rand(len(chosen), 1, 1, 1, generator=generator)
        return blend * chosen + (1 - blend) * partner


class Rotated(Sequence[Any]):
    """`batches` read from `offset` on, wrapping round (distillation continuing where it stopped),
    without copying or building them."""

    def __init__(self, batches: Sequence[Any], offset: int) -> None:
        self.batches, self.offset = batches, offset % len(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.batches[(index + self.offset) % len(self.batches)]


SUBJECTS: dict[str, Callable[..., Subject]] = {
    "smollm2": smollm2_subject, "minilm": minilm_subject, "efficientnet": efficientnet_subject}


class Flops:
    """FLOPs ratios against the original on one probe (1 x 128 tokens, or one 224 x 224 photograph)."""

    def __init__(self, model: torch.nn.Module, probe: dict[str, Any] | torch.Tensor) -> None:
        self.probe = probe
        self.base = count_flops(model, probe)

    def ratio(self, model: torch.nn.Module) -> float:
        return count_flops(model, self.probe) / self.base


def block_scores(model: torch.nn.Module, calibration: Batches) -> dict[Any, float]:
    units = units_for(model, "block", calibration)
    return dict(get_criterion("cosine-block", unit_kind="block").score(model, units, calibration))


def remove_blocks(model: torch.nn.Module, scores: dict[Any, float], count: int, calibration: Batches) -> torch.nn.Module:
    pruned, _ = remove_units(model, select(scores, count, "block"), calibration=calibration)
    return pruned


def depth_cut(model: torch.nn.Module, calibration: Batches, flops: Flops, goal: float,
              kinds: tuple[str, ...] = WIDTH_KINDS) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fewest blocks, lowest cosine-block score first, whose removal reaches `goal` (`kinds`,
    the width kinds, play no part)."""
    scores = block_scores(model, calibration)
    for count in range(1, len(scores)):
        pruned = remove_blocks(model, scores, count, calibration)
        ratio = flops.ratio(pruned)
        if ratio <= goal:
            return pruned, {"blocks": count}
    raise Unreachable(f"no number of blocks reaches a FLOPs ratio of {goal:.2f}")


def depth_bridge_cut(model: torch.nn.Module, calibration: Batches, flops: Flops, goal: float,
                     kinds: tuple[str, ...] = WIDTH_KINDS, fit: Batches | None = None
                     ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`depth_cut`'s blocks, each removed run replaced by a least-squares linear bridge fitted on
    `fit` (default: `calibration`) and folded into the block before it (ReplaceMe; same FLOPs)."""
    from energyprune.pruning.surgery.bridge import remove_blocks_bridged

    _, removed = depth_cut(model, calibration, flops, goal)
    scores = block_scores(model, calibration)
    indices = sorted(u.index for u in select(scores, removed["blocks"], "block"))
    pruned, _ = remove_blocks_bridged(model, indices, fit if fit is not None else calibration)
    return pruned, {"blocks": removed["blocks"], "bridge": True}


def width_scores(model: torch.nn.Module, calibration: Batches,
                 kinds: tuple[str, ...] = WIDTH_KINDS) -> dict[str, dict[Any, float]]:
    scores = {}
    for kind in kinds:
        units = units_for(model, kind, calibration)
        scores[kind] = dict(get_criterion(WIDTH_CRITERION, unit_kind=kind).score(model, units, calibration))
    return scores


def remove_width(model: torch.nn.Module, scores: dict[str, dict[Any, float]], fraction: float,
                 calibration: Batches) -> torch.nn.Module:
    """The same fraction of each width kind, ranked globally as `prune` ranks the criterion's scores
    (Taylor: raw, `pruning.ranking`). Each kind's surgery changes only its
    own dimension (heads: attention width, neurons: MLP width, hidden: the residual stream), so
    units chosen on `model` stay valid after the other kinds are removed."""
    pruned = model
    for kind in scores:
        scope = default_scope(get_criterion(WIDTH_CRITERION, unit_kind=kind))
        chosen = select(scores[kind], fraction, kind, scope=scope)
        if chosen:
            pruned, _ = remove_units(pruned, chosen, calibration=calibration)
    return pruned


def width_cut(model: torch.nn.Module, calibration: Batches, flops: Flops, goal: float,
              kinds: tuple[str, ...] = WIDTH_KINDS) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The smallest fraction (to 1/256) of every width kind whose removal reaches `goal`."""
    scores = width_scores(model, calibration, kinds)
    low, high = 0.0, 0.6
    best = remove_width(model, scores, high, calibration)
    if flops.ratio(best) > goal:
        raise Unreachable(f"removing 60% of every kind of {', '.join(kinds)} does not reach a FLOPs ratio of "
                          f"{goal:.2f}")
    while high - low > 1 / 256:
        middle = (low + high) / 2
        candidate = remove_width(model, scores, middle, calibration)
        if flops.ratio(candidate) <= goal:
            high, best = middle, candidate
        else:
            low = middle
    return best, {"width_fraction": round(high, 4), "ranking": width_ranking(kinds)}


def width_ranking(kinds: tuple[str, ...]) -> str:
    """What ranked the width units, for the row (rows made before it was recorded used taylor's
    |w·g| normalised per layer)."""
    criterion = get_criterion(WIDTH_CRITERION, unit_kind=kinds[0])
    scope = default_scope(criterion)
    return f"{WIDTH_CRITERION} {getattr(criterion, 'estimator', '')}, {'raw' if scope == 'global-raw' else 'normalised'}"


def mixed_cut(model: torch.nn.Module, calibration: Batches, flops: Flops, goal: float,
              kinds: tuple[str, ...] = WIDTH_KINDS) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Blocks until half the cut, then width on the block-pruned model for the rest."""
    scores = block_scores(model, calibration)
    halfway = 1 - (1 - goal) / 2
    count, shallow = 0, model
    while flops.ratio(shallow) > halfway and count + 1 < len(scores):
        count += 1
        shallow = remove_blocks(model, scores, count, calibration)
    if flops.ratio(shallow) <= goal:
        return shallow, {"blocks": count, "width_fraction": 0.0}
    pruned, width = width_cut(shallow, calibration, flops, goal, kinds)
    return pruned, {"blocks": count, **width}


def width_no_hidden_cut(model: torch.nn.Module, calibration: Batches, flops: Flops, goal: float,
                        kinds: tuple[str, ...] = WIDTH_KINDS) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Width without the residual stream: KV groups and MLP neurons only (embeddings and lm_head keep
    their size, so more of each is needed)."""
    return width_cut(model, calibration, flops, goal, tuple(k for k in kinds if k != "hidden"))


CUTTERS: dict[str, Callable[..., tuple[torch.nn.Module, dict[str, Any]]]] = {
    "depth": depth_cut, "depth-bridge": depth_bridge_cut, "width": width_cut, "mixed": mixed_cut, "width-no-hidden": width_no_hidden_cut}


def row_key(row: dict[str, Any]) -> tuple[str, int, int]:
    return (row["family"], row["cut_percent"], row["steps"])


#: Rows made before 2026-12-06 carry no `ranking`: their width units were ranked by taylor's |w·g|
#: normalised per layer; later rows by taylor's default estimator (fo-squared; abs for CNN
#: channels) on raw scores, as their `ranking` says.
RANKING_NOTE = (" (a row's `ranking` names the estimator and whether the scores were ranked raw or normalised "
                "per layer; rows without one: abs, normalised)")


def runs_of(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The runs that made a front's rows, oldest first, each with the machine it ran on (files made
    before `runs` was kept hold one date, command and commit; before a run named its machine, the
    file's `device` was the machine of every run)."""
    runs = doc.get("runs") or [{"date": doc["date"], "command": doc["command"], "commit": doc["commit"]}]
    machine = doc.get("device", {}).get("device_name", "an unnamed machine")
    return [{**run, "machine": run.get("machine") or machine} for run in runs]


def machines_of(doc: dict[str, Any]) -> list[str]:
    """The machines that made a front's rows, in the order they first ran."""
    return list(dict.fromkeys(run["machine"] for run in runs_of(doc)))


def energy_machine(doc: dict[str, Any], row: dict[str, Any]) -> str:
    """The machine a row's energy was measured on (rows made before a row named it: the file's)."""
    return row.get("energy", {}).get("machine") or machines_of(doc)[0]


def intro(doc: dict[str, Any]) -> list[str]:
    if doc.get("width_kinds") == ["channel"]:
        families = ("Families: depth = whole shape-preserving blocks by cosine-block; width = channels of every "
                    "group of coupled layers (traced by torch-pruning's DependencyGraph), ranked across groups by "
                    "Taylor importance" + RANKING_NOTE + "; mixed = blocks to half the cut, then width.")
    elif doc.get("width_kinds") == ["head", "neuron"]:
        families = ("Families: depth = whole blocks by cosine-block; width = attention heads and MLP neurons (not "
                    "the hidden size: the embedding's dimensions are the product), the same fraction of each, ranked "
                    "across layers by Taylor importance" + RANKING_NOTE + "; mixed = blocks to half the cut, then width.")
    else:
        families = ("Families: depth = whole blocks by cosine-block; width = KV groups, MLP neurons and hidden "
                    "channels, the same fraction of each, ranked across layers by Taylor importance" + RANKING_NOTE + "; mixed = "
                    "blocks to half the cut, then width; width-no-hidden = KV groups and MLP neurons only; "
                    "depth-bridge = depth's blocks, each removed run replaced by a least-squares linear map folded "
                    "into the block before it (ReplaceMe; same FLOPs as depth).")
    several = len(machines_of(doc)) > 1
    made = "; then ".join(f"{run['date']} with `{run['command']}` (commit {run['commit']}"
                          + (f", on {run['machine']})" if several else ")") for run in runs_of(doc))
    return [f"Made {made}.",
            families + " Each row prunes to the smallest amount whose FLOPs ratio (the probe's batch) is at or "
            "below 1 - cut.",
            f"Distillation: {doc['recovery']}. Data: {doc['data']}."]


def front_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]], bool]:
    """Header, rows, and whether any row carries an energy figure."""
    metrics = doc["metrics"]
    with_energy = any("energy" in row for row in doc["rows"])
    # Energy ratios from different machines are different measurements: each cell names its machine then.
    several = len({energy_machine(doc, row) for row in doc["rows"] if "energy" in row}) > 1
    header = ["family", "cut", "removed", "FLOPs ratio"] + (["energy ratio"] if with_energy else []) + \
             ["distillation steps"] + [label for _, label, _ in metrics] + ["seconds"]
    rows = []
    for row in sorted(doc["rows"], key=row_key):
        f = row["figures"]
        cells = [row["family"], f"-{row['cut_percent']}%",
                 ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row["removed"].items()), f"{row['flops_ratio']:.3f}"]
        if with_energy:
            e = row.get("energy")
            cells.append(f"{e['ratio']:.3f} [{e['ratio_ci95'][0]:.3f}, {e['ratio_ci95'][1]:.3f}]"
                         f"{' ESTIMATED' if e['provenance'] == 'estimated' else ''}"
                         f"{f' ({energy_machine(doc, row)})' if several else ''}" if e else "n/a")
        cells += [str(row["steps"])] + [format(f[key], fmt) for key, _, fmt in metrics] + [f"{row['seconds']:.0f}"]
        rows.append(cells)
    return header, rows, with_energy


def answers_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    answered = [r for r in sorted(doc["rows"], key=row_key) if r.get("answers")]
    if not answered or not doc.get("original_answers"):
        return None
    header = ["question", "original"] + [f"{r['family']} -{r['cut_percent']}% {r['steps']} st." for r in answered]
    rows = [[question] + [c.replace("|", "/").replace("\n", " ")[:60]
                          for c in [doc["original_answers"][i]] + [r["answers"][i] for r in answered]]
            for i, question in enumerate(QUESTIONS)]
    return header, rows


ESTIMATED_NOTE = ("ESTIMATED energy comes from a CPU power model (this process's CPU time), not a counter; read the "
                  "FLOPs ratio beside it. Distillation changes weights, not shapes: a row's energy was measured "
                  "once, before distillation.")


def markdown(doc: dict[str, Any]) -> str:
    def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"] + \
               ["| " + " | ".join(r) + " |" for r in rows]

    lines = [f"# Fidelity-energy front: {doc['title']} ({', '.join(machines_of(doc))})", ""]
    for paragraph in intro(doc):
        lines += [paragraph, ""]
    header, rows, with_energy = front_table(doc)
    lines += md_table(header, rows)
    if with_energy:
        lines += ["", ESTIMATED_NOTE]
    lines += ["", doc["goal"], ""]
    for why in doc.get("unreachable", []):
        lines += [f"Not reachable: {why}.", ""]
    if not doc.get("complete"):
        lines += [f"**Incomplete run**: {len(doc['rows'])} row(s) written so far.", ""]
    lines += [f"![front](front-{doc['model']}.png)", ""]
    answered = answers_table(doc)
    if answered:
        lines += ["## Answers (greedy)", ""] + md_table(*answered) + [""]
    lines += ["Reproduce: " + ", then ".join(dict.fromkeys(f"`{run['command']}`" for run in runs_of(doc)))]
    return "\n".join(lines) + "\n"


def html(doc: dict[str, Any], png: Path) -> str:
    """The same figures as one self-contained HTML page, the front plotted inline."""
    from energyprune.reporting.doc import Banner, Document, Figure, Section, table
    from energyprune.reporting.to_html import render_html

    header, rows, with_energy = front_table(doc)
    estimated = with_energy and any(r.get("energy", {}).get("provenance") == "estimated" for r in doc["rows"])
    banner = Banner("estimated" if estimated else "none",
                    (ESTIMATED_NOTE,) if estimated else ("No energy was measured: the FLOPs ratio is the cost proxy.",))
    blocks: list[Any] = [*intro(doc), table(header, rows), doc["goal"]]
    if not doc.get("complete"):
        blocks.append(f"Incomplete run: {len(doc['rows'])} row(s) written so far.")
    if png.exists():
        data = png.read_bytes()
        blocks.append(Figure("Fidelity against the FLOPs ratio per family (distilled rows dashed)", lambda: data))
    sections = [Section("Front", blocks)]
    answered = answers_table(doc)
    if answered:
        sections.append(Section("Answers (greedy)", [table(*answered)]))
    return render_html(Document(f"Fidelity-energy front: {doc['title']}", SCHEMA, banner, sections))


def write_all(doc: dict[str, Any], path: Path) -> None:
    """JSON, Markdown, PNG and HTML beside each other (each file atomically)."""
    from energyprune.files import write_atomic

    save(path, doc, markdown(doc))
    plot(doc, path.with_suffix(".png"))
    write_atomic(path.with_suffix(".html"), html(doc, path.with_suffix(".png")))


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [doc["metrics"][0], doc["metrics"][-1]]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"depth": "tab:blue", "width": "tab:orange", "mixed": "tab:green", "width-no-hidden": "tab:red",
               "depth-bridge": "tab:purple"}
    step_counts = sorted({r["steps"] for r in doc["rows"]})
    for family in FAMILIES:
        for steps in step_counts:
            rows = sorted((r for r in doc["rows"] if r["family"] == family and r["steps"] == steps),
                          key=lambda r: r["flops_ratio"])
            if not rows:
                continue
            label = family + (f", {steps} distillation steps" if steps else "")
            x = [r["flops_ratio"] for r in rows]
            for axis, (key, _, _) in zip(axes, panels):
                axis.plot(x, [r["figures"][key] for r in rows], marker="o" if steps == 0 else "^",
                          linestyle="-" if steps == 0 else "--", color=colours[family], label=label,
                          alpha=1.0 if steps == 0 else 0.5 + 0.5 * steps / max(step_counts))
    for axis, (key, label, _) in zip(axes, panels):
        axis.set(xlabel="FLOPs ratio (cost proxy; 1 = the original)", ylabel=label)
        if key == "perplexity_ratio":
            axis.set_yscale("log")
    if doc["model"] == "smollm2":
        axes[0].axhline(0.8, color="grey", linewidth=0.8, linestyle=":")
        axes[1].axhline(1.5, color="grey", linewidth=0.8, linestyle=":")
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{doc['title']}: fidelity against cost, held-out data")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_only(text: str | None) -> set[tuple[str, int]] | None:
    if not text:
        return None
    wanted = set()
    for item in text.split(","):
        family, _, cut = item.partition(":")
        if family not in FAMILIES or not cut.isdigit():
            raise SystemExit(f"--only takes family:cut items such as depth:30, got {item!r}")
        wanted.add((family, int(cut)))
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=sorted(SUBJECTS))
    parser.add_argument("--families", default=None,
                        help=f"comma-separated, from {', '.join(FAMILIES)} (default: all that apply to the model)")
    parser.add_argument("--cuts", default="10,20,30,40", help="FLOPs cuts in percent")
    parser.add_argument("--recover-at", default="30", help="cuts (percent) at which to distil")
    parser.add_argument("--recover-steps", default="0,100,400", help="cumulative distillation step counts")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--energy", action="store_true", help="compare each pruned model's energy with the original")
    parser.add_argument("--only", default=None, help="family:cut items to (re)run; other rows of the JSON are kept")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--distil-data", choices=DISTIL_DATA, default="default",
                        help="default: smollm2 the Lee training half, efficientnet 64 fixed crops of six photographs; "
                             "generated (smollm2): text the original writes from prefixes of the Lee half; mixup "
                             "(efficientnet): fresh crops of the six photographs, blended in pairs, every batch "
                             "(give another --out-dir: rows are keyed by family, cut and steps)")
    parser.add_argument("--generated-sequences", type=int, default=GENERATED_SEQUENCES,
                        help=f"with --distil-data generated: 128-token sequences written (default {GENERATED_SEQUENCES}; "
                             "a distillation step reads 4)")
    parser.add_argument("--device", default="cpu",
                        help="smollm2: cpu (default), cuda or cuda:N: the models, pruning, distillation and the energy "
                             "comparison (a counter on a GPU) run there")
    parser.add_argument("--distil-rows", type=int, default=4, metavar="N",
                        help="smollm2: 128-token rows per distillation step (default 4, the CPU's; a GPU takes 32 or "
                             "more)")
    parser.add_argument("--generation-chunk", type=int, default=64, metavar="N",
                        help="with --distil-data generated: sequences written at once (default 64; a GPU takes 512)")
    parser.add_argument("--generated-cache", type=Path, default=None, metavar="FILE",
                        help="with --distil-data generated: keep the written token ids in FILE and read them back "
                             "when it matches (writing 1,600 sequences takes ~20 min on 2 cores)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only write the Markdown, PNG and HTML of a front's JSON beside it (a GPU run's file)")
    args = parser.parse_args(argv)
    if args.render is not None:
        if not args.render.is_file():
            raise SystemExit(f"--render {args.render}: no such file")
        try:
            doc = load_json(args.render)
        except ValueError as error:
            raise SystemExit(f"--render {args.render}: not JSON ({error})") from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise SystemExit(f"--render {args.render}: not a front (schema {SCHEMA}); give a front-<model>.json")
        write_all(doc, args.render)
        print(f"wrote {args.render.with_suffix('.md')}")
        return 0
    cuts = [int(c) for c in args.cuts.split(",")]
    recover_at = {int(c) for c in args.recover_at.split(",") if c}
    recover_steps = sorted({int(s) for s in args.recover_steps.split(",")} | {0})
    only = parse_only(args.only)

    torch.manual_seed(0)
    device = resolve_device(args.device)
    if args.model != "smollm2" and (device.type != "cpu" or args.distil_rows != 4):
        raise SystemExit("--device and --distil-rows are for --model smollm2")
    for flag, value in (("--distil-rows", args.distil_rows), ("--generation-chunk", args.generation_chunk),
                        ("--generated-sequences", args.generated_sequences)):
        if value < 1:
            raise SystemExit(f"{flag} must be at least 1, got {value}")
    cache = args.generated_cache
    if cache is not None and (cache.is_dir() or not cache.parent.is_dir()):
        raise SystemExit(f"--generated-cache {cache}: give a file in an existing folder")
    wanted_model = {"generated": "smollm2", "mixup": "efficientnet"}.get(args.distil_data, args.model)
    if wanted_model != args.model:
        raise SystemExit(f"--distil-data {args.distil_data} is for --model {wanted_model}, not {args.model}")
    options: dict[str, Any] = {"distil_data": args.distil_data} if args.model != "minilm" else {}
    if args.model == "smollm2":
        options.update(generated_sequences=args.generated_sequences, generated_cache=args.generated_cache,
                       device=device, distil_rows=args.distil_rows, generation_chunk=args.generation_chunk)
    subject = SUBJECTS[args.model](**options)
    families = list(subject.families) if args.families is None else [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(subject.families))
    if unknown:
        raise SystemExit(f"families {unknown} do not apply to {subject.title}: choose from {', '.join(subject.families)}")
    model = subject.model
    flops = Flops(model, subject.probe)
    original = subject.evaluate(model)

    out_dir = args.out_dir or results_dir(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"front-{subject.key}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc: dict[str, Any] = {
        "schema": SCHEMA, "model": subject.key, "title": subject.title, "device": device_record(device),
        "date": datetime.date.today().isoformat(), "commit": commit or "unknown",
        "command": "python benchmarks/front_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "metrics": [list(m) for m in subject.metrics], "goal": subject.goal, "width_kinds": list(subject.width_kinds),
        "recovery": f"{subject.recovery}, lr {args.lr:g}", "data": subject.data,
        "original": original, "original_answers": None, "rows": [], "complete": False,
    }
    if only is not None and path.exists():
        previous = load_json(path)
        doc["rows"] = [r for r in previous.get("rows", []) if (r["family"], r["cut_percent"]) not in only]
        # `--only` adds rows to a front made earlier: every run that made its rows stays named.
        doc["runs"] = runs_of(previous) + [{**{k: doc[k] for k in ("date", "command", "commit")},
                                             "machine": doc["device"]["device_name"]}]
        doc["original_answers"] = previous.get("original_answers")
        doc["unreachable"] = [u for u in previous.get("unreachable", [])
                              if (u.split(" -")[0], int(u.split(" -")[1].split("%")[0])) not in only]
    if doc["original_answers"] is None and subject.answers is not None:
        doc["original_answers"] = subject.answers(model)

    for cut in cuts:
        for family in families:
            if only is not None and (family, cut) not in only:
                continue
            t0 = time.perf_counter()
            try:
                fit = subject.bridge_fit if subject.bridge_fit is not None else subject.train
                extra = {"fit": fit[:BRIDGE_FIT_BATCHES]} if family == "depth-bridge" else {}
                pruned, removed = CUTTERS[family](model, subject.calibration, flops, 1 - cut / 100,
                                                  subject.width_kinds, **extra)
            except Unreachable as why:
                print(f"{family} -{cut}%: {why}", flush=True)
                doc["unreachable"] = sorted({*doc.get("unreachable", []), f"{family} -{cut}%: {why}"})
                write_all(doc, path)
                continue
            ratio = flops.ratio(pruned)
            energy = None
            if args.energy:
                from energyprune.measure.api import compare
                from energyprune.measure.meter import MeterConfig

                # A GPU's counter updates every ~100 ms (hardware notes): longer windows there.
                window_s = 2.0 if device.type == "cuda" else 1.0
                comparison = compare(model, pruned, subject.probe,
                                     config=MeterConfig(window_s=window_s, repeats=6, precision=0.0))
                energy = {"ratio": comparison.ratio, "ratio_ci95": list(comparison.ratio_ci95),
                          "provenance": comparison.to_dict()["provenance"], "machine": doc["device"]["device_name"]}
            print(f"{family} -{cut}%: {removed}, FLOPs ratio {ratio:.3f}", flush=True)
            done = 0
            train = subject.train
            for steps in (recover_steps if cut in recover_at else [0]):
                if steps > done:
                    Distillation(teacher=model, batches=Rotated(train, done), steps=steps - done, lr=args.lr)(pruned)
                    done = steps
                figures = subject.evaluate(pruned)
                row = {"family": family, "cut_percent": cut, "steps": steps, "removed": removed,
                       "flops_ratio": ratio, "figures": figures,
                       "answers": subject.answers(pruned) if subject.answers and cut in recover_at else None,
                       "seconds": time.perf_counter() - t0}
                if energy is not None:
                    row["energy"] = energy
                doc["rows"] = [r for r in doc["rows"] if row_key(r) != row_key(row)] + [row]
                print(f"  {steps} steps: " + ", ".join(f"{label} {format(figures[key], fmt)}"
                                                       for key, label, fmt in subject.metrics)
                      + f" ({row['seconds']:.0f} s)", flush=True)
                write_all(doc, path)
                t0 = time.perf_counter()
            del pruned
    doc["complete"] = True
    write_all(doc, path)
    print(f"wrote {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
