"""The results store: one SQLite database (WAL) per results directory.

Why SQLite: one file, transactional, readable by any tool, and WAL lets
``sweep status`` and ``report`` read while a sweep writes. Every event is
committed as it arrives, so a killed controller loses nothing it had already
received, and events are keyed by ``(sweep, job, attempt, seq)`` so reading an
agent's log twice (after a reconnect or a resume) stores each event once.

Rows are never rewritten in place, except a job's or a sweep's state, and
every such change is checked against ``orchestrator.states``: an illegal one
raises ``IllegalTransitionError`` naming the job (or sweep) and both states.
All SQL of the controller lives in this module, behind named methods, so the
CLI, the metrics and the reports never depend on the schema.

Every SQLite error comes out as a ``StoreError`` that names the file and
says what to do (``translate``): a full disk (``StoreFullError``: free space,
then resume), a corrupt file (``StoreCorruptError``: how to recover what is
readable), a read-only one (``StoreReadOnlyError``). Commands that only read
(``report``, ``sweep status``, ``watch``, the exporter) open the store with
``read_only=True``, which works in a read-only directory too.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import (
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
)
from orchestrator.states import (
    ATTEMPT_STATES,
    JOB_STATES,
    AttemptState,
    JobState,
    SweepState,
    job_transition_allowed,
    sweep_transition_allowed,
)

DB_NAME = "edgefarm.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    state TEXT NOT NULL,            -- orchestrator.states.SweepState
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
    state TEXT NOT NULL,            -- orchestrator.states.JobState
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
    state TEXT NOT NULL,            -- orchestrator.states.AttemptState
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
    model_id TEXT,                  -- the model of a paired job (NULL: the job's only model)
    arch TEXT,
    round INTEGER,                  -- paired round (agents/round_runner.py)
    disturbed TEXT,                 -- why it was disturbed (agents/disturbance.py), or NULL
    PRIMARY KEY (sweep_id, job_key, attempt, warmup, idx)
);
CREATE TABLE IF NOT EXISTS probes (
    device TEXT NOT NULL,
    probed_at REAL NOT NULL,
    reachable INTEGER NOT NULL,
    facts_json TEXT,                -- what `agent probe` printed, when it could
    error TEXT,                     -- why not, otherwise
    PRIMARY KEY (device, probed_at)
);
CREATE TABLE IF NOT EXISTS quarantines (
    sweep_id TEXT NOT NULL,
    device TEXT NOT NULL,
    at REAL NOT NULL,
    error_kind TEXT,
    reason TEXT NOT NULL,
    lifted_at REAL,                 -- when a later run (a resume) tried the device again
    PRIMARY KEY (sweep_id, device, at)
);
CREATE TABLE IF NOT EXISTS device_facts (
    sweep_id TEXT NOT NULL,
    device TEXT NOT NULL,
    seen_at REAL NOT NULL,
    facts_json TEXT NOT NULL,
    PRIMARY KEY (sweep_id, device)
);
"""

# -- telemetry samples: schema ---------------------------------------------------
# Added for live metrics (orchestrator/metrics.py, bench/ingest.py). A
# ``sample`` event is stored in ``events`` like every other event; this table
# adds the numbers a power or memory plot needs as columns, keyed like
# ``events`` (so storing twice stores once). Rails and temperatures stay in the
# event's body, not copied here: encoding them a second time halved the
# ingest rate (bench/ingest.py), and reading them back is rare.
SCHEMA += """
CREATE TABLE IF NOT EXISTS samples (
    sweep_id TEXT NOT NULL,
    job_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    device TEXT NOT NULL,
    t REAL,
    total_w REAL,                   -- the designated total rail, when the device has one
    ram_used_bytes INTEGER,
    ram_total_bytes INTEGER,
    PRIMARY KEY (sweep_id, job_key, attempt, seq)
);
"""
# -- end of telemetry samples: schema --------------------------------------------

REPETITION_COLUMNS = ("prompt_tokens", "gen_tokens", "prefill_s", "decode_s", "ttft_s",
                      "prefill_tps", "decode_tps", "peak_rss_bytes")
