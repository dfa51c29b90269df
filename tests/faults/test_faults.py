"""Fault injection: every job done once, none duplicated, none lost (``make faults``).

Each case runs a sweep through the real CLI, as a user would, injects one
fault and recovers the way the CLI's own advice says (a resume, freeing
space); then it counts, from the store and from the job directories on the
devices:

* planned: jobs in the sweep;
* done: jobs whose state is done with every counted repetition stored;
* duplicated: jobs whose work finished with an ``ok`` result in more than one
  attempt directory on a device (the work was run again instead of collected);
* lost: jobs not done at the end, or done with repetitions missing.

Real parts: sshd "devices" on 127.0.0.1 whose links are cut by killing sshd
and its sessions (the detached agents keep running, as on a board), the
``local`` transport, Ray started by the CLI, SQLite on a real tmpfs that is
filled. The jobs use the test-only sleep backend: the faults are about the
controller, not about llama.cpp.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fault_tally import Tally
from helpers import (
    EDGEFARM,
    REPO,
    counted_per_job,
    edgefarm,
    fill_disk,
    sleep_models,
    start_sweep_run,
    wait_for_first_agent,
    write_inventory,
    write_ssh_inventory,
    write_sweep,
)

QUIET = ("--no-report", "--metrics-addr", "off")


def sleep_sweep(tmp: Path, devices: list[str], *, models: int = 1, jobs: int = 1,
                reps: int = 2, ms: int = 1000, **overrides: Any) -> Path:
    """Jobs of the test-only sleep backend: ``reps`` rounds of ``ms`` per model."""
    return write_sweep(tmp, devices=devices, models=sleep_models(tmp, models),
                       pairs=None if models > 1 else [], backend="sleep", warmup=0,
                       repetitions=reps,
                       matrix={"prompt_tokens": list(range(1, jobs + 1)), "gen_tokens": ms,
                               "threads": 1, "gpu_layers": 0}, **overrides)


def ok_results(work_dirs: Iterable[Path], sweep_id: str) -> Counter[str]:
    """Per job key: how many attempt directories on the devices hold an ``ok`` result."""
    found: Counter[str] = Counter()
    for work_dir in work_dirs:
        for job_dir in (work_dir / "jobs" / sweep_id).glob("*-a*"):
            log = job_dir / "events.jsonl"
            if not log.is_file():
                continue
            for line in log.read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("kind") == "result" and event.get("status") == "ok":
                    found[job_dir.name.rsplit("-a", 1)[0]] += 1
    return found


def account(case: str, results: Path, sweep_id: str, work_dirs: Iterable[Path],
            reps_per_job: int) -> Tally:
    """The case's row: planned / done / duplicated / lost (see the module docstring)."""
    db_path = results / "edgefarm.sqlite"
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        jobs = dict(db.execute("SELECT key, state FROM jobs WHERE sweep_id = ?", (sweep_id,)))
    counted = counted_per_job(db_path, sweep_id)
    done = [k for k, state in jobs.items() if state == "done"
            and counted.get(k) == reps_per_job]
    twice = [k for k, n in ok_results(work_dirs, sweep_id).items() if n > 1]
    return Tally(case, len(jobs), len(done), len(twice), len(jobs) - len(done))


def check(tally: Callable[[Tally], None], row: Tally, planned: int) -> None:
    tally(row)
    assert (row.planned, row.done, row.duplicated, row.lost) == (planned, planned, 0, 0), row


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def resume(sweep_id: str, results: Path, tmp: Path, *args: str) -> None:
    done = edgefarm("sweep", "resume", sweep_id, "-r", str(results), *QUIET, *args, tmp=tmp)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------- cases
def test_device_down_20s_mid_job(tmp_path: Path, sshd_devices: Any,
                                 tally: Callable[[Tally], None]) -> None:
    devs = sshd_devices("dev-a", "dev-b", "dev-c")
    inv, known = write_ssh_inventory(tmp_path, devs)
    # One paired job per device: 2 models x 3 rounds x 4 s = 24 s, the link of
    # dev-b is down for 20 s of it.
    sweep = sleep_sweep(tmp_path, [d.name for d in devs], models=2, reps=3, ms=4000)
    results = tmp_path / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results),
                                     "--known-hosts", str(known), *QUIET)
    victim = devs[1]
    assert wait_for_first_agent(victim.work_dir / "jobs" / sweep_id)
    time.sleep(1.0)
    victim.kill()
    time.sleep(20)
    victim.start()
    code, out = finish(proc)
    assert code == 0, out
    check(tally, account("device down 20 s mid-job", results, sweep_id,
                         [d.work_dir for d in devs], 2 * 3), 3)


