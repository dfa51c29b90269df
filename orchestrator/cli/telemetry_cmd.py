"""``edgefarm telemetry``: normalise a device's own telemetry logs.

``edgefarm telemetry parse --format tegrastats FILE`` prints one JSON object
per sample per line, in the normalised format of docs/telemetry.md. Reading
and parsing are ``orchestrator.telemetry_logs``; a file that is missing,
unreadable or holds no sample of the given format is a ``ParseFailure``,
which the CLI's boundary prints as one message with exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import new_app
from orchestrator.telemetry_logs import Format, parse_file, utc_offset_s

__all__ = ["telemetry_app"]

telemetry_app = new_app(
    help="Normalise telemetry logs (tegrastats, powermetrics, macmon) to JSON lines.")


@telemetry_app.callback()
def telemetry_main() -> None:
    """Normalise telemetry logs (tegrastats, powermetrics, macmon) to JSON lines."""
    # A callback keeps "parse" a subcommand even while it is the only one.


def _offset(text: str | None) -> float | None:
    try:
        return utc_offset_s(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--utc-offset") from None


@telemetry_app.command("parse")
def parse_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Log file written by the tool.")],
    fmt: Annotated[Format, typer.Option(
        "--format", "-f", case_sensitive=False,
        help="The tool that wrote FILE. powermetrics: plist (-f plist) or text, detected.")],
    utc_offset: Annotated[str | None, typer.Option(
        help="tegrastats only: the device's UTC offset (+01:00), to turn its local "
             "timestamps into unix time ('wall').")] = None,
) -> None:
    """Print one normalised JSON object per sample, one per line."""
    for sample in parse_file(file, fmt, _offset(utc_offset)):
        typer.echo(json.dumps(sample.to_json(), ensure_ascii=False))
