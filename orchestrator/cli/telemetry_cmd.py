"""``edgefarm telemetry``: normalise a device's own telemetry logs.

``edgefarm telemetry parse --format tegrastats FILE`` prints one JSON object
per sample per line, in the normalised format of docs/telemetry.md. The
parsing itself is agents/telemetry (the same code the device agent runs); this
module only reads the file and prints. A file that is missing, unreadable or
holds no sample of the given format prints one message and exits with 2.

Registered in main.py with ``app.add_typer(telemetry_app, name="telemetry")``.
"""

from __future__ import annotations

import enum
import json
import re
from pathlib import Path
from typing import Annotated

import typer

from agents.telemetry.macmon import parse_macmon
from agents.telemetry.powermetrics import (
    looks_like_plist,
    parse_powermetrics_plist_stream,
    parse_powermetrics_text,
)
from agents.telemetry.sample import Sample
from agents.telemetry.tegrastats import parse_tegrastats

telemetry_app = typer.Typer(
    help="Normalise telemetry logs (tegrastats, powermetrics, macmon) to JSON lines.",
    no_args_is_help=True)


@telemetry_app.callback()
def telemetry_main() -> None:
    """Normalise telemetry logs (tegrastats, powermetrics, macmon) to JSON lines."""
    # A callback keeps "parse" a subcommand even while it is the only one.


class Format(enum.StrEnum):
    tegrastats = "tegrastats"
    powermetrics = "powermetrics"
    macmon = "macmon"


_OFFSET = re.compile(r"^([+-])(\d{1,2}):?(\d{2})$")


class ParseFailure(Exception):
    """A file that cannot be parsed as the requested format; the message says why."""


def _utc_offset_s(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.strip()
    if text.upper() in ("Z", "UTC"):
        return 0.0
    match = _OFFSET.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not an offset like +01:00, -0600 or UTC")
    seconds = int(match.group(2)) * 3600 + int(match.group(3)) * 60
    return float(seconds if match.group(1) == "+" else -seconds)


def parse_file(path: Path, fmt: Format, utc_offset_s: float | None = None) -> list[Sample]:
    """Parse ``path`` as ``fmt``; raise ParseFailure with a one-line reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParseFailure(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if fmt is Format.powermetrics and looks_like_plist(data):
            samples = parse_powermetrics_plist_stream(data)
        else:
            text = data.decode("utf-8", errors="replace")
            if fmt is Format.tegrastats:
                samples = parse_tegrastats(text.splitlines(), utc_offset_s)
            elif fmt is Format.powermetrics:
                samples = parse_powermetrics_text(text)
            else:
                samples = parse_macmon(text.splitlines())
    except ValueError as exc:
        raise ParseFailure(f"{path}: not {fmt.value} output: {exc}") from None
    if not any(s.has_measurement() for s in samples):
        raise ParseFailure(f"{path}: no {fmt.value} sample found (is it {fmt.value} output?)")
    return samples


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
    try:
        samples = parse_file(file, fmt, _utc_offset_s(utc_offset))
    except ParseFailure as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for sample in samples:
        typer.echo(json.dumps(sample.to_json(), ensure_ascii=False))
