"""Reports: the JSON dict is the source of truth; the terminal table and Markdown render it.

Renderers take the dict (what `Measurement.to_dict()` or a saved JSON file holds), never the live
objects, so a saved result re-renders identically. Files are written atomically.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from energyprune.errors import UsageError

STOP_REASONS = {
    "precision-reached": "the 95% interval reached the precision asked",
    "max-duration-reached": "--max-duration ran out before the precision asked was reached",
    "repeats-done": "the windows asked for were done (no precision target)",
}


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a report,
    and an interrupted write never destroys an earlier one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary write would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=False, default=_jsonable) + "\n"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def check_output_path(path: str | os.PathLike[str], force: bool) -> str:
    """The format for --out FILE (by extension), after checking it can be written without
    destroying anything."""
    target = Path(path)
    suffix = target.suffix.lower()
    formats = {".json": "json", ".md": "md", ".markdown": "md"}
    if suffix not in formats:
        raise UsageError(f"--out {path}: use a .json or .md file name")
    if not target.parent.exists() and str(target.parent) not in ("", "."):
        raise UsageError(f"--out {path}: the folder {target.parent} does not exist")
    if target.exists() and not force:
        raise UsageError(f"--out {path} already exists: choose another name or pass --force to replace it")
    return formats[suffix]


def format_energy(value_j: float | None) -> str:
    return _si(value_j, "J")


def format_power(value_w: float | None) -> str:
    return _si(value_w, "W")


def format_time(value_s: float | None) -> str:
    return _si(value_s, "s")


def _si(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    magnitude = abs(value)
    for factor, prefix in ((1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if magnitude >= factor:
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _interval(interval: list[float] | None) -> str:
    if not interval:
        return "n/a"
    return f"{format_energy(interval[0])} .. {format_energy(interval[1])}"


def summary_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    estimated = result["provenance"] == "estimated"
    tag = " (ESTIMATED)" if estimated else ""
    latency = result["latency_s"]
    rows = [
        ("provenance", result["provenance"].upper() + (
            " - from a power model, not a hardware counter" if estimated else " - hardware counters")),
        ("per inference" + tag, f"{format_energy(result['per_inference_j'])}   95% interval "
                                 f"{_interval(result['ci95_j'])}   CoV {result['cov'] * 100:.2f}%"),
        ("above idle" + tag, f"{format_energy(result['per_inference_dynamic_j'])}   95% interval "
                              f"{_interval(result['ci95_dynamic_j'])}"),
        ("per sample" + tag, f"{format_energy(result['per_sample_j'])} total, "
                             f"{format_energy(result['per_sample_dynamic_j'])} above idle "
                             f"(batch {result['batch_size']})"),
    ]
    if result.get("estimate_band_j"):
        rows.append(("estimate band", _interval(result["estimate_band_j"]) +
                     " (the power model's own uncertainty; more windows do not narrow it)"))
    rows += [
        ("latency", f"{format_time(latency['median'])} per inference (median of windows, "
                    f"{format_time(latency['min'])} .. {format_time(latency['max'])})"),
        ("power" + tag, f"{format_power(result['mean_power_w'])} mean, "
                        f"{format_power(result['idle_power_w'])} idle"),
        ("windows", f"{result['n_windows']} windows, {result['n_inferences']} inferences, "
                    f"{result['duration_s']:.2f} s measured"),
        ("stopped because", STOP_REASONS.get(result["stop_reason"], result["stop_reason"])),
    ]
    return rows


def domain_rows(result: Mapping[str, Any]) -> list[list[str]]:
    rows = [["domain", "provenance", "method", "J/inference", "above idle", "idle W", "mean W"]]
    for d in result["domains"]:
        rows.append([d["name"], d["provenance"].upper(), d["method"], format_energy(d["per_inference_j"]),
                     format_energy(d["per_inference_dynamic_j"]), f"{d['idle_power_w']:.2f}",
                     f"{d['mean_power_w']:.2f}"])
    return rows


def _columns(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render_text(result: Mapping[str, Any], title: str = "") -> str:
    """The terminal table printed at the end of `energyprune measure`."""
    lines = [title] if title else []
    width = max(len(k) for k, _ in summary_rows(result))
    lines += [f"  {k.ljust(width)}  {v}" for k, v in summary_rows(result)]
    lines += ["", _columns(domain_rows(result))]
    assumptions = [(d["name"], a) for d in result["domains"] for a in d["assumptions"]]
    if assumptions:
        lines += ["", "  assumptions:"] + [f"    [{name}] {text}" for name, text in assumptions]
    if result["warnings"]:
        lines += ["", "  warnings:"] + [f"    ! {w}" for w in result["warnings"]]
    return "\n".join(lines) + "\n"


def render_comparison_text(result: Mapping[str, Any]) -> str:
    low, high = result["ratio_ci95"]
    a, b = result["a"], result["b"]
    tag = " (ESTIMATED)" if result["provenance"] == "estimated" else ""
    lines = [
        f"  energy per inference, B / A{tag}: {result['ratio_b_over_a']:.4f}   "
        f"95% interval {low:.4f} .. {high:.4f}   ({len(result['ratios'])} interleaved pairs)",
        f"  A {a['label']}: {format_energy(a['per_inference_j'])} per inference{tag}   95% interval "
        f"{_interval(a['ci95_j'])}   latency {format_time(a['latency_s']['median'])}",
        f"  B {b['label']}: {format_energy(b['per_inference_j'])} per inference{tag}   95% interval "
        f"{_interval(b['ci95_j'])}   latency {format_time(b['latency_s']['median'])}",
        f"  stopped because: {STOP_REASONS.get(result['stop_reason'], result['stop_reason'])}",
    ]
    warnings = list(dict.fromkeys(a["warnings"] + b["warnings"]))
    if warnings:
        lines += ["", "  warnings:"] + [f"    ! {w}" for w in warnings]
    return "\n".join(lines) + "\n"
