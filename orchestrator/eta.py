"""When will a sweep finish? An estimate from the job times measured so far.

Devices run side by side and each runs its own queue, so a sweep ends when
its slowest device's queue does. Per device::

    left = pending jobs x mean job time + max(0, mean job time - running job's elapsed)

where the mean is that device's own finished jobs (devices differ by orders
of magnitude: a Jetson against an H200), or, before its first job ends, the
mean over all finished jobs of the sweep. With no finished job anywhere there
is no estimate (None), never a guess. Quarantined devices are left out: their
jobs will not run. Used by ``sweep run``'s progress bars (times it measures
itself) and by ``edgefarm watch`` (times from the store).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["EtaTracker", "format_eta"]


@dataclass
class EtaTracker:
    """Finished job times per device, and the estimate they give."""

    durations: dict[str, list[float]] = field(default_factory=dict)

    def observe(self, device: str, seconds: float) -> None:
        """One finished job of ``device`` took ``seconds`` (from start to end)."""
        if seconds >= 0:
            self.durations.setdefault(device, []).append(seconds)

    @property
    def finished(self) -> int:
        return sum(len(v) for v in self.durations.values())

    def mean(self, device: str) -> float | None:
        """The device's mean job time, else the sweep's, else None."""
        own = self.durations.get(device)
        if own:
            return sum(own) / len(own)
        every = [s for v in self.durations.values() for s in v]
        return sum(every) / len(every) if every else None

    def seconds_left(self, pending: Mapping[str, int], running_elapsed: Mapping[str, float],
                     skip: Iterable[str] = ()) -> float | None:
        """Seconds until the last device's queue is done; None without any measured job.

        ``pending`` counts each device's jobs not started yet; ``running_elapsed``
        has the elapsed seconds of each device's running job.
        """
        skipped = set(skip)
        worst: float | None = 0.0
        for device in set(pending) | set(running_elapsed):
            if device in skipped:
                continue
            waiting = pending.get(device, 0)
            if not waiting and device not in running_elapsed:
                continue
            mean = self.mean(device)
            if mean is None:
                return None
            left = waiting * mean
            if device in running_elapsed:
                left += max(0.0, mean - running_elapsed[device])
            worst = max(worst or 0.0, left)
        return worst


def format_eta(seconds: float | None) -> str:
    """``"about 12 min left"``, ``"about 1 h 05 min left"``; ``""`` for no estimate."""
    if seconds is None:
        return ""
    if seconds < 60:
        return "under a minute left" if seconds > 0 else ""
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60:02d} min left"
