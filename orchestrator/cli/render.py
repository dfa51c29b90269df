"""Rich renderings shared by several commands (report tables, job tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.report import (
    PROVENANCE_HEADERS,
    ROW_HEADERS,
    comparison_title,
    energy_notes,
    model_row,
    provenance_notes,
    provenance_row,
    ratio_line,
)


def print_report(console: Console, report: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in report["jobs"].items() if v)
    console.print(f"[bold]{report['sweep_name']}[/] ({report['sweep_id']}): "
                  f"{report['state']}; jobs: {counts}")
    if not report["comparisons"]:
        console.print("No comparison pairs with results in this sweep.")
    for c in report["comparisons"]:
        # One row per measure, one column per model: fits an 80-column terminal.
        moe, dense = model_row(c["moe"]), model_row(c["dense"])
        table = Table(title=escape(comparison_title(c)), title_justify="left",
                      caption=escape(ratio_line(c)), caption_justify="left")
        table.add_column("")
        table.add_column(escape(moe[0]))
        table.add_column(escape(dense[0]))
        measures = list(zip(ROW_HEADERS[1:], moe[1:], dense[1:], strict=True))
        for i, (header, a, b) in enumerate(measures):
            # A rule after the measures; provenance below says what each column ran on.
            table.add_row(escape(header), escape(a), escape(b),
                          end_section=i == len(measures) - 1)
        for header, a, b in zip(PROVENANCE_HEADERS, provenance_row(c["moe"]),
                                provenance_row(c["dense"]), strict=True):
            table.add_row(escape(header), escape(a), escape(b))
        console.print(table)
    for note in energy_notes(report) + provenance_notes(report):
        console.print(escape(note), style="dim", highlight=False)


def print_jobs(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    if not rows:
        console.print(f"{title}: no jobs")
        return
    table = Table(title=title, title_justify="left")
    for header in rows[0]:
        table.add_column(str(header))
    for row in rows:
        table.add_row(*(escape(str(v)) if v is not None else "" for v in row.values()))
    console.print(table)
