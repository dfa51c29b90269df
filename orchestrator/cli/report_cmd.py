"""``edgefarm report``: the MoE-vs-dense comparison of a sweep, as a table, Markdown or JSON."""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import typer

from orchestrator.cli.app import console
from orchestrator.cli.options import DEFAULT_RESULTS, ResultsOpt

__all__ = ["ReportFormat", "report_cmd"]


class ReportFormat(enum.StrEnum):
    """How ``report`` prints (typer refuses anything else with exit 2)."""

    table = "table"
    md = "md"
    json = "json"


def report_cmd(
    sweep_id: Annotated[str | None, typer.Argument(
        help="Sweep id; default: the most recent sweep.")] = None,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f",
                                              help="table, md or json.")] = ReportFormat.table,
) -> None:
    """Print the MoE-vs-dense comparison of a sweep."""
    from orchestrator.cli.render import print_report
    from orchestrator.report import build_report, render_json, render_markdown
    from orchestrator.store import UnknownSweepError, open_to_read

    store = open_to_read(results_dir, sweep_id)
    sweep_id = sweep_id or store.latest_sweep_id()
    if sweep_id is None:
        raise UnknownSweepError(f"no sweeps in {store.path}")
    report = build_report(store, sweep_id)
    if fmt is ReportFormat.json:
        sys.stdout.write(render_json(report) + "\n")
    elif fmt is ReportFormat.md:
        sys.stdout.write(render_markdown(report))
    else:
        print_report(console, report)
