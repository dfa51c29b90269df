"""One Gateway per inventory site: the Ray actor that talks to that site's devices.

Why per site and not per device: a Ray actor is a worker process of 100+ MB
that takes a while to start, so one per device does not scale to a farm; one
per site (the Ray node that can reach a group of devices) does. Inside the
actor each running job has its own thread, and the gateway refuses a second
job for a busy device, so a device never runs two jobs at once.

The driver calls ``start`` for a job and long-polls ``poll`` for messages:

* ``{"type": "events", "device", "job", "attempt", "events": [...]}`` as the
  agent writes them;
* ``{"type": "end", "device", "job", "attempt", "outcome": {...}}`` once;
* ``{"type": "warning", "device", "message"}`` for things the user should see
  (a stale lease taken over).

Before a device's first job the gateway takes the device's lease (a file the
agent manages on the device) and refreshes it until ``release_all``. The lease
is taken by the job's own start (one exec over ssh, not two); a lease held by
a controller that died on this host is taken over, one held elsewhere fails
the job as ``device-leased``.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from typing import Any

from agents.pids import pid_alive
from agents.protocol import ERR_CONTROLLER
from orchestrator.agent_client import AgentClient, LeaseRefused, LeaseRequest
from orchestrator.bundle import materialize
from orchestrator.errors import LeaseError, TransportError
from orchestrator.jobrunner import Outcome, run_attempt
from orchestrator.messages import Event, GatewayMessage, StartJob
from orchestrator.transport import GatewaySettings, make_transport

log = logging.getLogger("edgefarm.gateway")


def holder_is_dead(holder: str) -> bool:
    """Is a lease holder (``host:pid:sweep``) a controller process that died on this host?

    A heartbeat can be fresh for up to its ttl after a controller is killed;
    when the holder ran on this very host, its pid tells at once.
    """
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return not pid_alive(int(pid_text))


def same_sweep(holder: str, owner: str) -> bool:
    """Do two lease owners (``host:pid:sweep``) name the same sweep, from different processes?"""
    mine, _, sweep = owner.rpartition(":")
    theirs, _, other = holder.rpartition(":")
    return bool(sweep) and sweep == other and mine != theirs and mine.count(":") == 1


class Gateway:
    """Runs jobs on the devices of one site. Plain class; ``remote_gateway`` wraps it for Ray."""

    def __init__(self, site: str, devices: list[dict[str, Any]], bundle: bytes | str,
                 bundle_sha256: str, settings: GatewaySettings | None = None) -> None:
        from orchestrator.config.inventory import Device

        self.site = site
        self.devices = {d["name"]: Device.model_validate(d) for d in devices}
        # Bytes when the gateway may run on another Ray node (the controller's
        # files are not there): written to this node's cache, checked by hash.
        if isinstance(bundle, bytes):
            bundle = str(materialize(bundle, bundle_sha256).path)
        self.bundle_path = bundle
        self.bundle_sha256 = bundle_sha256
        self.settings = settings or GatewaySettings()
        self.owner = self.settings.owner or f"{socket.gethostname()}:{os.getpid()}"
        self.lease_ttl = self.settings.lease_ttl_s
        self.leased: set[str] = set()
        self.refresher: threading.Thread | None = None
        self.closing = threading.Event()
        self.outbox: queue.Queue[GatewayMessage] = queue.Queue()
        self.busy: dict[str, threading.Thread] = {}
        self.stops: dict[str, threading.Event] = {}
        self.clients: dict[str, AgentClient] = {}
        self.connecting: dict[str, threading.Lock] = {}  # one per device, held while connecting
        self.connect_slots = threading.BoundedSemaphore(max(1, self.settings.max_connects))
        self.lock = threading.Lock()

    def _client(self, device: str) -> AgentClient:
        """The device's agent client over a connected transport, connecting on first use.

        Devices connect side by side: only calls for the same device wait for
        each other (a cold site's connections are not queued behind one lock).
        """
        with self.lock:
            client = self.clients.get(device)
            if client is not None:
                return client
            device_lock = self.connecting.setdefault(device, threading.Lock())
        with device_lock:
            with self.lock:
                client = self.clients.get(device)
            if client is None:
                transport = make_transport(self.devices[device], self.settings.transport)
                with self.connect_slots:  # at most max_connects set-ups at once per site
                    transport.connect()
                client = AgentClient(transport, self.devices[device].work_dir, self.bundle_path,
                                     self.bundle_sha256)
                with self.lock:
                    self.clients[device] = client
            return client

    def start(self, payload: StartJob) -> None:
        """Start one attempt: payload has device, sweep_id, job (key), attempt, spec, timeout_s."""
        device = payload["device"]
        if device not in self.devices:
            raise KeyError(f"gateway {self.site!r} has no device {device!r}")
        with self.lock:
            running = self.busy.get(device)
            if running is not None and running.is_alive():
                raise RuntimeError(f"device {device} is already running a job")
            stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(payload, stop), daemon=True,
                                      name=f"job-{device}")
            self.busy[device] = thread
            self.stops[device] = stop
        thread.start()

    def _run(self, payload: StartJob, stop: threading.Event) -> None:
        device, key, attempt = payload["device"], payload["job"], payload["attempt"]

        def forward(events: list[Event]) -> None:
            self.outbox.put({"type": "events", "device": device, "job": key,
                             "attempt": attempt, "events": events})

        try:
            # No round trip here: the agent is uploaded by the first command
            # that finds it missing, and the lease is taken by the job's start.
            client = self._client(device)
            job_dir = client.job_dir(payload["sweep_id"], key, attempt)
            spec = dict(payload["spec"], attempt=attempt)

            def attempt_once(lease: LeaseRequest | None) -> Outcome:
                return run_attempt(client, job_dir, spec, float(payload["timeout_s"]), forward,
                                   stop=stop, attach=bool(payload.get("attach")), lease=lease,
                                   on_lease=lambda answer: self._lease_held(device, answer))

            try:
                outcome = attempt_once(self._lease_request(device))
            except LeaseRefused as refused:
                self._take_over_from_dead(device, client, refused.answer)
                outcome = attempt_once(None)
            client.forget(job_dir)
        except TransportError as exc:  # a broken device fails its job, not the gateway
            log.warning("job %s on %s: %s", key, device, exc)
            outcome = Outcome("failed", exc.kind, str(exc))
            self._drop_transport(device)
        except Exception as exc:  # a bug on this side: recorded, but the device is not blamed
            log.exception("job %s on %s failed in the gateway", key, device)
            outcome = Outcome("failed", ERR_CONTROLLER, f"{type(exc).__name__}: {exc}")
            self._drop_transport(device)
        self.outbox.put({"type": "end", "device": device, "job": key, "attempt": attempt,
                         "outcome": outcome})

    def _drop_transport(self, device: str) -> None:
        """Forget a transport after an error, so the next job connects afresh."""
        with self.lock:
            client = self.clients.pop(device, None)
        if client is not None:
            try:
                client.transport.close()
            except Exception:  # closing a broken link may fail too; nothing to keep
                log.debug("closing the transport of %s failed", device, exc_info=True)

    # -- device leases ------------------------------------------------------------
    def _lease_request(self, device: str) -> LeaseRequest | None:
        """What a device's job must take with its start: the lease, until this gateway holds it."""
        if device in self.leased:
            return None
        return LeaseRequest(self.devices[device].work_dir, self.owner, self.lease_ttl)

    def _take_over_from_dead(self, device: str, client: AgentClient,
                             answer: dict[str, Any]) -> None:
        """The lease is held: take it over if its holder died on this host, or ran this sweep.

        A holder of this same sweep (``host:pid:SWEEP``, another pid) can only
        be an earlier controller of it that is gone: ``sweep run``/``resume``
        hold the sweep's lock (``sweeps.own_sweep``) for as long as they run,
        so no live one can be running it beside us.
        """
        holder = str(answer.get("holder"))
        if holder_is_dead(holder) or same_sweep(holder, self.owner):
            answer = client.lease("takeover", self.devices[device].work_dir, self.owner,
                                  self.lease_ttl)
        if not answer.get("ok"):
            raise LeaseError(
                f"device {device} is in use by another controller ({answer.get('holder')}, "
                f"heartbeat {answer.get('age_s')} s ago); its lease expires "
                f"{self.lease_ttl:g} s after that controller stops refreshing it")
        self._lease_held(device, answer)

    def _lease_held(self, device: str, answer: dict[str, Any]) -> None:
        """The device's lease is ours (``answer`` from the agent): warn of a takeover, refresh."""
        took = answer.get("took_over")
        if isinstance(took, dict):
            self.outbox.put({"type": "warning", "device": device,
                             "message": f"took over the stale lease of {device} from "
                                        f"{took.get('owner')}"})
        with self.lock:
            self.leased.add(device)
            if self.refresher is None:
                self.refresher = threading.Thread(target=self._refresh_leases, daemon=True,
                                                  name="lease-refresh")
                self.refresher.start()

    def _refresh_leases(self) -> None:
        while not self.closing.wait(self.lease_ttl / 3):
            for device in list(self.leased):
                try:
                    self._client(device).lease("refresh", self.devices[device].work_dir,
                                               self.owner, self.lease_ttl)
                except Exception:  # a device that is down is handled by its job
                    log.warning("could not refresh the lease of %s", device, exc_info=True)

    def release_all(self) -> None:
        """Release every lease this gateway holds (end of the sweep)."""
        self.closing.set()
        for device in list(self.leased):
            try:
                self._client(device).lease("release", self.devices[device].work_dir,
                                           self.owner, self.lease_ttl)
            except Exception:
                log.warning("could not release the lease of %s", device, exc_info=True)
        self.leased.clear()

    def poll(self, timeout: float = 0.5, max_messages: int = 1000) -> list[GatewayMessage]:
        """Return the messages waiting, blocking up to ``timeout`` for the first."""
        out: list[GatewayMessage] = []
        try:
            out.append(self.outbox.get(timeout=timeout))
            while len(out) < max_messages:
                out.append(self.outbox.get_nowait())
        except queue.Empty:
            pass
        return out

    def cancel_all(self) -> None:
        """Ask every running job to stop; their ``end`` messages follow."""
        with self.lock:
            for stop in self.stops.values():
                stop.set()

    def ping(self) -> str:
        return self.site

    # -- one-off device operations, run from this site's node ----------------------
    # ``inventory probe``, ``inventory trust`` and ``sweep cancel`` go through the
    # gateway when edgefarm runs on a cluster: a device may be reachable from its
    # site's node only (docs/sites.md).
    def probe(self, device: str) -> Any:
        """``agent probe`` on ``device``: a ``fleet_probe.ProbeResult`` (never raises for it)."""
        from orchestrator.fleet_probe import probe_device

        return probe_device(self.devices[device], self.bundle_path, self.bundle_sha256,
                            self.settings.transport)

    def health(self, device: str, seconds: float) -> tuple[bool, dict[str, Any], str | None]:
        """``agent health`` on ``device`` from this node: (answered, health, error).

        The farm service's poller (``farm/health.py``) makes its reading of it.
        """
        from orchestrator.fleet_probe import ask_agent

        target = self.devices[device]
        reachable, health, error = ask_agent(
            target, self.bundle_path, self.bundle_sha256, self.settings.transport,
            lambda client: client.health(target.platform, seconds))
        return reachable and error is None, health, error

    def host_key(self, device: str) -> str:
        """The device's ssh host key, fetched from this node, as a known_hosts line."""
        from orchestrator.transport.hostkeys import fetch_server_key

        transport = self.settings.transport
        return fetch_server_key(self.devices[device], transport.known_hosts,
                                known_hosts_lines=transport.known_hosts_lines
                                ).known_hosts_line()

    def cancel_jobs(self, device: str, job_dirs: list[str], owner: str) -> int:
        """Stop the jobs in ``job_dirs`` on ``device`` and free its lease (a dead controller's)."""
        client = self._client(device)
        for job_dir in job_dirs:
            client.cancel(job_dir)
        work_dir = self.devices[device].work_dir
        client.lease("takeover", work_dir, owner, 60)
        client.lease("release", work_dir, owner, 60)
        return len(job_dirs)

    def fetch_log(self, device: str, job_dir: str) -> str:
        """The agent's stderr log of one attempt on ``device``."""
        return self._client(device).fetch_log(job_dir)


def remote_gateway(max_concurrency: int) -> Any:
    """The Ray actor class for ``Gateway`` (threaded: poll and jobs run side by side)."""
    import ray

    # Ray's stubs type ray.remote for functions; actor options such as
    # max_concurrency are accepted at run time (and tested) but not in them.
    return ray.remote(num_cpus=0, max_concurrency=max_concurrency)(Gateway)  # type: ignore[call-overload]
