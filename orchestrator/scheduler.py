"""The driver's scheduling loop: jobs from the store, to gateways, events back to the store.

Rules it keeps:

* exactly one job at a time per device, devices in parallel;
* events are written to the store as they arrive, before anything else
  looks at them, so a killed controller loses nothing it had received;
* a failed attempt is retried per the sweep's ``retries`` while the rest of
  the sweep goes on; the job keeps its last reason;
* a job that was running when a previous controller died is *re-attached*
  (same attempt, same job directory on the device), not run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.bundle import build as build_bundle
from orchestrator.config.inventory import Device, Inventory
from orchestrator.gateway import remote_gateway
from orchestrator.store import Store

log = logging.getLogger("edgefarm.scheduler")


class Progress(Protocol):
    """What the scheduler reports while it runs (the CLI draws it with rich)."""

    def job_started(self, job: dict[str, Any], attempt: int) -> None: ...

    def job_event(self, job: dict[str, Any], event: dict[str, Any]) -> None: ...

    def job_finished(self, job: dict[str, Any], state: str, error: str | None,
                     retrying: bool) -> None: ...


class NullProgress:
    """Progress that shows nothing (library use, tests)."""

    def job_started(self, job: dict[str, Any], attempt: int) -> None:
        pass

    def job_event(self, job: dict[str, Any], event: dict[str, Any]) -> None:
        pass

    def job_finished(self, job: dict[str, Any], state: str, error: str | None,
                     retrying: bool) -> None:
        pass


@dataclass
class Summary:
    """What a run of the scheduler did."""

    sweep_id: str
    counts: dict[str, int]
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False


#: Ray normally kills what its workers leave behind. Agents started by the
#: local transport are meant to outlive the controller (detached jobs that a
#: resume re-attaches to), so the raylet must leave them alone. Nodes joined
#: with ``--ray-address`` need the same settings at ``ray start`` (docs).
#:
#: The rest keeps Ray quiet: on a small board or a 2-core controller that is
#: also the device under test, every background wake-up steals time from the
#: benchmark (bench/harness_overhead.py measures this). edgefarm needs no idle
#: workers, no Ray-internal metrics and no task-event timeline.
RAY_SYSTEM_CONFIG = {
    "kill_child_processes_on_worker_exit": False,
    "kill_child_processes_on_worker_exit_with_raylet_subreaper": False,
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
    "enable_metrics_collection": False,
    "task_events_report_interval_ms": 0,
}


def site_resource(site: str) -> str:
    """The Ray custom resource that marks the node able to reach ``site``'s devices."""
    return f"edgefarm-site:{site}"


def ensure_ray(sites: list[str], address: str | None) -> None:
    """Start Ray on this machine (declaring every site here) or join ``address``."""
    import ray

    if ray.is_initialized():
        return
    # Ray announces on every start that it enabled token authentication (it
    # did, and we keep it); users of a benchmark CLI need not read that.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        # Loopback only: a controller on a laptop must not open ports to the lab.
        ray.init(resources={site_resource(s): 1000 for s in sites}, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False,
                 _node_ip_address="127.0.0.1", _system_config=RAY_SYSTEM_CONFIG)


def agent_spec(job: dict[str, Any], device: Device) -> dict[str, Any]:
    """The job.json the agent receives: the planned spec plus the device's own settings."""
    spec = dict(job["agent_spec"])
    spec["device"] = {"name": device.name, "models_dir": device.models_dir,
                      "llama_bench": device.llama_bench}
    return spec


