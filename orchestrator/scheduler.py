"""The driver's scheduling loop: jobs from the store, to gateways, events back to the store.

Rules it keeps:

* exactly one job at a time per device, devices in parallel;
* events are written to the store as they arrive, before anything else
  looks at them, so a killed controller loses nothing it had received;
* a failed attempt is retried per the sweep's ``retries`` while the rest of
  the sweep goes on; the job keeps its last reason;
* a job that was running when a previous controller died is *re-attached*
  (same attempt, same job directory on the device), not run again; so is a
  job whose last attempt the controller lost track of (``COLLECTABLE_KINDS``:
  the link, the deadline or a cancel came between it and the agent's end):
  its result, if the device has one, is collected; if not, it runs again;
* a device that is unreachable, refuses its host key or login, is leased by
  another controller, or fails ``quarantine_after`` jobs in a row is
  quarantined: its remaining jobs fail with that reason, the others go on.
  The quarantine is recorded in the store (``sweep status``, ``watch`` and
  ``sweep resume`` show it); a later run (a resume) tries the device again
  and marks the earlier quarantine lifted;
* a ``controller-error`` (the controller itself failed, not the device)
  never counts toward a quarantine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

from agents.protocol import (
    ERR_CANCELLED,
    ERR_CONTROLLER,
    ERR_TIMEOUT,
    ERR_TRANSPORT,
    ERR_UNREACHABLE,
    JobSpec,
)
from orchestrator.bundle import build as build_bundle
from orchestrator.config.inventory import Device, Inventory
from orchestrator.deadline import Deadline
from orchestrator.errors import DEVICE_FAILURE_KINDS, EdgefarmError, StoreError, StoreFullError
from orchestrator.gateway import remote_gateway
from orchestrator.jobrunner import Outcome
from orchestrator.messages import GatewayMessage, StartJob
from orchestrator.states import JobState, SweepState
from orchestrator.store import Store
from orchestrator.sweeps import own_sweep
from orchestrator.transport.settings import (
    DEFAULT_MAX_RUNNING,
    GatewaySettings,
    TransportSettings,
)

log = logging.getLogger("edgefarm.scheduler")

#: Failure kinds that say nothing about the device: the controller itself
#: failed (a bug, a full disk on the controller). Counting them would
#: quarantine a healthy device for the controller's fault.
CONTROLLER_FAILURE_KINDS = frozenset({ERR_CONTROLLER})


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

    def device_warning(self, device: str, message: str) -> None:
        pass


@dataclass
class Summary:
    """What a run of the scheduler did."""

    sweep_id: str
    counts: dict[str, int]
    failed: list[dict[str, Any]] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
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


#: Why an attempt may have ended on the controller's side while the job went
#: on to finish on the device: ``resume`` looks in its job directory first.
COLLECTABLE_KINDS = frozenset({ERR_UNREACHABLE, ERR_TRANSPORT, ERR_TIMEOUT, ERR_CANCELLED,
                               ERR_CONTROLLER})


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
        with single_node_ray():
            ray.init(resources={site_resource(s): 1000 for s in sites},
                     include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, _node_ip_address="127.0.0.1",
                     _system_config=RAY_SYSTEM_CONFIG)


class MissingSiteNode(EdgefarmError):
    """A site of the sweep has no Ray node to run its gateway on (bad setup: exit 2)."""

    exit_code = 2


def check_site_nodes(sites: list[str]) -> None:
    """Refuse, before any job starts, a sweep whose sites have no Ray node offering them.

    Ray would otherwise keep the site's gateway pending forever, waiting for a
    node with the site's resource.
    """
    import ray

    offered = ray.cluster_resources()
    missing = [s for s in sites if offered.get(site_resource(s), 0) <= 0]
    if missing:
        starts = "; ".join(
            f"ray start --address ADDRESS --resources '{{\"{site_resource(s)}\": 1000}}'"
            for s in missing)
        raise MissingSiteNode(
            f"no Ray node serves site(s) {', '.join(missing)}: start one on a machine that "
            f"reaches the site's devices ({starts}), or change the devices' `site`")


def start_site_gateways(devices: list[Device], ray_address: str | None,
                        settings: GatewaySettings, cache_dir: Path) -> dict[str, Any]:
    """One gateway actor per site of ``devices``, each on a node that offers the site.

    Used by sweeps and by the commands that reach devices outside one
    (``site_ops``). Everything a gateway needs crosses as content (the agent
    bundle's bytes, the known_hosts lines): it may run on a site's own node,
    where no controller path exists.
    """
    import ray

    sites = sorted({d.site for d in devices})
    ensure_ray(sites, ray_address)
    check_site_nodes(sites)
    bundle = build_bundle(cache_dir)
    data = ray.put(bundle.path.read_bytes())
    settings = replace(settings, transport=settings.transport.with_known_hosts_content())
    gateways: dict[str, Any] = {}
    for site in sites:
        members = [d.model_dump(mode="json", exclude_unset=True) for d in devices
                   if d.site == site]
        actor_cls = remote_gateway(max_concurrency=len(members) + 4)
        gateways[site] = actor_cls.options(resources={site_resource(site): 1}).remote(
            site, members, data, bundle.sha256, settings)
    return gateways


@contextlib.contextmanager
def single_node_ray() -> Iterator[None]:
    """Make the Ray that edgefarm starts itself listen on loopback only.

    A controller on a laptop must not open ports to the lab. Ray turns a
    requested 127.0.0.1 into the machine's outward address and then binds
    GCS, raylet and workers to every interface (measured with Ray 2.60:
    ``ss -ltn`` showed ``*:PORT``), unless it runs as a single-node cluster,
    its mode on macOS and Windows, switched by ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    (read when Ray is imported, so the already-imported constant is set too).
    Then its node address is 127.0.0.1 and its servers listen there only.
    Multi-node use joins a cluster with ``--ray-address`` instead (docs/architecture.md).
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"  # the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # this one, where Ray is imported already
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def agent_spec(job: dict[str, Any], device: Device) -> JobSpec:
    """The job.json the agent receives: the planned spec plus the device's own settings."""
    spec = cast(JobSpec, dict(job["agent_spec"]))  # as stored from planner.Job.to_agent_spec
    spec["device"] = {"name": device.name, "models_dir": device.models_dir,
                      "llama_bench": device.llama_bench}
    return spec


class SweepRun:
    """One run of the driver loop over a sweep's jobs that are not done yet."""

    def __init__(self, store: Store, sweep_id: str, progress: Progress,
                 transport_settings: TransportSettings, poll_s: float,
                 quarantine_after: int, max_running: int = DEFAULT_MAX_RUNNING) -> None:
        self.store = store
        self.sweep_id = sweep_id
        self.progress = progress
        self.poll_s = poll_s
        self.max_running = max(1, max_running)
        self.launched: dict[str, int] = {}  # device -> launches so far (fair turns)
        self.launches = 0
        self.quarantine_after = quarantine_after
        self.settings = GatewaySettings(transport_settings,
                                        owner=f"{socket.gethostname()}:{os.getpid()}:{sweep_id}")
        inventory = Inventory.model_validate(json.loads(store.sweep(sweep_id)["inventory_json"]))
        self.devices = {d.name: d for d in inventory.devices}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, deque[tuple[dict[str, Any], int, bool]]] = {}
        last_kinds = store.last_attempt_kinds(sweep_id)
        # Each run gives unfinished jobs a fresh retry budget from their next attempt.
        self.first_attempt: dict[str, int] = {}
        for row in store.jobs(sweep_id):
            if row["state"] == JobState.DONE:
                continue
            job = json.loads(row["spec_json"])
            self.jobs[row["key"]] = job
            # A job left "running" by a controller that died is re-attached:
            # same attempt, same job directory on the device. So is one whose
            # last attempt the controller lost track of: the device may hold
            # its result (an attempt that never started is started there).
            orphan = row["state"] == JobState.RUNNING and row["attempts"] > 0
            lost = row["attempts"] > 0 and last_kinds.get(row["key"]) in COLLECTABLE_KINDS
            reattach = orphan or lost
            attempt = row["attempts"] if reattach else row["attempts"] + 1
            self.queues.setdefault(row["device"], deque()).append((job, attempt, reattach))
            # A re-attached attempt belongs to the earlier run: reading its
            # failure does not use up this run's budget.
            self.first_attempt[row["key"]] = attempt + 1 if reattach else attempt
        self.running: dict[str, tuple[dict[str, Any], int]] = {}
        self.failures_in_a_row: dict[str, int] = {}
        self.summary = Summary(sweep_id, store.job_counts(sweep_id))
        self.gateways: dict[str, Any] = {}
        self.stopping = False

    def start_gateways(self, ray_address: str | None) -> None:
        self.gateways = start_site_gateways([self.devices[d] for d in self.queues],
                                            ray_address, self.settings,
                                            self.store.dir / "agent")

    def launch(self, device: str) -> None:
        import ray

        job, attempt, attach = self.queues[device].popleft()
        self.store.start_attempt(self.sweep_id, job["key"], attempt)
        spec = agent_spec(job, self.devices[device])
        if not attach and attempt > 1:
            # A retry or a resumed job keeps the whole rounds measured before.
            carried = self.store.carried_rounds(self.sweep_id, job["key"], attempt)
            if carried is not None:
                spec["carried"] = carried
        payload: StartJob = {
            "device": device, "sweep_id": self.sweep_id, "job": job["key"], "attempt": attempt,
            "spec": spec, "timeout_s": float(job["timeout_s"]), "attach": attach}
        ray.get(self.gateways[self.devices[device].site].start.remote(payload))
        self.running[device] = (job, attempt)
        self.progress.job_started(job, attempt)

    def handle(self, msg: GatewayMessage) -> None:
        device = msg["device"]
        if msg["type"] == "warning":
            log.warning("%s: %s", device, msg["message"])
            warn = getattr(self.progress, "device_warning", None)
            if warn is not None:
                warn(device, msg["message"])
            return
        job = self.jobs[msg["job"]]
        if msg["type"] == "events":
            self.store.add_agent_events(self.sweep_id, device, msg["events"])
            for ev in msg["events"]:
                self.progress.job_event(job, ev)
            return
        self.job_ended(device, job, msg["attempt"], msg["outcome"])

    def job_ended(self, device: str, job: dict[str, Any], attempt: int,
                  outcome: Outcome) -> None:
        key = job["key"]
        self.running.pop(device, None)
        self.store.end_attempt(self.sweep_id, key, attempt, outcome.state,
                               outcome.error_kind, outcome.error)
        if outcome.state == JobState.DONE:
            self.failures_in_a_row[device] = 0
            self.store.finish_job(self.sweep_id, key, JobState.DONE, attempt,
                                  result=outcome.result)
            self.progress.job_finished(job, JobState.DONE, None, False)
            return
        device_broken = outcome.error_kind in DEVICE_FAILURE_KINDS
        used = attempt - self.first_attempt[key] + 1
        retry = (outcome.state == JobState.FAILED and used <= int(job.get("retries", 0))
                 and not self.stopping and not device_broken)
        if retry:
            self.store.requeue(self.sweep_id, key, outcome.error_kind, outcome.error)
            self.queues[device].appendleft((job, attempt + 1, False))
        else:
            self.fail(device, job, attempt, outcome.state, outcome.error_kind,
                      outcome.error, outcome.result or None)
        self.progress.job_finished(job, outcome.state, outcome.error, retry)
        if outcome.state == JobState.FAILED and not retry \
                and self.count_failure(device, outcome.error_kind):
            self.quarantine(device, f"[{outcome.error_kind}] {outcome.error}",
                            outcome.error_kind)

    def count_failure(self, device: str, error_kind: str | None) -> bool:
        """Count a job that failed for good against its device; say whether to quarantine it.

        A device-level kind quarantines at once; a controller-side failure is
        not the device's and leaves its count alone; anything else counts
        toward ``quarantine_after`` failures in a row.
        """
        if error_kind in CONTROLLER_FAILURE_KINDS:
            return False
        if error_kind in DEVICE_FAILURE_KINDS:
            return True
        self.failures_in_a_row[device] = self.failures_in_a_row.get(device, 0) + 1
        return self.failures_in_a_row[device] >= self.quarantine_after

    def fail(self, device: str, job: dict[str, Any], attempt: int | None, state: str,
             kind: str | None, error: str | None, result: dict[str, Any] | None = None) -> None:
        self.store.finish_job(self.sweep_id, job["key"], state, attempt, error_kind=kind,
                              error=error, result=result)
        self.summary.failed.append({"key": job["key"], "device": device,
                                    "model": job["model_id"], "state": state,
                                    "error_kind": kind, "error": error})

    def quarantine(self, device: str, reason: str, error_kind: str | None = None) -> None:
        """Stop using a device: its remaining jobs fail with the reason; the rest go on.

        Stored, not only summarised, so ``sweep status``, ``watch`` and a
        later ``sweep resume`` see it too.
        """
        self.summary.quarantined[device] = reason
        self.store.add_quarantine(self.sweep_id, device, error_kind, reason)
        while self.queues[device]:
            job, attempt, _ = self.queues[device].popleft()
            message = f"device {device} quarantined: {reason}"
            self.fail(device, job, None, JobState.FAILED, "quarantined", message)
            self.progress.job_finished(job, JobState.FAILED, message, False)

    def stop(self) -> None:
        import ray

        if not self.stopping:
            self.stopping = True
            ray.get([gw.cancel_all.remote() for gw in self.gateways.values()])

    def poll_once(self, timeout: float) -> None:
        import ray

        for batch in ray.get([gw.poll.remote(timeout) for gw in self.gateways.values()]):
            for msg in batch:
                self.handle(msg)

    def launch_idle(self) -> None:
        """Start a job on every idle device with work, at most ``max_running`` at once.

        Under the cap the device whose last launch is longest ago goes first
        (never launched: first of all), so no device waits behind the same
        others again and again.
        """
        idle = [d for d, q in self.queues.items() if q and d not in self.running]
        idle.sort(key=lambda d: self.launched.get(d, -1))
        for device in idle:
            if len(self.running) >= self.max_running:
                return
            self.launches += 1
            self.launched[device] = self.launches
            self.launch(device)

    def loop(self, should_stop: Callable[[], bool] | None) -> None:
        while self.running or (not self.stopping and any(self.queues.values())):
            if not self.stopping:
                self.launch_idle()
            self.poll_once(self.poll_s)
            if should_stop is not None and should_stop():
                self.stop()

    def drain(self, seconds: float) -> None:
        """After a stop: collect the cancelled jobs' last events and outcomes."""
        deadline = Deadline(seconds)
        while self.running and not deadline.expired:
            self.poll_once(0.5)

    def shutdown(self, release_leases: bool = True) -> None:
        """Stop the gateways (once), releasing the device leases unless told not to.

        Not releasing them keeps other controllers off devices whose jobs go
        on without us (a full disk stopped the sweep); the leases then expire
        after their ttl, and a resume of this sweep takes them over.
        """
        import ray

        gateways, self.gateways = self.gateways, {}
        for actor in gateways.values():
            if release_leases:
                try:
                    ray.get(actor.release_all.remote(), timeout=60)
                except Exception:  # a gateway that cannot release leaves a stale lease (TTL)
                    log.warning("a gateway could not release its leases", exc_info=True)
            ray.kill(actor)


