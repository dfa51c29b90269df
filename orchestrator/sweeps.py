"""Sweeps as the CLI, the tests and the benches start and inspect them.

The steps between a sweep file and the scheduler (validate, plan, record in
the store under a fresh id) and the read-only views of a sweep (its status,
what a resume will do, the live snapshot ``edgefarm watch`` draws) live here,
not in the CLI, so a test or a bench calls the same functions the commands do
without importing typer or rich.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.inventory import Inventory
from orchestrator.config.sweep import Sweep, load_sweep_with_inventory
from orchestrator.planner import Job, plan
from orchestrator.states import JobState
from orchestrator.store import Store

__all__ = ["Planned", "ResumeInfo", "create_sweep", "job_record", "load_plan", "new_sweep_id",
           "resume_info", "snapshot"]


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


def load_plan(sweep_file: Path, inventory_file: Path) -> Planned:
    """Validate both files (ConfigError with file:line otherwise) and plan the jobs."""
    sweep, inventory = load_sweep_with_inventory(sweep_file, inventory_file)
    return Planned(sweep, inventory, plan(sweep, inventory), Path(sweep_file),
                   Path(inventory_file))


def create_sweep(store: Store, planned: Planned, sweep_id: str | None = None) -> str:
    """Record a planned sweep and all its jobs in one transaction; return its id."""
    sweep_id = sweep_id or new_sweep_id()
    store.create_sweep(sweep_id, planned.sweep.name, planned.sweep.model_dump(mode="json"),
                       planned.inventory.model_dump(mode="json", exclude_unset=True),
                       [job_record(j) for j in planned.jobs],
                       sweep_path=str(planned.sweep_path),
                       inventory_path=str(planned.inventory_path))
    return sweep_id


@dataclass(frozen=True)
class ResumeInfo:
    """What ``sweep resume`` will do, said before it starts."""

    done: int
    to_run: int
    #: Quarantines of earlier runs; a resume tries those devices again.
    quarantines: list[dict[str, Any]]


def resume_info(store: Store, sweep_id: str) -> ResumeInfo:
    """Counts and earlier quarantines of a sweep about to be resumed (UnknownSweepError if none)."""
    store.sweep(sweep_id)
    counts = store.job_counts(sweep_id)
    done = counts[JobState.DONE]
    return ResumeInfo(done, sum(counts.values()) - done,
                      [dict(r) for r in store.quarantines(sweep_id, active_only=True)])


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
    for row in store.jobs(sweep_id):
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
            "counts": store.job_counts(sweep_id), "devices": list(devices.values())}
