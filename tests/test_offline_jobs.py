"""bench/offline_jobs.py: jobs planned here, run by the agent elsewhere, imported as a sweep.

The H200 results (docs/results/h200/) come through this path, so it is
tested end to end with the real parts: the controller's planner writes the
job files, the real agent runs one of them (xllamacpp, tiny synthetic
models), the other is never run (as when a device call runs out of time),
and the import records one done and one failed with its reason, which the
report then shows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO, write_inventory, write_sweep

from orchestrator.report import build_report, render_markdown
from orchestrator.store import Store

SCRIPT = REPO / "bench" / "offline_jobs.py"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


def test_jobs_run_elsewhere_come_back_as_a_sweep_and_a_missing_one_as_failed(
        tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, ["far"])
    sweep = write_sweep(tmp_path, devices=["far"], repetitions=2, warmup=0,
                        matrix={"prompt_tokens": [16, 24], "gen_tokens": [8], "threads": [1],
                                "gpu_layers": [0]})
    jobs = tmp_path / "jobs"
    planned = _script("jobs", str(sweep), str(inventory), str(jobs))
    assert planned.returncode == 0, planned.stderr
    order = (jobs / "order.txt").read_text().split()
    assert len(order) == 2 and all((jobs / k / "job.json").is_file() for k in order)

    ran = subprocess.run([sys.executable, "-m", "agents", "run", str(jobs / order[0]), "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]

    results = tmp_path / "results"
    imported = _script("import", str(sweep), str(inventory), str(jobs), str(results))
    assert imported.returncode == 0, imported.stderr
    assert "1 done, 1 failed" in imported.stdout
    store = Store(results, read_only=True)
    try:
        sweep_id = store.latest_sweep_id()
        assert sweep_id is not None
        states = {row["key"]: (row["state"], row["error"]) for row in store.jobs(sweep_id)}
        assert states[order[0]] == ("done", None)
        assert states[order[1]] == ("failed", "no events log came back")
        assert store.sweep(sweep_id)["state"] == "finished"
        md = render_markdown(build_report(store, sweep_id))
    finally:
        store.close()
    assert "prompt 16" in md and "n=2" in md  # the job that ran: measured, with its rounds
    assert "no verdict: not measured" in md and "no events log came back" in md
