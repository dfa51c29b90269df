"""Store errors a user can act on (issue 10, item 9), on real filesystems.

* a results directory on a read-only mount still serves ``report``,
  ``sweep status`` and ``watch``; a command that must write says why it cannot;
* a full disk (a small tmpfs, really filled) stops the sweep with the advice to
  free space and resume, and the resume finishes every job once;
* a corrupt store is named as corrupt, exit 2, with how to recover it, and is
  not written to.

The mounts need root (CAP_SYS_ADMIN), as the network-namespace tests do; the
fixture fails, rather than skips, where mounting is refused.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    counted_per_job,
    duplicate_events,
    edgefarm,
    fill_disk,
    mount,
    sleep_models,
    start_sweep_run,
    write_inventory,
    write_sweep,
)

from orchestrator.store import DB_NAME


def sleep_sweep(tmp: Path, jobs: int, ms: int, **overrides: object) -> tuple[Path, Path]:
    inv = write_inventory(tmp, ["local"])
    sweep = write_sweep(tmp, devices=["local"], models=sleep_models(tmp, 1), pairs=[],
                        backend="sleep", warmup=0, repetitions=2,
                        matrix={"prompt_tokens": list(range(1, jobs + 1)), "gen_tokens": ms,
                                "threads": 1, "gpu_layers": 0}, **overrides)
    return sweep, inv


def test_a_read_only_results_dir_still_serves_report_status_and_watch(tmp_path: Path) -> None:
    sweep, inv = sleep_sweep(tmp_path, jobs=2, ms=20)
    results = tmp_path / "results"
    ran = edgefarm("sweep", "run", str(sweep), "-i", str(inv), "-r", str(results), tmp=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    sweep_id = ran.stdout.split()[1]
    assert not (results / f"{DB_NAME}-shm").exists()  # closed cleanly: no WAL files left
    ro = tmp_path / "read-only"
    ro.mkdir()
    mount("--bind", str(results), str(ro))
    try:
        mount("-o", "remount,bind,ro", str(ro))
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")  # really read-only, even for root
        for args in (("sweep", "status"), ("sweep", "status", sweep_id), ("report", sweep_id),
                     ("watch", sweep_id, "--once")):
            done = edgefarm(*args, "-r", str(ro), tmp=tmp_path)
            assert done.returncode == 0, (args, done.stdout + done.stderr)
            assert sweep_id in done.stdout, args
        resumed = edgefarm("sweep", "resume", sweep_id, "-r", str(ro), tmp=tmp_path)
        assert resumed.returncode == 2, resumed.stdout + resumed.stderr
        assert "read-only" in resumed.stderr and str(ro / DB_NAME) in resumed.stderr
        assert "unexpected error" not in resumed.stderr
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_full_disk_stops_the_sweep_and_resume_finishes_every_job_once(
        tmp_path: Path, tmpfs: Path) -> None:
    sweep, inv = sleep_sweep(tmp_path, jobs=6, ms=400,
                             telemetry={"interval_s": 0.05})
    results = tmpfs / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results))
    db = results / DB_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the first job is under way: fill the disk
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            if conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'running'").fetchone()[0]:
                break
        time.sleep(0.05)
    filler = fill_disk(tmpfs)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "the disk is full" in out and f"edgefarm sweep resume {sweep_id}" in out, out
    assert "unexpected error" not in out

    filler.unlink()
    resumed = edgefarm("sweep", "resume", sweep_id, "-r", str(results), tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with sqlite3.connect(db) as conn:
        states = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    counted = sum(counted_per_job(db, sweep_id).values())
    dupes = duplicate_events(db, sweep_id)
    assert states == [("done", 6)]
    assert counted == 6 * 2 and dupes == 0


def test_a_corrupt_store_is_named_exit_2_and_left_alone(tmp_path: Path) -> None:
    sweep, inv = sleep_sweep(tmp_path, jobs=1, ms=10)
    results = tmp_path / "results"
    results.mkdir()
    store = results / DB_NAME
    garbage = b"this is not an SQLite database\n" * 200
    store.write_bytes(garbage)
    for args in (("report",), ("sweep", "status"),
                 ("sweep", "run", str(sweep), "-i", str(inv))):
        done = edgefarm(*args, "-r", str(results), tmp=tmp_path)
        assert done.returncode == 2, (args, done.stdout + done.stderr)
        assert f"results store {store} is corrupt" in done.stderr, args
        assert ".recover" in done.stderr and "unexpected error" not in done.stderr
    assert store.read_bytes() == garbage
    assert not (results / f"{DB_NAME}-wal").exists()
