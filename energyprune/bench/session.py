"""The bookkeeping every benchmark run shares: one place, so the scripts in `benchmarks/` hold only
what they measure.

A benchmark run has a device and a meter config, an output folder, a JSON document that is the
source of truth (written after every row with `--resume`, so a run cut by a time budget or a
lent machine going back continues where it stopped), a time budget, and a record of every call
that contributed to it. `add_session_options` gives a script the command-line options for all
that; `Session.open` checks a resumed document against this run (device, meter config, data) and
`Session.checkpoint` / `Session.finish` write it.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from energyprune.files import to_json, write_atomic
from energyprune.measure.meter import MeterConfig
from energyprune.metrics.hardware_floor import device_name, device_slug

#: Meter settings per device type where the command line gives none. CPU: the short windows the
#: committed CPU results were measured with (a 2-vCPU machine, estimated backend). CUDA: NVML's
#: energy counter ticks every ~100 ms, so windows of >= 2 s (20 ticks) and warm-ups long enough
#: for the clocks; few interleaved pairs a row keep a model inside a few lent-machine calls.
METER_DEFAULTS: dict[str, dict[str, float]] = {
    "cpu": {"window_s": 0.5, "repeats": 6, "idle_s": 0.5, "min_warmup_s": 0.2, "max_warmup_s": 0.6},
    "cuda": {"window_s": 2.0, "repeats": 6, "idle_s": 1.0, "min_warmup_s": 0.5, "max_warmup_s": 2.0},
}


def results_root() -> Path:
    """`benchmarks/results` of the repository (the working directory's, for an installed package)."""
    here = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    return here if here.parent.is_dir() else Path("benchmarks") / "results"


def results_dir(device: str | torch.device) -> Path:
    path = results_root() / device_slug(device)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch.device (``cuda`` pinned to the current index),
    refused with a clear message where torch sees no such GPU."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f"--device {name!r}: {error}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise SystemExit(f"--device {name!r}: only cpu, cuda and cuda:N are supported")
    if not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no GPU here (torch {torch.__version__}); use --device cpu")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise SystemExit(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device("cuda", index)


def device_record(device: torch.device) -> dict[str, Any]:
    """What the JSON header says about the hardware and its numerics."""
    out: dict[str, Any] = {"device": device_slug(device), "device_name": device_name(device),
                           "torch_device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(cuda=torch.version.cuda, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}",
                   tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
                   dtype="float32 (the CPU runs' dtype; TF32 as recorded)")
        try:
            import pynvml

            pynvml.nvmlInit()
            out["driver"] = pynvml.nvmlSystemGetDriverVersion()
            if isinstance(out["driver"], bytes):
                out["driver"] = out["driver"].decode()
        except Exception:  # noqa: BLE001 - the driver version is a nicety
            pass
    return out


def save_json(path: Path, data: Mapping[str, Any]) -> None:
    """The JSON alone, written atomically (the Markdown and plots come at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, to_json(data))


def save(path: Path, data: Mapping[str, Any], markdown: str) -> None:
    """`path`.json and `path`.md, each atomically."""
    write_atomic(path.with_suffix(".json"), to_json(data))
    write_atomic(path.with_suffix(".md"), markdown)


def load_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())


def add_session_options(parser: argparse.ArgumentParser, *, budget_min: float, json_name: str) -> None:
    """The options of every resumable benchmark: device, meter, threads, budget, resume, output."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the models and data run")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--window-s", type=float, help="default: 0.5 on CPU, 2 on CUDA (a 100 ms counter)")
    parser.add_argument("--repeats", type=int, help="default: 6 (the fewest for a 95%% interval of the median)")
    parser.add_argument("--idle-s", type=float, help="default: 0.5 on CPU, 1 on CUDA")
    parser.add_argument("--min-warmup-s", type=float, help="default: 0.2 on CPU, 0.5 on CUDA")
    parser.add_argument("--max-warmup-s", type=float, help="default: 0.6 on CPU, 2 on CUDA")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU only: torch intra-op threads (1: on a shared 2-vCPU machine two threads stall whenever "
                             "the other core is taken; measured 2x128-token forwards of 3.5-15 s with 2 threads against "
                             "1.2-2.7 s with 1 while another job ran). Left at torch's default with --device cuda")
    parser.add_argument("--budget-min", "--time-budget", dest="budget_min", type=float, default=budget_min,
                        help="time budget in minutes, from the start (model loading included): no new row is "
                             "started after it (recorded in the JSON; continue with --resume)")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue OUT_DIR/{json_name} where it exists (same device, meter config and data): keep "
                             "what it holds, measure only what is missing; rewrite it after every row")
    parser.add_argument("--plan", action="store_true", help="print the duration estimate and exit (loads nothing)")
    parser.add_argument("--out-dir", type=Path, help="default: benchmarks/results/<device>/ (quick: a temporary folder)")


