"""Energy from samples: trapezoid integration over a window, and counter deltas.

Pure arithmetic on :class:`~agents.telemetry.sample.Sample` objects (or their
``to_json()`` dicts): nothing is read from the system.

DESIGN.md's rule: energy comes from a hardware counter when one exists
(:func:`counter_delta`), else from integrating sampled total power over exactly
the window in which the tokens were counted (:func:`integrate_trapezoid`).
"""

import bisect
from typing import Any, List, Mapping, Optional, Sequence, Tuple

__all__ = ["integrate_trapezoid", "average_and_peak", "counter_delta", "value_of"]


def counter_delta(before: float, after: float, max_range: Optional[float] = None) -> float:
    """Increase of a cumulative counter that wraps to 0 after ``max_range``.

    RAPL's ``energy_uj`` counts up to ``max_energy_range_uj`` and restarts at
    0, so a reading lower than the previous one means one wrap. (Two wraps
    between readings cannot be seen: read more often than
    ``max_range / max_power``.)

    >>> counter_delta(100, 250)
    150
    >>> counter_delta(262143328800, 50, max_range=262143328850)
    100
    """
    if after >= before:
        return after - before
    if max_range is None:
        raise ValueError("counter went down (%r -> %r) and its wrap range is unknown"
                         % (before, after))
    if before > max_range:
        raise ValueError("counter value %r is above its range %r" % (before, max_range))
    return (max_range - before) + after


def value_of(sample: Any, key: str) -> Optional[float]:
    """``sample``'s value for ``key``: an attribute or dict key, dotted for nesting.

    ``"total_w"``, ``"gpu_util_pct"``, ``"rails_w.VDD_GPU_SOC"``; works on a
    Sample and on its ``to_json()`` dict. Missing or non-numeric gives None.
    """
    current = sample
    for part in key.split("."):
        if current is None:
            return None
        if isinstance(current, Mapping):
            current = current.get(part)
        else:
            current = getattr(current, part, None)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        return None
    return float(current)


def _points(samples: Sequence[Any], key: str) -> List[Tuple[float, float]]:
    points = []
    for sample in samples:
        t = value_of(sample, "t")
        v = value_of(sample, key)
        if t is not None and v is not None:
            points.append((t, v))
    points.sort(key=lambda p: p[0])
    return points


def _window(samples: Sequence[Any], t0: float, t1: float,
            key: str) -> List[Tuple[float, float]]:
    """The sampled signal clipped to [t0, t1], with interpolated end points."""
    if t1 < t0:
        raise ValueError("window ends before it starts: t0=%r, t1=%r" % (t0, t1))
    points = _points(samples, key)
    if not points:
        raise ValueError("no sample has both t and %s" % key)
    if points[0][0] > t0 or points[-1][0] < t1:
        raise ValueError("samples of %s cover [%r, %r] s; the window [%r, %r] s is not "
                         "inside it" % (key, points[0][0], points[-1][0], t0, t1))
    times = [p[0] for p in points]

    def at(t: float) -> float:
        right = bisect.bisect_left(times, t)
        if times[right] == t:
            return points[right][1]
        (ta, va), (tb, vb) = points[right - 1], points[right]
        return va + (vb - va) * (t - ta) / (tb - ta)

    inside = [p for p in points if t0 < p[0] < t1]
    return [(t0, at(t0))] + inside + [(t1, at(t1))]


def _area(window: List[Tuple[float, float]]) -> float:
    total = 0.0
    for index in range(1, len(window)):
        (ta, va), (tb, vb) = window[index - 1], window[index]
        total += (tb - ta) * (va + vb) / 2.0
    return total


def integrate_trapezoid(samples: Sequence[Any], t0: float, t1: float,
                        key: str = "total_w") -> float:
    """Integral of ``key`` over exactly [t0, t1] by the trapezoid rule (W x s = J).

    Samples need ``t`` (monotonic seconds); ones without ``t`` or without the
    value are skipped, and the power at ``t0`` and ``t1`` is interpolated
    linearly between the neighbouring samples. Raises ValueError when the
    samples do not cover the window: a missing edge is not guessed.

    >>> from agents.telemetry.sample import Sample
    >>> s = [Sample(t=0.0, total_w=2.0), Sample(t=1.0, total_w=4.0), Sample(t=2.0, total_w=4.0)]
    >>> integrate_trapezoid(s, 0.5, 2.0)
    5.75
    """
    return _area(_window(samples, t0, t1, key))


def average_and_peak(samples: Sequence[Any], t0: float, t1: float,
                     key: str = "total_w") -> Tuple[float, float]:
    """Time-weighted average and peak of ``key`` over [t0, t1].

    The average is :func:`integrate_trapezoid` divided by the window length;
    the peak is the highest value of the sampled signal inside the window
    (samples and the two interpolated edges).

    >>> from agents.telemetry.sample import Sample
    >>> s = [Sample(t=0.0, total_w=2.0), Sample(t=1.0, total_w=4.0), Sample(t=2.0, total_w=4.0)]
    >>> average_and_peak(s, 0.0, 2.0)
    (3.5, 4.0)
    """
    if t1 <= t0:
        raise ValueError("an average needs a window of positive length: t0=%r, t1=%r"
                         % (t0, t1))
    window = _window(samples, t0, t1, key)
    return _area(window) / (t1 - t0), max(v for _, v in window)
