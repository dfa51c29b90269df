"""The real CLI end to end: Ray, detached agents, llama.cpp (xllamacpp), SQLite.

Each test runs ``edgefarm`` as a subprocess, the way users do.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from helpers import EDGEFARM, REPO, edgefarm, sleep_models, write_inventory, write_sweep

from orchestrator.store import Store


def sweep_id_of(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("sweep "), f"the sweep id must come first, got {first!r}"
    return first.split()[1]


def test_tiny_moe_vs_dense_sweep_runs_real_llama_cpp_and_reports(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, ["local"])
    sweep = write_sweep(tmp_path, devices=["local"], name="quick")
    results = tmp_path / "results"
    run = edgefarm("sweep", "run", str(sweep), "-i", str(inv), "-r", str(results), tmp=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    sweep_id = sweep_id_of(run.stdout)
    assert "done 1" in run.stdout  # the pair is one job, run in alternating rounds
    assert "MoE is" in run.stdout and ("behind" in run.stdout or "ahead" in run.stdout)

    as_json = edgefarm("report", sweep_id, "-r", str(results), "--format", "json", tmp=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    (comp,) = report["comparisons"]
    assert (comp["moe"]["model_id"], comp["dense"]["model_id"]) == ("tiny-moe", "tiny-dense")
    for side in (comp["moe"], comp["dense"]):
        assert side["n"] == 2 and side["decode_tps_median"] > 0
        assert side["prefill_tps_median"] > 0 and side["ttft_s_median"] > 0
        assert side["peak_rss_bytes"] > 10 * 2**20 and side["model_size_bytes"] > 100_000
        assert side["params_total"] >= side["params_active"] > 0
    assert comp["moe"]["params_total"] > comp["moe"]["params_active"]  # experts inactive
    # The paired estimate: round i of each model (both lists in round order),
    # geometric mean of the per-round ratios.
    moe_tps, dense_tps = comp["moe"]["decode_tps"], comp["dense"]["decode_tps"]
    ratio = (moe_tps[0] / dense_tps[0] * moe_tps[1] / dense_tps[1]) ** 0.5
    assert abs(comp["decode_ratio"] - ratio) < 1e-9
    assert comp["pairing"].startswith("paired by round")
    schedule = comp["schedule"]  # a fresh load per repetition (the default); 2 rounds
    assert (schedule["rounds_run"], schedule["kept_rounds"], schedule["resident"]) == \
        (2, 2, "one-at-a-time")
    assert schedule["stop_reason"] == "fixed count of 2 rounds"
    assert schedule["model_processes"] == "the agent's"
    assert comp["decode_estimate"]["kind"] == "range"  # 2 rounds: too few for a 95% CI
    prov = comp["moe"]["provenance"]
    assert prov == comp["dense"]["provenance"] and prov["backend"] == "xllamacpp"
    assert report["device_facts"]["local"]["backends"]["xllamacpp"]["present"] is True

    md = edgefarm("report", sweep_id, "-r", str(results), "--format", "md", tmp=tmp_path)
    assert md.returncode == 0 and md.stdout.startswith("# edgefarm report: quick")
    assert "| tiny-moe (moe) |" in md.stdout
    assert "- rounds: 2 run, 2 kept; fixed count of 2 rounds; models loaded: one-at-a-time" \
        in md.stdout

    status = edgefarm("sweep", "status", sweep_id, "-r", str(results), tmp=tmp_path)
    assert status.returncode == 0 and "tiny-moe vs tiny-dense" in status.stdout \
        and status.stdout.count("done") >= 1

    # The agent wrote each preset once into the device's models dir and reused it.
    synth = list((tmp_path / "models" / "synth").glob("*.gguf"))
    assert len(synth) == 2


def test_kill_9_mid_sweep_then_resume_completes_every_job_once(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 4),
                        pairs=[],  # four jobs, one per model
                        backend="sleep", repetitions=4, warmup=1,
                        matrix={"prompt_tokens": 1, "gen_tokens": 400, "threads": 1,
                                "gpu_layers": 0})
    results = tmp_path / "results"
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([*EDGEFARM, "sweep", "run", str(sweep), "-i", str(inv), "-r",
                             str(results)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    sweep_id = sweep_id_of(proc.stdout.readline())
    db = results / "edgefarm.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the 2nd job is half-way
        with sqlite3.connect(db) as conn:
            done = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='done'").fetchone()[0]
            reps = conn.execute(
                "SELECT COUNT(*) FROM repetitions r JOIN jobs j ON j.key = r.job_key"
                " WHERE j.state = 'running' AND r.warmup = 0").fetchone()[0]
        if done == 1 and reps >= 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the sweep never reached its second job")
    os.killpg(proc.pid, signal.SIGKILL)  # the controller and everything in its group
    proc.wait()

    resumed = edgefarm("sweep", "resume", sweep_id, "-r", str(results), tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "done 4" in resumed.stdout
    with sqlite3.connect(db) as conn:
        jobs = conn.execute("SELECT key, state, attempts, ok_attempt FROM jobs").fetchall()
        counted = dict(conn.execute(
            "SELECT r.job_key, COUNT(*) FROM repetitions r JOIN jobs j ON j.key = r.job_key"
            " AND r.attempt = j.ok_attempt WHERE r.warmup = 0 GROUP BY r.job_key").fetchall())
        dupes = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT job_key || ':' || attempt"
                             " || ':' || seq) FROM events").fetchone()[0]
    assert len(jobs) == 4 and all(state == "done" for _, state, _, _ in jobs)
    assert all(n == 4 for n in counted.values()) and len(counted) == 4
    assert dupes == 0
    # The job the controller was following when it died kept running on the
    # device and was re-attached by the resume: no job needed a second attempt.
    assert all(attempts == 1 for _, _, attempts, _ in jobs)


def test_bad_input_exits_2_with_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, ["local"])
    results = tmp_path / "results"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels:\n  - id: a\n    arch: moe\n    colour: red\n")
    run = edgefarm("sweep", "run", str(bad), "-i", str(inv), "-r", str(results), tmp=tmp_path)
    assert run.returncode == 2
    assert f"{bad}:5:5" in run.stderr and "colour" in run.stderr
    assert not results.exists()

    unknown_device = write_sweep(tmp_path, devices=["nope"], name="unk")
    run = edgefarm("sweep", "run", str(unknown_device), "-i", str(inv), "-r", str(results),
                   tmp=tmp_path)
    assert run.returncode == 2 and "nope" in run.stderr and f"{unknown_device}:" in run.stderr
    assert not results.exists()

    broken = tmp_path / "broken.yaml"
    broken.write_text("devices:\n  - name: a\n    transport: [local\n")
    run = edgefarm("inventory", "validate", "-i", str(broken), tmp=tmp_path)
    assert run.returncode == 2 and f"{broken}:" in run.stderr

    run = edgefarm("sweep", "plan", str(tmp_path / "missing.yaml"), "-i", str(inv), tmp=tmp_path)
    assert run.returncode == 2 and "missing.yaml" in run.stderr

    results.mkdir()
    run = edgefarm("report", "no-such-sweep", "-r", str(results), tmp=tmp_path)
    assert run.returncode == 2 and "no results store at" in run.stderr
    assert not (results / "edgefarm.sqlite").exists()  # reading creates nothing
    store = Store(results)  # an empty store: now the id itself is what is wrong
    store.close()
    run = edgefarm("report", "no-such-sweep", "-r", str(results), tmp=tmp_path)
    assert run.returncode == 2 and "no-such-sweep" in run.stderr
