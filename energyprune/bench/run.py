"""`energyprune bench`: this device's J/FLOP floor, the reference models against physics, and
budgeted pruning with several criteria, written as one JSON (the source of truth) and its renderings.

Steps (each one's numbers carry their provenance; nothing is a constant of the code):

1. **Floor**: J/FLOP of dense matmuls on this device (:mod:`energyprune.metrics.hardware_floor`), measured
   and cached; ``--quick`` reuses the cached floor when there is one, else measures a short one
   that it does not cache.
2. **Models**: the built-in demo always; SmolLM2-135M-Instruct, all-MiniLM-L6-v2 and
   EfficientNet-Lite0 when their packages are installed (:mod:`energyprune.models.zoo`; EfficientNet also
   needs scikit-image for its photographs), each skipped model listed with the reason.
   Each is measured (J per inference, latency), its FLOPs and parameters counted, and its energy
   put against Landauer and the floor (:func:`energyprune.metrics.physics.physics_summary`).
3. **Pruning**: ``energyprune.budget.prune_to_energy`` toward ``--target`` (default ``-30%``) with
   each criterion (default cosine-block, entropy-block, magnitude, random), every step's energy
   ratio, fidelity, parameters and FLOPs kept.
4. **Seed table**: the issue's table (traditional = magnitude, entropy-based = entropy-block,
   semantic-thermodynamic = thermodynamic when run, else the best fidelity-aware criterion run)
   with our measured compression, fidelity loss and energy saving. The seed's claimed ranges were
   not available to us: the column says so instead of inventing them.

Output: ``bench.json`` (schema ``energyprune.bench/1``), ``bench.md``, and ``bench.html`` when the
report renderer ``energyprune.reporting.render`` is importable. Earlier results are never
overwritten without ``force``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyprune.bench.options import (
    CRITERION_DEFAULTS,
    OUTPUT_FILES,
    SEED_RANGES_NOTE,
    SEMANTIC_CRITERIA,
    UNIT_KINDS,
    BenchOptions,
    CriterionSpec,
    Log,
    check_out_dir,
    default_out_dir,
    parse_criteria,
)
from energyprune.metrics.fidelity import ClassReference, EmbeddingReference, NextTokenReference
from energyprune.torch_io import count_parameters, to_device
from energyprune.errors import EnergyPruneError, UsageError
from energyprune.measure.meter import MeterConfig
from energyprune.metrics.hardware_floor import (
    FloorResult,
    device_name,
    device_slug,
    hardware_floor_ratio,
    load_floor,
    measure_floor,
)
from energyprune.metrics.landauer import operational_bound
from energyprune.metrics.efficiency import efficiency, relative_efficiency
from energyprune.metrics.physics import finite_or_none, physics_summary
from energyprune.backends.base import is_estimated

logger = logging.getLogger(__name__)

SCHEMA = "energyprune.bench/1"

# ---- the models ---------------------------------------------------------------------------------
@dataclass
class BenchModel:
    """A reference model with its data: one inference to measure, calibration for the criteria,
    and a held-out evaluation of fidelity against the original (higher is better, in [0, 1])."""

    name: str
    title: str
    model: nn.Module
    inputs: Any
    calibration: list[Any]
    evaluate: Callable[[nn.Module], float]
    fidelity_definition: str
    data: dict[str, str]
    tokenizer: Any = None  # set for language models: semantic entropy samples generations with it


class _Fidelity:
    """A held-out fidelity in [0, 1] against the original: one figure of a `metrics.fidelity`
    reference (the definitions live there only), as `prune_to_energy(evaluate=...)` wants it."""

    def __init__(self, reference: Any, key: str, **options: Any) -> None:
        self.reference, self.key, self.options = reference, key, options
        self.batches = reference.batches

    def __call__(self, model: nn.Module) -> float:
        return float(self.reference(model, **self.options)[self.key])


def _demo_model(device: torch.device, quick: bool, dtype: torch.dtype | None) -> BenchModel:
    from energyprune.models.demo import build_demo_model

    model = build_demo_model().to(device=device, dtype=dtype)
    seq = 64 if quick else 128
    # The demo is randomly initialised and has no tokenizer: its data are seeded random token ids,
    # held-out ids drawn with other seeds than the calibration ones.
    calibration = [model.example_inputs(4, seq, seed=100 + i) for i in range(2 if quick else 4)]
    heldout = [{"input_ids": model.example_inputs(4, seq, seed=200 + i)} for i in range(1 if quick else 2)]
    reference = _Fidelity(NextTokenReference(model, heldout), "exp_neg_kl", kl_only=True)
    return BenchModel(
        name="demo", title="built-in demo transformer (4 blocks, d=256, random weights)", model=model,
        inputs=model.example_inputs(1, seq, seed=0), calibration=calibration, evaluate=reference,
        fidelity_definition="exp(-KL) of next-token distributions vs the original, held-out random ids",
        data={"inputs": f"1x{seq} random token ids (seed 0)",
              "calibration": f"{len(calibration)} batches of 4x{seq} random token ids (seeds 100+)",
              "heldout": f"{len(heldout)} batches of 4x{seq} random token ids (seeds 200+)"})


def _smollm2_model(device: torch.device, quick: bool, dtype: torch.dtype | None) -> BenchModel:
    from energyprune.models import zoo

    model, tokenizer = zoo.load_smollm2()
    model = model.to(device=device, dtype=dtype)
    docs = zoo.text_corpus("lee_background")
    half = len(docs) // 2
    # Calibration on the first half of the corpus, evaluation on the second: disjoint documents.
    calibration = [dict(b, use_cache=False) for b in
                   zoo.calibration_batches(tokenizer, docs[:half], seq_len=128, batch_size=4, n_batches=1 if quick else 4)]
    heldout = [dict(b, use_cache=False) for b in
               zoo.calibration_batches(tokenizer, docs[half:], seq_len=256 if not quick else 128,
                                       batch_size=2, n_batches=1)]
    calibration, heldout = to_device(calibration, device), to_device(heldout, device)
    reference = _Fidelity(NextTokenReference(model, heldout), "exp_neg_kl", kl_only=True)
    ids = heldout[0]["input_ids"][:1, :128]
    return BenchModel(
        name="smollm2", title="SmolLM2-135M-Instruct (30 blocks)", model=model, tokenizer=tokenizer,
        inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False},
        calibration=calibration, evaluate=reference,
        fidelity_definition="exp(-KL) of next-token distributions vs the original on held-out text",
        data={"inputs": "1x128 held-out tokens, use_cache=False",
              "calibration": f"lee_background documents 0-{half - 1}, packed, {len(calibration)} batches of 4x128",
              "heldout": f"lee_background documents {half}-{len(docs) - 1}, packed, "
                         f"{tuple(heldout[0]['input_ids'].shape)} tokens"})


def _minilm_model(device: torch.device, quick: bool, dtype: torch.dtype | None) -> BenchModel:
    from energyprune.models import zoo

    model, tokenizer = zoo.load_minilm()
    model = model.to(device=device, dtype=dtype)
    background = zoo.text_corpus("lee_background")
    lee = zoo.text_corpus("lee")
    n_cal = 16 if quick else 64
    calibration = to_device(zoo.calibration_batches(tokenizer, background[:n_cal], seq_len=128, batch_size=16, pack=False), device)
    heldout = to_device(zoo.calibration_batches(tokenizer, lee, seq_len=256 if not quick else 128, batch_size=25, pack=False), device)
    reference = _Fidelity(EmbeddingReference(model, heldout), "embedding_cosine")
    inputs = to_device(zoo.calibration_batches(tokenizer, lee[:8], seq_len=128, batch_size=8, pack=False)[0], device)
    return BenchModel(
        name="minilm", title="all-MiniLM-L6-v2 (6 blocks)", model=model, inputs=dict(inputs),
        calibration=calibration, evaluate=reference,
        fidelity_definition="mean cosine of mean-pooled sentence embeddings vs the original (clipped to [0, 1])",
        data={"inputs": "8 lee.cor documents, truncated to 128 tokens, one padded batch",
              "calibration": f"lee_background documents 0-{n_cal - 1}, one per row, truncated to 128 tokens",
              "heldout": "the 50 lee.cor documents (disjoint from lee_background)"})


#: EfficientNet's calibration photographs; the held-out ones are the other `zoo.IMAGE_SOURCES`.
EFFICIENTNET_CALIBRATION_SOURCES = ("coffee", "rocket", "camera", "coins", "brick", "grass")


def _efficientnet_model(device: torch.device, quick: bool, dtype: torch.dtype | None) -> BenchModel:
    from energyprune.models import zoo

    model = zoo.load_efficientnet_lite0().to(device=device, dtype=dtype)
    heldout_sources = tuple(s for s in zoo.IMAGE_SOURCES if s not in EFFICIENTNET_CALIBRATION_SOURCES)
    # Random crops of scikit-image's photographs, calibration and evaluation split by photograph.
    cal_images, _ = zoo.image_crops(EFFICIENTNET_CALIBRATION_SOURCES, 2 if quick else 4, seed=0)
    held_images, _ = zoo.image_crops(heldout_sources, 2 if quick else 4, seed=1)
    as_model = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
    calibration = [b.to(**as_model) for b in cal_images.split(8)]
    heldout = [b.to(**as_model) for b in held_images.split(16)]
    return BenchModel(
        name="efficientnet", title="EfficientNet-Lite0 (16 MBConv blocks, 9 removable)", model=model,
        inputs=held_images[:1].to(**as_model), calibration=calibration, evaluate=_Fidelity(ClassReference(model, heldout), "exp_neg_kl"),
        fidelity_definition="exp(-KL) of the 1000-class distributions vs the original on held-out photographs "
                            "(agreement, not accuracy: no ImageNet labels offline)",
        data={"inputs": "1 held-out image, 3x224x224, (x - 127) / 128",
              "calibration": f"{len(cal_images)} random crops of scikit-image's "
                             f"{', '.join(EFFICIENTNET_CALIBRATION_SOURCES)}",
              "heldout": f"{len(held_images)} random crops of the other {len(heldout_sources)} photographs: "
                         f"{', '.join(heldout_sources)}"})


MODEL_BUILDERS: dict[str, Callable[[torch.device, bool, torch.dtype | None], BenchModel]] = {
    "demo": _demo_model, "smollm2": _smollm2_model, "minilm": _minilm_model, "efficientnet": _efficientnet_model,
}


def _measurement_summary(result: Any) -> dict[str, Any]:
    data = result.to_dict()
    keep = ("label", "provenance", "per_inference_j", "per_inference_dynamic_j", "per_sample_j", "ci95_j",
            "ci95_dynamic_j", "cov", "estimate_band_j", "n_inferences", "n_windows", "duration_s", "batch_size",
            "idle_power_w", "mean_power_w", "latency_s", "backends", "stop_reason", "precision", "warnings")
    summary = {k: data[k] for k in keep}
    summary["domains"] = [{k: d[k] for k in ("name", "backend", "provenance", "method", "per_inference_j",
                                            "assumptions")} for d in data["domains"]]
    return summary


def _budget_api() -> tuple[Callable[..., Any] | None, str]:
    """prune_to_energy, or None and why (another part of the project provides it)."""
    try:
        module = importlib.import_module("energyprune.budget")
    except ImportError as error:
        return None, f"energyprune.budget not available ({error})"
    function = getattr(module, "prune_to_energy", None)
    if function is None:
        return None, "energyprune.budget not available (it has no prune_to_energy)"
    return function, ""


def _renderer() -> tuple[Callable[..., Any] | None, str]:
    try:
        module = importlib.import_module("energyprune.reporting")
    except ImportError as error:
        return None, f"energyprune.reporting not available ({error})"
    render = getattr(module, "render", None)
    if render is None:
        return None, "energyprune.reporting has no render(result_dict, fmt)"
    return render, ""


def _point(step: Mapping[str, Any]) -> dict[str, Any]:
    return {key: step.get(key) for key in
            ("energy_ratio", "energy_ratio_ci95", "per_inference_j", "fidelity", "quality", "n_params", "flops")}


def _prune_run(prune_to_energy: Callable[..., Any], bench_model: BenchModel, spec: CriterionSpec,
               options: BenchOptions, config: MeterConfig, backends: Sequence[Any], say: Log,
               floor: FloorResult | None = None, temperature: Mapping[str, Any] | None = None,
               encoder: Any = None) -> dict[str, Any]:
    unit_kind = spec.options.get("unit_kind", UNIT_KINDS.get(spec.name))
    criterion_options = {k: v for k, v in spec.options.items() if k != "unit_kind"}

    def progress(phase: str, fraction: float, message: str) -> None:
        if phase == "step":  # one line per step; the meter's own phases would flood the log
            say(f"  {message}")

    started = time.perf_counter()
    result = prune_to_energy(
        bench_model.model, options.target, spec.name, inputs=bench_model.inputs, evaluate=bench_model.evaluate,
        calibration=bench_model.calibration, unit_kind=unit_kind, backend=list(backends), config=config,
        max_steps=options.max_steps, progress=progress, **criterion_options)
    data = result.to_dict()
    steps = list(data.get("steps") or [])
    # A refused step (it would have broken a quality floor) was never measured: not a point.
    accepted = [s for s in steps if s.get("accepted", True)]
    final = data.get("final") or {}
    run: dict[str, Any] = {
        "model": bench_model.name,
        "criterion": spec.name,
        "criterion_label": spec.label,
        "options": dict(spec.options),
        "unit_kind": data.get("unit_kind", unit_kind),
        "target": options.target,
        "reached": data.get("reached"),
        "message": data.get("message"),
        "points": [_point(s) for s in accepted],
        "refused_steps": len(steps) - len(accepted),
        "final": _point(final),
        "efficiency": _run_efficiency(data),
        "physics": _final_physics(getattr(result, "model", None), bench_model.inputs, final, str(data.get("provenance") or "estimated"),
                                  floor, temperature),
        "semantic_entropy": (_semantic_entropy(result.model, bench_model, encoder, options.quick)
                             if encoder is not None and getattr(result, "model", None) is not None else None),
        "seconds": time.perf_counter() - started,
        "prune_result": data,
    }
    return run


#: Prompts for the semantic entropy of language models: short questions with one right meaning, so
#: that a model that keeps its meaning keeps a low H_s while its wording (H) may vary.
SEMANTIC_PROMPTS = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
)


def _information_summary(bench_model: BenchModel, quick: bool) -> dict[str, Any]:
    """IC per layer (energyprune.metrics.information) on two calibration batches, with a summary
    over layers; the per-layer records are kept in full."""
    from energyprune.metrics.information import information_concentration

    ic = information_concentration(bench_model.model, bench_model.calibration[:1 if quick else 2],
                                   max_rows=128 if quick else 256).to_dict()
    values = sorted(v for v in (layer.get("information_concentration") for layer in ic["layers"])
                    if isinstance(v, (int, float)) and math.isfinite(v))
    if values:
        ic["summary"] = {"n_layers": len(values), "median": values[len(values) // 2], "min": values[0],
                         "max": values[-1],
                         "median_rank_fraction": sorted(layer["rank_fraction"] for layer in ic["layers"])[len(ic["layers"]) // 2]}
    return ic


def _semantic_entropy(model: nn.Module, bench_model: BenchModel, encoder: Any, quick: bool) -> dict[str, Any] | None:
    """H and H_s of sampled answers (energyprune.metrics.semantic_entropy), for language models."""
    if bench_model.tokenizer is None:
        return None
    from energyprune.metrics.semantic_entropy import semantic_entropy

    report = semantic_entropy(model, bench_model.tokenizer, SEMANTIC_PROMPTS[:1] if quick else SEMANTIC_PROMPTS,
                              n_samples=4 if quick else 10, max_new_tokens=16 if quick else 24, seed=0,
                              encoder=encoder, chat_template=True)
    return report.to_dict()


def _final_physics(model: Any, inputs: Any, final: Mapping[str, Any], provenance: str,
                   floor: FloorResult | None, temperature: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The pruned model against Landauer (operational bits) and the hardware floor, at the same
    temperature as its original. Its J per inference is the original's measured figure times the
    interleaved final ratio (the loop's figure of record), not a separate absolute measurement."""
    energy_j = final.get("per_inference_j")
    if model is None or not isinstance(energy_j, (int, float)) or not math.isfinite(energy_j) or energy_j <= 0:
        return None
    temperature = temperature or {}
    bound = operational_bound(model, inputs, temperature_k=float(temperature.get("temperature_k", 300.0)),
                              temperature_source=str(temperature.get("source", "assumed 300 K")))
    out: dict[str, Any] = {
        "energy_j": energy_j,
        "energy_provenance": provenance,
        "energy_source": "the original's measured J per inference x the final interleaved energy ratio",
        "landauer": {"operational": bound.to_dict(energy_j)},
        "hardware_floor": None,
    }
    flops = final.get("flops")
    if floor is not None and isinstance(flops, (int, float)) and flops > 0:
        out["hardware_floor"] = hardware_floor_ratio(energy_j, flops, floor, energy_provenance=provenance)
    return finite_or_none(out)


