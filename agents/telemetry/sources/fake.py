"""TEST-ONLY power sources that a job spec may name in ``telemetry_test_source``.

They give exact, known power (a constant, or a wrapping counter), so the test
suite can check every energy against watts times seconds. They ship in the
agent zipapp on purpose: the suite runs real jobs through the real agent as a
separate process (``python -m agents run``, as a device does) and picks the
source through the job spec, so the agent itself must be able to build one.
Real devices never get them: :func:`~agents.telemetry.sources.selection.select_sources`
does not know them, and the controller never writes the key. Kept in this
one small module so nothing else in the agent depends on them.
"""

import time
from typing import Any, Optional, Tuple

from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

__all__ = ["ConstantPowerSource", "CounterSource", "make_test_source"]


class ConstantPowerSource(Source):
    """TEST-ONLY: a power source that always reads ``watts`` (rail ``test``).

    Built by :func:`make_test_source` from ``"constant:W"``; never chosen by
    :func:`~agents.telemetry.sources.selection.select_sources`. Energy from it
    is labelled ``integrated:test``.
    """

    name = "test-constant"
    power = True

    def __init__(self, watts: float, temp_c: Optional[float] = None) -> None:
        self.watts = float(watts)
        self.temp_c = temp_c

    def available(self) -> Tuple[bool, str]:
        return True, "test-only constant %g W" % self.watts

    def read(self, into: Sample) -> bool:
        into.rails_w["test"] = self.watts
        into.total_w = self.watts
        into.total_rail = "test"
        if self.temp_c is not None:
            into.temps_c["test"] = self.temp_c
        return True


class CounterSource(Source):
    """TEST-ONLY: a hardware-style energy counter at a constant ``watts``.

    Its counter (``energy_j["test"]``) starts at ``start_j`` and wraps to 0 at
    ``range_j`` like RAPL's; it reports no power, only the counter.
    Built by :func:`make_test_source` from ``"counter:W[:RANGE_J[:START_J]]"``.
    """

    name = "test-counter"
    power = True
    counter_keys = ("test",)
    counter_label = "test-counter"

    def __init__(self, watts: float, range_j: Optional[float] = None,
                 start_j: float = 0.0, clock: Any = time.monotonic) -> None:
        self.watts = float(watts)
        self.counter_ranges = {"test": float(range_j)} if range_j else {}
        self.start_j = float(start_j)
        self._clock = clock
        self._t0: Optional[float] = None

    def available(self) -> Tuple[bool, str]:
        return True, "test-only counter at %g W" % self.watts

    def start(self) -> None:
        self._t0 = self._clock()

    def read(self, into: Sample) -> bool:
        if self._t0 is None:
            self._t0 = self._clock()
        value = self.start_j + self.watts * (self._clock() - self._t0)
        rng = self.counter_ranges.get("test")
        into.energy_j["test"] = value % rng if rng else value
        return True


def make_test_source(spec: str) -> Source:
    """TEST-ONLY: build a fake power source from a job spec's ``telemetry_test_source``.

    ``"constant:12.5"`` -> :class:`ConstantPowerSource` (12.5 W, integrated);
    ``"constant:12.5:45"`` adds a constant 45 °C sensor;
    ``"counter:12.5[:RANGE_J[:START_J]]"`` -> :class:`CounterSource`. Real
    devices never get these: :func:`~agents.telemetry.sources.selection.select_sources`
    does not know them, and the runner only builds one when a job spec names it.
    """
    kind, _, rest = str(spec).partition(":")
    try:
        numbers = [float(v) for v in rest.split(":") if v != ""]
    except ValueError:
        numbers = []
    if kind == "constant" and 1 <= len(numbers) <= 2:
        return ConstantPowerSource(numbers[0], numbers[1] if len(numbers) > 1 else None)
    if kind == "counter" and 1 <= len(numbers) <= 3:
        return CounterSource(numbers[0], numbers[1] if len(numbers) > 1 else None,
                             numbers[2] if len(numbers) > 2 else 0.0)
    raise ValueError("telemetry_test_source must be 'constant:W[:TEMP_C]' or "
                     "'counter:W[:RANGE_J[:START_J]]', not %r" % (spec,))