def test_device_down_past_the_deadline_then_resume(tmp_path: Path, sshd_devices: Any,
                                                   tally: Callable[[Tally], None]) -> None:
    (dev,) = sshd_devices("far-away")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    # 4 s of work against a 2 s deadline; the device is gone for 10 s, past
    # its 3 s grace: the run gives up on it, the resume collects the result.
    sweep = sleep_sweep(tmp_path, ["far-away"], reps=4, ms=1000, timeout_s=2, retries=0)
    results = tmp_path / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results),
                                     "--known-hosts", str(known), "--unreachable-after", "3",
                                     *QUIET)
    assert wait_for_first_agent(dev.work_dir / "jobs" / sweep_id)
    dev.kill()
    code, out = finish(proc)
    assert code == 1 and "unreachable" in out, out
    time.sleep(max(0.0, 10 - 3))
    dev.start()
    resume(sweep_id, results, tmp_path, "--known-hosts", str(known))
    check(tally, account("device down past the deadline, then resume", results, sweep_id,
                         [dev.work_dir], 4), 1)


def test_agent_killed(tmp_path: Path, tally: Callable[[Tally], None]) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = sleep_sweep(tmp_path, ["dev-a"], jobs=2, reps=3, ms=1000, retries=1)
    results = tmp_path / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results), *QUIET)
    jobs_dir = tmp_path / "devices" / "dev-a" / "jobs" / sweep_id
    assert wait_for_first_agent(jobs_dir)
    time.sleep(0.5)
    (pid_file,) = jobs_dir.glob("*/agent.pid")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    check(tally, account("agent killed (kill -9)", results, sweep_id,
                         [tmp_path / "devices" / "dev-a"], 3), 2)


def test_controller_killed_then_resumed(tmp_path: Path, tally: Callable[[Tally], None]) -> None:
    inv = write_inventory(tmp_path, ["dev-a", "dev-b"])
    sweep = sleep_sweep(tmp_path, ["dev-a", "dev-b"], jobs=2, reps=3, ms=1000)
    results = tmp_path / "results"
    proc = subprocess.Popen([*EDGEFARM, "sweep", "run", str(sweep), "-i", str(inv), "-r",
                             str(results), *QUIET], cwd=REPO, text=True,
                            env=dict(os.environ, COLUMNS="200"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    sweep_id = proc.stdout.readline().split()[1]
    assert wait_for_first_agent(tmp_path / "devices" / "dev-a" / "jobs" / sweep_id)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Ray and exporter; not the agents
    proc.wait()
    resume(sweep_id, results, tmp_path)
    check(tally, account("controller killed (kill -9), then resume", results, sweep_id,
                         [tmp_path / "devices" / n for n in ("dev-a", "dev-b")], 3), 4)


def test_two_controllers_on_one_sweep(tmp_path: Path, tally: Callable[[Tally], None]) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = sleep_sweep(tmp_path, ["dev-a"], jobs=2, reps=2, ms=1000)
    results = tmp_path / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results), *QUIET)
    assert wait_for_first_agent(tmp_path / "devices" / "dev-a" / "jobs" / sweep_id)
    second = edgefarm("sweep", "resume", sweep_id, "-r", str(results), *QUIET, tmp=tmp_path)
    assert second.returncode == 2 and "is being run by pid" in second.stderr, second.stderr
    code, out = finish(proc)
    assert code == 0, out
    check(tally, account("second controller on a running sweep", results, sweep_id,
                         [tmp_path / "devices" / "dev-a"], 2), 2)


def test_disk_full_then_resume(tmp_path: Path, tmpfs: Path,
                               tally: Callable[[Tally], None]) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = sleep_sweep(tmp_path, ["dev-a"], jobs=4, reps=2, ms=400,
                        telemetry={"interval_s": 0.05})
    results = tmpfs / "results"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results), *QUIET)
    assert wait_for_first_agent(tmp_path / "devices" / "dev-a" / "jobs" / sweep_id)
    filler = fill_disk(tmpfs)
    code, out = finish(proc)
    assert code == 1 and "the disk is full" in out, out
    filler.unlink()
    resume(sweep_id, results, tmp_path)
    check(tally, account("results disk full, then resume", results, sweep_id,
                         [tmp_path / "devices" / "dev-a"], 2), 4)


def test_tampered_agent(tmp_path: Path, tally: Callable[[Tally], None]) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = sleep_sweep(tmp_path, ["dev-a"], jobs=3, reps=2, ms=700)
    results = tmp_path / "results"
    work = tmp_path / "devices" / "dev-a"
    proc, sweep_id = start_sweep_run(str(sweep), "-i", str(inv), "-r", str(results), *QUIET)
    assert wait_for_first_agent(work / "jobs" / sweep_id)
    (zipapp,) = (work / "agent").glob("*.pyz")
    data = bytearray(zipapp.read_bytes())
    data[5] ^= 0x01  # one byte of the deployed agent, while a job runs
    zipapp.write_bytes(bytes(data))
    marker = tmp_path / "tampered-code-ran"
    runner = Path(str(zipapp) + ".d") / "agents" / "runner.py"
    runner.write_text(runner.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    code, out = finish(proc)
    assert code == 0, out
    assert not marker.exists(), "the tampered code ran"
    (cached,) = (results / "agent").glob("*.pyz")
    assert zipapp.read_bytes() == cached.read_bytes(), "the genuine agent was put back"
    check(tally, account("tampered agent (one byte, edited code)", results, sweep_id,
                         [work], 2), 3)
