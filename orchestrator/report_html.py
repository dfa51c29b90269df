"""``edgefarm report --format html``: the study report as one self-contained page.

The page shows what ``report.build_report`` returns, with the same words as
the Markdown report (``ratio_lines``, ``model_row``, ``provenance_line``) and
the plots of ``report_plots``, each a PNG in a ``data:`` URI. It loads
nothing: no stylesheet, font, script or image from anywhere else, and its
Content-Security-Policy says so to the browser (``default-src 'none'``;
images only from ``data:``; the one style sheet and the one script allowed by
their SHA-256), so even a string that escaped escaping could not fetch or run
anything.

Every string that comes from the store (sweep name, model ids, device names,
reasons, provenance values) goes through ``html.escape``.

The one script is a rendering self-check: after the page has loaded it sets
``data-rendered`` on ``<body>`` to each plot image's decoded width in pixels
(0 for an image the browser could not decode), which a headless browser's
DOM dump can be checked against (tests/test_report_html.py).
"""

from __future__ import annotations

import base64
import hashlib
import html
import struct
from collections.abc import Sequence
from typing import Any

from orchestrator.report import (
    ROW_HEADERS,
    comparison_title,
    energy_notes,
    model_row,
    provenance_line,
    provenance_notes,
    ratio_lines,
)
from orchestrator.report_plots import RenderedPlot, render_plots

__all__ = ["CSP", "EMPTY_SWEEP", "render_html"]

EMPTY_SWEEP = "No comparison pairs with results in this sweep."
NUM = ' class="num"'  # a cell of numbers, right-aligned

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
code { font-size: 0.92em; background: #f3f3f3; padding: 0 0.2em; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; white-space: nowrap; }
p.verdict { font-size: 1.05rem; font-weight: 600; }
ul.lines { margin-top: 0.2rem; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { font-size: 0.9rem; color: #333; max-width: 60rem; }
.empty { font-style: italic; }
nav ul { columns: 2; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var widths = [];
  document.querySelectorAll("figure img").forEach(function (img) {
    widths.push(img.complete ? img.naturalWidth : 0);
  });
  document.body.setAttribute("data-rendered", widths.join(" "));
});
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: Nothing from anywhere else; only this page's own style sheet and script run.
CSP = (f"default-src 'none'; img-src data:; style-src {_sha256(STYLE)}; "
       f"script-src {_sha256(SCRIPT)}; base-uri 'none'; form-action 'none'")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_size(png: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (None if it is not a PNG)."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _lines(items: Sequence[str], cls: str = "lines") -> str:
    if not items:
        return ""
    return f'<ul class="{cls}">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def _jobs_line(report: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in (report.get("jobs") or {}).items() if v)
    return (f"<p>Sweep <code>{esc(report['sweep_id'])}</code>, state "
            f"<strong>{esc(report['state'])}</strong>; jobs: {esc(counts or 'none')}.</p>")


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, int | float) else "?"


def _of(facts: dict[str, Any], key: str, kind: type[Any]) -> Any:
    """``facts[key]`` if it is a ``kind`` (an empty one otherwise): facts come from devices."""
    value = facts.get(key)
    return value if isinstance(value, kind) else kind()


def _devices(report: dict[str, Any]) -> str:
    """A row of facts per device the comparisons ran on (as the agent's probe found them)."""
    facts = report.get("device_facts") or {}
    names = list(dict.fromkeys(c["device"] for c in report.get("comparisons") or []))
    if not names:
        return ""
    heads = ("device", "CPU", "cores", "RAM", "OS", "GPUs", "backends",
             "measured copy bandwidth")
    rows = []
    for name in names:
        f = facts.get(name) or {}
        gpus, backends, bandwidth = (_of(f, "gpus", list), _of(f, "backends", dict),
                                     _of(f, "memory_bandwidth", dict))
        present = [f"{b} {v.get('version') or ''}".strip() for b, v in backends.items()
                   if isinstance(v, dict) and v.get("present")]
        traffic = bandwidth.get("traffic_bytes_per_s")
        cells = (name, f.get("cpu_model") or "?", f.get("cpu_count") or "?",
                 _gib(f.get("ram_total_bytes")),
                 " ".join(str(f[k]) for k in ("os", "os_release", "machine") if f.get(k))
                 or "?",
                 ", ".join(str(g.get("name", "GPU")) for g in gpus if isinstance(g, dict))
                 or "none",
                 ", ".join(present) or "?",
                 f"{traffic / 1e9:.1f} GB/s" if isinstance(traffic, int | float) else "?")
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return ("<h2 id=\"devices\">Devices</h2><table><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _comparison(index: int, c: dict[str, Any]) -> str:
    first, *rest = ratio_lines(c)
    head = "".join(f"<th>{esc(h)}</th>" for h in ROW_HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td{'' if i == 0 else NUM}>{esc(cell)}</td>"
                         for i, cell in enumerate(model_row(side))) + "</tr>"
        for side in (c["moe"], c["dense"]))
    return (f'<section id="comparison-{index}"><h2>{esc(comparison_title(c))}</h2>'
            f'<p class="verdict">{esc(first)}</p>{_lines(rest)}'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            "<p>Provenance:</p>"
            + _lines([provenance_line(side) for side in (c["moe"], c["dense"])])
            + "</section>")


def _figure(number: int, plot: RenderedPlot) -> str:
    size = _png_size(plot.png)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="plot-{esc(plot.key)}">'
            f'<img src="data:image/png;base64,{data}" alt="{esc(plot.title)}"{dims}>'
            f"<figcaption><strong>Figure {number}. {esc(plot.title)}.</strong> "
            f"{esc(plot.caption)}{_lines(list(plot.notes), 'notes')}</figcaption></figure>")


def render_html(report: dict[str, Any], plots: Sequence[RenderedPlot] | None = None) -> str:
    """The whole page. ``plots``: already rendered ones (default: ``render_plots(report)``).

    A sweep without comparisons gets a page that says so, and no plots.
    """
    comparisons = list(report.get("comparisons") or [])
    if comparisons and plots is None:
        plots = render_plots(report)
    plots = list(plots or []) if comparisons else []
    title = f"edgefarm report: {report.get('sweep_name')} ({report['sweep_id']})"
    nav = [f'<li><a href="#comparison-{i}">{esc(comparison_title(c))}</a></li>'
           for i, c in enumerate(comparisons, 1)]
    nav += [f'<li><a href="#plot-{esc(p.key)}">Figure {i}. {esc(p.title)}</a></li>'
            for i, p in enumerate(plots, 1)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="edgefarm report --format html">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        _jobs_line(report),
    ]
    if nav:
        parts.append("<nav><ul>" + "".join(nav) + "</ul></nav>")
    if not comparisons:
        parts.append(f'<p class="empty">{esc(EMPTY_SWEEP)}</p>')
    parts += [_comparison(i, c) for i, c in enumerate(comparisons, 1)]
    parts.append(_devices(report))
    if plots:
        parts.append('<h2 id="plots">Plots</h2>')
        parts += [_figure(i, p) for i, p in enumerate(plots, 1)]
    notes = energy_notes(report) + provenance_notes(report)
    if notes:
        parts += ['<h2 id="notes">Notes</h2>', _lines(notes)]
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(p for p in parts if p) + "\n"
