"""Parse a device's own telemetry log file (tegrastats, powermetrics, macmon) into samples.

The parsers are ``agents/telemetry`` (the same code the device agent runs);
this module picks one, reads the file and turns every way it can fail into
one ``ParseFailure`` with a one-line reason, so ``edgefarm telemetry parse``
only prints. A bad file is bad input, hence a ``ConfigError``.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

from agents.telemetry.macmon import parse_macmon
from agents.telemetry.powermetrics import (
    looks_like_plist,
    parse_powermetrics_plist_stream,
    parse_powermetrics_text,
)
from agents.telemetry.sample import Sample
from agents.telemetry.tegrastats import parse_tegrastats
from orchestrator.errors import ConfigError

__all__ = ["Format", "ParseFailure", "parse_file", "utc_offset_s"]


class Format(enum.StrEnum):
    """The tools whose logs can be parsed."""

    tegrastats = "tegrastats"
    powermetrics = "powermetrics"
    macmon = "macmon"


class ParseFailure(ConfigError):
    """A file that cannot be parsed as the requested format; the message says why."""


_OFFSET = re.compile(r"^([+-])(\d{1,2}):?(\d{2})$")


def utc_offset_s(text: str | None) -> float | None:
    """``+01:00``, ``-0600``, ``UTC`` or ``Z`` -> seconds east of UTC; None stays None.

    Raises ValueError for anything else.
    """
    if text is None:
        return None
    text = text.strip()
    if text.upper() in ("Z", "UTC"):
        return 0.0
    match = _OFFSET.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an offset like +01:00, -0600 or UTC")
    seconds = int(match.group(2)) * 3600 + int(match.group(3)) * 60
    return float(seconds if match.group(1) == "+" else -seconds)


def parse_file(path: Path, fmt: Format, utc_offset: float | None = None) -> list[Sample]:
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
                samples = parse_tegrastats(text.splitlines(), utc_offset)
            elif fmt is Format.powermetrics:
                samples = parse_powermetrics_text(text)
            else:
                samples = parse_macmon(text.splitlines())
    except ValueError as exc:
        raise ParseFailure(f"{path}: not {fmt.value} output: {exc}") from None
    if not any(s.has_measurement() for s in samples):
        raise ParseFailure(f"{path}: no {fmt.value} sample found (is it {fmt.value} output?)")
    return samples
