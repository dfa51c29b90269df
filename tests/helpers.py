"""Builders for test inventories and sweeps, written as real YAML files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EDGEFARM = [sys.executable, "-m", "orchestrator.cli.main"]


def write_inventory(tmp: Path, names: list[str], site: str = "local") -> Path:
    """An inventory of local-transport devices, each with its own work dir."""
    devices = [{"name": n, "transport": "local", "site": site, "platform": "linux-cpu",
                "work_dir": str(tmp / "devices" / n), "models_dir": str(tmp / "models")}
               for n in names]
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump({"devices": devices}, sort_keys=False))
    return path


def write_sweep(tmp: Path, *, devices: list[str], models: list[dict[str, Any]] | None = None,
                pairs: list[dict[str, Any]] | None = None, name: str = "t",
                **overrides: Any) -> Path:
    """A sweep file; defaults to tiny-moe vs tiny-dense, one short matrix point."""
    models = models or [
        {"id": "tiny-moe", "arch": "moe", "source": {"preset": "tiny-moe", "quant": "Q4_0"}},
        {"id": "tiny-dense", "arch": "dense",
         "source": {"preset": "tiny-dense", "quant": "Q4_0"}}]
    if pairs is None:
        pairs = [{"moe": models[0]["id"], "dense": [m["id"] for m in models[1:]]}]
    spec: dict[str, Any] = {
        "name": name, "models": models, "pairs": pairs,
        "matrix": {"prompt_tokens": [16], "gen_tokens": [8], "threads": [1], "gpu_layers": [0]},
        "repetitions": 2, "warmup": 1, "devices": {"names": devices}, "backend": "auto",
        "timeout_s": 120, "retries": 1}
    spec.update(overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sleep_models(tmp: Path, n: int = 2) -> list[dict[str, Any]]:
    """Models for the test-only sleep backend: any existing file stands in for a GGUF."""
    fake = tmp / "stand-in.gguf"
    fake.write_bytes(b"not a model: the sleep backend only checks that the file exists")
    models = [{"id": "m-moe", "arch": "moe", "source": {"path": str(fake)}}]
    models += [{"id": f"m-dense{i}", "arch": "dense", "source": {"path": str(fake)}}
               for i in range(1, n)]
    return models


def edgefarm(*args: str, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; unexpected-error logs go to ``tmp``."""
    env = dict(os.environ, COLUMNS="200", EDGEFARM_DEBUG_LOG=str(tmp / "edgefarm-debug.log"))
    return subprocess.run([*EDGEFARM, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def _default_ctrl_c() -> None:
    """In a child before exec: SIGINT back to its default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sweep_run(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``edgefarm sweep run ARGS`` in the background; return it and its sweep id.

    The CLI prints the sweep id on its first line, before anything runs.
    Ctrl-C is restored to its default in the child: a test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and Python
    then never raises KeyboardInterrupt (the Ctrl-C tests would see a sweep
    that cannot be interrupted, as a user's terminal never would).
    """
    proc = subprocess.Popen([*EDGEFARM, "sweep", "run", *args], cwd=REPO,
                            env=dict(os.environ, COLUMNS="200"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_ctrl_c)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[1]


def wait_for_first_agent(jobs_dir: Path, timeout: float = 60) -> bool:
    """Wait until a job under ``jobs_dir`` (a device's jobs/SWEEP) has an agent pid file."""
    deadline = time.monotonic() + timeout
    while not list(jobs_dir.glob("*/agent.pid")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(list(jobs_dir.glob("*/agent.pid")))


def write_ssh_inventory(tmp: Path, devices: list[Any], *, trust: bool = True,
                        site: str = "local") -> tuple[Path, Path]:
    """An inventory of sshd test devices and a known_hosts file that trusts them."""
    known_hosts = tmp / "known_hosts"
    if trust:
        known_hosts.write_text("".join(d.known_hosts_line() + "\n" for d in devices))
    entries = [{"name": d.name, "transport": "ssh", "site": site, "platform": "linux-cpu",
                "host": "127.0.0.1", "port": d.port, "user": "root",
                "identity_file": str(d.client_key), "python": sys.executable,
                "work_dir": str(d.work_dir), "models_dir": str(tmp / "models")}
               for d in devices]
    path = tmp / "inventory-ssh.yaml"
    path.write_text(yaml.safe_dump({"devices": entries}, sort_keys=False))
    return path, known_hosts


def mount(*args: str) -> None:
    """``mount ARGS`` (needs root, as on CI); fails the test, never skips it, when refused."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"mount {' '.join(args)} refused (run as root): {done.stderr}"


def fill_disk(where: Path) -> Path:
    """Write ``where/filler`` until the filesystem is full; return the file (delete it to free)."""
    filler = where / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass  # ENOSPC: full now
    return filler


def counted_per_job(db_path: Path, sweep_id: str) -> dict[str, int]:
    """Counted repetitions per job, from each job's successful attempt (what reports count)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return dict(db.execute(
            "SELECT r.job_key, COUNT(*) FROM repetitions r JOIN jobs j ON j.sweep_id ="
            " r.sweep_id AND j.key = r.job_key AND r.attempt = j.ok_attempt WHERE"
            " r.sweep_id = ? AND r.warmup = 0 GROUP BY r.job_key", (sweep_id,)))


def duplicate_events(db_path: Path, sweep_id: str) -> int:
    """Events stored twice under one (job, attempt, seq): must always be 0."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT COUNT(*) FROM (SELECT job_key, attempt, seq FROM events WHERE sweep_id = ?"
            " GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)", (sweep_id,)).fetchone()[0]
