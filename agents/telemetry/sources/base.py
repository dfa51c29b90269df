"""The contract every live telemetry source follows.

Kept apart from the sources so the sampler, which needs only this contract,
does not import every source.

Every source has the same life cycle::

    ok, reason = source.available()   # cheap; (False, why) when it cannot work here
    source.start()                    # open handles, start a tool
    source.read(...)                  # many times, from the sampler's thread
    source.stop()                     # always, also after a failed start

Two kinds:

* **polled** (``streaming = False``): ``read(into)`` reads the hardware now
  and writes its values into the sample it is given (the sampler merges all
  polled sources of one tick into one :class:`Sample`); returns False when
  nothing could be read this time. NVML, RAPL, the Jetson sysfs monitors,
  system memory and thermal zones.
* **streaming** (``streaming = True``): a child process that prints samples at
  its own interval (``tegrastats``, ``macmon pipe``, ``powermetrics -f
  plist``). ``fileno()`` is its output pipe; when the sampler's ``select``
  says it is readable, ``read()`` consumes what is there and returns the
  samples completed by it, each stamped with the monotonic time it arrived.

A source that measures power or energy has ``power = True``. One that keeps a
hardware energy counter names the counters' keys in ``energy_j`` in
``counter_keys`` (cumulative joules; ``counter_ranges`` gives the value where
one wraps back to 0) and how energy from them is labelled in
``counter_label`` (``"nvml-counter"``...). The sampler prefers counters to
integrating power (DESIGN.md's measurement rules).

:func:`~agents.telemetry.sources.selection.select_sources` picks the sources
that work on this device and returns the reasons for those that do not.
:func:`~agents.telemetry.sources.fake.make_test_source` builds the test-only
sources that a job spec may name in ``telemetry_test_source``.
"""

from typing import Dict, Optional, Tuple

from agents.telemetry.sample import Sample

__all__ = ["Source"]


class Source(object):
    """Base class; see the module docstring for the contract."""

    name = "source"
    streaming = False
    power = False
    counter_keys: Tuple[str, ...] = ()
    counter_ranges: Dict[str, float] = {}
    counter_label: Optional[str] = None
    #: Keys of ``extra`` holding throttle flags (non-zero / not "Nominal" = throttled).
    throttle_keys: Tuple[str, ...] = ()
    #: What ``available()`` said when :func:`select_sources` chose this source.
    detail = ""

    def available(self) -> Tuple[bool, str]:
        raise NotImplementedError

    def start(self) -> None:
        pass

    def read(self, into: Sample) -> bool:  # polled sources
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def describe(self) -> Dict[str, object]:
        """What this source reads, for the result's ``telemetry`` facts."""
        out: Dict[str, object] = {"name": self.name, "power": self.power}
        if self.counter_label:
            out["counter"] = self.counter_label
        if self.detail:
            out["detail"] = self.detail
        return out
