"""A `Document` as Markdown: the tables and text; the plots are not embedded (a Markdown file
cannot hold them inline portably), but each one is listed with its caption and provenance."""

from __future__ import annotations

import re

from energyprune.reporting.doc import Banner, Bullets, Code, Document, Figure, Table

HEADLINES = {
    "estimated": "**Provenance: ESTIMATED** - the energy figures come from a power model, not a hardware counter",
    "measured": "**Provenance: MEASURED** - the energy figures come from hardware counters",
    "none": "**No energy figure in this result**",
}


#: Characters that Markdown reads as structure (emphasis, code, links, HTML, tables, headings).
_SPECIAL = "\\`*_[]<>|#!"


def text(value: object) -> str:
    """Text from a result (model names, paths, labels, warnings) as Markdown that shows it as it
    is: every structural character escaped, line breaks flattened. A model named
    `<img src=x onerror=...>` or `a | b` must not become markup or break a table."""
    out = []
    for char in str(value).replace("\r", " ").replace("\n", " "):
        out.append("\\" + char if char in _SPECIAL else char)
    return "".join(out)


def cell(value: object) -> str:
    """A table cell: escaped as `text`, so pipes cannot break the table."""
    return text(value)


def table_lines(t: Table) -> list[str]:
    lines = [f"*{text(t.caption)}*", ""] if t.caption else []
    lines += ["| " + " | ".join(cell(h) or " " for h in t.header) + " |", "|" + " --- |" * len(t.header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return lines + [""]


def banner_lines(banner: Banner) -> list[str]:
    lines = ["> " + HEADLINES.get(banner.provenance, f"**Provenance: {banner.provenance}**")]
    lines += [f"> - {text(line)}" for line in banner.lines]
    return lines + [""]


def figure_line(figure: Figure, number: int) -> str:
    label = "(ESTIMATED) " if figure.estimated else ""
    return (f"*Figure {number}* {label}- {text(figure.caption)} Not embedded in Markdown: "
            "`energyprune report RESULT.json --format html` draws it.")


def figures_section(doc: Document) -> str:
    """The list of figures with their captions and provenance (they are drawn in the HTML only)."""
    figures = doc.figures()
    if not figures:
        return ""
    estimated = sum(1 for f in figures if f.estimated)
    lines = ["## Figures (in the HTML report)", "",
             f"{len(figures)} figure(s), {estimated} of them from ESTIMATED energy figures.", ""]
    lines += [f"- {figure_line(f, i + 1)}" for i, f in enumerate(figures)]
    return "\n".join(lines) + "\n"


def render_markdown(doc: Document) -> str:
    lines = [f"# {text(doc.title)}", ""] + banner_lines(doc.banner)
    figures = doc.figures()
    if figures:
        estimated = [str(i + 1) for i, f in enumerate(figures) if f.estimated]
        lines += [f"Figures: {len(figures)}, not embedded here (use `--format html`); "
                  + (f"ESTIMATED: figure {', '.join(estimated)}." if estimated else "none is estimated."), ""]
    number = 0
    for section in doc.sections:
        lines += [f"## {text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [text(block), ""]
            elif isinstance(block, Table):
                lines += table_lines(block)
            elif isinstance(block, Figure):
                number += 1
                lines += [figure_line(block, number), ""]
            elif isinstance(block, Bullets):
                lines += [f"- {text(item)}" for item in block.items] + [""]
            elif isinstance(block, Code):
                # A fence longer than any run of backticks inside, so the code cannot close it.
                fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", block.text)), default=0))
                lines += ([text(block.summary) + ":", ""] if block.summary else []) + [fence + "json", block.text,
                                                                                     fence, ""]
    section = figures_section(doc)
    if section:
        lines += [section]
    lines += [f"Rendered from a result of schema `{doc.schema}`; the JSON file is the source of truth.", ""]
    return "\n".join(lines)
