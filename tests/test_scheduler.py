"""The scheduler on a real Ray cluster, with real agents on local-transport devices.

Jobs use the clearly test-only ``sleep`` backend where the point is timing and
scheduling, not inference (it sleeps ``gen_tokens`` ms per repetition).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from helpers import sleep_models, write_inventory, write_sweep

from orchestrator.config.sweep import load_sweep_with_inventory
from orchestrator.planner import plan
from orchestrator.scheduler import run_sweep
from orchestrator.store import Store
from orchestrator.sweeps import job_record


def start(tmp: Path, sweep_path: Path, inv_path: Path, sweep_id: str = "s1") -> Store:
    sweep, inv = load_sweep_with_inventory(sweep_path, inv_path)
    store = Store(tmp / "results")
    store.create_sweep(sweep_id, sweep.name, sweep.model_dump(mode="json"),
                       inv.model_dump(mode="json", exclude_unset=True),
                       [job_record(j) for j in plan(sweep, inv)])
    return store


class Recorder:
    """A Progress that remembers when each event reached the driver."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str, dict[str, Any]]] = []

    def job_started(self, job: dict[str, Any], attempt: int) -> None:
        self.log.append((time.monotonic(), "started", job["key"], {"attempt": attempt}))

    def job_event(self, job: dict[str, Any], event: dict[str, Any]) -> None:
        self.log.append((time.monotonic(), "event", job["key"], event))

    def job_finished(self, job: dict[str, Any], state: str, error: str | None,
                     retrying: bool) -> None:
        self.log.append((time.monotonic(), "finished", job["key"],
                         {"state": state, "retrying": retrying}))