def _stopped_for_full_disk(store: Store, sweep_id: str, exc: StoreFullError) -> StoreFullError:
    """Mark the sweep interrupted if the disk still allows; the error to show the user.

    Running jobs are left to finish on their devices: they stay ``running``
    in the store, so ``resume`` re-attaches to them and collects their results.
    """
    try:
        store.set_sweep_state(sweep_id, SweepState.INTERRUPTED)
        marked = "it is marked interrupted"
    except StoreError:
        marked = "it could not even be marked interrupted (resume works all the same)"
    return StoreFullError(
        f"{exc}, then run: edgefarm sweep resume {sweep_id}. The sweep stopped; {marked}; "
        "jobs that were running finish on their devices and the resume collects them")


def run_sweep(store: Store, sweep_id: str, *, ray_address: str | None = None,
              progress: Progress | None = None, poll_s: float = 1.0,
              should_stop: Callable[[], bool] | None = None,
              transport_settings: TransportSettings | None = None,
              quarantine_after: int = 3, max_running: int | None = None) -> Summary:
    """Run every job of ``sweep_id`` that is not done; return a summary.

    At most ``max_running`` jobs run at once over the whole farm (default
    ``DEFAULT_MAX_RUNNING``): each holds an SSH session and a gateway thread.

    ``should_stop`` is polled once per loop; when it says so the running jobs
    are cancelled and the sweep ends as interrupted (resumable). A sweep whose
    store state says ``cancelling`` (``edgefarm sweep cancel``) stops too.

    The whole run holds the sweep's owner lock (``sweeps.own_sweep``): a
    second controller of the same sweep raises SweepBusyError here before it
    writes anything, so it cannot find this run's device leases and
    quarantine them; a caller that already holds the lock (the CLI) nests.
    """
    with own_sweep(store.dir, sweep_id):
        return _run_owned(store, sweep_id, ray_address, progress, poll_s, should_stop,
                          transport_settings, quarantine_after,
                          max_running or DEFAULT_MAX_RUNNING)


