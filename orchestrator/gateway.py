"""One Gateway per inventory site: the Ray actor that talks to that site's devices.

Why per site and not per device: a Ray actor is a worker process of 100+ MB
that takes a while to start, so one per device does not scale to a farm; one
per site (the Ray node that can reach a group of devices) does. Inside the
actor each running job has its own thread, and the gateway refuses a second
job for a busy device, so a device never runs two jobs at once.

The driver calls ``start`` for a job and long-polls ``poll`` for messages:

* ``{"type": "events", "device", "job", "attempt", "events": [...]}`` as the
  agent writes them;
* ``{"type": "end", "device", "job", "attempt", "outcome": {...}}`` once.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import asdict
from typing import Any

from orchestrator.jobrunner import Outcome, run_attempt
from orchestrator.transport import Transport, make_transport

log = logging.getLogger("edgefarm.gateway")


class Gateway:
    """Runs jobs on the devices of one site. Plain class; ``remote_gateway`` wraps it for Ray."""

    def __init__(self, site: str, devices: list[dict[str, Any]], bundle_path: str,
                 bundle_sha256: str) -> None:
        from orchestrator.config.inventory import Device

        self.site = site
        self.devices = {d["name"]: Device.model_validate(d) for d in devices}
        self.bundle_path = bundle_path
        self.bundle_sha256 = bundle_sha256
        self.outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.busy: dict[str, threading.Thread] = {}
        self.stops: dict[str, threading.Event] = {}
        self.transports: dict[str, Transport] = {}
        self.lock = threading.Lock()

    def _transport(self, device: str) -> Transport:
        with self.lock:
            transport = self.transports.get(device)
            if transport is None:
                transport = make_transport(self.devices[device])
                transport.connect()
                self.transports[device] = transport
            return transport

    def start(self, payload: dict[str, Any]) -> None:
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

    def _run(self, payload: dict[str, Any], stop: threading.Event) -> None:
        device, key, attempt = payload["device"], payload["job"], payload["attempt"]

        def forward(events: list[dict[str, Any]]) -> None:
            self.outbox.put({"type": "events", "device": device, "job": key,
                             "attempt": attempt, "events": events})

        try:
            transport = self._transport(device)
            agent = transport.ensure_agent(self.bundle_path, self.bundle_sha256)
            job_dir = transport.job_dir(payload["sweep_id"], key, attempt)
            spec = dict(payload["spec"], attempt=attempt)
            outcome = run_attempt(transport, job_dir, spec, agent, float(payload["timeout_s"]),
                                  forward, stop=stop, attach=bool(payload.get("attach")))
        except Exception as exc:  # a broken device fails its job, not the gateway
            log.exception("job %s on %s failed in the gateway", key, device)
            outcome = Outcome("failed", "transport-error", f"{type(exc).__name__}: {exc}")
        self.outbox.put({"type": "end", "device": device, "job": key, "attempt": attempt,
                         "outcome": asdict(outcome)})

    def poll(self, timeout: float = 0.5, max_messages: int = 1000) -> list[dict[str, Any]]:
        """Return the messages waiting, blocking up to ``timeout`` for the first."""
        out: list[dict[str, Any]] = []
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


def remote_gateway(max_concurrency: int) -> Any:
    """The Ray actor class for ``Gateway`` (threaded: poll and jobs run side by side)."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=max_concurrency)(Gateway)
