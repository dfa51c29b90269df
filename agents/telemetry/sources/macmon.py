"""Apple Silicon telemetry from ``macmon pipe`` (no root needed), run as a child process.

The JSON lines are parsed by :mod:`agents.telemetry.macmon`; this module only
runs the tool.
"""

import shutil
from typing import List, Optional, Tuple

from agents.telemetry.macmon import parse_macmon_line
from agents.telemetry.sample import Sample
from agents.telemetry.sources.process import ProcessSource

__all__ = ["MacmonSource"]


class MacmonSource(ProcessSource):
    """``macmon pipe -i N`` (N ms), one JSON object per line (Apple Silicon, no root)."""

    name = "macmon"
    power = True

    def __init__(self, interval: float = 0.1, binary: Optional[str] = None) -> None:
        ProcessSource.__init__(self, interval)
        self.binary = binary

    def available(self) -> Tuple[bool, str]:
        path = self.binary or shutil.which("macmon")
        if not path:
            return False, "macmon not found on PATH (brew install macmon)"
        self.binary = path
        return True, path

    def argv(self) -> List[str]:
        return [self.binary or "macmon", "pipe", "-i", str(self.interval_ms())]

    def parse(self, record: bytes) -> Optional[Sample]:
        try:
            return parse_macmon_line(record.decode("utf-8", "replace"))
        except ValueError:
            return None