def _run_owned(store: Store, sweep_id: str, ray_address: str | None,
               progress: Progress | None, poll_s: float,
               should_stop: Callable[[], bool] | None,
               transport_settings: TransportSettings | None,
               quarantine_after: int, max_running: int = 0) -> Summary:
    """``run_sweep``'s body, run while this process owns the sweep."""
    started = time.monotonic()
    run = SweepRun(store, sweep_id, progress or NullProgress(),
                   transport_settings or TransportSettings(),
                   poll_s, quarantine_after, max_running or DEFAULT_MAX_RUNNING)
    store.set_sweep_state(sweep_id, SweepState.RUNNING)
    # A resume is the user's fresh try: devices quarantined by an earlier run
    # get their jobs again; the earlier quarantine stays on record as lifted.
    store.lift_quarantines(sweep_id, run.queues)
    if run.jobs:
        run.start_gateways(ray_address)

        def stop_requested() -> bool:
            if should_stop is not None and should_stop():
                return True
            return store.sweep(sweep_id)["state"] == SweepState.CANCELLING

        try:
            run.loop(stop_requested)
        except KeyboardInterrupt:
            run.summary.interrupted = True
            try:
                run.stop()
                run.drain(15)
            except KeyboardInterrupt:
                # A second Ctrl-C: stop waiting for the cancelled jobs. The
                # sweep is still marked interrupted below; a resume
                # re-attaches to whatever did not report its end.
                log.warning("second interrupt: not waiting for the cancelled jobs")
        except StoreFullError as exc:
            run.shutdown(release_leases=False)
            raise _stopped_for_full_disk(store, sweep_id, exc) from exc
        finally:
            try:
                run.shutdown()
            except KeyboardInterrupt:
                run.summary.interrupted = True  # and go on to record it
    # Cancelled also when `sweep cancel` gave up waiting and finished the job itself.
    cancelled = store.sweep(sweep_id)["state"] in (SweepState.CANCELLING, SweepState.CANCELLED)
    run.summary.interrupted = run.summary.interrupted or run.stopping
    store.set_sweep_state(sweep_id, SweepState.CANCELLED if cancelled else
                         SweepState.INTERRUPTED if run.summary.interrupted else
                         SweepState.FINISHED)
    run.summary.counts = store.job_counts(sweep_id)
    run.summary.seconds = time.monotonic() - started
    return run.summary
