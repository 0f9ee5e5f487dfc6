"""Document for `energyprune.scores/1` (`energyprune score --json`): per-unit scores across depth
and the entropy profile. No energy figure here: the banner says so instead of a provenance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from energyprune.reporting import plots
from energyprune.reporting.doc import Banner, Document, Figure, Section, key_values, num, table


def unit_name(unit: Mapping[str, Any]) -> str:
    name = str(unit.get("path"))
    return name + (f"[{unit.get('index')}]" if unit.get("kind") in ("neuron", "channel") else "")


def ordered_units(scores: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Model order (path, then index), which is depth order for stacked blocks: the x axis."""
    return sorted(scores, key=lambda u: (_depth_key(str(u.get("path"))), u.get("index") or 0))


def _depth_key(path: str) -> tuple[Any, ...]:
    # "layers.10" after "layers.9": compare numeric parts as numbers.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def scores_document(result: Mapping[str, Any]) -> Document:
    criterion = str(result.get("criterion", "?"))
    units = ordered_units(result.get("scores") or [])
    profile = result.get("entropy_profile")
    banner = Banner("none", (
        "scores and entropies are computed from calibration data, not measured",
        f"model: {result.get('model', 'n/a')}",
        f"calibration: {result.get('calibration', 'n/a')}",
    ))
    summary = table(("field", "value"), [
        ("criterion", result.get("criterion_repr") or criterion),
        ("unit kind", result.get("unit_kind", "n/a")),
        ("units scored", len(units)),
        ("never removed (+inf)", sum(1 for u in units if u.get("score") is None)),
        ("convention", result.get("convention", "the lowest score is removed first")),
    ])
    points = [(unit_name(u), u.get("score")) for u in units]

    def draw() -> bytes:
        title = f"{criterion} scores across depth" + (" and the entropy profile" if profile else "")
        return plots.scores_plot(points, profile, criterion=criterion, title=title)

    sections = [Section("Summary", [summary])]
    if points or profile:
        sections.append(Section("Scores and entropy across depth", [Figure(
            "Each unit's score in model order (lower is removed first; hatched: never removed)"
            + ("; entropy of the hidden states at each block boundary, with its peak and the blocks in the "
               "criterion's stage rule" if profile else "") + ". Computed, not measured: no energy involved.", draw)]))
    rows = [(unit_name(u), u.get("kind"), num(u.get("score"), ".6g") if u.get("score") is not None else "+inf (never)",
             f"#{u['removal_rank']}" if u.get("removal_rank") is not None else "-") for u in units]
    sections.append(Section("Scores", [table(("unit", "kind", "score", "removal order"), rows)]))
    if profile:
        entropies = profile.get("entropies") or []
        delta = profile.get("delta") or []
        stage = set(profile.get("increase_stage_blocks") or [])
        prow = []
        for i, h in enumerate(entropies):
            prow.append((i, num(h, ".6g"), num(delta[i - 1], "+.4g") if 0 < i <= len(delta) else "-",
                         "peak" if i == profile.get("peak_boundary") else "",
                         f"block {i - 1}" + (" (in the stage)" if i - 1 in stage else "") if i > 0 else "input"))
        sections.append(Section("Entropy profile", [
            f"Estimator {profile.get('estimator')}, {profile.get('tokens_used', 'n/a')} tokens, in "
            f"{profile.get('unit', 'nats')}; dH of boundary i is H(i) - H(i-1), the change made by block i-1.",
            table(("boundary", f"entropy ({profile.get('unit', 'nats')})", "dH", "", "after"), prow),
        ]))
    extra = {k: v for k, v in result.items() if k not in
             ("schema", "criterion", "criterion_repr", "unit_kind", "convention", "scores", "entropy_profile",
              "model", "calibration")}
    if extra:
        sections.append(Section("Other fields", [key_values(extra)]))
    return Document(f"energyprune scores: {criterion} on {result.get('model', 'model')}",
                    str(result.get("schema")), banner, sections)
