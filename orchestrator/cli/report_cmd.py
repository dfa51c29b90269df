"""``edgefarm report``: the MoE-vs-dense comparison of a sweep, as a table, Markdown, JSON or HTML.

Table, Markdown and JSON go to standard output. HTML is a page with plots
written into a directory (``--out DIR``: ``DIR/index.html``), and ``--export
csv`` adds ``DIR/repetitions.csv``, every counted repetition with its
provenance. The files are written all or nothing (``report_export.write_files``).
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import console, err_console
from orchestrator.cli.options import DEFAULT_RESULTS, ResultsOpt

__all__ = ["ExportFormat", "ReportFormat", "report_cmd"]


class ReportFormat(enum.StrEnum):
    """How ``report`` prints (typer refuses anything else with exit 2)."""

    table = "table"
    md = "md"
    json = "json"
    html = "html"


class ExportFormat(enum.StrEnum):
    """What ``--export`` writes: only CSV (Parquet would need pyarrow, not a dependency)."""

    csv = "csv"


def report_cmd(
    sweep_id: Annotated[str | None, typer.Argument(
        help="Sweep id; default: the most recent sweep.")] = None,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    fmt: Annotated[ReportFormat, typer.Option(
        "--format", "-f",
        help="table, md or json (printed), or html (a page with plots, written to "
             "--out DIR as DIR/index.html).")] = ReportFormat.table,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", file_okay=False,
        help="Directory for --format html and --export (created if missing; files in it "
             "are replaced whole, others left alone).")] = None,
    export: Annotated[ExportFormat | None, typer.Option(
        "--export",
        help="Also write every counted repetition, with its job's provenance as prov_* "
             "columns, to --out DIR as DIR/repetitions.csv.")] = None,
) -> None:
    """Print the MoE-vs-dense comparison of a sweep, or write it as a page with plots.

    table, md and json print to standard output. html writes DIR/index.html:
    one self-contained file with the verdicts, tables and seven plots.
    --export csv writes DIR/repetitions.csv. More in docs/reports.md.

    edgefarm report ID --format html --out study

    edgefarm report ID --format md --export csv --out study
    """
    from orchestrator.cli.render import print_report
    from orchestrator.report import build_report, render_json, render_markdown
    from orchestrator.report_export import (
        CSV_NAME,
        HTML_NAME,
        ReportOutputError,
        check_out_dir,
        repetitions_csv,
        write_files,
    )
    from orchestrator.store import UnknownSweepError, open_to_read

    if out is None and fmt is ReportFormat.html:
        raise ReportOutputError("--format html writes a page into a directory: give --out DIR")
    if out is None and export is not None:
        raise ReportOutputError(f"--export {export} writes DIR/{CSV_NAME}: give --out DIR")
    if out is not None and fmt is not ReportFormat.html and export is None:
        raise ReportOutputError("--out is for --format html and --export; table, md and "
                                "json print to standard output")
    if out is not None:
        check_out_dir(out)
    store = open_to_read(results_dir, sweep_id)
    sweep_id = sweep_id or store.latest_sweep_id()
    if sweep_id is None:
        raise UnknownSweepError(f"no sweeps in {store.path}")
    report = build_report(store, sweep_id)
    files: dict[str, bytes] = {}
    if fmt is ReportFormat.html:
        from orchestrator.report_html import render_html

        files[HTML_NAME] = render_html(report).encode()
    elif fmt is ReportFormat.json:
        sys.stdout.write(render_json(report) + "\n")
    elif fmt is ReportFormat.md:
        sys.stdout.write(render_markdown(report))
    else:
        print_report(console, report)
    if export is ExportFormat.csv:
        files[CSV_NAME] = repetitions_csv(store, sweep_id).encode()
    if files and out is not None:  # out is required for files (checked above)
        for path in write_files(out, files):
            err_console.print(f"wrote {path}", markup=False)
