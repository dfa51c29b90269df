"""The farm service's device metrics: store events and health readings merged per device.

For each device the fresher source wins: a running sweep's ``sample`` events
while it works, the health poller's idle reading otherwise. Values older than
their time-to-live are left out, never shown as if current (an absent series
is "not known now", a zero would be a claim).

Rules, per device (``now`` is the collector's clock):

* ``up`` is 1 when the device delivered a sweep event within ``stale_s``;
  otherwise the newest health reading decides (1: the agent answered, 0: it
  did not); with neither, the series is absent.
* ``busy`` is 1 while a running sweep has a job running on it whose events
  are fresh (within ``stale_s``); a job of a controller that died stops
  counting once its events go stale (the sweep-stalled alert then fires).
* ``phase`` is a full state set: every phase of ``metrics.PHASES`` is
  exported, the current one 1 and the others 0 (``idle`` when not busy).
* power, temperatures and memory: the newest sweep sample within
  ``telemetry_ttl_s``, else the newest health reading within
  ``health_ttl_s``.
* ``throttled``, ``power_measurable`` and ``leased`` come from health
  readings only, and are absent until the first one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from orchestrator.farm.health import HealthPoller, Reading
from orchestrator.farm.store_live import DeviceLive, LiveReader, attempt_totals
from orchestrator.metrics import ATTEMPT_OUTCOMES, METRICS, PHASES, is_number
from orchestrator.states import SweepState
from orchestrator.store import DB_NAME, Store

__all__ = ["FARM_METRICS", "FarmCollector"]

log = logging.getLogger("edgefarm.farm")

#: What the farm collector exports (docs/metrics.md lists them all).
FARM_METRICS = (
    "edgefarm_job_attempts_total", "edgefarm_device_up", "edgefarm_device_busy",
    "edgefarm_device_phase", "edgefarm_device_power_watts", "edgefarm_device_memory_used_bytes",
    "edgefarm_device_memory_total_bytes", "edgefarm_device_temperature_celsius",
    "edgefarm_telemetry_samples_total", "edgefarm_device_throttled",
    "edgefarm_device_power_measurable", "edgefarm_device_leased", "edgefarm_device_quarantined",
    "edgefarm_device_last_seen_timestamp_seconds", "edgefarm_sweep_last_event_timestamp_seconds",
)
_MIB = 1 << 20


class FarmCollector:
    """Device metrics for the whole farm; see the module docstring for the rules."""

    def __init__(self, results_dir: str | Path, *, registry: CollectorRegistry | None = None,
                 health: HealthPoller | None = None,
                 platforms: Mapping[str, str] | None = None, stale_s: float = 60.0,
                 telemetry_ttl_s: float = 30.0, health_ttl_s: float | None = None,
                 attempts_ttl_s: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        self.results_dir = Path(results_dir)
        self.health = health
        self.platforms = dict(platforms or {})
        self.stale_s = stale_s
        self.telemetry_ttl_s = telemetry_ttl_s
        self.health_ttl_s = health_ttl_s if health_ttl_s is not None else (
            3 * health.interval_s + 30 if health is not None else 0.0)
        self.attempts_ttl_s = attempts_ttl_s
        self.clock = clock
        self.live = LiveReader(clock)
        self._attempts: tuple[float, dict[tuple[str, str], int]] | None = None
        self._quarantined: set[str] = set()
        self._lock = threading.Lock()  # scrapes may overlap; the reader is not thread-safe
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        return [METRICS[name].family() for name in FARM_METRICS]

    # -- store -------------------------------------------------------------------------
    def _read_store(self) -> None:
        """Read what the store gained, on a connection of this scrape's own thread.

        Scrapes arrive on the HTTP server's threads and SQLite connections
        belong to one thread, so each read opens the store (read-only, about a
        millisecond) and closes it; what was read lives in ``self.live``.
        """
        if not (self.results_dir / DB_NAME).exists():
            return
        store = None
        try:
            store = Store(self.results_dir, read_only=True)
            db = store.db
            self.live.refresh(db)
            now = self.clock()
            if self._attempts is None or now - self._attempts[0] >= self.attempts_ttl_s:
                self._attempts = (now, attempt_totals(db))
                self._quarantined = _quarantined(db)
                self.platforms = {**_stored_platforms(db), **self.platforms}
        except Exception:
            # A locked or half-written store must not fail the scrape; next time again.
            log.exception("reading the results store %s failed", self.results_dir)
        finally:
            if store is not None:
                store.close()

    def is_busy(self, device: str) -> bool:
        """True while a fresh sweep job runs on ``device`` (the health poller skips it)."""
        state = self.live.devices.get(device)
        return state is not None and self._busy(state, self.clock())

    def _busy(self, state: DeviceLive, now: float) -> bool:
        return state.job is not None and state.last_event is not None and \
            now - state.last_event <= self.stale_s

    # -- collect -----------------------------------------------------------------------
    def _gather(self) -> dict[str, _Rows]:
        """Every series of this collector now, by metric name (label values, value)."""
        fams = {name: _Rows() for name in FARM_METRICS}
        with self._lock:
            self._read_store()
            now = self.clock()
            readings = self.health.snapshot() if self.health is not None else {}
            if self.health is not None:  # the inventory's word on platforms wins
                self.platforms.update(self.health.platforms)
            attempts = self._attempts[1] if self._attempts is not None else {}
            names = sorted(set(self.live.devices) | set(readings) | set(self.platforms)
                           | {d for d, _ in attempts})
            for name in names:
                self._device(fams, name, self.live.devices.get(name), readings.get(name), now)
                for outcome in ATTEMPT_OUTCOMES:
                    fams["edgefarm_job_attempts_total"].add_metric(
                        [name, outcome], attempts.get((name, outcome), 0))
                fams["edgefarm_telemetry_samples_total"].add_metric(
                    [name], self.live.samples_total.get(name, 0))
                fams["edgefarm_device_quarantined"].add_metric(
                    [name], 1 if name in self._quarantined else 0)
            for sweep, at in sorted(self.live.sweep_last_event.items()):
                fams["edgefarm_sweep_last_event_timestamp_seconds"].add_metric([sweep], at)
        return fams

    def collect(self) -> Iterator[Metric]:
        for name, rows in self._gather().items():
            if rows.items:
                family = METRICS[name].family()
                for labels, value in rows.items:
                    family.add_metric(labels, value)
                yield family

    def exposition(self) -> str:
        """The same series in Prometheus' text format, written directly.

        What ``generate_latest`` makes of ``collect()`` (a test holds the two
        equal), without a ``Sample`` object per series: a farm of 1,000
        devices exports ~33,000 series, and client_python's generic path
        spends ~8 us on each (bench/farm_scrape.py).
        """
        out: list[str] = []
        for name, rows in self._gather().items():
            if not rows.items:
                continue
            spec = METRICS[name]
            doc = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {spec.kind}\n")
            keys = spec.labels
            order = sorted(range(len(keys)), key=lambda i: keys[i])
            if len(keys) == 1:  # the common shapes without a join per line
                (k0,) = keys
                out.extend(f'{name}{{{k0}="{_escape(str(lv[0]))}"}} {_go_float(v)}\n'
                           for lv, v in rows.items)
            elif len(keys) == 2:
                a, b = order
                ka, kb = keys[a], keys[b]
                out.extend(f'{name}{{{ka}="{_escape(str(lv[a]))}",{kb}="{_escape(str(lv[b]))}"}}'
                           f' {_go_float(v)}\n' for lv, v in rows.items)
            else:
                for labels, value in rows.items:
                    inner = ",".join(f'{keys[i]}="{_escape(str(labels[i]))}"' for i in order)
                    out.append(f"{name}{{{inner}}} {_go_float(value)}\n")
        return "".join(out)

    def _device(self, fams: dict[str, Any], name: str, live: DeviceLive | None,
                reading: Reading | None, now: float) -> None:
        fresh_event = live is not None and live.last_event is not None and \
            now - live.last_event <= self.stale_s
        usable = reading if reading is not None and now - reading.at <= self.health_ttl_s \
            else None
        platform = self.platforms.get(name, "unknown")
        if fresh_event and live is not None:
            fams["edgefarm_device_up"].add_metric([name, platform], 1)
        elif reading is not None:
            fams["edgefarm_device_up"].add_metric([name, platform], 1 if reading.reachable else 0)
        busy = live is not None and self._busy(live, now)
        fams["edgefarm_device_busy"].add_metric([name], 1 if busy else 0)
        current = (live.phase if live is not None and live.phase in PHASES else None) \
            if busy else "idle"
        for phase in PHASES:
            fams["edgefarm_device_phase"].add_metric([name, phase], 1 if phase == current else 0)
        last_seen = max([t for t in (live.last_event if live else None,
                                     reading.at if reading and reading.reachable else None)
                         if t is not None], default=None)
        if last_seen is not None:
            fams["edgefarm_device_last_seen_timestamp_seconds"].add_metric([name], last_seen)
        self._telemetry(fams, name, live, usable, now)
        health = usable.health if usable is not None and usable.reachable else {}
        if health:
            fams["edgefarm_device_throttled"].add_metric(
                [name], 1 if health.get("throttled") else 0)
            fams["edgefarm_device_power_measurable"].add_metric(
                [name], 1 if health.get("measures_power") else 0)
            lease = health.get("lease")
            fams["edgefarm_device_leased"].add_metric(
                [name], 1 if isinstance(lease, dict) and lease.get("fresh") else 0)

    def _telemetry(self, fams: dict[str, Any], name: str, live: DeviceLive | None,
                   reading: Reading | None, now: float) -> None:
        """Power, temperatures and memory: the fresh sweep sample, else the health reading."""
        fresh_after = now - self.telemetry_ttl_s
        power = {r: w for r, (w, at) in (live.power.items() if live else ()) if at >= fresh_after}
        temps = {s: c for s, (c, at) in (live.temps.items() if live else ()) if at >= fresh_after}
        used = live.memory_used[0] if live and live.memory_used and \
            live.memory_used[1] >= fresh_after else None
        total = live.memory_total if live else None
        sample = (reading.health.get("sample") if reading is not None and reading.reachable
                  else None) or {}
        if not power and isinstance(sample.get("rails_w"), dict):
            power = {str(r): float(w) for r, w in sample["rails_w"].items() if is_number(w)}
            if is_number(sample.get("total_w")):
                power["total"] = float(sample["total_w"])
        if not temps and isinstance(sample.get("temps_c"), dict):
            temps = {str(s): float(c) for s, c in sample["temps_c"].items() if is_number(c)}
        if used is None and is_number(sample.get("ram_used_mb")):
            used = float(sample["ram_used_mb"]) * _MIB
        if is_number(sample.get("ram_total_mb")):  # a health reading's size is the newest
            total = float(sample["ram_total_mb"]) * _MIB
        for rail, watts in sorted(power.items()):
            fams["edgefarm_device_power_watts"].add_metric([name, rail], watts)
        for sensor, celsius in sorted(temps.items()):
            fams["edgefarm_device_temperature_celsius"].add_metric([name, sensor], celsius)
        if used is not None:
            fams["edgefarm_device_memory_used_bytes"].add_metric([name], used)
        if total is not None:
            fams["edgefarm_device_memory_total_bytes"].add_metric([name], total)

    def close(self) -> None:
        """Nothing stays open between scrapes; kept so callers need not know that."""


class _Rows:
    """One metric's series as ``(label values, value)``: what a family's add_metric takes."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[list[str], float]] = []

    def add_metric(self, labels: list[str], value: float) -> None:
        self.items.append((labels, value))