#: Columns added after stores were first written: (table, column, type). A
#: store from before gets them on open (``ALTER TABLE``), NULL in old rows.
ADDED_COLUMNS = (("repetitions", "model_id", "TEXT"), ("repetitions", "arch", "TEXT"),
                 ("repetitions", "round", "INTEGER"), ("repetitions", "disturbed", "TEXT"))

__all__ = ["DB_NAME", "JOB_STATES", "IllegalTransitionError", "Store", "UnknownSweepError",
           "sample_memory_bytes"]


class UnknownSweepError(StoreError, LookupError):
    """The store has no sweep by that id (bad input: the CLI exits 2)."""

    exit_code = 2


class NoStoreError(StoreError):
    """A command that only reads was pointed at a results directory without a store (exit 2)."""

    exit_code = 2


def open_to_read(results_dir: str | Path, sweep_id: str | None = None) -> Store:
    """The store, read-only, for ``report``, ``sweep status`` and ``watch``.

    Without a store, the error names the sweep asked for, the thing the user
    typed, before the directory it was looked for in.
    """
    try:
        return Store(results_dir, read_only=True)
    except NoStoreError as exc:
        if sweep_id:
            raise UnknownSweepError(f"no sweep {sweep_id}: {exc}") from exc
        raise


class IllegalTransitionError(StoreError):
    """A state change that ``orchestrator.states`` does not allow (a bug, not bad input)."""

    exit_code = 1


log = logging.getLogger("edgefarm.store")


def translate(path: Path, exc: sqlite3.Error) -> StoreError:
    """A SQLite error as the ``StoreError`` a user can act on, naming the store's file."""
    text = str(exc)
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return StoreFullError(
            f"results store {path}: the disk is full ({text}); what was stored is kept. "
            f"Free space on the disk that holds {path.parent}")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) \
            or "not a database" in text or "malformed" in text:
        return StoreCorruptError(
            f"results store {path} is corrupt ({text}); nothing was written to it. Move it "
            f"aside and recover what is readable into a new file: sqlite3 {path} .recover "
            f"| sqlite3 {path.parent / 'recovered.sqlite'}")
    if code == sqlite3.SQLITE_READONLY or "readonly" in text:
        return StoreReadOnlyError(
            f"results store {path} is read-only ({text}): report, sweep status and watch "
            "can read it; commands that record results need a writable results directory")
    return StoreError(f"results store {path}: {text}")


class _Cursor(sqlite3.Cursor):
    """A cursor whose SQLite errors are ``translate``d (rows are fetched lazily)."""

    def _fail(self, exc: sqlite3.Error) -> StoreError:
        connection = self.connection
        return translate(getattr(connection, "store_path", Path("?")), exc)

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        try:
            super().execute(sql, parameters)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> _Cursor:
        try:
            super().executemany(sql, seq_of_parameters)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc
        return self

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc


