"""The results store: one SQLite database (WAL) per results directory.

Why SQLite: one file, transactional, readable by any tool, and WAL lets
``sweep status`` and ``report`` read while a sweep writes. Every event is
committed as it arrives, so a killed controller loses nothing it had already
received, and events are keyed by ``(sweep, job, attempt, seq)`` so reading an
agent's log twice (after a reconnect or a resume) stores each event once.

Rows are never rewritten in place, except a job's state.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import StoreError

DB_NAME = "edgefarm.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    state TEXT NOT NULL,            -- running | finished | interrupted
    sweep_path TEXT,
    inventory_path TEXT,
    sweep_json TEXT NOT NULL,       -- the validated sweep, as planned
    inventory_json TEXT NOT NULL    -- the validated inventory, as planned
);
CREATE TABLE IF NOT EXISTS jobs (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    key TEXT NOT NULL,
    ordinal INTEGER NOT NULL,       -- position in the plan
    device TEXT NOT NULL,
    model_id TEXT NOT NULL,
    arch TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | running | done | failed | cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    ok_attempt INTEGER,             -- the attempt whose repetitions count
    error_kind TEXT,
    error TEXT,
    result_json TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (sweep_id, key)
);
CREATE TABLE IF NOT EXISTS attempts (
    sweep_id TEXT NOT NULL,
    job_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,            -- running | done | failed | cancelled
    error_kind TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (sweep_id, job_key, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    sweep_id TEXT NOT NULL,
    job_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    t REAL,
    body TEXT NOT NULL,
    PRIMARY KEY (sweep_id, job_key, attempt, seq)
);
CREATE TABLE IF NOT EXISTS repetitions (
    sweep_id TEXT NOT NULL,
    job_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    warmup INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    prompt_tokens INTEGER,
    gen_tokens INTEGER,
    prefill_s REAL,
    decode_s REAL,
    ttft_s REAL,
    prefill_tps REAL,
    decode_tps REAL,
    peak_rss_bytes INTEGER,
    body TEXT NOT NULL,
    PRIMARY KEY (sweep_id, job_key, attempt, warmup, idx)
);
CREATE TABLE IF NOT EXISTS device_facts (
    sweep_id TEXT NOT NULL,
    device TEXT NOT NULL,
    seen_at REAL NOT NULL,
    facts_json TEXT NOT NULL,
    PRIMARY KEY (sweep_id, device)
);
"""

REPETITION_COLUMNS = ("prompt_tokens", "gen_tokens", "prefill_s", "decode_s", "ttft_s",
                      "prefill_tps", "decode_tps", "peak_rss_bytes")

