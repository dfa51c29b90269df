"""Device health between sweeps: one ``edgefarm-agent health`` reading per device per interval.

The poller connects to every inventory device in turn (at most ``workers`` at
once), makes sure the agent is there, and runs ``agent health``: a couple of
seconds of the device's own telemetry sources, the lease holder and the load.
A device that is busy with a sweep's job is skipped (``skip``): the sweep's
own samples describe it, and a health reading would disturb the benchmark.

The readings stay in memory; nothing is written to the results store, so the
service can run beside sweeps without contending for it. Connections are
opened from this process, as ``inventory probe`` does; with a Ray cluster
address (``edgefarm serve --ray-address``) each device is read from its
site's node instead, through a gateway actor per site that the poller keeps
for its lifetime (restarted when the device list changes), so devices that
only their site can reach have health readings too (docs/sites.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.bundle import AgentBundle, build
from orchestrator.fleet_probe import ask_agent
from orchestrator.transport import TransportSettings

__all__ = ["HealthPoller", "Reading", "read_health"]

log = logging.getLogger("edgefarm.farm.health")

#: Default seconds between two readings of one device.
DEFAULT_INTERVAL_S = 60.0


@dataclass
class Reading:
    """One health reading: when (``clock()``), whether the agent answered, and what it said."""

    at: float
    reachable: bool
    health: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_health(device: Any, bundle_path: str, sha256: str, settings: TransportSettings,
                seconds: float, clock: Callable[[], float] = time.time) -> Reading:
    """Connect to ``device``, run ``agent health``; a failure becomes a reading with its reason."""
    reachable, health, error = ask_agent(device, bundle_path, sha256, settings,
                                         lambda client: client.health(device.platform, seconds))
    # Reachable only when the agent answered: a connection without an answer is no reading.
    return Reading(clock(), reachable and error is None, health=health, error=error)


class HealthPoller:
    """Reads every device's health every ``interval_s`` seconds on a background thread.

    ``devices()`` is asked for the device list at every round (inventory
    ``Device`` models), so devices registered later are read too.
    """

    def __init__(self, devices: Callable[[], Sequence[Any]], cache_dir: Path,
                 settings: TransportSettings,
                 *, interval_s: float = DEFAULT_INTERVAL_S, seconds: float = 2.0,
                 workers: int = 16, skip: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time,
                 ray_address: str | None = None) -> None:
        self.devices = devices  # called every round: the inventory may change
        self.cache_dir = Path(cache_dir)
        self.settings = settings
        self.interval_s = interval_s
        self.seconds = seconds
        self.workers = max(1, workers)
        self.skip = skip or (lambda name: False)
        self.clock = clock
        self.readings: dict[str, Reading] = {}
        self.platforms: dict[str, str] = {}  # device -> inventory platform, from the last round
        self.rounds = 0
        self._bundle: AgentBundle | None = None
        self.ray_address = ray_address
        self._gateways: dict[str, Any] = {}
        self._gateway_devices: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> dict[str, Reading]:
        with self._lock:
            return dict(self.readings)

    def poll_once(self) -> None:
        """One reading of every device not skipped (blocks until all have answered)."""
        devices = list(self.devices())
        self.platforms = {d.name: str(d.platform) for d in devices}
        wanted = [d for d in devices if not self.skip(d.name)]
        if not wanted:
            return
        if self.ray_address:
            self._poll_through_gateways(devices, wanted)
            self.rounds += 1
            return
        if self._bundle is None:  # the agent does not change under a running service
            self._bundle = build(self.cache_dir)
        bundle = self._bundle
        with ThreadPoolExecutor(max_workers=min(self.workers, len(wanted)),
                                thread_name_prefix="farm-health") as pool:
            futures = {pool.submit(read_health, d, str(bundle.path), bundle.sha256,
                                   self.settings, self.seconds, self.clock): d.name
                       for d in wanted}
            for future, name in futures.items():
                reading = future.result()
                with self._lock:
                    self.readings[name] = reading
        self.rounds += 1

    def _poll_through_gateways(self, devices: list[Any], wanted: list[Any]) -> None:
        """Read ``wanted`` from their sites' nodes (the gateways see every device)."""
        import ray

        from orchestrator.scheduler import start_site_gateways
        from orchestrator.transport import GatewaySettings

        names = tuple(sorted(d.name for d in devices))
        if names != self._gateway_devices:  # new or removed devices: gateways that know them
            self._kill_gateways()
            owner = f"farm-health:{id(self)}"
            self._gateways = start_site_gateways(devices, self.ray_address,
                                                 GatewaySettings(self.settings, owner=owner),
                                                 self.cache_dir)
            self._gateway_devices = names
        calls = {d.name: self._gateways[d.site].health.remote(d.name, self.seconds)
                 for d in wanted}
        for name, call in calls.items():
            try:
                answered, health, error = ray.get(call)
                reading = Reading(self.clock(), answered, health=health, error=error)
            except Exception as exc:  # the site's node or its gateway went away
                reading = Reading(self.clock(), False,
                                  error=f"no reading through the site gateway: {exc}")
                self._gateway_devices = ()  # start fresh gateways next round
            with self._lock:
                self.readings[name] = reading

    def _kill_gateways(self) -> None:
        if not self._gateways:
            return
        import ray

        for actor in self._gateways.values():
            try:
                ray.kill(actor)
            except Exception:  # already gone with its node
                pass
        self._gateways = {}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="farm-health", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._kill_gateways()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # a bug in one round must not end the service's health view
                log.exception("device health round failed")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