def apply_meter_defaults(args: Any, device: torch.device) -> None:
    """Fill the meter options left as None on the command line with the device type's defaults."""
    for key, value in METER_DEFAULTS[device.type].items():
        if getattr(args, key, None) is None:
            setattr(args, key, type(value)(value))


def prepare_run(args: Any, device: torch.device) -> MeterConfig:
    """What every benchmark does before its first model: quiet logging (the meter's "falling back
    to the ESTIMATED backend" note is kept in every row's warnings; printing it for each of ~100
    comparisons helps nobody), a fixed seed, `--threads` on the CPU, and the meter config of the
    command line (no precision target: the repeats are the plan)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("energyprune.measure.api").setLevel(logging.ERROR)
    logging.getLogger("energyprune.budget.judge").setLevel(logging.ERROR)
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    return MeterConfig(window_s=args.window_s, repeats=args.repeats, precision=0.0, idle_s=args.idle_s,
                       min_warmup_s=args.min_warmup_s, max_warmup_s=args.max_warmup_s, keep_trace=False)


def meter_record(config: MeterConfig, backend: str) -> dict[str, Any]:
    return {"window_s": config.window_s, "repeats": config.repeats, "precision": config.precision,
            "idle_s": config.idle_s, "min_warmup_s": config.min_warmup_s, "max_warmup_s": config.max_warmup_s,
            "backend": backend}


def load_resume(path: Path, schema: str, device: str, meter_config: Mapping[str, Any],
                quick: bool) -> dict[str, Any] | None:
    """The partial results at `path` to continue from, or None where there are none. Refuses
    (SystemExit) results of another schema, device or meter configuration: rows measured with other
    windows on other hardware must not share one table."""
    if not path.exists():
        return None
    data = load_json(path)
    problems = []
    if data.get("schema") != schema:
        problems.append(f"schema {data.get('schema')!r}, not {schema!r}")
    if data.get("device") != device:
        problems.append(f"device {data.get('device')!r}, not {device!r}")
    if data.get("meter_config") != dict(meter_config):
        problems.append(f"meter config {data.get('meter_config')} differs from this run's {dict(meter_config)}")
    if bool(data.get("quick")) != quick:
        problems.append("it is a --quick smoke test" if quick is False else "it is not a --quick smoke test")
    if problems:
        raise SystemExit(f"--resume: {path} cannot be continued: " + "; ".join(problems)
                         + " (move it away, or give the same options)")
    return data


@dataclass
class Session:
    """One call of a resumable benchmark: its document (`data`), where it goes, and the clock."""

    args: argparse.Namespace
    device: torch.device
    config: MeterConfig
    out_dir: Path
    json_path: Path
    data: dict[str, Any]
    call: dict[str, Any]
    started: float
    deadline: float
    prior: dict[str, Any] | None
    wall_before: float = 0.0
    extra_checks: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)

    @classmethod
    def open(cls, args: argparse.Namespace, device: torch.device, config: MeterConfig, *, schema: str,
             json_name: str, quick_prefix: str, models: list[str], header: Mapping[str, Any]) -> Session:
        """Resolve the output folder, load a document to resume (checked against this run), and
        start this call's record. `header` holds the script's own fields (method, criteria...)."""
        hardware = device_record(device)
        started = time.perf_counter()
        meter = meter_record(config, args.backend)
        if args.out_dir:
            out_dir = args.out_dir
        elif getattr(args, "quick", False):
            out_dir = Path(tempfile.mkdtemp(prefix=quick_prefix))
        else:
            out_dir = results_dir(device)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / json_name
        prior = load_resume(json_path, schema, hardware["device"], meter, getattr(args, "quick", False)) \
            if args.resume else None
        call = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python " + " ".join(sys.argv),
                "models": list(models), "time_budget_min": args.budget_min}
        data: dict[str, Any] = {
            "schema": schema, **hardware, "date": call["date"], "command": call["command"],
            "quick": getattr(args, "quick", False), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "meter_config": meter, **dict(header),
            "models": dict(prior["models"]) if prior else {},
        }
        if prior:
            data["calls"] = prior.get("calls") or [{"date": prior.get("date"), "command": prior.get("command"),
                                                    "models": list(prior.get("models", {})),
                                                    "wall_s": prior.get("wall_s")}]
        data.setdefault("calls", []).append(call)
        wall_before = sum(float(c.get("wall_s") or 0.0) for c in data["calls"][:-1])
        print(f"device {hardware['device_name']} ({device}); meter: {meter}; out: {out_dir}", file=sys.stderr)
        return cls(args, device, config, out_dir, json_path, data, call, started, started + args.budget_min * 60,
                   prior, wall_before)

    def checkpoint(self, key: str, model_out: dict[str, Any]) -> None:
        """Keep a model's results; with --resume, write the document now."""
        self.data["models"][key] = model_out
        self.call["wall_s"] = time.perf_counter() - self.started
        self.data["wall_s"] = self.wall_before + self.call["wall_s"]
        if self.args.resume:
            save_json(self.json_path, self.data)

    def release(self) -> None:
        """Between two models: give their memory back."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def finish(self, render: Callable[[dict[str, Any], Path], list[Path]]) -> list[Path]:
        self.call["wall_s"] = time.perf_counter() - self.started
        self.data["wall_s"] = self.wall_before + self.call["wall_s"]
        paths = render(self.data, self.out_dir)
        print(f"wrote {', '.join(str(p) for p in paths)} in {self.call['wall_s'] / 60:.1f} min", file=sys.stderr)
        return paths


def write_report_files(data: Mapping[str, Any], out_dir: Path, stem: str, markdown: str,
                       plot: Callable[[str, Any, Path], None]) -> list[Path]:
    """`stem`.json, `stem`.md and one `stem`_<model>.png per model into `out_dir`."""
    save(out_dir / stem, data, markdown)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    for key, model in data["models"].items():
        path = out_dir / f"{stem}_{key}.png"
        plot(key, model, path)
        paths.append(path)
    return paths


def rerender_main(argv: list[str] | None, script: str, json_name: str,
                  render: Callable[[dict[str, Any], Path], list[Path]]) -> int:
    """A report script's `main`: re-render a saved JSON beside itself."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: python benchmarks/{script} PATH/{json_name}", file=sys.stderr)
        return 2
    path = Path(args[0])
    for written in render(load_json(path), path.parent):
        print(written)
    return 0


def primary_key(model: Mapping[str, Any]) -> str:
    """The measure a benchmark model ranks by (the one marked primary)."""
    return next(m["key"] for m in model["measures"] if m.get("primary"))


def provenance_word(rows: Any, original: Mapping[str, Any]) -> str:
    """ESTIMATED as soon as one energy figure behind a table is."""
    from energyprune.backends.base import is_estimated

    return "ESTIMATED" if is_estimated(original["energy"]["provenance"],
                                       *(row["energy"]["provenance"] for row in rows)) else "measured"
