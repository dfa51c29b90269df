"""Sweeps as the CLI, the tests and the benches start and inspect them.

The steps between a sweep file and the scheduler (validate, plan, record in
the store under a fresh id) and the read-only views of a sweep (its status,
what a resume will do, the live snapshot ``edgefarm watch`` draws) live here,
not in the CLI, so a test or a bench calls the same functions the commands do
without importing typer or rich.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.inventory import Inventory
from orchestrator.config.sweep import Sweep, load_sweep_with_inventory, with_synthetic_sources
from orchestrator.errors import SweepBusyError
from orchestrator.planner import Job, plan
from orchestrator.states import JobState, SweepState
from orchestrator.store import Store

__all__ = ["Planned", "ResumeInfo", "create_sweep", "job_record", "load_plan", "new_sweep_id",
           "own_sweep", "resume_info", "snapshot", "sweep_lock_path"]


def new_sweep_id() -> str:
    """A sweep id that sorts by start time and stays unique within a second (random suffix)."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def job_record(job: Job) -> dict[str, Any]:
    """What the store keeps of a planned job (the scheduler reads it back)."""
    record = job.model_dump(mode="json")
    record.update(key=job.key, arch=job.model_arch, agent_spec=job.to_agent_spec())
    return record


@dataclass(frozen=True)
class Planned:
    """A validated sweep and inventory and the jobs they expand to."""

    sweep: Sweep
    inventory: Inventory
    jobs: list[Job]
    sweep_path: Path
    inventory_path: Path


def load_plan(sweep_file: Path, inventory_file: Path, synthetic: bool = False) -> Planned:
    """Validate both files (ConfigError with file:line otherwise) and plan the jobs.

    ``synthetic``: every model with a ``synthetic`` preset runs that instead of its file.
    """
    sweep, inventory = load_sweep_with_inventory(sweep_file, inventory_file, synthetic)
    return Planned(sweep, inventory, plan(sweep, inventory), Path(sweep_file),
                   Path(inventory_file))


def create_sweep(store: Store, planned: Planned, sweep_id: str | None = None) -> str:
    """Record a planned sweep and all its jobs in one transaction; return its id."""
    sweep_id = sweep_id or new_sweep_id()
    store.create_sweep(sweep_id, planned.sweep.name, planned.sweep.model_dump(mode="json"),
                       planned.inventory.model_dump(mode="json", exclude_unset=True),
                       [job_record(j) for j in planned.jobs],
                       sweep_path=str(planned.sweep_path.absolute()),
                       inventory_path=str(planned.inventory_path.absolute()))
    return sweep_id


#: Where the per-sweep owner locks live, under the results directory.
LOCKS_SUBDIR = "locks"

#: Sweep locks this process holds, by lock path: ``[fd, depth]``. flock locks
#: belong to an open file description, so a second ``open`` + ``flock`` of the
#: same file in this process would refuse itself; the CLI takes the lock before
#: it prints anything and ``run_sweep`` takes it again for library callers.
_held: dict[Path, list[int]] = {}
_held_guard = threading.Lock()


def sweep_lock_path(results_dir: Path, sweep_id: str) -> Path:
    """The lock file that says which controller runs ``sweep_id``."""
    return Path(results_dir) / LOCKS_SUBDIR / f"{sweep_id}.lock"


def _read_owner(path: Path) -> tuple[str, int | None]:
    """``(host, pid)`` written by the lock's holder; ``("", None)`` if not written yet."""
    for _ in range(20):  # the holder writes right after it locks: give it a moment
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        host, _, pid = text.rpartition(":")
        if host and pid.isdigit():
            return host, int(pid)
        time.sleep(0.05)
    return "", None