def _run_efficiency(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """Î of the final model against the original, from the loop's own figures (held-out fidelity =
    its `quality`, the original's measured J per inference and the final one derived from the
    interleaved ratio); None when a figure is missing."""
    original, final = data.get("original") or {}, data.get("final") or {}
    quality = _held_out_fidelity(final)
    try:
        return efficiency(
            min(1.0, max(0.0, float(quality))), int(original["n_params"]), int(final["n_params"]),
            float(final["per_inference_j"]), float(original["per_inference_j"]),
            energy_provenance=str(data.get("provenance") or "estimated"),
            energy_source="energyprune.budget: the original measured once, the final as original x the "
                          "interleaved energy ratio (final.comparison)").to_dict()
    except (KeyError, TypeError, ValueError, EnergyPruneError):
        return None


def run_benchmark(options: BenchOptions, *, log: Log | None = None) -> dict[str, Any]:
    """Run the whole bench and write its files; returns the bench dict (what bench.json holds)."""
    say = log or (lambda message: logger.info("%s", message))
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {options.device} asked for a GPU but torch sees none; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {options.device}: the bench runs on cpu or cuda[:N]")
    if options.target is None or not str(options.target).strip():
        raise UsageError("--target is empty: give e.g. -30% (30% less energy per inference)")
    models = options.resolved_models()
    from energyprune.pruning.criteria import CRITERIA

    unknown = sorted({spec.name for spec in options.criteria} - set(CRITERIA))
    if unknown:  # said now, not after the floor and the models have been measured
        raise UsageError(f"unknown criterion {', '.join(unknown)}: choose from {', '.join(sorted(CRITERIA))}")
    out_dir = Path(options.out_dir) if options.out_dir is not None else default_out_dir(options.device)
    check_out_dir(out_dir, options.force)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = None
    if options.dtype:
        from energyprune.models import DTYPES

        if options.dtype not in DTYPES:
            raise UsageError(f"unknown --dtype {options.dtype!r}: choose float32, float16 or bfloat16")
        dtype = DTYPES[options.dtype]
    config = options.meter_config()
    skipped: list[dict[str, str]] = []
    started = time.perf_counter()
    # Backends are chosen once, so the fallback note is said once and recorded, not per measurement.
    from energyprune.backends import select_backends

    cuda_index = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    selection = select_backends(options.backend, cuda_devices=cuda_index, cpu_tdp_w=options.cpu_tdp_w)
    backends = list(selection.backends)
    for note in selection.notes:
        say(f"backend: {note}")

    # 1. the floor
    floor = _floor(options, device, config, backends, say)

    # 2. the models
    from energyprune.measure.api import measure

    prune_to_energy, budget_reason = _budget_api()
    model_entries: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for name in models:
        say(f"model {name}: loading")
        try:
            bench_model = MODEL_BUILDERS[name](device, options.quick, dtype)
        except EnergyPruneError as error:
            skipped.append({"what": f"model {name}", "reason": str(error)})
            say(f"model {name}: skipped ({error})")
            continue
        say(f"model {name}: measuring")
        result = measure(bench_model.model, bench_model.inputs, backend=backends, config=config, label=name)
        n_params = count_parameters(bench_model.model)
        physics = physics_summary(bench_model.model, bench_model.inputs, result, floor=floor)
        flops = physics["flops"]["value"]  # counted once, by FlopCounterMode, inside the summary
        say(f"model {name}: information concentration per layer")
        information = _information_summary(bench_model, options.quick)
        encoder = None
        semantic = None
        if bench_model.tokenizer is not None:
            say(f"model {name}: semantic entropy of sampled answers")
            try:
                from energyprune.models.zoo import minilm_encoder

                encoder = minilm_encoder()
                semantic = _semantic_entropy(bench_model.model, bench_model, encoder, options.quick)
            except EnergyPruneError as error:  # MiniLM not installed: say so, go on
                skipped.append({"what": f"semantic entropy of {name}", "reason": str(error)})
                encoder = None
        model_entries.append({
            "name": name,
            "title": bench_model.title,
            "measurement": _measurement_summary(result),
            "physics": physics,
            "information": information,
            "semantic_entropy": semantic,
            "flops": flops,
            "n_params": n_params,
            "fidelity_definition": bench_model.fidelity_definition,
            "data": bench_model.data,
        })
        say(f"model {name}: {result.per_inference_j:.4g} J per inference ({result.provenance.value}), "
            f"{flops:.3g} FLOPs, {n_params / 1e6:.2f} M params")

        # 3. budgeted pruning
        if prune_to_energy is None:
            continue
        for spec in options.criteria:
            say(f"model {name}: pruning with {spec.label} toward {options.target}")
            try:
                run = _prune_run(prune_to_energy, bench_model, spec, options, config, backends, say,
                                 floor=floor, temperature=physics.get("temperature"), encoder=encoder)
            except EnergyPruneError as error:
                skipped.append({"what": f"pruning {name} with {spec.label}", "reason": str(error)})
                say(f"model {name}: {spec.label} failed ({error})")
                continue
            except Exception as error:  # noqa: BLE001 - one failing run must not cost the others' hours
                logger.exception("pruning %s with %s failed", name, spec.label)
                reason = f"failed with {type(error).__name__}: {error} (a bug: please report it)"
                skipped.append({"what": f"pruning {name} with {spec.label}", "reason": reason})
                say(f"model {name}: {spec.label} {reason}")
                continue
            run["original_n_params"] = n_params
            runs.append(run)
            final = run["final"]
            say(f"model {name}: {spec.label}: reached={run['reached']}, energy ratio {final.get('energy_ratio')}, "
                f"held-out fidelity {_held_out_fidelity(final)}")
        del bench_model
    if prune_to_energy is None:
        skipped.append({"what": "pruning", "reason": f"pruning part skipped: {budget_reason}"})

    bench = {
        "schema": SCHEMA,
        "device": _device_facts(options.device),
        "floor": floor.to_dict() if floor is not None else None,
        "models": model_entries,
        "criteria_runs": runs,
        "seed_table": seed_table(runs, {m["name"]: m["n_params"] for m in model_entries}),
        "seed_table_note": SEED_RANGES_NOTE,
        "target": options.target,
        "quick": options.quick,
        "provenance": _provenance(options, config, model_entries, floor, time.perf_counter() - started,
                                  [b.name for b in backends], list(selection.notes)),
        "assumptions": _assumptions(options),
        "skipped": skipped,
    }
    if options.carbon is not None:
        from energyprune.metrics.carbon import bench_co2

        bench["co2"] = bench_co2(bench, options.carbon)
    else:
        bench["co2"] = None
    bench, _ = write_outputs(finite_or_none(bench), out_dir, say)
    return bench


def _floor(options: BenchOptions, device: torch.device, config: MeterConfig, backends: list[Any],
           say: Log) -> FloorResult:
    if options.quick:
        try:
            cached = load_floor(device)
        except EnergyPruneError as error:
            say(f"floor: the cache is unusable ({error}); measuring a quick floor")
            cached = None
        if cached is not None:
            say(f"floor: {cached.j_per_flop:.4g} J/FLOP from {cached.source} (measured {cached.date})")
            return cached
    say("floor: measuring J/FLOP of dense matmuls" + (" (quick: short windows, small sizes, not cached)"
                                                     if options.quick else ""))
    floor = measure_floor(device, sizes=options.floor_sizes(), backend=backends, config=config,
                          cache=not options.quick)
    if options.quick:
        floor = dataclasses.replace(floor, source="measured now (quick: short windows, not cached)")
    say(f"floor: {floor.j_per_flop:.4g} J/FLOP ({floor.provenance}; best {floor.best.dtype} {floor.best.size}^3)")
    return floor


def _device_facts(device: str) -> dict[str, Any]:
    return {"torch_device": device, "name": device_name(device), "slug": device_slug(device),
            "machine": platform.machine()}


def _provenance(options: BenchOptions, config: MeterConfig, models: list[dict[str, Any]],
                floor: FloorResult | None, seconds: float, backends: list[str],
                backend_notes: list[str]) -> dict[str, Any]:
    from energyprune.version import __version__

    provenances = {m["measurement"]["provenance"] for m in models}
    if floor is not None:
        provenances.add(floor.provenance)
    return {
        "energy": "estimated" if "estimated" in provenances else "measured",
        "energy_note": ("ESTIMATED: at least one figure comes from a power model, not a hardware counter"
                        if "estimated" in provenances else "every energy figure comes from hardware counters"),
        "tool": f"energyprune {__version__}",
        "command": options.command,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "backend": options.backend,
        "backends_used": backends,
        "backend_notes": backend_notes,
        "cpu_tdp_w": options.cpu_tdp_w,
        "meter_config": {k: getattr(config, k) for k in ("window_s", "repeats", "precision", "max_duration_s",
                                                         "idle_s", "min_warmup_s", "max_warmup_s")},
        "seconds": seconds,
    }


def _assumptions(options: BenchOptions) -> list[str]:
    return [
        "energy per inference: the meter's median over windows of one call model(inputs) (one batch), idle "
        "power included; the physics summary and the floor use the same total figure",
        "energy ratios of pruned models come from energyprune.budget.prune_to_energy (its own measurement "
        "method is recorded in each prune_result)",
        "held-out fidelity: each model's fidelity_definition, on data disjoint from the calibration data; the "
        "bench passes it to the loop as `evaluate`, so it is each point's `quality`; a point's `fidelity` is the "
        "loop's own (exp(-KL), agreement or embedding cosine on the one measured input)",
        "compression ratio = original parameters / remaining parameters; fidelity loss = 1 - held-out fidelity; "
        "energy saving = 1 - energy ratio (pruned / original); relative efficiency = fidelity x compression / "
        "energy ratio (energyprune.metrics.efficiency)",
        f"criterion options given by the bench unless named: {CRITERION_DEFAULTS}; unit kinds {UNIT_KINDS}",
        SEED_RANGES_NOTE,
    ] + (["--quick: short meter windows (0.1 s on CPU), few windows, small floor matmuls; numbers are "
          "indicative, not for citing"] if options.quick else [])


# ---- the seed table -----------------------------------------------------------------------------
def seed_table(runs: Sequence[Mapping[str, Any]], original_params: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per (model, seed-table row) that a criteria run can fill: traditional = magnitude,
    entropy-based = entropy-block, semantic-thermodynamic = thermodynamic, else the best-fidelity run
    among the other fidelity-aware criteria (the row says which and why)."""
    rows: list[dict[str, Any]] = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        choice: list[tuple[str, Mapping[str, Any] | None, str]] = [
            ("traditional", _first(mine, "magnitude"), "magnitude (L1/L2 weight norm)"),
            ("entropy-based", _first(mine, "entropy-block"), "entropy-block (EntroDrop ΔH)"),
        ]
        thermo = _first(mine, "thermodynamic")
        if thermo is not None:
            choice.append(("semantic-thermodynamic", thermo, "thermodynamic (gradient temperature, free energy)"))
        else:
            candidates = [r for r in mine if r["criterion"] in SEMANTIC_CRITERIA and r["criterion"] != "entropy-block"]
            best = max(candidates, key=lambda r: _num(_held_out_fidelity(r["final"])), default=None)
            why = ("no thermodynamic run for this model (not asked for, or it failed: see Skipped); the "
                   "fidelity-aware criterion with the highest final fidelity "
                   f"among {', '.join(sorted({r['criterion'] for r in candidates}))}") if best is not None else \
                "no thermodynamic or other fidelity-aware criterion was run"
            choice.append(("semantic-thermodynamic", best, why))
        for row, run, why in choice:
            rows.append(_seed_row(model, row, run, why, original_params.get(model)))
    return rows


def _first(runs: Sequence[Mapping[str, Any]], criterion: str) -> Mapping[str, Any] | None:
    return next((r for r in runs if r["criterion"] == criterion), None)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _held_out_fidelity(point: Mapping[str, Any]) -> Any:
    """The bench's fidelity: `quality` is the model's held-out fidelity (the bench passes it as the
    loop's `evaluate`); the loop's own `fidelity` (on the one measured input) is the fallback."""
    return point.get("quality") if point.get("quality") is not None else point.get("fidelity")


def _seed_row(model: str, row: str, run: Mapping[str, Any] | None, why: str,
              original_params: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "row": row, "criterion": None, "chosen_because": why,
                           "reached": None, "compression_ratio": None, "fidelity": None, "fidelity_loss": None,
                           "energy_ratio": None, "energy_ratio_ci95": None, "energy_saving": None,
                           "energy_saving_ci95": None, "relative_efficiency": None, "provenance": None,
                           "seed_claimed_range": None, "seed_claimed_range_note": SEED_RANGES_NOTE}
    if run is None:
        return out
    final = run["final"]
    fidelity = _held_out_fidelity(final)
    ratio = final.get("energy_ratio")
    ci = final.get("energy_ratio_ci95")
    params = final.get("n_params")
    compression = original_params / params if original_params and params else None
    out.update(
        criterion=run["criterion_label"], reached=run.get("reached"), compression_ratio=compression,
        fidelity=fidelity, fidelity_loss=1.0 - fidelity if isinstance(fidelity, (int, float)) else None,
        energy_ratio=ratio, energy_ratio_ci95=ci,
        energy_saving=1.0 - ratio if isinstance(ratio, (int, float)) else None,
        energy_saving_ci95=[1.0 - ci[1], 1.0 - ci[0]] if isinstance(ci, (list, tuple)) and len(ci) == 2
        and all(isinstance(v, (int, float)) for v in ci) else None,
        provenance=(run.get("prune_result") or {}).get("provenance"),
    )
    # Î / Î₀ = fidelity × compression × E₀ / E, with the loop's measured energy ratio as E / E₀.
    if isinstance(fidelity, (int, float)) and compression and isinstance(ratio, (int, float)) and ratio > 0:
        out["relative_efficiency"] = relative_efficiency(fidelity, compression, ratio)
    return out


# ---- output -------------------------------------------------------------------------------------
def write_outputs(bench: Mapping[str, Any], out_dir: Path, say: Log) -> tuple[dict[str, Any], list[Path]]:
    """Write bench.json, bench.md and (when the renderer exists) bench.html; returns the dict as
    written (with the reason bench.html was not written, if it was not) and the paths."""
    from energyprune.files import to_json, write_atomic

    written = []
    render, reason = _renderer()
    html: str | None = None
    if render is not None:
        try:
            html = render(bench, "html")
        except Exception as error:  # noqa: BLE001 - another module's renderer: its failure only costs the HTML
            reason = f"energyprune.reporting.render failed on the bench result ({type(error).__name__}: {error})"
    bench = dict(bench)
    if html is None:
        bench["skipped"] = list(bench.get("skipped") or []) + [
            {"what": "bench.html", "reason": f"{reason}; JSON and Markdown written only"}]
    write_atomic(out_dir / "bench.json", to_json(bench))
    written.append(out_dir / "bench.json")
    write_atomic(out_dir / "bench.md", render_markdown(bench))
    written.append(out_dir / "bench.md")
    if html is not None:
        write_atomic(out_dir / "bench.html", html)
        written.append(out_dir / "bench.html")
    for path in written:
        say(f"wrote {path}")
    if html is None:
        say(f"bench.html not written: {reason}")
    return bench, written


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _ci(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{ci[0]:.3f} .. {ci[1]:.3f}"
    return "n/a"


def _information_markdown(bench: Mapping[str, Any]) -> list[str]:
    rows = [(m["name"], m.get("information") or {}) for m in bench["models"]]
    rows = [(name, ic) for name, ic in rows if ic.get("summary")]
    if not rows:
        return []
    lines = ["", "## Information concentration per layer", "",
             "IC = rank(W) x H(activations) [bits] / ||W||_0 for every Linear/conv layer (per-layer figures in "
             "bench.json).", "", "| model | layers | median IC | min | max | median rank / max rank | estimator |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, ic in rows:
        summary = ic["summary"]
        lines.append(f"| {name} | {summary['n_layers']} | {summary['median']:.3g} | {summary['min']:.3g} | "
                     f"{summary['max']:.3g} | {summary['median_rank_fraction']:.3f} | {ic['estimator']} |")
    return lines


def _semantic_markdown(bench: Mapping[str, Any]) -> list[str]:
    rows = [(m["name"], "original", m.get("semantic_entropy")) for m in bench["models"]]
    rows += [(r["model"], r["criterion_label"], r.get("semantic_entropy")) for r in bench["criteria_runs"]]
    rows = [row for row in rows if row[2]]
    if not rows:
        return []
    first = rows[0][2]
    lines = ["", "## Semantic entropy of sampled answers (H_s <= H)", "",
             f"{first['n_samples']} answers per prompt at temperature {first['temperature']:g}, up to "
             f"{first['max_new_tokens']} new tokens; H over distinct token sequences, H_s over meaning clusters "
             f"({first['encoder']}, cosine >= {first['threshold']}); bits, mean over {len(first['prompts'])} prompts.",
             "", "| model | model state | H (bits) | H_s (bits) | meaning clusters per prompt | most frequent answer to the first prompt |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, state, report in rows:
        clusters = ", ".join(str(p.get("n_clusters")) for p in report["prompts"])
        distinct = report["prompts"][0].get("distinct") or [{"text": ""}]
        common = max(distinct, key=lambda d: d.get("count", 0))
        answer = " ".join(str(common.get("text", "")).split()).replace("|", "/")[:60]
        lines.append(f"| {name} | {state} | {report['mean_entropy_bits']:.2f} | "
                     f"{report['mean_semantic_entropy_bits']:.2f} | {clusters} | {answer} |")
    return lines


def render_markdown(bench: Mapping[str, Any]) -> str:
    """bench.md, rendered from the bench dict alone."""
    from energyprune.units import format_energy, format_time

    prov = bench["provenance"]
    estimated = is_estimated(prov["energy"])
    tag = " (ESTIMATED)" if estimated else ""
    lines = [f"# energyprune bench: {bench['device']['slug']}", "",
             f"{prov['date']}, {prov['tool']}, torch {prov['torch']}, backend `{prov['backend']}`"
             + (", **--quick** (indicative only)" if bench.get("quick") else "") + ".", "",
             f"**Energy provenance: {prov['energy'].upper()}** - {prov['energy_note']}.", ""]
    floor = bench.get("floor")
    lines += ["## Hardware floor (J per FLOP of dense matmuls)", ""]
    if floor:
        lines += [f"Floor: **{floor['pj_per_flop']:.4g} pJ/FLOP**{' (ESTIMATED)' if is_estimated(floor['provenance']) else ''}"
                  f", best {floor['best']['dtype']} {floor['best']['size']}^3; {floor['source']}, measured {floor['date']}.",
                  "", f"| dtype | size | FLOPs | J per product{tag} | pJ/FLOP | latency | GFLOP/s | provenance |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in floor["points"]:
            lines.append(f"| {p['dtype']} | {p['size']} | {p['flops']:.3g} | {format_energy(p['per_call_j'])} | "
                         f"{p['j_per_flop'] * 1e12:.4g} | {format_time(p['latency_s'])} | "
                         f"{_fmt(p['flop_per_s'] / 1e9 if p['flop_per_s'] else None, '.3g')} | {p['provenance']} |")
    else:
        lines.append("No floor.")
    lines += ["", "## Reference models", "",
              f"| model | J/inference{tag} | 95% interval | latency | FLOPs | params | x above Landauer (operational) | "
              "log10 | x above Landauer (informational) | x above floor |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in bench["models"]:
        meas, phys = m["measurement"], m["physics"]
        op, inf = phys["landauer"]["operational"], phys["landauer"]["informational"]
        hw = phys.get("hardware_floor") or {}
        ci = meas.get("ci95_j") or [None, None]
        lines.append(f"| {m['name']} | {format_energy(meas['per_inference_j'])} | {format_energy(ci[0])} .. "
                     f"{format_energy(ci[1])} | {format_time(meas['latency_s']['median'])} | {m['flops']:.3g} | "
                     f"{m['n_params'] / 1e6:.2f} M | {_fmt(op.get('times_above'), '.3g')} | "
                     f"{_fmt(op.get('log10_times_above'), '.2f')} | {_fmt(inf.get('times_above'), '.3g')} | "
                     f"{_fmt(hw.get('ratio'), '.3g')} |")
    if bench["models"]:
        temperature = bench["models"][0]["physics"]["temperature"]
        lines += ["", f"Landauer at {temperature['temperature_k']:.1f} K ({temperature['source']}): "
                      f"{temperature['j_per_bit']:.3g} J per bit. Operational bits: one 32-bit accumulator word per "
                      "multiply-accumulate; informational bits: ON/OFF entropy of activation modules (n/a where the "
                      "model uses functional activations only)."]
    lines += _information_markdown(bench) + _semantic_markdown(bench)
    lines += ["", f"## Budgeted pruning toward {bench['target']}", ""]
    if bench["criteria_runs"]:
        lines += [f"| model | criterion | reached | steps | energy ratio{tag} | 95% interval | held-out fidelity | params | "
                  "FLOPs | x above Landauer (operational) | x above floor |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in bench["criteria_runs"]:
            f = r["final"]
            phys = r.get("physics") or {}
            landauer = ((phys.get("landauer") or {}).get("operational") or {}).get("times_above")
            floor_ratio = (phys.get("hardware_floor") or {}).get("ratio")
            lines.append(f"| {r['model']} | {r['criterion_label']} | {_fmt(r['reached'])} | {len(r['points'])} | "
                         f"{_fmt(f.get('energy_ratio'), '.3f')} | {_ci(f.get('energy_ratio_ci95'))} | "
                         f"{_fmt(_held_out_fidelity(f), '.3f')} | {_fmt(f.get('n_params'), ',')} | {_fmt(f.get('flops'), '.3g')} | "
                         f"{_fmt(landauer, '.3g')} | {_fmt(floor_ratio, '.3g')} |")
    else:
        lines.append("No pruning run (see Skipped).")
    from energyprune.reporting import carbon_text

    co2_rows, co2_table = carbon_text.bench_rows(bench)
    lines += ["", "## CO2e", ""] + [f"- {name}: {value}" for name, value in co2_rows]
    if co2_table:
        lines += ["", "| model | run | CO2e per million inferences | 95% interval |", "| --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(row) + " |" for row in co2_table]
    lines += ["", "## Seed table, reproduced with our measured numbers", "",
              f"Seed's claimed ranges: **not available** - {SEED_RANGES_NOTE}.", "",
              f"| model | row | criterion | reached | compression | fidelity loss | energy saving{tag} | "
              "95% interval | relative efficiency | seed's claimed range |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in bench["seed_table"]:
        lines.append(f"| {row['model']} | {row['row']} | {_fmt(row['criterion'])} | {_fmt(row['reached'])} | "
                     f"{_fmt(row['compression_ratio'], '.3f')} | {_fmt(row['fidelity_loss'], '.3f')} | "
                     f"{_fmt(row['energy_saving'], '.3f')} | {_ci(row['energy_saving_ci95'])} | "
                     f"{_fmt(row['relative_efficiency'], '.3f')} | not available to us |")
    if not bench["seed_table"]:
        lines.append("| - | - | no pruning run | | | | | | | |")
    notes = [f"- {row['model']} / {row['row']}: {row['chosen_because']}" for row in bench["seed_table"]]
    if notes:
        lines += ["", "Row choices:", ""] + notes
    if bench["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s['what']}: {s['reason']}" for s in bench["skipped"]]
    lines += ["", "## Assumptions", ""] + [f"- {a}" for a in bench["assumptions"]]
    if floor:
        lines += [f"- floor: {a}" for a in floor["assumptions"]]
        lines += [f"- energy: {a}" for a in floor.get("energy_assumptions", [])]
    lines += ["", f"Command: `{prov['command'] or 'energyprune bench'}`; meter config {prov['meter_config']}.", ""]
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["energyprune", *sys.argv[1:]]) if sys.argv else "energyprune bench"
