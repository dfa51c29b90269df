"""CPU package energy from the Linux powercap RAPL counters, as a live source.

The sysfs reading lives in :mod:`agents.telemetry.rapl` (tested on fake
trees); this module only turns its counters into samples during a job.
"""

import time
from typing import Dict, Optional, Tuple

from agents.telemetry.rapl import DEFAULT_ROOT as RAPL_ROOT
from agents.telemetry.rapl import RaplReader
from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

__all__ = ["RaplSource"]


class RaplSource(Source):
    """CPU package energy from RAPL (:class:`~agents.telemetry.rapl.RaplReader`).

    The counters are the top-level ``intel-rapl:N`` zones named ``package-N``
    (core, uncore and DRAM subzones and the ``intel-rapl-mmio`` duplicate are
    left out: they are parts or second views of a package). Power per package
    (``rails_w``) and ``total_w`` are derived from the counter's increase
    since the previous read, so the first read has no power.
    """

    name = "rapl"
    power = True
    counter_label = "rapl-counter"

    def __init__(self, root: str = RAPL_ROOT) -> None:
        self.reader = RaplReader(root)
        packages = [z for z in self.reader.zones
                    if z.zone.startswith("intel-rapl:") and z.zone.count(":") == 1]
        named = [z for z in packages if z.name.startswith("package")]
        self._zones = named or packages
        self.counter_keys = tuple(z.label for z in self._zones)
        self.counter_ranges = {z.label: z.max_range_uj / 1e6 for z in self._zones
                               if z.max_range_uj}
        self._previous: Optional[Tuple[float, Dict[str, int]]] = None

    def available(self) -> Tuple[bool, str]:
        ok, reason = self.reader.available()
        if ok and not self._zones:
            return False, "RAPL has no package zone (%s)" % reason
        return ok, reason

    def read(self, into: Sample) -> bool:
        now = time.monotonic()
        values: Dict[str, int] = {}
        for zone in self._zones:
            value = self.reader._read_int(zone.energy_path)
            if value is not None:
                values[zone.label] = value
                into.energy_j[zone.label] = value / 1e6
        if not values:
            return False
        previous = self._previous
        self._previous = (now, values)
        if previous is not None and now > previous[0] and len(values) == len(self._zones):
            from agents.telemetry.energy import counter_delta

            total = 0.0
            for label, value in values.items():
                before = previous[1].get(label)
                if before is None:
                    return True
                rng = self.counter_ranges.get(label)
                delta = counter_delta(before, value, rng * 1e6 if rng else None)
                watts = delta / 1e6 / (now - previous[0])
                into.rails_w[label] = round(watts, 6)
                total += watts
            into.total_w = round(total, 6)
            into.total_rail = "rapl-packages"
        return True
