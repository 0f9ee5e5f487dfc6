"""What `energyprune bench` runs: the reference models, the criteria and their options, the
target, where results go. Kept free of torch so that `energyprune bench --help` is fast."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energyprune.errors import UsageError
from energyprune.measure.meter import MeterConfig
from energyprune.pruning.criterion_spec import CriterionSpec

#: What `energyprune bench` runs unless told otherwise.
REFERENCE_MODELS = ("demo", "smollm2", "minilm", "efficientnet")
DEFAULT_CRITERIA = ("cosine-block", "entropy-block", "magnitude", "random")
DEFAULT_TARGET = "-30%"
OUTPUT_FILES = ("bench.json", "bench.md", "bench.html")

#: Options the bench gives a criterion unless the user names its own (`name:key=value`).
#: entropy-block: EntroDrop's default "increase" rule refuses every block where entropy falls from
#: the first block on (the demo, MiniLM), which would leave the entropy row empty; "all" lets it
#: rank every block by ΔH. random: a fixed seed, so a rerun prunes the same blocks.
CRITERION_DEFAULTS: dict[str, dict[str, Any]] = {
    "entropy-block": {"stage": "all"},
    "random": {"seed": 0},
}
#: What each criterion removes in the bench (the budget loop's `unit_kind`).
UNIT_KINDS: dict[str, str] = {
    "cosine-block": "block", "entropy-block": "block", "magnitude": "block", "random": "block",
    "energy-aware": "block", "thermodynamic": "neuron", "mipp": "neuron", "nepenthe": "activation",
}
#: Criteria that look at what the model computes (entropy, fidelity, information), in the order the
#: seed table's "semantic-thermodynamic" row prefers them when thermodynamic itself was not run.
SEMANTIC_CRITERIA = ("thermodynamic", "energy-aware", "mipp", "nepenthe", "entropy-block", "cosine-block")
SEED_RANGES_NOTE = ("the seed's claimed ranges were not available to us (not in any file of this project "
                    "or ../shared); only our measured numbers are shown")

Log = Callable[[str], None]


# ---- options ------------------------------------------------------------------------------------
def parse_criteria(text: str | Sequence[str]) -> tuple[CriterionSpec, ...]:
    """``"cosine-block,entropy-block:stage=increase:estimator=bucket,random:seed=1"`` → specs, each
    starting from :data:`CRITERION_DEFAULTS` of its name."""
    items = text.split(",") if isinstance(text, str) else list(text)
    specs = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, *pairs = item.split(":")
        name = name.strip().lower().replace("_", "-")
        options = dict(CRITERION_DEFAULTS.get(name, {}))
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--criteria {item!r}: options are written name:key=value (e.g. entropy-block:stage=all)")
            options[key.strip()] = _option_value(value.strip())
        specs.append(CriterionSpec(name, options))
    if not specs:
        raise UsageError("--criteria is empty: name at least one criterion, e.g. cosine-block,magnitude")
    return tuple(specs)


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class BenchOptions:
    out_dir: Path | None = None  # default benchmarks/results/<device-slug>/ under the working directory
    device: str = "cpu"
    models: tuple[str, ...] | None = None  # None: every reference model (--quick: the demo)
    criteria: tuple[CriterionSpec, ...] = tuple(CriterionSpec(n, CRITERION_DEFAULTS.get(n, {})) for n in DEFAULT_CRITERIA)
    target: str = DEFAULT_TARGET
    quick: bool = False
    force: bool = False
    backend: str = "auto"
    cpu_tdp_w: float | None = None
    max_steps: int = 50
    dtype: str | None = None  # cast the models (float32 if None)
    command: str = ""  # the command line, for the provenance
    carbon: Any = None  # a metrics.carbon.CarbonIntensity: the grid for the CO2e figures (None: none made)

    def resolved_models(self) -> tuple[str, ...]:
        models = self.models if self.models is not None else (("demo",) if self.quick else REFERENCE_MODELS)
        unknown = [m for m in models if m not in REFERENCE_MODELS]
        if unknown:
            raise UsageError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(REFERENCE_MODELS)}")
        if not models:
            raise UsageError("--models is empty")
        return tuple(dict.fromkeys(models))

    def meter_config(self) -> MeterConfig:
        """Short windows for --quick; otherwise windows long enough for a 100 ms GPU counter."""
        gpu = self.device.startswith("cuda")
        if self.quick:
            return MeterConfig(window_s=0.5 if gpu else 0.1, repeats=3, precision=0.0, max_duration_s=5.0,
                               idle_s=0.2 if gpu else 0.1, min_warmup_s=0.0, max_warmup_s=1.0 if gpu else 0.5,
                               keep_trace=False)
        return MeterConfig(window_s=2.0 if gpu else 1.0, repeats=5, precision=0.02, max_duration_s=30.0,
                           idle_s=1.0, min_warmup_s=1.0, max_warmup_s=10.0, keep_trace=False)

    def floor_sizes(self) -> tuple[int, ...] | None:
        if not self.quick:
            return None  # the floor module's defaults
        return (1024, 2048) if self.device.startswith("cuda") else (128, 256)


def default_out_dir(device: str) -> Path:
    from energyprune.metrics.hardware_floor import device_slug

    return Path("benchmarks") / "results" / device_slug(device)


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite earlier results without --force; say which files are in the way. The
    results folder holds other benchmarks' files too: only the bench's own count."""
    from energyprune.files import check_writable_folder

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} is a file, not a folder")
    existing = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if existing and not force:
        raise UsageError(f"{out_dir} already holds {', '.join(existing)} from an earlier run: pass --force to "
                         "replace them or choose another --out-dir")
    folder = out_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the results folder is created as needed: its nearest existing parent must take it
    check_writable_folder(folder, f"--out-dir {out_dir}")


