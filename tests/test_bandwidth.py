"""The agent's memory-bandwidth probe, against an independent copy measured beside it.

``agent probe --bandwidth`` runs as on a device (its own process, standard
library only); the reference is numpy copying arrays of the same size in
this process (``np.copyto``, a different code path to the same memory), best
of as many tries. On a shared machine both move with the neighbours, so the
check is a factor, not a percentage: the two must agree within 2x, and the
figure must be a plausible DRAM copy rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import REPO


def numpy_traffic(size: int, repeats: int = 5) -> float:
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * size / best


def test_probe_bandwidth_agrees_with_an_independent_copy() -> None:
    done = subprocess.run([sys.executable, "-m", "agents", "probe", "--bandwidth"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=True)
    measured = json.loads(done.stdout)["memory_bandwidth"]
    assert measured["threads"] == 1 and "memmove" in measured["method"]
    assert [s["bytes"] for s in measured["sizes"]] == [128 * 2**20, 256 * 2**20]
    traffic = measured["traffic_bytes_per_s"]
    assert measured["copy_bytes_per_s"] == traffic / 2
    reference = numpy_traffic(256 * 2**20)
    assert 0.5 < traffic / reference < 2.0, (traffic / 1e9, reference / 1e9)
    assert 1e9 < traffic < 2e12  # GB/s to TB/s: DRAM, not a cache or a broken timer


def test_jobs_measure_once_per_boot_and_reuse_the_figure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job's hello carries the bandwidth; only the first job of a boot pays for it."""
    from agents import bandwidth

    calls: list[int] = []
    real = bandwidth.measure

    def counted(*args: Any, **kwargs: Any) -> dict[str, object]:
        calls.append(1)
        return real(sizes=(16 * 2**20,), repeats=1)

    monkeypatch.setattr(bandwidth, "measure", counted)
    cache = tmp_path / "cache" / "bandwidth.json"
    first = bandwidth.cached_measure(str(cache))
    again = bandwidth.cached_measure(str(cache))
    assert first["cached"] is False and again["cached"] is True and len(calls) == 1
    assert again["traffic_bytes_per_s"] == first["traffic_bytes_per_s"]
    assert again["measured_at"] == first["measured_at"]
    # Another boot (the cache says so): measured afresh.
    stored = json.loads(cache.read_text())
    stored["boot_id"] = "another-boot"
    cache.write_text(json.dumps(stored))
    assert bandwidth.cached_measure(str(cache))["cached"] is False and len(calls) == 2
    # A corrupt cache is measured over, not trusted.
    cache.write_text("{not json")
    assert bandwidth.cached_measure(str(cache))["cached"] is False and len(calls) == 3
