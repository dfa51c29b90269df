"""Finished work is collected, never run again (issue 10, item 2).

A job that finishes on a device while the controller cannot reach it is
still done: past its deadline the controller collects the result once the
link is back, and after the device's grace period a ``resume`` collects it
from the job directory instead of starting a second attempt. Real parts: a
real sshd "device" on 127.0.0.1 whose listener and sessions are killed (the
detached agent keeps running, as on a real board), real Ray, real SQLite.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from helpers import counted_per_job, sleep_models, write_ssh_inventory, write_sweep
from test_scheduler import start

from orchestrator.scheduler import run_sweep
from orchestrator.transport.settings import TransportSettings

#: One model, 4 repetitions of 1 s each (the test-only sleep backend), no
#: warm-up: the job takes ~4 s on the device, its deadline is 2 s.
JOB = {"backend": "sleep", "warmup": 0, "repetitions": 4, "timeout_s": 2, "retries": 0,
       "pairs": [], "matrix": {"prompt_tokens": 1, "gen_tokens": 1000, "threads": 1,
                               "gpu_layers": 0}}


def down_while_the_job_finishes(dev: Any, job_dir: Path, down_s: float) -> threading.Thread:
    """Kill the device's sshd once the job runs there; start it again after ``down_s``."""

    def cut() -> None:
        deadline = time.monotonic() + 60
        while not (job_dir / "agent.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        dev.kill()
        time.sleep(down_s)
        dev.start()

    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    return thread


def counted(store: Any, sweep_id: str) -> int:
    return sum(counted_per_job(store.path, sweep_id).values())


def one_job_on(name: str, tmp_path: Path, sshd_devices: Any) -> tuple[Any, Path, Any, Path]:
    """One sshd device running the ``JOB``: the device, known_hosts, store, attempt 1's dir."""
    (dev,) = sshd_devices(name)
    inv, known = write_ssh_inventory(tmp_path, [dev])
    sweep = write_sweep(tmp_path, devices=[name], models=sleep_models(tmp_path, 1), **JOB)
    store = start(tmp_path, sweep, inv)
    (row,) = store.jobs("s1")
    return dev, known, store, dev.work_dir / "jobs" / "s1" / f"{row['key']}-a1"


def test_past_the_deadline_the_result_is_collected_when_the_link_returns(
        tmp_path: Path, sshd_devices: Any, ray_cluster: Any) -> None:
    """Down from the job's start until after it finished (and past its 2 s deadline)."""
    dev, known, store, a1 = one_job_on("slow-link", tmp_path, sshd_devices)
    cutter = down_while_the_job_finishes(dev, a1, down_s=6)
    summary = run_sweep(store, "s1", poll_s=0.2,
                        transport_settings=TransportSettings(str(known), unreachable_after_s=60))
    cutter.join()
    (row,) = store.jobs("s1")
    assert (row["state"], row["attempts"]) == ("done", 1), summary.failed
    assert not summary.quarantined
    assert counted(store, "s1") == 4
    assert not (a1.parent / f"{row['key']}-a2").exists(), "the job ran a second time"


def test_resume_collects_a_job_that_finished_while_the_device_was_gone(
        tmp_path: Path, sshd_devices: Any, ray_cluster: Any) -> None:
    """Down past the device's 3 s grace: the run gives up; ``resume`` collects, runs nothing."""
    dev, known, store, a1 = one_job_on("gone-a-while", tmp_path, sshd_devices)
    settings = TransportSettings(str(known), unreachable_after_s=3)
    cutter = down_while_the_job_finishes(dev, a1, down_s=10)
    first = run_sweep(store, "s1", poll_s=0.2, transport_settings=settings)
    (row,) = store.jobs("s1")
    assert row["state"] == "failed" and row["error_kind"] == "unreachable", dict(row)
    assert list(first.quarantined) == ["gone-a-while"]
    cutter.join()

    resumed = run_sweep(store, "s1", poll_s=0.2, transport_settings=settings)
    (row,) = store.jobs("s1")
    assert (row["state"], row["attempts"], row["ok_attempt"]) == ("done", 1, 1), \
        resumed.failed
    assert counted(store, "s1") == 4
    assert not (a1.parent / f"{row['key']}-a2").exists(), "resume ran the job again"
