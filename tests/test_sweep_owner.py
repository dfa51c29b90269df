"""One controller per sweep: a second run/resume is refused, a dead owner is taken over.

Real parts throughout: the CLI in subprocesses, local-transport devices, the
test-only sleep backend, the real store and the owner lock in the results dir.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

from helpers import (
    edgefarm,
    sleep_models,
    start_sweep_run,
    wait_for_first_agent,
    write_inventory,
    write_sweep,
)


def _start_run(tmp_path: Path, gen_ms: int) -> tuple[subprocess.Popen[str], str, Path]:
    """Start `edgefarm sweep run` (two sleep jobs on dev-a); return it once a job runs."""
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2),
                        backend="sleep", repetitions=2, warmup=0, pairs=[],  # two jobs
                        matrix={"prompt_tokens": 1, "gen_tokens": gen_ms, "threads": 1,
                                "gpu_layers": 0})
    results = tmp_path / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results),
                                     "--metrics-addr", "off", "--no-report")
    assert wait_for_first_agent(tmp_path / "devices" / "dev-a" / "jobs" / sweep_id), \
        "the first job never started"
    return proc, sweep_id, results


def _db_state(results: Path) -> tuple[str, list[str], int]:
    with sqlite3.connect(results / "edgefarm.sqlite") as db:
        sweep_state = db.execute("SELECT state FROM sweeps").fetchone()[0]
        jobs = sorted(r[0] for r in db.execute("SELECT state FROM jobs"))
        quarantines = db.execute("SELECT count(*) FROM quarantines").fetchone()[0]
    return sweep_state, jobs, quarantines


def test_second_resume_of_a_running_sweep_is_refused(tmp_path: Path) -> None:
    proc, sweep_id, results = _start_run(tmp_path, gen_ms=1500)
    try:
        second = edgefarm("sweep", "resume", sweep_id, "-r", str(results), "--metrics-addr",
                          "off", tmp=tmp_path, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert (f"sweep {sweep_id} is being run by pid {proc.pid} on {socket.gethostname()}"
                in second.stderr), second.stderr
        assert "resuming" not in second.stdout  # refused before it counted or wrote anything
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert _db_state(results) == ("finished", ["done", "done"], 0)


def test_resume_takes_over_from_a_killed_controller(tmp_path: Path) -> None:
    proc, sweep_id, results = _start_run(tmp_path, gen_ms=1500)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = edgefarm("sweep", "resume", sweep_id, "-r", str(results), "--metrics-addr", "off",
                       "--no-report", tmp=tmp_path, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "done 2" in resumed.stdout
    assert _db_state(results) == ("finished", ["done", "done"], 0)


def test_cancel_of_a_live_sweep_goes_through_its_controller(tmp_path: Path) -> None:
    proc, sweep_id, results = _start_run(tmp_path, gen_ms=3000)
    try:
        cancel = edgefarm("sweep", "cancel", sweep_id, "-r", str(results), "--wait", "60",
                          tmp=tmp_path, timeout=120)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert "cancelled by its controller" in cancel.stdout
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out
    assert _db_state(results)[0] == "cancelled"