class _Connection(sqlite3.Connection):
    """A connection whose statements run on ``_Cursor``s (errors ``translate``d)."""

    store_path = Path("?")

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self.cursor(_Cursor).execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> _Cursor:
        return self.cursor(_Cursor).executemany(sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(script)
        except sqlite3.Error as exc:
            raise translate(self.store_path, exc) from exc


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Store:
    """Access to one results database. Cheap to open; not shared across threads.

    ``read_only``: for commands that only read. The store must exist; it is
    opened without writing anything (no schema, no WAL set-up), so a results
    directory on a read-only disk, or one this user may not write, still
    serves ``report``, ``sweep status`` and ``watch``.
    """

    def __init__(self, results_dir: str | Path, read_only: bool = False) -> None:
        self.dir = Path(results_dir)
        self.path = self.dir / DB_NAME
        self.read_only = read_only
        if read_only:
            self.db = self._connect_read_only()
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.db = self._connect(str(self.path))
        except OSError as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from exc
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a killed process (the case that matters
            # for a controller); only an OS crash could lose the last commits.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._add_columns()
        except StoreError:
            self.db.close()
            raise

    def _connect(self, target: str, uri: bool = False) -> _Connection:
        try:
            db = sqlite3.connect(target, timeout=30, isolation_level=None, uri=uri,
                                 factory=_Connection)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        assert isinstance(db, _Connection)
        db.store_path = self.path
        db.row_factory = sqlite3.Row
        return db

    def _connect_read_only(self) -> _Connection:
        """Open for reading only: ``mode=ro``, else (a read-only directory) ``immutable``.

        SQLite needs the WAL's shared-memory file to read a WAL database; in a
        directory it may not write, where that file is absent, the store can
        only be opened as immutable, which does not read the write-ahead log:
        then any commits not yet checkpointed into the main file are not seen
        (a warning says so; a store closed cleanly has none).
        """
        if not self.path.is_file():
            raise NoStoreError(f"no results store at {self.path}: no sweep has run with this "
                               "results directory (give the one `sweep run` used, with -r)")
        uri = "file:" + urllib.parse.quote(str(self.path.absolute()))
        db = self._connect(uri + "?mode=ro", uri=True)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except StoreCorruptError:
            db.close()
            raise
        except StoreError:
            db.close()
        db = self._connect(uri + "?mode=ro&immutable=1", uri=True)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            log.warning("results store %s is read without its write-ahead log %s (the "
                        "directory is read-only): the latest results may be missing", self.path,
                        wal)
        return db

    def _add_columns(self) -> None:
        """Bring a store written by an older edgefarm up to ``SCHEMA`` (new columns only)."""
        have: dict[str, set[str]] = {}
        for table, column, kind in ADDED_COLUMNS:
            if table not in have:
                have[table] = {row["name"] for row in
                               self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have[table]:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does): a second
            # ROLLBACK would raise and hide the error that matters.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # -- sweeps -------------------------------------------------------------
    def create_sweep(self, sweep_id: str, name: str, sweep: dict, inventory: dict,
                     jobs: Iterable[dict], sweep_path: str | None = None,
                     inventory_path: str | None = None) -> None:
        """Record a sweep and all its planned jobs in one transaction."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sweeps (id, name, created_at, state, sweep_path, inventory_path,"
                " sweep_json, inventory_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sweep_id, name, time.time(), SweepState.RUNNING.value, sweep_path,
                 inventory_path, _dumps(sweep), _dumps(inventory)))
            db.executemany(
                "INSERT INTO jobs (sweep_id, key, ordinal, device, model_id, arch, spec_json,"
                " state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(sweep_id, j["key"], i, j["device"], j["model_id"], j["arch"], _dumps(j),
                  JobState.PENDING.value) for i, j in enumerate(jobs)])

    def sweep(self, sweep_id: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            known = [r["id"] for r in self.db.execute(
                "SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 5")]
            hint = f" (recent: {', '.join(known)})" if known else " (the store has no sweeps)"
            raise UnknownSweepError(f"no sweep {sweep_id!r} in {self.path}{hint}")
        return row

    def latest_sweep_id(self) -> str | None:
        row = self.db.execute("SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 1").fetchone()
        return row["id"] if row else None

    def sweeps(self, limit: int = 20) -> list[sqlite3.Row]:
        return list(self.db.execute(
            "SELECT * FROM sweeps ORDER BY created_at DESC LIMIT ?", (limit,)))

    def set_sweep_state(self, sweep_id: str, state: str) -> None:
        """Change a sweep's state, refusing a change ``states.SWEEP_TRANSITIONS`` forbids."""
        state = SweepState(state)
        finished = time.time() if state == SweepState.FINISHED else None
        with self.transaction() as db:
            row = db.execute("SELECT state FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
            if row is None:
                raise UnknownSweepError(f"no sweep {sweep_id!r} in {self.path}")
            if not sweep_transition_allowed(row["state"], state):
                raise IllegalTransitionError(
                    f"sweep {sweep_id}: illegal state change {row['state']} -> {state}")
            db.execute("UPDATE sweeps SET state = ?, finished_at = ? WHERE id = ?",
                       (state.value, finished, sweep_id))

    def _check_job(self, db: sqlite3.Connection, sweep_id: str, key: str,
                   state: JobState) -> None:
        """Refuse a job state change ``states.JOB_TRANSITIONS`` forbids (inside a transaction)."""
        row = db.execute("SELECT state, device, model_id FROM jobs WHERE sweep_id = ? AND key = ?",
                         (sweep_id, key)).fetchone()
        if row is None:
            raise StoreError(f"no job {key} in sweep {sweep_id}")
        if not job_transition_allowed(row["state"], state):
            raise IllegalTransitionError(
                f"job {key} ({row['model_id']} on {row['device']}) of sweep {sweep_id}: "
                f"illegal state change {row['state']} -> {state}")

    def repetition_count(self, sweep_id: str) -> int:
        """Every stored repetition of a sweep (warm-up and retried attempts included)."""
        row = self.db.execute("SELECT COUNT(*) AS n FROM repetitions WHERE sweep_id = ?",
                              (sweep_id,)).fetchone()
        return int(row["n"])

    # -- quarantines ----------------------------------------------------------
    def add_quarantine(self, sweep_id: str, device: str, error_kind: str | None,
                       reason: str) -> None:
        """Record that a run stopped using ``device`` (kept as history, never rewritten)."""
        self.db.execute(
            "INSERT OR REPLACE INTO quarantines (sweep_id, device, at, error_kind, reason)"
            " VALUES (?, ?, ?, ?, ?)", (sweep_id, device, time.time(), error_kind, reason))

    def quarantines(self, sweep_id: str, active_only: bool = False) -> list[sqlite3.Row]:
        """A sweep's quarantines, oldest first; ``active_only`` leaves out lifted ones."""
        sql = "SELECT * FROM quarantines WHERE sweep_id = ?"
        if active_only:
            sql += " AND lifted_at IS NULL"
        return list(self.db.execute(sql + " ORDER BY at, device", (sweep_id,)))

    def lift_quarantines(self, sweep_id: str, devices: Iterable[str]) -> int:
        """Mark ``devices``' quarantines lifted: a new run tries them again. Returns how many."""
        now = time.time()
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "UPDATE quarantines SET lifted_at = ? WHERE sweep_id = ? AND device = ?"
                " AND lifted_at IS NULL", [(now, sweep_id, d) for d in devices])
            return db.total_changes - before

    # -- jobs ---------------------------------------------------------------
    def jobs(self, sweep_id: str, states: Iterable[str] | None = None) -> list[sqlite3.Row]:
        rows = self.db.execute("SELECT * FROM jobs WHERE sweep_id = ? ORDER BY ordinal",
                               (sweep_id,))
        wanted = set(states) if states is not None else None
        return [r for r in rows if wanted is None or r["state"] in wanted]

    def job_counts(self, sweep_id: str) -> dict[str, int]:
        counts = {state.value: 0 for state in JOB_STATES}
        for row in self.db.execute(
                "SELECT state, COUNT(*) AS n FROM jobs WHERE sweep_id = ? GROUP BY state",
                (sweep_id,)):
            counts[row["state"]] = row["n"]
        return counts

    def start_attempt(self, sweep_id: str, key: str, attempt: int) -> None:
        now = time.time()
        with self.transaction() as db:
            self._check_job(db, sweep_id, key, JobState.RUNNING)
            db.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts, ?),"
                " started_at = COALESCE(started_at, ?) WHERE sweep_id = ? AND key = ?",
                (JobState.RUNNING.value, attempt, now, sweep_id, key))
            # A re-attached attempt keeps its row (and its first start time).
            db.execute(
                "INSERT OR IGNORE INTO attempts (sweep_id, job_key, attempt, state, started_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (sweep_id, key, attempt, AttemptState.RUNNING.value, now))

    def end_attempt(self, sweep_id: str, key: str, attempt: int, state: str,
                    error_kind: str | None = None, error: str | None = None) -> None:
        """Record how one attempt ended; every attempt's reason is kept.

        Only the value is checked, not the change: a controller killed between
        this write and the job's may end the same re-attached attempt twice.
        """
        if state not in ATTEMPT_STATES:
            raise StoreError(f"job {key} of sweep {sweep_id}, attempt {attempt}: "
                             f"unknown attempt state {state!r}")
        self.db.execute(
            "UPDATE attempts SET state = ?, error_kind = ?, error = ?, finished_at = ?"
            " WHERE sweep_id = ? AND job_key = ? AND attempt = ?",
            (state, error_kind, error, time.time(), sweep_id, key, attempt))

    def last_attempt_kinds(self, sweep_id: str) -> dict[str, str | None]:
        """Each job's latest attempt's error kind (None: no error recorded), by job key."""
        return {key: kind for key, kind in self.db.execute(
            "SELECT a.job_key, a.error_kind FROM attempts a WHERE a.sweep_id = ? AND a.attempt ="
            " (SELECT MAX(b.attempt) FROM attempts b WHERE b.sweep_id = a.sweep_id AND"
            " b.job_key = a.job_key)", (sweep_id,))}

    def attempts(self, sweep_id: str, key: str) -> list[sqlite3.Row]:
        return list(self.db.execute(
            "SELECT * FROM attempts WHERE sweep_id = ? AND job_key = ? ORDER BY attempt",
            (sweep_id, key)))

    def finish_job(self, sweep_id: str, key: str, state: str, attempt: int | None = None,
                   error_kind: str | None = None, error: str | None = None,
                   result: dict | None = None) -> None:
        """End a job (done, failed or cancelled), checking the change against the states table."""
        if state not in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
            raise StoreError(f"job {key} of sweep {sweep_id}: {state!r} is not a final state")
        state = JobState(state)
        with self.transaction() as db:
            self._check_job(db, sweep_id, key, state)
            db.execute(
                "UPDATE jobs SET state = ?, ok_attempt = ?, error_kind = ?, error = ?,"
                " result_json = COALESCE(?, result_json), finished_at = ?"
                " WHERE sweep_id = ? AND key = ?",
                (state.value, attempt if state == JobState.DONE else None, error_kind, error,
                 _dumps(result) if result is not None else None, time.time(), sweep_id, key))

    def requeue(self, sweep_id: str, key: str, error_kind: str | None, error: str | None) -> None:
        """Mark a job pending again after a failed attempt, keeping the last reason."""
        with self.transaction() as db:
            self._check_job(db, sweep_id, key, JobState.PENDING)
            db.execute(
                "UPDATE jobs SET state = ?, error_kind = ?, error = ?"
                " WHERE sweep_id = ? AND key = ?",
                (JobState.PENDING.value, error_kind, error, sweep_id, key))

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
                        " prefill_tps, decode_tps, peak_rss_bytes, body, model_id, arch, round,"
                        " disturbed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sweep_id, ev["job"], int(ev["attempt"]), int(bool(ev.get("warmup"))),
                         int(ev.get("index", 0)), *(ev.get(c) for c in REPETITION_COLUMNS),
                         _dumps(ev), ev.get("model"), ev.get("model_arch"), ev.get("round"),
                         ev.get("disturbed") or None))
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

    def recent_events(self, sweep_id: str, job_key: str, attempt: int,
                      limit: int = 200) -> list[dict]:
        """One attempt's last ``limit`` events, newest first (what a live view needs)."""
        return [json.loads(r["body"]) for r in self.db.execute(
            "SELECT body FROM events WHERE sweep_id = ? AND job_key = ? AND attempt = ?"
            " ORDER BY seq DESC LIMIT ?", (sweep_id, job_key, attempt, limit))]

    def counted_repetitions(self, sweep_id: str) -> list[sqlite3.Row]:
        """Repetitions that count: not warm-up, from each job's successful attempt.

        ``model_id`` and ``arch`` are the repetition's own model (a paired job
        holds several), the job's where an older agent did not say.
        """
        return list(self.db.execute(
            "SELECT r.sweep_id, r.job_key, r.attempt, r.warmup, r.idx, r.prompt_tokens,"
            " r.gen_tokens, r.prefill_s, r.decode_s, r.ttft_s, r.prefill_tps, r.decode_tps,"
            " r.peak_rss_bytes, r.body, r.round, r.disturbed, j.device,"
            " COALESCE(r.model_id, j.model_id) AS model_id, COALESCE(r.arch, j.arch) AS arch,"
            " j.spec_json, j.result_json"
            " FROM repetitions r JOIN jobs j ON j.sweep_id = r.sweep_id AND j.key = r.job_key"
            " WHERE r.sweep_id = ? AND j.state = ? AND r.attempt = j.ok_attempt"
            " AND r.warmup = 0 ORDER BY j.ordinal, r.idx", (sweep_id, JobState.DONE.value)))

    def carried_rounds(self, sweep_id: str, key: str, attempt: int) -> dict[str, Any] | None:
        """Whole rounds an earlier attempt measured, for attempt ``attempt`` to carry on from.

        ``{"attempt": n, "rounds": [[repetition event, ...], ...]}`` holding
        rounds 0, 1, ... up to the first one missing a model's repetitions; None
        when no earlier attempt has a paired round. The agent replays them
        (agents/round_runner.py), so a retry or a resume loses no whole round.
        """
        row = self.db.execute(
            "SELECT MAX(attempt) AS a FROM repetitions WHERE sweep_id = ? AND job_key = ?"
            " AND attempt < ? AND warmup = 0 AND round IS NOT NULL",
            (sweep_id, key, attempt)).fetchone()
        if row is None or row["a"] is None:
            return None
        earlier = int(row["a"])
        by_round: dict[int, list[dict]] = {}
        for r in self.db.execute(
                "SELECT round, body FROM repetitions WHERE sweep_id = ? AND job_key = ?"
                " AND attempt = ? AND warmup = 0 AND round IS NOT NULL ORDER BY idx",
                (sweep_id, key, earlier)):
            by_round.setdefault(int(r["round"]), []).append(json.loads(r["body"]))
        models = {str(m.get("id")) for m in json.loads(self.db.execute(
            "SELECT spec_json FROM jobs WHERE sweep_id = ? AND key = ?", (sweep_id, key)
        ).fetchone()["spec_json"]).get("agent_spec", {}).get("models") or []}
        rounds: list[list[dict]] = []
        while len(rounds) in by_round and \
                {str(b.get("model")) for b in by_round[len(rounds)]} >= models:
            rounds.append(by_round[len(rounds)])
        return {"attempt": earlier, "rounds": rounds} if rounds else None

    def add_probe(self, device: str, reachable: bool, facts: dict | None,
                  error: str | None) -> None:
        """Record one ``inventory probe`` answer (kept as history, newest wins)."""
        self.db.execute(
            "INSERT INTO probes (device, probed_at, reachable, facts_json, error)"
            " VALUES (?, ?, ?, ?, ?)", (device, time.time(), int(reachable),
                                        _dumps(facts) if facts else None, error))

    def latest_probes(self) -> dict[str, sqlite3.Row]:
        return {r["device"]: r for r in self.db.execute(
            "SELECT p.* FROM probes p JOIN (SELECT device, MAX(probed_at) AS at FROM probes"
            " GROUP BY device) m ON m.device = p.device AND m.at = p.probed_at")}

    def device_facts(self, sweep_id: str) -> dict[str, dict]:
        return {r["device"]: json.loads(r["facts_json"]) for r in self.db.execute(
            "SELECT device, facts_json FROM device_facts WHERE sweep_id = ?", (sweep_id,))}

    # -- telemetry samples ----------------------------------------------------
    # A separate block, added for live metrics: the rest of the class does not
    # depend on it. ``add_sample_events`` is the batched path for telemetry
    # (one transaction, one executemany per table); ``add_events`` stays the
    # path for every other kind.
    def add_samples(self, sweep_id: str, device: str, events: Iterable[dict]) -> int:
        """Index the ``sample`` events of a batch in ``samples`` (idempotent); return new rows.

        For events already stored through ``add_events``.
        """
        rows = [_sample_row(sweep_id, device, ev) for ev in events if ev.get("kind") == "sample"]
        if not rows:
            return 0
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(_INSERT_SAMPLE, rows)
            return db.total_changes - before

    def add_sample_events(self, sweep_id: str, device: str, events: Iterable[dict]) -> int:
        """Store ``sample`` events in ``events`` and ``samples`` in one transaction.

        The same rows ``add_events`` + ``add_samples`` write, with one
        ``executemany`` per table instead of a statement per event: a farm
        sampling power at 10 Hz per device sends far more samples than
        anything else. Other kinds are refused, since they need the per-event
        logic of ``add_events`` (repetitions, device facts). Returns how many
        events were new.
        """
        events = list(events)
        bad = sorted({str(ev.get("kind")) for ev in events if ev.get("kind") != "sample"})
        if bad:
            raise ValueError(f"add_sample_events takes sample events only, got {bad}")
        if not events:
            return 0
        encode = _COMPACT_SORTED.encode  # the same text as _dumps, without a new encoder each
        raw = [(sweep_id, ev["job"], int(ev["attempt"]), int(ev["seq"]), "sample", ev.get("t"),
                encode(ev)) for ev in events]
        rows = [_sample_row(sweep_id, device, ev) for ev in events]
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO events (sweep_id, job_key, attempt, seq, kind, t, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", raw)
            new = db.total_changes - before
            db.executemany(_INSERT_SAMPLE, rows)
        return new

    def add_agent_events(self, sweep_id: str, device: str, events: Iterable[dict]) -> None:
        """A batch of an attempt's events as the agent wrote them, each kind on its path.

        Telemetry samples outnumber everything else: they take the batched
        ``add_sample_events``; every other kind goes through ``add_events``.
        """
        events = list(events)
        samples = [ev for ev in events if ev.get("kind") == "sample"]
        others = [ev for ev in events if ev.get("kind") != "sample"]
        if samples:
            self.add_sample_events(sweep_id, device, samples)
        if others:
            self.add_events(sweep_id, device, others)

    def samples(self, sweep_id: str, device: str | None = None,
                job_key: str | None = None) -> list[dict]:
        """Stored samples in time order: ``{device, job, attempt, seq, t, total_w, rails_w, ...}``.

        Fields a sample did not carry are absent.
        """
        sql = ("SELECT s.*, e.body FROM samples s LEFT JOIN events e ON e.sweep_id = s.sweep_id"
               " AND e.job_key = s.job_key AND e.attempt = s.attempt AND e.seq = s.seq"
               " WHERE s.sweep_id = ?")
        args: list[Any] = [sweep_id]
        if device is not None:
            sql += " AND s.device = ?"
            args.append(device)
        if job_key is not None:
            sql += " AND s.job_key = ?"
            args.append(job_key)
        sql += " ORDER BY s.t, s.job_key, s.attempt, s.seq"
        out = []
        for r in self.db.execute(sql, args):
            sample: dict[str, Any] = {"device": r["device"], "job": r["job_key"],
                                      "attempt": r["attempt"], "seq": r["seq"], "t": r["t"]}
            for column in ("total_w", "ram_used_bytes", "ram_total_bytes"):
                if r[column] is not None:
                    sample[column] = r[column]
            body = json.loads(r["body"]) if r["body"] else {}
            for key in ("rails_w", "temps_c"):
                if isinstance(body.get(key), dict):
                    sample[key] = body[key]
            out.append(sample)
        return out

    def sample_count(self, sweep_id: str) -> int:
        """How many samples a sweep has stored."""
        row = self.db.execute("SELECT COUNT(*) AS n FROM samples WHERE sweep_id = ?",
                              (sweep_id,)).fetchone()
        return int(row["n"])


_INSERT_SAMPLE = (
    "INSERT OR IGNORE INTO samples (sweep_id, job_key, attempt, seq, device, t, total_w,"
    " ram_used_bytes, ram_total_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: ``_dumps`` as a reusable encoder (json.dumps builds a new one per call).
_COMPACT_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
#: MiB, the unit tegrastats and friends call "MB".
_MIB = 1 << 20


def sample_memory_bytes(ev: dict, name: str) -> int | None:
    """``ram_used``/``ram_total`` of a sample in bytes: ``*_bytes`` if sent, else ``*_mb`` (MiB)."""
    value = ev.get(f"{name}_bytes")
    if value is not None:
        return int(value)
    value = ev.get(f"{name}_mb")
    return None if value is None else int(float(value) * _MIB)


def _sample_row(sweep_id: str, device: str, ev: dict) -> tuple[Any, ...]:
    return (sweep_id, ev["job"], int(ev["attempt"]), int(ev["seq"]), device, ev.get("t"),
            ev.get("total_w"), sample_memory_bytes(ev, "ram_used"),
            sample_memory_bytes(ev, "ram_total"))
# -- end of telemetry samples -----------------------------------------------------
