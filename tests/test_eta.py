"""The sweep's estimated finish (``orchestrator/eta.py``), against hand-computed answers."""

from __future__ import annotations

import pytest

from orchestrator.eta import EtaTracker, format_eta


def test_no_finished_job_means_no_estimate() -> None:
    assert EtaTracker().seconds_left({"orin": 3}, {}) is None


def test_the_slowest_queue_decides() -> None:
    eta = EtaTracker()
    for seconds in (10.0, 14.0):  # orin: mean 12 s
        eta.observe("orin", seconds)
    eta.observe("h200", 2.0)  # h200: mean 2 s
    # orin: 3 pending x 12 + (12 - 5 elapsed) = 43; h200: 4 x 2 + max(0, 2 - 9) = 8.
    assert eta.seconds_left({"orin": 3, "h200": 4}, {"orin": 5.0, "h200": 9.0}) == 43.0


def test_a_device_without_a_finished_job_borrows_the_sweep_mean() -> None:
    eta = EtaTracker()
    eta.observe("orin", 10.0)
    eta.observe("m2", 20.0)  # sweep mean 15 s
    # mac-mini: 2 pending x 15 = 30; orin: 1 x 10 = 10; m2: nothing left.
    assert eta.seconds_left({"orin": 1, "m2": 0, "mac-mini": 2}, {}) == 30.0


def test_quarantined_devices_are_left_out() -> None:
    eta = EtaTracker()
    eta.observe("orin", 10.0)
    assert eta.seconds_left({"orin": 1, "dead": 50}, {}, skip=["dead"]) == 10.0


@pytest.mark.parametrize("seconds, text", [
    (None, ""), (0.0, ""), (30.0, "under a minute left"), (12 * 60 + 10, "about 12 min left"),
    (65 * 60, "about 1 h 05 min left")])
def test_format(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text
