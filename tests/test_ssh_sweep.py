"""Sweeps over real sshd 'devices' on 127.0.0.1: faults, leases, hostile paths.

Each device is a real OpenSSH server (tests/sshd_fixture.py) reached through
the ssh transport from a real Ray gateway; the agent runs detached on "the
device" (this machine, in the device's own work dir).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from helpers import (
    EDGEFARM,
    REPO,
    counted_per_job,
    duplicate_events,
    edgefarm,
    sleep_models,
    write_ssh_inventory,
    write_sweep,
)
from test_scheduler import start

from orchestrator.scheduler import run_sweep
from orchestrator.transport.settings import TransportSettings

SLEEP = {"backend": "sleep", "warmup": 0}


def settings(known: Path, unreachable: float = 60) -> TransportSettings:
    return TransportSettings(str(known), unreachable_after_s=unreachable)


def test_three_devices_one_link_down_20s_mid_job(tmp_path: Path, sshd_devices: Any,
                                                 ray_cluster: Any) -> None:
    devs = sshd_devices("dev-a", "dev-b", "dev-c")
    inv, known = write_ssh_inventory(tmp_path, devs)
    sweep = write_sweep(tmp_path, devices=[d.name for d in devs], repetitions=3, warmup=1,
                        matrix={"prompt_tokens": 16, "gen_tokens": 1200, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv, "faulty")
    victim = devs[1]
    fault: dict[str, float] = {}

    def cut_the_link() -> None:
        db = sqlite3.connect(store.path)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            n = db.execute("SELECT COUNT(*) FROM repetitions r JOIN jobs j ON j.key ="
                           " r.job_key AND j.sweep_id = r.sweep_id WHERE j.device = ? AND"
                           " j.state = 'running'", (victim.name,)).fetchone()[0]
            if n >= 1:
                break
            time.sleep(0.05)
        victim.kill()
        fault["down"] = time.monotonic()
        time.sleep(20)
        victim.start()
        fault["up"] = time.monotonic()

    cutter = threading.Thread(target=cut_the_link, daemon=True)
    cutter.start()
    summary = run_sweep(store, "faulty", poll_s=0.2, transport_settings=settings(known))
    cutter.join()
    assert fault["up"] - fault["down"] >= 20
    # One paired job (tiny-moe with tiny-dense, in rounds) per device.
    assert summary.counts["done"] == 3 and not summary.failed and not summary.quarantined
    keys = [r[0] for r in store.db.execute("SELECT key FROM jobs WHERE sweep_id='faulty'")]
    assert len(keys) == len(set(keys)) == 3
    assert all(r["attempts"] == 1 for r in store.jobs("faulty")), "no job had to run again"
    assert set(counted_per_job(store.path, "faulty").values()) == {2 * 3}  # 2 models x 3 rounds
    assert duplicate_events(store.path, "faulty") == 0

    # The same sweep without the fault reports the same jobs and counts.
    from orchestrator.report import build_report

    clean = start(tmp_path, sweep, inv, "clean")
    run_sweep(clean, "clean", poll_s=0.2, transport_settings=settings(known))
    faulty_report, clean_report = build_report(store, "faulty"), build_report(clean, "clean")
    assert faulty_report["jobs"] == clean_report["jobs"]
    assert [(c["device"], c["moe"]["n"], c["dense"]["n"]) for c in
            faulty_report["comparisons"]] == [(c["device"], c["moe"]["n"], c["dense"]["n"])
                                              for c in clean_report["comparisons"]]


def test_unreachable_and_untrusted_devices_are_quarantined(tmp_path: Path, sshd_devices: Any,
                                                           ray_cluster: Any) -> None:
    good, gone, impostor = sshd_devices("good", "gone", "impostor")
    inv, known = write_ssh_inventory(tmp_path, [good, gone, impostor])
    known.write_text(good.known_hosts_line() + "\n" + gone.known_hosts_line() + "\n"
                     + f"[127.0.0.1]:{impostor.port} "
                     + " ".join(good.host_pub.split()[:2]) + "\n")  # wrong key
    gone.stop()
    sweep = write_sweep(tmp_path, devices=["good", "gone", "impostor"],
                        models=sleep_models(tmp_path, 2), **SLEEP,
                        matrix={"prompt_tokens": 1, "gen_tokens": 20, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    summary = run_sweep(store, "s1", poll_s=0.2, transport_settings=settings(known, 3))
    assert set(summary.quarantined) == {"gone", "impostor"}
    assert "cannot reach" in summary.quarantined["gone"]
    assert "CHANGED" in summary.quarantined["impostor"]
    by_device: dict[str, set[str]] = {}
    for row in store.jobs("s1"):
        by_device.setdefault(row["device"], set()).add(row["state"])
    assert by_device == {"good": {"done"}, "gone": {"failed"}, "impostor": {"failed"}}
    kinds = {r["error_kind"] for r in store.jobs("s1") if r["device"] == "gone"}
    assert kinds <= {"unreachable", "quarantined"} and "unreachable" in kinds


def test_agent_killed_on_device_is_recorded_and_retried(tmp_path: Path, sshd_devices: Any,
                                                        ray_cluster: Any) -> None:
    (dev,) = sshd_devices("victim")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    sweep = write_sweep(tmp_path, devices=["victim"], models=sleep_models(tmp_path, 2)[:1],
                        pairs=[], retries=1, repetitions=3, **SLEEP,
                        matrix={"prompt_tokens": 1, "gen_tokens": 500, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    (row,) = store.jobs("s1")
    pid_file = dev.work_dir / "jobs" / "s1" / f"{row['key']}-a1" / "agent.pid"

    def kill_agent() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_agent, daemon=True)
    killer.start()
    run_sweep(store, "s1", poll_s=0.2, transport_settings=settings(known))
    killer.join()
    (row,) = store.jobs("s1")
    assert row["state"] == "done" and row["attempts"] == 2
    first = store.attempts("s1", row["key"])[0]
    assert first["error_kind"] == "agent-crashed" and "before reporting a result" in first["error"]


def test_lease_keeps_a_second_controller_off_and_stale_leases_are_taken(
        tmp_path: Path, sshd_devices: Any, ray_cluster: Any) -> None:
    busy, stale = sshd_devices("busy", "stale")
    inv, known = write_ssh_inventory(tmp_path, [busy, stale])
    now = time.time()
    for dev, beat in ((busy, now), (stale, now - 3600)):
        dev.work_dir.mkdir(parents=True, exist_ok=True)
        (dev.work_dir / "lease.json").write_text(json.dumps(
            {"owner": "other-controller:4242:sweep-x", "heartbeat": beat, "ttl": 120,
             "host": "elsewhere"}))
    sweep = write_sweep(tmp_path, devices=["busy", "stale"], models=sleep_models(tmp_path, 2),
                        **SLEEP, matrix={"prompt_tokens": 1, "gen_tokens": 20, "threads": 1,
                                         "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    warnings: list[str] = []

    class Warned:
        def job_started(self, *a: Any) -> None: ...
        def job_event(self, *a: Any) -> None: ...
        def job_finished(self, *a: Any) -> None: ...
        def device_warning(self, device: str, message: str) -> None:
            warnings.append(f"{device}: {message}")

    summary = run_sweep(store, "s1", poll_s=0.2, progress=Warned(),
                        transport_settings=settings(known))
    assert list(summary.quarantined) == ["busy"]
    assert "other-controller:4242:sweep-x" in summary.quarantined["busy"]
    assert {r["state"] for r in store.jobs("s1") if r["device"] == "stale"} == {"done"}
    assert any(w.startswith("stale: took over the stale lease") for w in warnings)
    # The holder's lease on 'busy' is untouched; ours on 'stale' was released.
    assert "other-controller" in (busy.work_dir / "lease.json").read_text()
    assert not (stale.work_dir / "lease.json").exists()


def test_hostile_paths_work_and_inject_nothing(tmp_path: Path, sshd_devices: Any,
                                               ray_cluster: Any) -> None:
    (dev,) = sshd_devices("odd")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    hostile = tmp_path / "a dir;'\"$(touch INJECTED)`touch INJECTED2`"
    hostile.mkdir()
    data = yaml.safe_load(inv.read_text())
    data["devices"][0]["work_dir"] = str(hostile / "work")
    inv.write_text(yaml.safe_dump(data))
    model = hostile / "my model $(id).gguf"
    model.write_bytes(b"stand-in for the sleep backend")
    sweep = write_sweep(tmp_path, devices=["odd"], pairs=[], **SLEEP,
                        models=[{"id": "m", "arch": "dense", "source": {"path": str(model)}}],
                        matrix={"prompt_tokens": 1, "gen_tokens": 10, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    summary = run_sweep(store, "s1", poll_s=0.2, transport_settings=settings(known))
    assert summary.counts["done"] == 1, summary.failed
    assert (hostile / "work" / "jobs" / "s1").is_dir()
    assert not list(Path("/").glob("INJECTED*")) and not list(Path("/root").glob("INJECTED*"))
    assert not list(REPO.glob("INJECTED*")) and not list(tmp_path.rglob("INJECTED*"))


def test_kill_9_controller_then_resume_reattaches_over_ssh(tmp_path: Path,
                                                           sshd_devices: Any) -> None:
    devs = sshd_devices("r1", "r2")
    inv, known = write_ssh_inventory(tmp_path, devs)
    sweep = write_sweep(tmp_path, devices=["r1", "r2"], models=sleep_models(tmp_path, 3),
                        repetitions=4, **SLEEP,
                        matrix={"prompt_tokens": 1, "gen_tokens": 400, "threads": 1,
                                "gpu_layers": 0})
    results = tmp_path / "results"
    proc = subprocess.Popen([*EDGEFARM, "sweep", "run", str(sweep), "-i", str(inv), "-r",
                             str(results), "--known-hosts", str(known)], cwd=REPO,
                            env=dict(os.environ, COLUMNS="200"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    sweep_id = proc.stdout.readline().split()[1]
    db = results / "edgefarm.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            reps = conn.execute("SELECT COUNT(*) FROM repetitions r JOIN jobs j ON j.key ="
                                " r.job_key WHERE j.state = 'running'").fetchone()[0]
        if reps >= 2:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = edgefarm("sweep", "resume", sweep_id, "-r", str(results), "--known-hosts",
                       str(known), tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with sqlite3.connect(db) as conn:
        jobs = conn.execute("SELECT state, attempts FROM jobs").fetchall()
    counted = sum(counted_per_job(db, sweep_id).values())
    # One paired job per device: 3 models x 4 rounds each.
    assert len(jobs) == 2 and all(state == "done" for state, _ in jobs)
    assert all(attempts == 1 for _, attempts in jobs), "running jobs were re-attached"
    assert counted == 2 * 3 * 4
