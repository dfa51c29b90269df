"""Run the farm service: one registry, one address, until stopped.

The registry holds two collectors: ``metrics.StoreCollector`` (sweeps, jobs
and results of the running sweep and the last finished one) and
``farm.collector.FarmCollector`` (every device: up, busy, phase, telemetry,
attempts, leases, quarantines). Which devices get health readings: those of
the inventory file given, else those of the newest sweep in the store (read
again at every round, so the first sweep's devices appear once it exists).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from orchestrator.exporter import (
    SERVE_ADDR,
    exporter_url,
    parse_addr,
    start_text_exporter,
    stop_exporter,
)
from orchestrator.farm.collector import FarmCollector
from orchestrator.farm.health import DEFAULT_INTERVAL_S, HealthPoller
from orchestrator.metrics import StoreCollector
from orchestrator.store import DB_NAME, Store
from orchestrator.transport import TransportSettings

__all__ = ["FarmService", "farm_devices", "serve"]


def farm_devices(results_dir: Path, inventory: Path | None) -> list[Any]:
    """The devices to read: the inventory file's, else the newest stored sweep's."""
    from orchestrator.config.inventory import Inventory

    if inventory is not None:
        return list(Inventory.load(inventory).devices)
    if not (results_dir / DB_NAME).exists():
        return []
    store = Store(results_dir, read_only=True)
    try:
        newest = store.latest_sweep_id()
        if newest is None:
            return []
        stored = json.loads(store.sweep(newest)["inventory_json"])
    finally:
        store.close()
    return list(Inventory.model_validate(stored).devices)


class FarmService:
    """The registry and the health poller of one farm service (not yet serving)."""

    def __init__(self, results_dir: Path, *, inventory: Path | None = None,
                 health_interval_s: float = DEFAULT_INTERVAL_S, health_seconds: float = 2.0,
                 transport: TransportSettings | None = None, stale_s: float = 60.0,
                 ray_address: str | None = None) -> None:
        self.results_dir = Path(results_dir)
        self.inventory = inventory
        if inventory is not None:
            farm_devices(self.results_dir, inventory)  # a bad inventory fails here, at start
        # Sweeps, jobs and results through client_python; the devices' ~30 series
        # each are written by the farm collector itself (``exposition``).
        self.store_registry = CollectorRegistry()
        store = StoreCollector(self.results_dir, registry=self.store_registry)
        self.registry = CollectorRegistry()  # both collectors, for readers of a registry
        self.registry.register(store)
        self.health: HealthPoller | None = None
        if health_interval_s > 0:
            self.health = HealthPoller(
                lambda: farm_devices(self.results_dir, self.inventory),
                self.results_dir / "agent", transport or TransportSettings(),
                interval_s=health_interval_s, seconds=health_seconds,
                skip=lambda name: self.farm.is_busy(name), ray_address=ray_address)
        self.farm = FarmCollector(self.results_dir, registry=self.registry, health=self.health,
                                  stale_s=stale_s)

    def exposition(self) -> bytes:
        """What a scrape gets: the devices' series, then the sweeps' (text format 0.0.4)."""
        return self.farm.exposition().encode() + generate_latest(self.store_registry)

    def start(self) -> None:
        if self.health is not None:
            self.health.start()

    def stop(self) -> None:
        if self.health is not None:
            self.health.stop()
        self.farm.close()


def serve(results_dir: Path, addr: str = SERVE_ADDR, *, inventory: Path | None = None,
          health_interval_s: float = DEFAULT_INTERVAL_S,
          transport: TransportSettings | None = None,
          ray_address: str | None = None,
          on_ready: Callable[[str], None] | None = None,
          on_warning: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve the farm at ``addr`` until SIGTERM, Ctrl-C or ``stop`` is set.

    A missing store is a warning, not an error: ``monitor up`` may start this
    before the first sweep; metrics appear as sweeps write the store. Raises
    ExporterError (AddressError for a malformed address) and the inventory's
    ConfigError before serving anything.
    """
    parse_addr(addr)  # a malformed address is refused before anything else is said
    results_dir = Path(results_dir)
    if on_warning is not None and not (results_dir / DB_NAME).exists():
        on_warning(f"no results store in {results_dir} yet; sweep metrics appear once a sweep "
                   "writes there")
    service = FarmService(results_dir, inventory=inventory, health_interval_s=health_interval_s,
                          transport=transport, ray_address=ray_address)
    server, thread = start_text_exporter(addr, service.exposition)
    service.start()
    if on_ready is not None:
        on_ready(exporter_url(server))
    done = stop or threading.Event()
    # ``monitor down`` sends SIGTERM: stop as cleanly as on Ctrl-C. Signals
    # can only be set from the main thread; elsewhere ``stop`` is the way.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set()) if main_thread else None
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        stop_exporter(server, thread)
        service.stop()
