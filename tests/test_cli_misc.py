"""Smaller CLI paths: Ctrl-C during a sweep, models, inventory listing, --help."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import gguf
from helpers import (
    edgefarm,
    sleep_models,
    start_sweep_run,
    wait_for_first_agent,
    write_inventory,
    write_sweep,
)


def two_long_jobs_running(tmp_path: Path, **overrides: object
                          ) -> tuple[subprocess.Popen[str], str, Path, Path]:
    """``sweep run`` of two 6 s jobs on one local device, a second into the first one.

    Returns the CLI process, the sweep id, the results dir and the device's
    jobs dir of the sweep.
    """
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2),
                        backend="sleep", repetitions=2, warmup=0, pairs=[],  # two jobs
                        matrix={"prompt_tokens": 1, "gen_tokens": 3000, "threads": 1,
                                "gpu_layers": 0}, **overrides)
    results = tmp_path / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results))
    jobs_dir = tmp_path / "devices" / "dev-a" / "jobs" / sweep_id
    wait_for_first_agent(jobs_dir)
    time.sleep(1.0)
    return proc, sweep_id, results, jobs_dir


def test_ctrl_c_cancels_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    proc, sweep_id, results, pid_files = two_long_jobs_running(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert f"edgefarm sweep resume {sweep_id}" in out
    (pid_file,) = list(pid_files.glob("*/agent.pid"))
    assert not Path(f"/proc/{int(pid_file.read_text())}/cmdline").exists() or \
        "Z" in Path(f"/proc/{int(pid_file.read_text())}/stat").read_text().split(")")[1][:3]
    with sqlite3.connect(results / "edgefarm.sqlite") as db:
        assert db.execute("SELECT state FROM sweeps").fetchone()[0] == "interrupted"
        states = sorted(r[0] for r in db.execute("SELECT state FROM jobs"))
    assert states == ["cancelled", "pending"]

    resumed = edgefarm("sweep", "resume", sweep_id, "-r", str(results), tmp=tmp_path,
                       timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "done 2" in resumed.stdout


def test_a_second_ctrl_c_still_records_the_sweep_interrupted(tmp_path: Path) -> None:
    """Impatient users press Ctrl-C twice: the sweep must not be left ``running``."""
    proc, sweep_id, results, _ = two_long_jobs_running(tmp_path, retries=0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    with sqlite3.connect(results / "edgefarm.sqlite") as db:
        assert db.execute("SELECT state FROM sweeps").fetchone()[0] == "interrupted"
    # Even with retries: 0, the resume finishes both jobs (the interrupted
    # attempt belongs to the earlier run and does not use up the budget).
    resumed = edgefarm("sweep", "resume", sweep_id, "-r", str(results), tmp=tmp_path,
                       timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "done 2" in resumed.stdout


def test_resume_warns_when_the_sweep_file_was_edited(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 1),
                        backend="sleep", repetitions=1, warmup=0, pairs=[],
                        matrix={"prompt_tokens": 1, "gen_tokens": 10, "threads": 1,
                                "gpu_layers": 0})
    results = tmp_path / "results"
    ran = edgefarm("sweep", "run", str(sweep), "-i", str(inv), "-r", str(results),
                   "--no-report", tmp=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    sweep_id = ran.stdout.split()[1]
    same = edgefarm("sweep", "resume", sweep_id, "-r", str(results), "--no-report",
                    tmp=tmp_path)
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr
    sweep.write_text(sweep.read_text().replace("repetitions: 1", "repetitions: 5"))
    edited = edgefarm("sweep", "resume", sweep_id, "-r", str(results), "--no-report",
                      tmp=tmp_path)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert f"warning: {sweep} changed since the sweep was planned; resume runs the plan " \
        "stored with the sweep" in " ".join(edited.stderr.split())
    assert f"edgefarm sweep run {sweep}" in " ".join(edited.stderr.split())


def test_models_synth_writes_a_gguf_the_reference_reader_accepts(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    run = edgefarm("models", "synth", "tiny-moe", "--quant", "Q8_0", "--out", str(out),
                   tmp=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "checked with gguf-py" in run.stdout
    reader = gguf.GGUFReader(str(out))
    fields = {f.name: f for f in reader.fields.values()}
    assert "edgefarm.params.active" in fields
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in reader.tensors)

    bad = edgefarm("models", "synth", "gpt-5", "--out", str(tmp_path / "x.gguf"), tmp=tmp_path)
    assert bad.returncode == 2 and "olmoe-1b-7b" in bad.stderr
    assert not (tmp_path / "x.gguf").exists()
    listing = edgefarm("models", "presets", tmp=tmp_path)
    assert listing.returncode == 0 and "6,919,161,856" in listing.stdout


def test_inventory_commands_and_help(tmp_path: Path) -> None:
    run = edgefarm("inventory", "list", "-i", "inventory/devices.example.yaml", tmp=tmp_path)
    assert run.returncode == 0
    for name in ("m2pro", "orin-nano", "apple-silicon", "jetson", "nvidia-gpu"):
        assert name in run.stdout
    ok = edgefarm("inventory", "validate", "-i", "inventory/local.yaml", tmp=tmp_path)
    assert ok.returncode == 0 and "1 device" in ok.stdout
    for args in (["--help"], ["sweep", "run", "--help"], ["report", "--help"]):
        helped = edgefarm(*args, tmp=tmp_path)
        assert helped.returncode == 0 and "Usage" in helped.stdout
    plan = edgefarm("sweep", "plan", "sweeps/seed-shapes-local.yaml", tmp=tmp_path)
    # OLMoE with its two dense baselines: one paired job.
    assert plan.returncode == 0 and "1 job(s)" in plan.stdout
