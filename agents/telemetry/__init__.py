"""Telemetry on the device: power, energy, memory, temperatures, clocks.

Every source produces :class:`~agents.telemetry.sample.Sample` objects:

- parsers of a tool's own output, pure functions over text (nothing is run or
  opened): :mod:`.tegrastats` (Jetson), :mod:`.powermetrics` and :mod:`.macmon`
  (Apple Silicon);
- readers of sysfs that take a root path, so tests use fake trees:
  :mod:`.hwmon` (Jetson INA3221/INA238 rails), :mod:`.rapl` (x86 energy counters);
- :mod:`.energy`: trapezoid integration over a window and counter deltas;
- live, during a job: :mod:`.sources` (one module per source: NVML, RAPL,
  Jetson, Apple, system memory; ``select_sources`` in
  :mod:`.sources.selection`), :mod:`.sampler` (the background ``Sampler``:
  energy, power, memory and temperature over a window) and :mod:`.job` (idle
  power, cooldown and the energy fields of each repetition, for the runner).
  They are not imported here: the parsers stay cheap to import.

The normalised sample format is documented in docs/telemetry.md.
Standard library only, Python 3.8+.
"""

from agents.telemetry.energy import average_and_peak, counter_delta, integrate_trapezoid
from agents.telemetry.hwmon import JetsonPowerReader
from agents.telemetry.macmon import parse_macmon, parse_macmon_line
from agents.telemetry.powermetrics import (
    parse_powermetrics_plist_stream,
    parse_powermetrics_text,
)
from agents.telemetry.rapl import RaplReader
from agents.telemetry.sample import Sample, pick_total
from agents.telemetry.tegrastats import parse_tegrastats, parse_tegrastats_line

__all__ = [
    "JetsonPowerReader",
    "RaplReader",
    "Sample",
    "average_and_peak",
    "counter_delta",
    "integrate_trapezoid",
    "parse_macmon",
    "parse_macmon_line",
    "parse_powermetrics_plist_stream",
    "parse_powermetrics_text",
    "parse_tegrastats",
    "parse_tegrastats_line",
    "pick_total",
]
