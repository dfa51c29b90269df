"""`inventory trust`, `inventory probe` and `sweep cancel` against real sshd devices."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import EDGEFARM, REPO, edgefarm, sleep_models, write_ssh_inventory, write_sweep


def test_trust_records_the_key_after_showing_it(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("newbox")
    inv, known = write_ssh_inventory(tmp_path, [dev], trust=False)
    refused = subprocess.run([*EDGEFARM, "inventory", "trust", "newbox", "-i", str(inv),
                              "--known-hosts", str(known)], input="n\n", text=True,
                             capture_output=True, cwd=REPO, timeout=60)
    assert refused.returncode == 1 and not known.exists()
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(dev.root / "host_key.pub")],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    assert fingerprint in refused.stdout  # the user saw exactly ssh-keygen's fingerprint

    ok = edgefarm("inventory", "trust", "newbox", "-i", str(inv), "--known-hosts", str(known),
                  "--yes", tmp=tmp_path)
    assert ok.returncode == 0 and "added" in ok.stdout
    assert known.read_text().strip() == dev.known_hosts_line()
    again = edgefarm("inventory", "trust", "newbox", "-i", str(inv), "--known-hosts",
                     str(known), "--yes", tmp=tmp_path)
    assert again.returncode == 0 and "already trusted" in again.stdout
    assert known.read_text().count("\n") == 1


def test_probe_shows_every_device_and_unreachable_ones_as_rows(tmp_path: Path,
                                                                sshd_devices: Any) -> None:
    up, down = sshd_devices("up", "down")
    inv, known = write_ssh_inventory(tmp_path, [up, down])
    down.stop()
    results = tmp_path / "results"
    run = edgefarm("inventory", "probe", "-i", str(inv), "-r", str(results), "--known-hosts",
                   str(known), "--timeout", "2", tmp=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr  # one device is down
    assert "up" in run.stdout and "Linux" in run.stdout and "xllamacpp" in run.stdout
    assert "cannot reach" in run.stdout
    with sqlite3.connect(results / "edgefarm.sqlite") as db:
        rows = dict(db.execute("SELECT device, reachable FROM probes").fetchall())
    assert rows == {"up": 1, "down": 0}


def _start_sweep(tmp_path: Path, inv: Path, known: Path, results: Path
                 ) -> tuple[subprocess.Popen[str], str]:
    sweep = write_sweep(tmp_path, devices=["c1"], models=sleep_models(tmp_path, 2),
                        backend="sleep", warmup=0, repetitions=50,
                        matrix={"prompt_tokens": 1, "gen_tokens": 1000, "threads": 1,
                                "gpu_layers": 0})
    proc = subprocess.Popen([*EDGEFARM, "sweep", "run", str(sweep), "-i", str(inv), "-r",
                             str(results), "--known-hosts", str(known)], cwd=REPO,
                            env=dict(os.environ, COLUMNS="200"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    sweep_id = proc.stdout.readline().split()[1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sqlite3.connect(results / "edgefarm.sqlite") as db:
            if db.execute("SELECT COUNT(*) FROM repetitions").fetchone()[0] >= 1:
                return proc, sweep_id
        time.sleep(0.1)
    raise AssertionError("the sweep never started a repetition")


def _agent_pids(work_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in work_dir.glob("jobs/*/*/agent.pid")]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cancel_stops_a_running_sweep_through_its_controller(tmp_path: Path,
                                                             sshd_devices: Any) -> None:
    (dev,) = sshd_devices("c1")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    results = tmp_path / "results"
    proc, sweep_id = _start_sweep(tmp_path, inv, known, results)
    cancel = edgefarm("sweep", "cancel", sweep_id, "-r", str(results), "--known-hosts",
                      str(known), tmp=tmp_path)
    assert cancel.returncode == 0 and "cancelled by its controller" in cancel.stdout
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not any(_alive(pid) for pid in _agent_pids(dev.work_dir))
    with sqlite3.connect(results / "edgefarm.sqlite") as db:
        assert db.execute("SELECT state FROM sweeps").fetchone()[0] == "cancelled"
        states = {r[0] for r in db.execute("SELECT state FROM jobs")}
    assert states <= {"cancelled", "pending"} and "cancelled" in states
    assert not (dev.work_dir / "lease.json").exists()


def test_cancel_after_the_controller_died_stops_the_device_jobs(tmp_path: Path,
                                                                sshd_devices: Any) -> None:
    (dev,) = sshd_devices("c1")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    results = tmp_path / "results"
    proc, sweep_id = _start_sweep(tmp_path, inv, known, results)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (pid,) = _agent_pids(dev.work_dir)
    assert _alive(pid), "the detached agent outlives its controller"
    cancel = edgefarm("sweep", "cancel", sweep_id, "-r", str(results), "--known-hosts",
                      str(known), "--wait", "2", tmp=tmp_path)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert "stopped 1 running job" in cancel.stdout
    assert not _alive(pid)
    assert not (dev.work_dir / "lease.json").exists()
    with sqlite3.connect(results / "edgefarm.sqlite") as db:
        assert db.execute("SELECT state FROM sweeps").fetchone()[0] == "cancelled"
        assert {r[0] for r in db.execute("SELECT state FROM jobs")} == {"cancelled"}


def test_trust_refuses_a_key_of_another_type_for_a_trusted_host(tmp_path: Path,
                                                                 sshd_devices: Any) -> None:
    (dev,) = sshd_devices("rekeyed")
    inv, known = write_ssh_inventory(tmp_path, [dev])  # its ed25519 key is trusted
    trusted = known.read_text()
    old_fp = subprocess.run(["ssh-keygen", "-lf", str(dev.root / "host_key.pub")],
                            capture_output=True, text=True, check=True).stdout.split()[1]
    dev.rekey("rsa")  # the host now offers only an RSA key
    run = edgefarm("inventory", "trust", "rekeyed", "-i", str(inv), "--known-hosts", str(known),
                   "--yes", tmp=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "added" not in out
    assert "ssh-ed25519" in out and old_fp in out  # names the recorded key
    assert f"ssh-keygen -R '[127.0.0.1]:{dev.port}' -f {known}" in " ".join(out.split())
    assert known.read_text() == trusted
