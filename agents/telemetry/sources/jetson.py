"""Jetson board rails read from the INA3221/INA238 monitors in sysfs, as a live source.

The fallback when ``tegrastats`` is missing; the sysfs reading itself lives in
:mod:`agents.telemetry.hwmon` (tested on fake trees).
"""

from typing import Tuple

from agents.telemetry.hwmon import JetsonPowerReader
from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

__all__ = ["JetsonSysfsSource"]


class JetsonSysfsSource(Source):
    """Jetson rails read straight from the INA3221/INA238 monitors in sysfs."""

    name = "jetson-sysfs"
    power = True

    def __init__(self, root: str = "/") -> None:
        self.reader = JetsonPowerReader(root)

    def available(self) -> Tuple[bool, str]:
        return self.reader.available()

    def read(self, into: Sample) -> bool:
        got = self.reader.read()
        if not got.rails_w:
            return False
        into.rails_w.update(got.rails_w)
        into.total_w = got.total_w
        into.total_rail = got.total_rail
        if "unreadable" in got.extra:
            into.extra["unreadable"] = got.extra["unreadable"]
        return True