def run_sweep(store: Store, sweep_id: str, *, ray_address: str | None = None,
              progress: Progress | None = None, poll_s: float = 1.0,
              should_stop: Callable[[], bool] | None = None) -> Summary:
    """Run every job of ``sweep_id`` that is not done; return a summary."""
    import ray

    progress = progress or NullProgress()
    started = time.monotonic()
    sweep_row = store.sweep(sweep_id)
    inventory = Inventory.model_validate(json.loads(sweep_row["inventory_json"]))
    devices = {d.name: d for d in inventory.devices}
    rows = store.jobs(sweep_id)
    todo = [r for r in rows if r["state"] != "done"]
    jobs: dict[str, dict[str, Any]] = {}
    queues: dict[str, deque[tuple[dict[str, Any], int, bool]]] = {}
    for row in todo:
        job = json.loads(row["spec_json"])
        jobs[row["key"]] = job
        orphan = row["state"] == "running" and row["attempts"] > 0
        attempt = row["attempts"] if orphan else row["attempts"] + 1
        queues.setdefault(row["device"], deque()).append((job, attempt, orphan))
    # Each resume gives failed jobs a fresh retry budget from their next attempt.
    first_attempt = {job["key"]: attempt for q in queues.values() for job, attempt, _ in q}

    store.set_sweep_state(sweep_id, "running")
    summary = Summary(sweep_id, store.job_counts(sweep_id))
    if not jobs:
        store.set_sweep_state(sweep_id, "finished")
        return summary

    sites = sorted({devices[d].site for d in queues})
    ensure_ray(sites, ray_address)
    bundle = build_bundle(store.dir / "agent")
    gateways: dict[str, Any] = {}
    for site in sites:
        members = [devices[d].model_dump(mode="json", exclude_unset=True)
                   for d in queues if devices[d].site == site]
        actor_cls = remote_gateway(max_concurrency=len(members) + 4)
        gateways[site] = actor_cls.options(resources={site_resource(site): 1}).remote(
            site, members, str(bundle.path), bundle.sha256)

    running: dict[str, tuple[dict[str, Any], int]] = {}
    stopping = False

    def launch(device: str) -> None:
        job, attempt, attach = queues[device].popleft()
        store.start_attempt(sweep_id, job["key"], attempt)
        site = devices[device].site
        ray.get(gateways[site].start.remote({
            "device": device, "sweep_id": sweep_id, "job": job["key"], "attempt": attempt,
            "spec": agent_spec(job, devices[device]), "timeout_s": job["timeout_s"],
            "attach": attach}))
        running[device] = (job, attempt)
        progress.job_started(job, attempt)

    def handle(msg: dict[str, Any]) -> None:
        device = msg["device"]
        job = jobs[msg["job"]]
        if msg["type"] == "events":
            store.add_events(sweep_id, device, msg["events"])
            for ev in msg["events"]:
                progress.job_event(job, ev)
            return
        outcome = msg["outcome"]
        attempt = msg["attempt"]
        running.pop(device, None)
        store.end_attempt(sweep_id, job["key"], attempt, outcome["state"],
                          outcome["error_kind"], outcome["error"])
        if outcome["state"] == "done":
            store.finish_job(sweep_id, job["key"], "done", attempt, result=outcome["result"])
            progress.job_finished(job, "done", None, False)
            return
        used = attempt - first_attempt[job["key"]] + 1
        retry = outcome["state"] == "failed" and used <= int(job.get("retries", 0)) \
            and not stopping
        if retry:
            store.requeue(sweep_id, job["key"], outcome["error_kind"], outcome["error"])
            queues[device].appendleft((job, attempt + 1, False))
        else:
            store.finish_job(sweep_id, job["key"], outcome["state"], attempt,
                             error_kind=outcome["error_kind"], error=outcome["error"],
                             result=outcome["result"] or None)
            summary.failed.append({"key": job["key"], "device": device,
                                   "model": job["model_id"], "error_kind": outcome["error_kind"],
                                   "error": outcome["error"]})
        progress.job_finished(job, outcome["state"], outcome["error"], retry)

    try:
        while running or (not stopping and any(queues.values())):
            if not stopping:
                for device, q in queues.items():
                    if q and device not in running:
                        launch(device)
            polls = [gw.poll.remote(poll_s) for gw in gateways.values()]
            for batch in ray.get(polls):
                for msg in batch:
                    handle(msg)
            if should_stop is not None and should_stop() and not stopping:
                stopping = True
                ray.get([gw.cancel_all.remote() for gw in gateways.values()])
    except KeyboardInterrupt:
        summary.interrupted = True
        ray.get([gw.cancel_all.remote() for gw in gateways.values()])
        deadline = time.monotonic() + 15
        while running and time.monotonic() < deadline:
            for batch in ray.get([gw.poll.remote(0.5) for gw in gateways.values()]):
                for msg in batch:
                    handle(msg)
    summary.interrupted = summary.interrupted or stopping
    store.set_sweep_state(sweep_id, "interrupted" if summary.interrupted else "finished")
    for actor in gateways.values():
        ray.kill(actor)
    summary.counts = store.job_counts(sweep_id)
    summary.seconds = time.monotonic() - started
    return summary