def test_one_job_per_device_devices_in_parallel(tmp_path: Path, ray_cluster: Any) -> None:
    inv = write_inventory(tmp_path, ["dev-a", "dev-b"])
    sweep = write_sweep(tmp_path, devices=["dev-a", "dev-b"], models=sleep_models(tmp_path, 3),
                        backend="sleep", repetitions=3, warmup=0, pairs=[],  # a job per model
                        matrix={"prompt_tokens": 1, "gen_tokens": 200, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    summary = run_sweep(store, "s1", poll_s=0.1)
    assert summary.counts["done"] == 6 and not summary.failed

    spans: dict[str, list[tuple[float, float]]] = {"dev-a": [], "dev-b": []}
    for row in store.jobs("s1"):
        events = store.events("s1", row["key"])
        hello = next(e for e in events if e["kind"] == "hello")
        result = next(e for e in events if e["kind"] == "result")
        spans[row["device"]].append((hello["t"], result["t"]))
    for device, intervals in spans.items():
        intervals.sort()
        for (_, end), (begin, _) in zip(intervals, intervals[1:], strict=False):
            assert begin >= end, f"{device} ran two jobs at once"
    # Devices ran side by side: the two devices' busy periods overlap.
    a0, a1 = min(s for s, _ in spans["dev-a"]), max(e for _, e in spans["dev-a"])
    b0, b1 = min(s for s, _ in spans["dev-b"]), max(e for _, e in spans["dev-b"])
    assert min(a1, b1) - max(a0, b0) > 0.5


def test_events_reach_the_driver_while_the_job_runs(tmp_path: Path, ray_cluster: Any) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2)[:1],
                        pairs=[], backend="sleep", repetitions=5, warmup=0,
                        matrix={"prompt_tokens": 1, "gen_tokens": 400, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    rec = Recorder()
    run_sweep(store, "s1", progress=rec, poll_s=0.1)
    reps = [t for t, what, _, ev in rec.log if what == "event" and ev["kind"] == "repetition"]
    end = next(t for t, what, _, _ in rec.log if what == "finished")
    assert len(reps) == 5
    # The first repetition arrived well before the job ended (~1.6 s of sleeps later).
    assert end - reps[0] > 1.0


def test_failing_job_is_recorded_retried_and_the_sweep_goes_on(tmp_path: Path,
                                                               ray_cluster: Any) -> None:
    models = sleep_models(tmp_path, 2)
    models.append({"id": "gone", "arch": "dense",
                   "source": {"path": str(tmp_path / "no-such-model.gguf")}})
    inv = write_inventory(tmp_path, ["dev-a"])
    # No pairs: each model is a job, and the one whose file is gone fails alone.
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=models, backend="sleep",
                        pairs=[], retries=2,
                        matrix={"prompt_tokens": 1, "gen_tokens": 10, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    rec = Recorder()
    summary = run_sweep(store, "s1", progress=rec, poll_s=0.1)
    rows = {r["model_id"]: r for r in store.jobs("s1")}
    assert rows["m-moe"]["state"] == rows["m-dense1"]["state"] == "done"
    gone = rows["gone"]
    assert gone["state"] == "failed" and gone["attempts"] == 3
    assert gone["error_kind"] == "model-missing" and "no-such-model.gguf" in gone["error"]
    assert [f["model"] for f in summary.failed] == ["gone"]
    retries = [ev for _, what, key, ev in rec.log if what == "finished" and ev["retrying"]]
    assert len(retries) == 2


def test_timeout_kills_the_agent_and_is_recorded(tmp_path: Path, ray_cluster: Any) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2)[:1],
                        pairs=[], backend="sleep", repetitions=1, warmup=0, retries=0,
                        timeout_s=1.5,
                        matrix={"prompt_tokens": 1, "gen_tokens": 60000, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    started = time.monotonic()
    run_sweep(store, "s1", poll_s=0.1)
    assert time.monotonic() - started < 30
    (row,) = store.jobs("s1")
    assert row["state"] == "failed" and row["error_kind"] == "timeout"
    pid = int((Path(tmp_path / "devices" / "dev-a" / "jobs" / "s1" / f"{row['key']}-a1")
               / "agent.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_killed_agent_is_recorded_with_its_reason_and_retried(tmp_path: Path,
                                                              ray_cluster: Any) -> None:
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2)[:1],
                        pairs=[], backend="sleep", retries=1, warmup=0, repetitions=3,
                        matrix={"prompt_tokens": 1, "gen_tokens": 500, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    (row,) = store.jobs("s1")
    pid_file = tmp_path / "devices" / "dev-a" / "jobs" / "s1" / f"{row['key']}-a1" / "agent.pid"

    def kill_first_agent() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_first_agent, daemon=True)
    killer.start()
    run_sweep(store, "s1", poll_s=0.1)
    killer.join()
    (row,) = store.jobs("s1")
    assert row["state"] == "done" and row["attempts"] == 2 and row["ok_attempt"] == 2
    first, second = store.attempts("s1", row["key"])
    assert first["state"] == "failed" and first["error_kind"] == "agent-crashed"
    assert "killed by signal 9" in first["error"]
    assert second["state"] == "done"
    counted = [r for r in store.counted_repetitions("s1")]
    assert len(counted) == 3 and {r["attempt"] for r in counted} == {2}


def test_a_retry_keeps_the_paired_rounds_the_killed_attempt_completed(
        tmp_path: Path, ray_cluster: Any) -> None:
    """Round granularity: the agent is killed in round 2; the retry carries rounds 0-1 (or 0-2).

    The carried repetitions are the first attempt's measurements (same values),
    re-emitted with where they came from; only the missing rounds run again, and
    the job still has exactly its 5 rounds.
    """
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2),
                        backend="sleep", retries=1, warmup=0, repetitions=5,
                        matrix={"prompt_tokens": 1, "gen_tokens": 300, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    (row,) = store.jobs("s1")
    first_dir = tmp_path / "devices" / "dev-a" / "jobs" / "s1" / f"{row['key']}-a1"

    def kill_in_round_2() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                lines = (first_dir / "events.jsonl").read_text().splitlines()
            except OSError:
                lines = []
            if any('"round":2' in line and '"kind":"repetition"' in line for line in lines):
                os.kill(int((first_dir / "agent.pid").read_text()), signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_in_round_2, daemon=True)
    killer.start()
    summary = run_sweep(store, "s1", poll_s=0.1)
    killer.join()
    assert not summary.failed
    (row,) = store.jobs("s1")
    assert row["state"] == "done" and row["ok_attempt"] == 2
    first, second = store.attempts("s1", row["key"])
    assert first["error_kind"] == "agent-crashed"

    def by_round(attempt: int) -> dict[int, dict[str, float]]:
        rounds: dict[int, dict[str, float]] = {}
        for ev in store.events("s1", row["key"]):
            if ev["attempt"] == attempt and ev["kind"] == "repetition" and not ev["warmup"]:
                rounds.setdefault(ev["round"], {})[ev["model"]] = ev["decode_tps"]
        return rounds

    killed = by_round(1)
    complete = [r for r, models in sorted(killed.items()) if len(models) == 2]
    assert complete[:2] == [0, 1] and len(complete) in (2, 3)
    retried = by_round(2)
    assert sorted(retried) == [0, 1, 2, 3, 4]
    for r in complete:  # the same measurements, not new ones
        assert retried[r] == killed[r]
    carried = [ev for ev in store.events("s1", row["key"])
               if ev["attempt"] == 2 and ev["kind"] == "repetition" and ev.get("carried_from")]
    assert len(carried) == 2 * len(complete)
    assert {ev["carried_from"]["attempt"] for ev in carried} == {1}
    result = json.loads(row["result_json"])
    assert result["rounds"]["carried_rounds"] == len(complete)
    assert result["rounds"]["carried_from_attempt"] == 1
    assert result["rounds"]["rounds_run"] == 5
    counted = store.counted_repetitions("s1")
    assert len(counted) == 10 and {r["attempt"] for r in counted} == {2}


def test_a_site_without_a_ray_node_is_refused_before_any_job(tmp_path: Path,
                                                              ray_cluster: Any) -> None:
    """The session's Ray declares sites 'local' and 'lab'; a device on 'mars' has no node."""
    import pytest

    from orchestrator.scheduler import MissingSiteNode

    inv = write_inventory(tmp_path, ["rover"], site="mars")
    sweep = write_sweep(tmp_path, devices=["rover"], models=sleep_models(tmp_path, 2),
                        backend="sleep", repetitions=1, warmup=0,
                        matrix={"prompt_tokens": 1, "gen_tokens": 10, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    with pytest.raises(MissingSiteNode, match="no Ray node serves site\\(s\\) mars") as info:
        run_sweep(store, "s1", poll_s=0.1)
    assert "edgefarm-site:mars" in str(info.value) and info.value.exit_code == 2
    assert not (tmp_path / "devices" / "rover" / "jobs").exists(), "nothing started"
    assert [r["state"] for r in store.jobs("s1")] == ["pending"]


def test_at_most_max_running_jobs_run_at_once_and_every_device_gets_its_turn(
        tmp_path: Path, ray_cluster: Any) -> None:
    devices = ["dev-a", "dev-b", "dev-c", "dev-d"]
    inv = write_inventory(tmp_path, devices)
    sweep = write_sweep(tmp_path, devices=devices, models=sleep_models(tmp_path, 2),
                        pairs=[], backend="sleep", repetitions=1, warmup=0,
                        matrix={"prompt_tokens": 1, "gen_tokens": 300, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    summary = run_sweep(store, "s1", poll_s=0.05, max_running=2)
    assert summary.counts["done"] == 8 and not summary.failed
    spans = []
    for row in store.jobs("s1"):
        events = store.events("s1", row["key"])
        spans.append((next(e["t"] for e in events if e["kind"] == "hello"),
                      next(e["t"] for e in events if e["kind"] == "result"), row["device"]))
    # The most jobs alive at any job's start: never more than the cap.
    for begin, _, _ in spans:
        alive = [s for s in spans if s[0] <= begin < s[1]]
        assert len(alive) <= 2, alive
    # And every device ran its first job before any device ran its second.
    firsts = sorted(min(b for b, _, d in spans if d == dev) for dev in devices)
    seconds = sorted(max(b for b, _, d in spans if d == dev) for dev in devices)
    assert firsts[-1] < seconds[0]


def test_report_pairs_moe_with_each_dense_baseline(tmp_path: Path, ray_cluster: Any) -> None:
    from orchestrator.report import build_report

    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 3),
                        backend="sleep", repetitions=3, warmup=1,
                        matrix={"prompt_tokens": 1, "gen_tokens": [20, 40], "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    run_sweep(store, "s1", poll_s=0.1)
    report = build_report(store, "s1")
    comps = report["comparisons"]
    assert len(comps) == 4  # 2 matrix points x 2 dense baselines
    assert {c["dense"]["model_id"] for c in comps} == {"m-dense1", "m-dense2"}
    for c in comps:
        assert c["moe"]["n"] == 3 and c["dense"]["n"] == 3  # warm-ups never counted
        assert c["decode_ratio"] is not None
    json.dumps(report)  # serialisable as --format json needs


def test_a_fresh_lease_left_by_an_earlier_controller_of_the_same_sweep_is_taken_over(
        tmp_path: Path, ray_cluster: Any) -> None:
    """Only one controller runs a sweep at a time (the sweep lock), so a lease naming this
    sweep and another process is a dead predecessor's, even one from another host."""
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2)[:1],
                        pairs=[], backend="sleep", repetitions=1, warmup=0,
                        matrix={"prompt_tokens": 1, "gen_tokens": 10, "threads": 1,
                                "gpu_layers": 0})
    store = start(tmp_path, sweep, inv)
    work = tmp_path / "devices" / "dev-a"
    work.mkdir(parents=True, exist_ok=True)
    (work / "lease.json").write_text(json.dumps(
        {"owner": "elsewhere:4242:s1", "heartbeat": time.time(), "ttl": 120,
         "host": "elsewhere"}))
    summary = run_sweep(store, "s1", poll_s=0.1)
    assert summary.counts["done"] == 1 and not summary.quarantined, summary
