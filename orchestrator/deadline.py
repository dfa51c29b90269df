"""A point in time to stop waiting, on the monotonic clock.

Many loops in the controller wait "until X or until N seconds have passed";
written inline each time, the arithmetic drifted (``>`` here, ``>=`` there,
wall clock in one place). One small object keeps them alike and readable::

    deadline = Deadline(30)
    while not deadline.expired:
        ...
        time.sleep(deadline.clamp(0.5))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    """``seconds`` from now (``None``: never)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.at = None if seconds is None else self.start + seconds

    @property
    def remaining(self) -> float:
        """Seconds left (0 once expired; ``inf`` for a deadline that never comes)."""
        if self.at is None:
            return float("inf")
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def clamp(self, wait: float) -> float:
        """``wait``, but no longer than what is left."""
        return min(wait, self.remaining)


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.05) -> T | None:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` passes.

    Returns the last falsy value on timeout, so callers can tell what was seen.
    """
    deadline = Deadline(timeout)
    while True:
        value = condition()
        if value or deadline.expired:
            return value
        time.sleep(deadline.clamp(interval))
