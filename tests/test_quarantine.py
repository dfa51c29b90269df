"""Quarantine: counted by the scheduler, stored, shown by `sweep status`, `watch` and resume.

The scheduler's accounting is driven directly: outcomes are fed to
``SweepRun.job_ended`` as a gateway would send them, so no Ray cluster or
agent is needed; the store is real SQLite and the CLI runs in process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import sleep_models, write_inventory, write_sweep
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.cli.watch_cmd import render
from orchestrator.jobrunner import Outcome
from orchestrator.scheduler import CONTROLLER_FAILURE_KINDS, NullProgress, SweepRun
from orchestrator.store import Store
from orchestrator.sweeps import create_sweep, load_plan, resume_info, snapshot


def make_sweep(tmp: Path, n_models: int = 6) -> tuple[Store, str]:
    """Two devices with ``n_models`` jobs each; no retries, so each failure ends its job."""
    tmp.mkdir(parents=True, exist_ok=True)
    planned = load_plan(write_sweep(tmp, devices=["dev-a", "dev-b"],
                                    models=sleep_models(tmp, n_models), backend="sleep",
                                    retries=0, pairs=[]),  # no pairs: a job per model
                        write_inventory(tmp, ["dev-a", "dev-b"]))
    store = Store(tmp / "results")
    return store, create_sweep(store, planned, "s1")


def new_run(store: Store, sweep_id: str) -> SweepRun:
    return SweepRun(store, sweep_id, NullProgress(), {}, poll_s=0.1, quarantine_after=3)


def end_next(run: SweepRun, device: str, state: str = "failed",
             error_kind: str | None = "backend-error") -> dict[str, Any]:
    """Start the device's next job as ``launch`` does (without a gateway) and end it."""
    job, attempt, _ = run.queues[device].popleft()
    run.store.start_attempt(run.sweep_id, job["key"], attempt)
    run.running[device] = (job, attempt)
    outcome = Outcome(state, error_kind if state != "done" else None,
                      f"{error_kind} happened" if state != "done" else None,
                      {} if state != "done" else {"ok": True})
    run.job_ended(device, job, attempt, outcome)
    return job


def test_three_failures_in_a_row_quarantine_the_device_and_store_it(tmp_path: Path) -> None:
    store, sid = make_sweep(tmp_path)
    run = new_run(store, sid)
    for _ in range(3):
        end_next(run, "dev-a")
    assert list(run.summary.quarantined) == ["dev-a"]
    assert not run.queues["dev-a"], "the rest of its jobs failed with the reason"
    (q,) = store.quarantines(sid)
    assert q["device"] == "dev-a" and q["error_kind"] == "backend-error"
    assert "backend-error happened" in q["reason"] and q["at"] > 0 and q["lifted_at"] is None
    kinds = [r["error_kind"] for r in store.jobs(sid) if r["device"] == "dev-a"]
    assert kinds == ["backend-error"] * 3 + ["quarantined"] * 3
    assert len(run.queues["dev-b"]) == 6, "the other device goes on"


def test_device_level_failure_quarantines_at_once(tmp_path: Path) -> None:
    store, sid = make_sweep(tmp_path)
    run = new_run(store, sid)
    end_next(run, "dev-b", error_kind="unreachable")
    assert list(run.summary.quarantined) == ["dev-b"]
    assert [q["device"] for q in store.quarantines(sid)] == ["dev-b"]


@pytest.mark.parametrize("kind", sorted(CONTROLLER_FAILURE_KINDS))
def test_controller_errors_never_count_toward_quarantine(tmp_path: Path, kind: str) -> None:
    store, sid = make_sweep(tmp_path)
    run = new_run(store, sid)
    for _ in range(5):
        end_next(run, "dev-a", error_kind=kind)
    assert not run.summary.quarantined and not store.quarantines(sid)
    assert len(run.queues["dev-a"]) == 1
    # Nor do they reset the device's own count: two real failures before and
    # one after still make three in a row.
    run2 = new_run(*make_sweep(tmp_path / "again"))
    end_next(run2, "dev-a")
    end_next(run2, "dev-a")
    end_next(run2, "dev-a", error_kind=kind)
    assert not run2.summary.quarantined
    end_next(run2, "dev-a")
    assert list(run2.summary.quarantined) == ["dev-a"]


def test_count_failure_rules(tmp_path: Path) -> None:
    run = new_run(*make_sweep(tmp_path))
    assert run.count_failure("dev-a", "controller-error") is False
    assert run.count_failure("dev-a", "host-key") is True
    assert [run.count_failure("dev-a", "timeout") for _ in range(3)] == [False, False, True]


def test_quarantine_is_shown_by_status_watch_and_resume_then_lifted(tmp_path: Path) -> None:
    store, sid = make_sweep(tmp_path, n_models=3)
    run = new_run(store, sid)
    for _ in range(3):
        end_next(run, "dev-a")
    for _ in range(3):
        end_next(run, "dev-b", state="done")
    results = str(tmp_path / "results")
    runner = CliRunner()

    status = runner.invoke(app, ["sweep", "status", sid, "-r", results],
                           env={"COLUMNS": "250"})
    assert status.exit_code == 0, status.output
    assert "device quarantines" in status.output and "backend-error happened" in status.output

    snap = snapshot(store, sid)
    by_device = {d["device"]: d for d in snap["devices"]}
    assert "backend-error happened" in by_device["dev-a"]["quarantined"]
    assert by_device["dev-b"]["quarantined"] is None
    watch = runner.invoke(app, ["watch", sid, "-r", results, "--once"], env={"COLUMNS": "250"})
    assert watch.exit_code == 0, watch.output
    assert "quarantined dev-a: [backend-error] backend-error happened" in watch.output

    info = resume_info(store, sid)
    assert (info.done, info.to_run) == (3, 3)
    assert [q["device"] for q in info.quarantines] == ["dev-a"]

    # A resume is the user's fresh try: the quarantined device's failed jobs
    # are queued again, and the earlier quarantine is kept, marked lifted.
    resumed = new_run(store, sid)
    assert len(resumed.queues["dev-a"]) == 3 and "dev-b" not in resumed.queues
    assert store.lift_quarantines(sid, resumed.queues) == 1
    (q,) = store.quarantines(sid)
    assert q["lifted_at"] is not None and not store.quarantines(sid, active_only=True)
    assert all(d["quarantined"] is None for d in snapshot(store, sid)["devices"])
    end_next(resumed, "dev-a", state="done")
    assert "lifted by a later run" in runner.invoke(
        app, ["sweep", "status", sid, "-r", results], env={"COLUMNS": "250"}).output
    assert "quarantined" not in str(render(snapshot(store, sid)).renderables[-2])
