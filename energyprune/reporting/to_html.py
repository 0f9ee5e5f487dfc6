"""A `Document` as one self-contained HTML file: inline CSS, plots as base64 PNG, no script and
no external URL, every string escaped. It can be mailed, archived or opened offline as it is."""

from __future__ import annotations

import base64
import html
import logging

from energyprune.version import __version__
from energyprune.reporting import plots
from energyprune.reporting.doc import Banner, Bullets, Code, Document, Figure, Table

logger = logging.getLogger(__name__)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 1.2em 2em; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.5em; margin: 0.8em 0 0.4em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.banner { padding: 0.7em 1em; border-radius: 4px; margin-top: 1em; border-left: 6px solid; }
.banner strong { font-size: 1.1em; }
.banner ul { margin: 0.3em 0 0; padding-left: 1.2em; font-size: 0.9em; }
.estimated { background: #fff3e0; border-color: #b35900; }
.measured { background: #e8f5e9; border-color: #2e7d32; }
.none, .unknown { background: #eceff1; border-color: #607d8b; }
.tag { color: #b35900; font-weight: bold; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
caption { text-align: left; font-weight: bold; padding: 0.2em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.55em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #444; max-width: 800px; }
.noplot { padding: 1em; background: #f5f5f5; border: 1px dashed #aaa; max-width: 760px; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
footer { margin-top: 2em; font-size: 0.8em; color: #666; }
"""

HEADLINES = {
    "estimated": "ESTIMATED: energy figures come from a power model, not a hardware counter",
    "measured": "MEASURED: energy figures come from hardware counters",
    "none": "No energy figure in this result",
}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _banner(banner: Banner) -> str:
    kind = banner.provenance if banner.provenance in HEADLINES else "unknown"
    headline = HEADLINES.get(kind, f"Provenance: {banner.provenance} (unknown)")
    items = "".join(f"<li>{_e(line)}</li>" for line in banner.lines)
    return (f'<div class="banner {kind}"><strong>{_e(headline)}</strong>'
            + (f"<ul>{items}</ul>" if items else "") + "</div>")


def _table(t: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    caption = f"<caption>{_e(t.caption)}</caption>" if t.caption else ""
    return f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(figure: Figure, number: int) -> str:
    label = '<span class="tag">ESTIMATED</span> ' if figure.estimated else ""
    caption = f"<figcaption>{label}Figure {number}. {_e(figure.caption)}</figcaption>"
    try:
        png = figure.draw()
    except plots.PlotsUnavailable:
        return f'<figure><div class="noplot">{_e(plots.INSTALL_HINT)}</div>{caption}</figure>'
    except Exception as error:  # noqa: BLE001 - a plot that fails on odd data must not cost the tables
        logger.warning("figure %d could not be drawn: %s", number, error, exc_info=logger.isEnabledFor(logging.DEBUG))
        return (f'<figure><div class="noplot">this plot could not be drawn ({_e(type(error).__name__)}: '
                f"{_e(error)}); the tables below hold its numbers</div>{caption}</figure>")
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{_e(figure.caption)}" src="data:image/png;base64,{data}">{caption}</figure>'


def render_html(doc: Document) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(doc.title)}</title><style>{CSS}</style></head><body>",
             _banner(doc.banner), f"<h1>{_e(doc.title)}</h1>"]
    number = 0
    for section in doc.sections:
        parts.append(f"<h2>{_e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                parts.append(f"<p>{_e(block)}</p>")
            elif isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, Figure):
                number += 1
                parts.append(_figure(block, number))
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_e(item)}</li>" for item in block.items) + "</ul>")
            elif isinstance(block, Code):
                pre = f"<pre>{_e(block.text)}</pre>"
                if block.summary:  # long JSON folded, so it does not push the figures out of sight
                    pre = f"<details><summary>{_e(block.summary)}</summary>{pre}</details>"
                parts.append(pre)
    parts.append(f"<footer>Rendered by energyprune {_e(__version__)} from a result of schema {_e(doc.schema)}. "
                 "The JSON file is the source of truth; this page is a rendering of it.</footer>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
