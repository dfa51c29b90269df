"""Jetson telemetry from ``tegrastats``, run as a child process.

The line format is parsed by :mod:`agents.telemetry.tegrastats`; this module
only runs the tool.
"""

import shutil
from typing import List, Optional, Tuple

from agents.telemetry.sample import Sample
from agents.telemetry.sources.process import ProcessSource
from agents.telemetry.tegrastats import parse_tegrastats_line

__all__ = ["TegrastatsSource"]


class TegrastatsSource(ProcessSource):
    """``tegrastats --interval N`` (N ms), one line per sample (Jetson)."""

    name = "tegrastats"
    power = True

    def __init__(self, interval: float = 0.1, binary: Optional[str] = None) -> None:
        ProcessSource.__init__(self, interval)
        self.binary = binary

    def available(self) -> Tuple[bool, str]:
        path = self.binary or shutil.which("tegrastats")
        if not path:
            return False, "tegrastats not found on PATH"
        self.binary = path
        return True, path

    def argv(self) -> List[str]:
        return [self.binary or "tegrastats", "--interval", str(self.interval_ms())]

    def parse(self, record: bytes) -> Optional[Sample]:
        return parse_tegrastats_line(record.decode("utf-8", "replace"))