def _go_float(value: float) -> str:
    """``floatToGoString`` (what client_python writes), its common case first: 0/1 flags."""
    if value == 0:
        return "0.0"
    if value == 1:
        return "1.0"
    return floatToGoString(value)


def _escape(value: str) -> str:
    """A label value as the text format quotes it (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _quarantined(db: Any) -> set[str]:
    """Devices with an active quarantine in a running sweep or the newest ended one."""
    rows = db.execute("SELECT id, state FROM sweeps ORDER BY created_at DESC LIMIT 200")
    wanted: list[str] = []
    ended = False
    for sweep_id, state in rows:
        if state == SweepState.RUNNING.value:
            wanted.append(sweep_id)
        elif not ended:
            wanted.append(sweep_id)
            ended = True
    if not wanted:
        return set()
    marks = ",".join("?" * len(wanted))
    return {r[0] for r in db.execute(
        "SELECT DISTINCT device FROM quarantines WHERE lifted_at IS NULL"
        f" AND sweep_id IN ({marks})", wanted)}


def _stored_platforms(db: Any) -> dict[str, str]:
    """Device -> platform from the newest sweep's inventory (the ``up`` metric's label)."""
    import json

    row = db.execute("SELECT inventory_json FROM sweeps ORDER BY created_at DESC LIMIT 1"
                     ).fetchone()
    if row is None:
        return {}
    try:
        devices = json.loads(row[0]).get("devices", [])
    except (ValueError, AttributeError):
        return {}
    return {str(d.get("name")): str(d.get("platform", "unknown")) for d in devices
            if isinstance(d, dict) and d.get("name")}
