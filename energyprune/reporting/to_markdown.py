"""A `Document` as Markdown: the tables and text; the plots are not embedded (a Markdown file
cannot hold them inline portably), but each one is listed with its caption and provenance."""

from __future__ import annotations

from energyprune.reporting.doc import Banner, Bullets, Code, Document, Figure, Table

HEADLINES = {
    "estimated": "**Provenance: ESTIMATED** - the energy figures come from a power model, not a hardware counter",
    "measured": "**Provenance: MEASURED** - the energy figures come from hardware counters",
    "none": "**No energy figure in this result**",
}


def cell(text: object) -> str:
    """A table cell: pipes escaped and line breaks flattened, or the table would break."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table_lines(t: Table) -> list[str]:
    lines = [f"*{t.caption}*", ""] if t.caption else []
    lines += ["| " + " | ".join(cell(h) or " " for h in t.header) + " |", "|" + " --- |" * len(t.header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return lines + [""]


def banner_lines(banner: Banner) -> list[str]:
    lines = ["> " + HEADLINES.get(banner.provenance, f"**Provenance: {banner.provenance}**")]
    lines += [f"> - {line}" for line in banner.lines]
    return lines + [""]


def figure_line(figure: Figure, number: int) -> str:
    label = "(ESTIMATED) " if figure.estimated else ""
    return (f"*Figure {number}* {label}- {figure.caption} Not embedded in Markdown: "
            "`energyprune report RESULT.json --format html` draws it.")


def figures_section(doc: Document) -> str:
    """The list of figures, for Markdown written by `energyprune.report` (measure, compare)."""
    figures = doc.figures()
    if not figures:
        return ""
    estimated = sum(1 for f in figures if f.estimated)
    lines = ["## Figures (in the HTML report)", "",
             f"{len(figures)} figure(s), {estimated} of them from ESTIMATED energy figures.", ""]
    lines += [f"- {figure_line(f, i + 1)}" for i, f in enumerate(figures)]
    return "\n".join(lines) + "\n"


def render_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", ""] + banner_lines(doc.banner)
    figures = doc.figures()
    if figures:
        estimated = [str(i + 1) for i, f in enumerate(figures) if f.estimated]
        lines += [f"Figures: {len(figures)}, not embedded here (use `--format html`); "
                  + (f"ESTIMATED: figure {', '.join(estimated)}." if estimated else "none is estimated."), ""]
    number = 0
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Table):
                lines += table_lines(block)
            elif isinstance(block, Figure):
                number += 1
                lines += [figure_line(block, number), ""]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Code):
                lines += ([block.summary + ":", ""] if block.summary else []) + ["```json", block.text, "```", ""]
    lines += [f"Rendered from a result of schema `{doc.schema}`; the JSON file is the source of truth.", ""]
    return "\n".join(lines)
