"""Renderings of a saved result: Markdown, one self-contained HTML file with plots, or CSV.

The JSON a command writes is the source of truth; these functions only lay it out, so a result
re-renders the same way years later. `render` dispatches on the dict's "schema" field:

    >>> from energyprune.reporting import load_result, render
    >>> html = render(load_result("result.json"), "html")

matplotlib (the `report` extra) is needed for the plots only: without it the HTML still holds
every table and says how to get the plots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from energyprune.errors import UsageError
from energyprune.reporting.doc import Document
from energyprune.reporting.pareto import pareto_front
from energyprune.reporting.plots import PlotsUnavailable, pareto_plot, plots_available

FORMATS = ("md", "html", "csv", "emissions-csv", "prometheus")


class ResultFileError(UsageError):
    """A result file that cannot be rendered: missing, not JSON, or of an unknown schema."""


def _builders() -> dict[str, Callable[[Mapping[str, Any]], Document]]:
    from energyprune.reporting.advice_doc import advice_document
    from energyprune.reporting.bench_doc import bench_document
    from energyprune.reporting.measure_doc import comparison_document, measurement_document
    from energyprune.reporting.prune_doc import prune_document
    from energyprune.reporting.scores_doc import scores_document

    return {
        "energyprune.measurement/1": measurement_document,
        "energyprune.comparison/1": comparison_document,
        "energyprune.scores/1": scores_document,
        "energyprune.prune_result/1": prune_document,
        "energyprune.bench/1": bench_document,
        "energyprune.advice/1": advice_document,
    }


SCHEMAS = ("energyprune.measurement/1", "energyprune.comparison/1", "energyprune.scores/1",
           "energyprune.prune_result/1", "energyprune.bench/1", "energyprune.advice/1")


def check_schema(result: Any, source: str = "the result") -> str:
    if not isinstance(result, Mapping):
        raise ResultFileError(f"{source} holds a JSON {type(result).__name__}, not an energyprune result "
                              f"(an object with a \"schema\" field)")
    schema = result.get("schema")
    if schema is None:
        raise ResultFileError(f"{source} has no \"schema\" field: it was not written by energyprune "
                              f"(known schemas: {', '.join(SCHEMAS)})")
    if schema not in SCHEMAS:
        raise ResultFileError(f"{source} has schema {schema!r}, which this version cannot render "
                              f"(known schemas: {', '.join(SCHEMAS)})")
    return str(schema)


#: Fields without which a result of a schema cannot be rendered honestly (a truncated file).
REQUIRED = {
    "energyprune.measurement/1": ("provenance", "per_inference_j", "ci95_j", "domains", "windows"),
    "energyprune.comparison/1": ("provenance", "ratio_b_over_a", "ratio_ci95", "ratios", "a", "b"),
    "energyprune.prune_result/1": ("provenance", "original", "final", "steps", "target"),
}


def document(result: Mapping[str, Any], source: str = "the result") -> Document:
    """The result as a `Document` (title, provenance banner, sections with tables and figures)."""
    schema = check_schema(result, source)
    missing = [key for key in REQUIRED.get(schema, ()) if key not in result]
    if missing:
        raise ResultFileError(f"{source} is not a complete {schema} result (it lacks {', '.join(missing)})")
    try:
        return _builders()[schema](result)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        # A hand-edited or truncated file: say what is missing instead of a traceback.
        raise ResultFileError(f"{source} is not a complete {schema} result "
                              f"({type(error).__name__}: {error})") from error


def render(result: Mapping[str, Any], fmt: str, source: str = "the result") -> str:
    """The result rendered as "md", "html" or "csv" text."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")
    schema = check_schema(result, source)
    try:
        if fmt == "csv":
            from energyprune.reporting.to_csv import render_csv

            return render_csv(result)
        if fmt == "emissions-csv":
            from energyprune.reporting.to_emissions_csv import render_emissions_csv

            return render_emissions_csv(result)
        if fmt == "prometheus":
            if schema not in ("energyprune.measurement/1", "energyprune.comparison/1"):
                raise UsageError(f"the Prometheus format holds a measurement or a comparison, not {schema}")
            from energyprune.reporting.to_prometheus import render_prometheus

            return render_prometheus(result)
        doc = document(result, source)
        if fmt == "html":
            from energyprune.reporting.to_html import render_html

            return render_html(doc)
        return _markdown(result, schema, doc)
    except ResultFileError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ResultFileError(f"{source} is not a complete {schema} result "
                              f"({type(error).__name__}: {error})") from error


def _markdown(result: Mapping[str, Any], schema: str, doc: Document) -> str:
    from energyprune.reporting.to_markdown import render_markdown

    return render_markdown(doc)


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a result JSON file, with one-line errors for every way it can be wrong."""
    target = Path(path)
    if target.is_dir():
        hint = f"; did you mean {target / 'bench.json'}?" if (target / "bench.json").is_file() else ""
        raise ResultFileError(f"{path} is a folder, not a result file{hint}")
    if not target.exists():
        raise ResultFileError(f"{path}: no such file")
    try:
        text = target.read_text(encoding="utf-8")
    except PermissionError:
        raise ResultFileError(f"{path} cannot be read: permission denied") from None
    except UnicodeDecodeError:
        raise ResultFileError(f"{path} is not a text file: pass the .json a command wrote with --out FILE.json "
                              "or --json") from None
    except OSError as error:
        raise ResultFileError(f"{path} cannot be read: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultFileError(f"{path} is not JSON ({error.msg} at line {error.lineno} column {error.colno}): "
                              "pass the .json a command wrote with --out FILE.json or --json") from None
    check_schema(data, str(path))
    return data


__all__ = [
    "FORMATS",
    "SCHEMAS",
    "PlotsUnavailable",
    "ResultFileError",
    "check_schema",
    "document",
    "load_result",
    "pareto_front",
    "pareto_plot",
    "plots_available",
    "render",
]