JOB_STATES = ("pending", "running", "done", "failed", "cancelled")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Store:
    """Access to one results database. Cheap to open; not shared across threads."""

    def __init__(self, results_dir: str | Path) -> None:
        self.dir = Path(results_dir)
        self.path = self.dir / DB_NAME
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from exc
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a killed process (the case that matters
        # for a controller); only an OS crash could lose the last commits.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- sweeps -------------------------------------------------------------
    def create_sweep(self, sweep_id: str, name: str, sweep: dict, inventory: dict,
                     jobs: Iterable[dict], sweep_path: str | None = None,
                     inventory_path: str | None = None) -> None:
        """Record a sweep and all its planned jobs in one transaction."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sweeps (id, name, created_at, state, sweep_path, inventory_path,"
                " sweep_json, inventory_json) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                (sweep_id, name, time.time(), sweep_path, inventory_path, _dumps(sweep),
                 _dumps(inventory)))
            db.executemany(
                "INSERT INTO jobs (sweep_id, key, ordinal, device, model_id, arch, spec_json,"
                " state) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                [(sweep_id, j["key"], i, j["device"], j["model_id"], j["arch"], _dumps(j))
                 for i, j in enumerate(jobs)])

    def sweep(self, sweep_id: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            known = [r["id"] for r in self.db.execute(
                "SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 5")]
            hint = f" (recent: {', '.join(known)})" if known else " (the store has no sweeps)"
            raise StoreError(f"no sweep {sweep_id!r} in {self.path}{hint}")
        return row

    def latest_sweep_id(self) -> str | None:
        row = self.db.execute("SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 1").fetchone()
        return row["id"] if row else None

    def sweeps(self, limit: int = 20) -> list[sqlite3.Row]:
        return list(self.db.execute(
            "SELECT * FROM sweeps ORDER BY created_at DESC LIMIT ?", (limit,)))

    def set_sweep_state(self, sweep_id: str, state: str) -> None:
        finished = time.time() if state == "finished" else None
        self.db.execute("UPDATE sweeps SET state = ?, finished_at = ? WHERE id = ?",
                        (state, finished, sweep_id))

    # -- jobs ---------------------------------------------------------------
    def jobs(self, sweep_id: str, states: Iterable[str] | None = None) -> list[sqlite3.Row]:
        rows = self.db.execute("SELECT * FROM jobs WHERE sweep_id = ? ORDER BY ordinal",
                               (sweep_id,))
        wanted = set(states) if states is not None else None
        return [r for r in rows if wanted is None or r["state"] in wanted]

    def job_counts(self, sweep_id: str) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for row in self.db.execute(
                "SELECT state, COUNT(*) AS n FROM jobs WHERE sweep_id = ? GROUP BY state",
                (sweep_id,)):
            counts[row["state"]] = row["n"]
        return counts

    def start_attempt(self, sweep_id: str, key: str, attempt: int) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = MAX(attempts, ?),"
                " started_at = COALESCE(started_at, ?) WHERE sweep_id = ? AND key = ?",
                (attempt, now, sweep_id, key))
            # A re-attached attempt keeps its row (and its first start time).
            db.execute(
                "INSERT OR IGNORE INTO attempts (sweep_id, job_key, attempt, state, started_at)"
                " VALUES (?, ?, ?, 'running', ?)", (sweep_id, key, attempt, now))

    def end_attempt(self, sweep_id: str, key: str, attempt: int, state: str,
                    error_kind: str | None = None, error: str | None = None) -> None:
        """Record how one attempt ended; every attempt's reason is kept."""
        self.db.execute(
            "UPDATE attempts SET state = ?, error_kind = ?, error = ?, finished_at = ?"
            " WHERE sweep_id = ? AND job_key = ? AND attempt = ?",
            (state, error_kind, error, time.time(), sweep_id, key, attempt))

    def attempts(self, sweep_id: str, key: str) -> list[sqlite3.Row]:
        return list(self.db.execute(
            "SELECT * FROM attempts WHERE sweep_id = ? AND job_key = ? ORDER BY attempt",
            (sweep_id, key)))

    def finish_job(self, sweep_id: str, key: str, state: str, attempt: int | None = None,
                   error_kind: str | None = None, error: str | None = None,
                   result: dict | None = None) -> None:
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        self.db.execute(
            "UPDATE jobs SET state = ?, ok_attempt = ?, error_kind = ?, error = ?,"
            " result_json = COALESCE(?, result_json), finished_at = ?"
            " WHERE sweep_id = ? AND key = ?",
            (state, attempt if state == "done" else None, error_kind, error,
             _dumps(result) if result is not None else None, time.time(), sweep_id, key))

    def requeue(self, sweep_id: str, key: str, error_kind: str | None, error: str | None) -> None:
        """Mark a job pending again after a failed attempt, keeping the last reason."""
        self.db.execute(
            "UPDATE jobs SET state = 'pending', error_kind = ?, error = ?"
            " WHERE sweep_id = ? AND key = ?", (error_kind, error, sweep_id, key))

    # -- events -------------------------------------------------------------
    def add_events(self, sweep_id: str, device: str, events: Iterable[dict]) -> int:
        """Store agent events (idempotent); return how many were new."""
        new = 0
        with self.transaction() as db:
            for ev in events:
                cur = db.execute(
                    "INSERT OR IGNORE INTO events (sweep_id, job_key, attempt, seq, kind, t, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (sweep_id, ev["job"], int(ev["attempt"]), int(ev["seq"]), ev["kind"],
                     ev.get("t"), _dumps(ev)))
                if cur.rowcount == 0:
                    continue
                new += 1
                if ev["kind"] == "repetition":
                    db.execute(
                        "INSERT OR IGNORE INTO repetitions (sweep_id, job_key, attempt, warmup,"
                        " idx, prompt_tokens, gen_tokens, prefill_s, decode_s, ttft_s,"
                        " prefill_tps, decode_tps, peak_rss_bytes, body)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sweep_id, ev["job"], int(ev["attempt"]), int(bool(ev.get("warmup"))),
                         int(ev.get("index", 0)), *(ev.get(c) for c in REPETITION_COLUMNS),
                         _dumps(ev)))
                elif ev["kind"] == "hello" and isinstance(ev.get("facts"), dict):
                    db.execute(
                        "INSERT OR REPLACE INTO device_facts (sweep_id, device, seen_at,"
                        " facts_json) VALUES (?, ?, ?, ?)",
                        (sweep_id, device, ev.get("t") or time.time(), _dumps(ev["facts"])))
        return new

    def events(self, sweep_id: str, job_key: str | None = None) -> list[dict]:
        sql = "SELECT body FROM events WHERE sweep_id = ?"
        args: list[Any] = [sweep_id]
        if job_key:
            sql += " AND job_key = ?"
            args.append(job_key)
        sql += " ORDER BY job_key, attempt, seq"
        return [json.loads(r["body"]) for r in self.db.execute(sql, args)]

    def counted_repetitions(self, sweep_id: str) -> list[sqlite3.Row]:
        """Repetitions that count: not warm-up, from each job's successful attempt."""
        return list(self.db.execute(
            "SELECT r.*, j.device, j.model_id, j.arch, j.spec_json, j.result_json"
            " FROM repetitions r JOIN jobs j ON j.sweep_id = r.sweep_id AND j.key = r.job_key"
            " WHERE r.sweep_id = ? AND j.state = 'done' AND r.attempt = j.ok_attempt"
            " AND r.warmup = 0 ORDER BY j.ordinal, r.idx", (sweep_id,)))

    def device_facts(self, sweep_id: str) -> dict[str, dict]:
        return {r["device"]: json.loads(r["facts_json"]) for r in self.db.execute(
            "SELECT device, facts_json FROM device_facts WHERE sweep_id = ?", (sweep_id,))}
