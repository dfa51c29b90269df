"""What running sweeps are doing now, read incrementally from the results store.

Every sweep writes its agents' events to the store as they arrive (one
transaction per batch), so the store already holds what a live view needs.
``LiveReader.refresh`` reads only what was added since the previous call
(``events`` by rowid, which only grows) and keeps, per device, the current
phase, the newest telemetry and when the device last delivered an event.

Times: an event's own ``t`` is the device's clock, which may be skewed, so
freshness is judged by when this reader first saw the event (``clock()``).
Only the first refresh after start-up, which reads the recent past of the
attempts still running, has to go by the events' own times.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.metrics import PHASES, DeviceTelemetry, is_number
from orchestrator.states import AttemptState, JobState, SweepState

__all__ = ["DeviceLive", "LiveReader", "LIVE_KINDS"]

#: Event kinds that change the live view (others only prove the device answers).
LIVE_KINDS = ("phase", "sample", "hello", "result")
#: At start-up, how many of a running attempt's newest events are read back.
BOOTSTRAP_EVENTS = 400
@dataclass
class DeviceLive(DeviceTelemetry):
    """One device as the store shows it; times are ``LiveReader.clock`` readings."""

    last_event: float | None = None        # when its newest event was seen
    job: tuple[str, str, int] | None = None  # (sweep, job key, attempt) it runs, if any
    phase: str | None = None
    phase_at: float | None = None


class LiveReader:
    """Incremental reader of the store's events; call ``refresh(db)`` before each scrape."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.devices: dict[str, DeviceLive] = {}
        self.samples_total: dict[str, int] = {}
        self.sweep_last_event: dict[str, float] = {}
        self._last_rowid: int | None = None
        self._last_sample_rowid = 0
        self._job_device: dict[tuple[str, str], str] = {}

    def device(self, name: str) -> DeviceLive:
        found = self.devices.get(name)
        if found is None:
            found = self.devices[name] = DeviceLive()
        return found

    # -- reading -----------------------------------------------------------------------
    def refresh(self, db: sqlite3.Connection) -> None:
        """Read what the store gained since the last call (everything recent, the first time)."""
        running = self._running_jobs(db)
        for (sweep, key), (device, attempt) in running.items():
            self._job_device[(sweep, key)] = device
            self.device(device).job = (sweep, key, attempt)
        busy = {device for device, _ in running.values()}
        for name, state in self.devices.items():
            if name not in busy:
                state.job = None
        if self._last_rowid is None:
            self._bootstrap(db, running)
        else:
            self._read_new(db)
        self._count_samples(db)

    def _running_jobs(self, db: sqlite3.Connection) -> dict[tuple[str, str], tuple[str, int]]:
        rows = db.execute(
            "SELECT j.sweep_id, j.key, j.device, j.attempts FROM jobs j JOIN sweeps s"
            " ON s.id = j.sweep_id WHERE s.state = ? AND j.state = ?",
            (SweepState.RUNNING.value, JobState.RUNNING.value))
        return {(r[0], r[1]): (r[2], int(r[3])) for r in rows}

    def _bootstrap(self, db: sqlite3.Connection,
                   running: dict[tuple[str, str], tuple[str, int]]) -> None:
        """First read: the newest events of the attempts still running, by their own times."""
        row = db.execute("SELECT MAX(rowid) FROM events").fetchone()
        self._last_rowid = int(row[0] or 0)
        for (sweep, key), (device, attempt) in running.items():
            rows = db.execute(
                "SELECT kind, t, body FROM events WHERE sweep_id = ? AND job_key = ?"
                " AND attempt = ? ORDER BY seq DESC LIMIT ?",
                (sweep, key, attempt, BOOTSTRAP_EVENTS)).fetchall()
            now = self.clock()
            for kind, t, body in reversed(rows):
                seen = min(float(t), now) if t is not None else now
                self._take(sweep, device, kind, body, seen)
        self._last_sample_rowid = 0  # samples are counted in full once, then incrementally

    def _read_new(self, db: sqlite3.Connection) -> None:
        """The events added since the last read; of a device's samples only the newest is parsed.

        A farm sampling at 1 Hz adds thousands of samples between two scrapes;
        only the newest of each device says what it draws now.
        """
        now = self.clock()
        rows = db.execute(
            "SELECT rowid, sweep_id, job_key, kind, body FROM events WHERE rowid > ?"
            " ORDER BY rowid", (self._last_rowid,)).fetchall()
        newest_sample: dict[str, tuple[str, str]] = {}
        for rowid, sweep, key, kind, body in rows:
            self._last_rowid = max(self._last_rowid or 0, int(rowid))
            device = self._device_of(db, sweep, key)
            if device is None:
                continue
            if kind == "sample":
                newest_sample[device] = (sweep, body)
                self._take(sweep, device, kind, None, now)  # seen now; parsed below
            else:
                self._take(sweep, device, kind, body if kind in LIVE_KINDS else None, now)
        for device, (sweep, body) in newest_sample.items():
            self._take(sweep, device, "sample", body, now)

    def _device_of(self, db: sqlite3.Connection, sweep: str, key: str) -> str | None:
        found = self._job_device.get((sweep, key))
        if found is None:
            row = db.execute("SELECT device FROM jobs WHERE sweep_id = ? AND key = ?",
                             (sweep, key)).fetchone()
            if row is None:
                return None
            found = self._job_device[(sweep, key)] = str(row[0])
        return found

    def _count_samples(self, db: sqlite3.Connection) -> None:
        rows = db.execute("SELECT device, COUNT(*), MAX(rowid) FROM samples WHERE rowid > ?"
                          " GROUP BY device", (self._last_sample_rowid,)).fetchall()
        for device, count, top in rows:
            self.samples_total[device] = self.samples_total.get(device, 0) + int(count)
            self._last_sample_rowid = max(self._last_sample_rowid, int(top))

    # -- one event ---------------------------------------------------------------------
    def _take(self, sweep: str, device: str, kind: str, body: str | None, seen: float) -> None:
        state = self.device(device)
        state.last_event = max(state.last_event or 0.0, seen)
        self.sweep_last_event[sweep] = max(self.sweep_last_event.get(sweep, 0.0), seen)
        if body is None:
            return
        try:
            ev: dict[str, Any] = json.loads(body)
        except ValueError:
            return
        if kind == "phase" and ev.get("phase") in PHASES:  # ("round" marks are not phases)
            state.phase, state.phase_at = ev["phase"], seen
        elif kind == "sample":
            state.take_sample(ev, seen)
        elif kind == "hello":
            facts = ev.get("facts")
            if isinstance(facts, dict) and is_number(facts.get("ram_total_bytes")):
                state.memory_total = float(facts["ram_total_bytes"])
        elif kind == "result":
            state.phase, state.phase_at = "idle", seen


def attempt_totals(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Finished attempts by (device, outcome) over the whole store: a counter that only grows."""
    rows = db.execute(
        "SELECT j.device, a.state, COUNT(*) FROM attempts a JOIN jobs j"
        " ON j.sweep_id = a.sweep_id AND j.key = a.job_key WHERE a.state != ?"
        " GROUP BY j.device, a.state", (AttemptState.RUNNING.value,))
    return {(r[0], r[1]): int(r[2]) for r in rows}