@contextmanager
def own_sweep(results_dir: Path, sweep_id: str) -> Iterator[None]:
    """Be the one controller of ``sweep_id`` for the ``with`` block, or raise SweepBusyError.

    Why an OS lock (``flock`` on ``<results>/locks/<sweep_id>.lock``, taken
    without blocking) and not an owner row with a heartbeat in the store: the
    kernel drops the lock the moment its process dies, however it dies
    (``kill -9`` included), so a dead owner is taken over at once and there
    is no heartbeat age to guess, no clock to trust and no window where two
    controllers both think they own it. A second live controller (``sweep
    resume`` during a ``run``, two resumes) is refused before it writes a row
    or touches a device lease, so it can no longer find the devices leased by
    its own sweep and quarantine them. The holder writes ``host:pid`` into the
    file only for the refusal message. The fd is not inheritable (PEP 446) and
    Ray and the local transport start children with ``subprocess``, so no
    child keeps the lock after the controller dies. Limit: flock is as good as
    the results directory's file system; on NFS it may not be honoured across
    hosts.
    """
    path = sweep_lock_path(results_dir, sweep_id).resolve()
    with _held_guard:
        if path in _held:
            _held[path][1] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[path][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            host, pid = _read_owner(path)
            raise SweepBusyError(sweep_id, host, pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
        with _held_guard:
            _held[path] = [fd, 1]
        try:
            yield
        finally:
            with _held_guard:
                del _held[path]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


@dataclass(frozen=True)
class ResumeInfo:
    """What ``sweep resume`` will do, said before it starts."""

    done: int
    to_run: int
    #: Quarantines of earlier runs; a resume tries those devices again.
    quarantines: list[dict[str, Any]]
    #: Why the files the sweep was planned from no longer match its stored plan
    #: (a resume runs the stored plan); None when they match or are gone.
    drift: str | None = None


def resume_info(store: Store, sweep_id: str) -> ResumeInfo:
    """Counts and earlier quarantines of a sweep about to be resumed (UnknownSweepError if none)."""
    row = store.sweep(sweep_id)
    counts = store.job_counts(sweep_id)
    done = counts[JobState.DONE]
    return ResumeInfo(done, sum(counts.values()) - done,
                      [dict(r) for r in store.quarantines(sweep_id, active_only=True)],
                      plan_drift(row))


def plan_drift(row: Any) -> str | None:
    """Has the sweep or inventory file changed since this sweep was planned? Say how.

    A resume runs the plan stored with the sweep, whatever the files say now;
    an edited file is worth a warning, since the user may expect the edit to
    count. Files that are gone are not compared (the store has all it needs).
    """
    sweep_path, inventory_path = row["sweep_path"], row["inventory_path"]
    if not sweep_path or not inventory_path or not Path(sweep_path).is_file() \
            or not Path(inventory_path).is_file():
        return None
    try:
        sweep, inventory = load_sweep_with_inventory(Path(sweep_path), Path(inventory_path))
    except Exception as exc:  # any error: the files no longer make the same plan
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{sweep_path} or {inventory_path} no longer validates ({first})"
    stored = json.loads(row["sweep_json"])
    if sweep.model_dump(mode="json") != stored:
        try:  # planned with --synthetic: the stored sweep runs the stand-ins
            synthetic = with_synthetic_sources(sweep).model_dump(mode="json")
        except Exception:  # noqa: BLE001  (a model without a stand-in: not that case)
            synthetic = None
        if synthetic == stored:
            sweep = with_synthetic_sources(sweep)
    changed = [str(path) for path, now, then in (
        (sweep_path, sweep.model_dump(mode="json"), row["sweep_json"]),
        (inventory_path, inventory.model_dump(mode="json", exclude_unset=True),
         row["inventory_json"])) if now != json.loads(then)]
    return f"{' and '.join(changed)} changed since the sweep was planned" if changed else None


def snapshot(store: Store, sweep_id: str) -> dict[str, Any]:
    """What ``edgefarm watch`` shows, read from the store (a plain dict, easy to test).

    One entry per device with its progress, current job, phase, last decode
    rate and power, and ``quarantined`` (the reason) while a quarantine from
    this or an earlier run has not been lifted by a later run.
    """
    sweep = store.sweep(sweep_id)
    quarantined = {q["device"]: q["reason"] for q in store.quarantines(sweep_id,
                                                                        active_only=True)}
    devices: dict[str, dict[str, Any]] = {}
    rows = store.jobs(sweep_id)
    for row in rows:
        dev = devices.setdefault(row["device"], {"device": row["device"], "done": 0,
                                                 "total": 0, "job": "", "phase": "idle",
                                                 "decode_tps": None, "power_w": None,
                                                 "failed": 0,
                                                 "quarantined": quarantined.get(row["device"])})
        dev["total"] += 1
        dev["done"] += row["state"] == JobState.DONE
        dev["failed"] += row["state"] in (JobState.FAILED, JobState.CANCELLED)
        if row["state"] != JobState.RUNNING:
            continue
        spec = json.loads(row["spec_json"])
        dev["job"] = f"{row['model_id']} p{spec['prompt_tokens']}/g{spec['gen_tokens']}"
        for ev in store.recent_events(sweep_id, row["key"], row["attempts"]):
            if ev["kind"] == "phase" and dev["phase"] == "idle":
                dev["phase"] = ev.get("phase", "?")
            elif ev["kind"] == "repetition" and dev["decode_tps"] is None \
                    and not ev.get("warmup"):
                dev["decode_tps"] = ev.get("decode_tps")
            elif ev["kind"] == "sample" and dev["power_w"] is None:
                dev["power_w"] = ev.get("total_w")
    return {"sweep_id": sweep_id, "name": sweep["name"], "state": sweep["state"],
            "counts": store.job_counts(sweep_id), "devices": list(devices.values()),
            "eta_s": _seconds_left(rows, sweep["state"], set(quarantined))}


def _seconds_left(rows: list[Any], state: str, quarantined: set[str]) -> float | None:
    """The sweep's estimated time left (``orchestrator/eta.py``), from its jobs' stored times."""
    import time

    from orchestrator.eta import EtaTracker

    if state != SweepState.RUNNING:
        return None
    tracker = EtaTracker()
    pending: dict[str, int] = {}
    running: dict[str, float] = {}
    now = time.time()
    for row in rows:
        if row["state"] == JobState.DONE and row["started_at"] and row["finished_at"]:
            tracker.observe(row["device"], row["finished_at"] - row["started_at"])
        elif row["state"] == JobState.PENDING:
            pending[row["device"]] = pending.get(row["device"], 0) + 1
        elif row["state"] == JobState.RUNNING and row["started_at"]:
            running[row["device"]] = now - row["started_at"]
    return tracker.seconds_left(pending, running, skip=quarantined)
