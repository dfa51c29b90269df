"""The farm service (``edgefarm serve``): one scrape target for the farm, between and during sweeps.

The main test does what a user does: ``edgefarm monitor up`` (the real
Prometheus and the farm service, as detached processes), then ``edgefarm
sweep run`` as its own process with real llama.cpp on the tiny synthetic
models, which exits. Prometheus scrapes only the farm service throughout;
after the sweep process is gone every query of the Farm overview and Sweep
progress dashboards must return series (unless the panel is documented as
empty on hardware without such sensors). Nothing here keeps an exporter
alive that the user would not have, and no telemetry is injected.

The collector's rules (staleness, the health fallback) are checked on a real
store with a clock the test moves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from helpers import edgefarm, write_inventory, write_sweep
from prometheus_client.registry import CollectorRegistry
from prometheus_fixture import Prometheus, free_port, prometheus_binary

from orchestrator.dashboards import farm, progress
from orchestrator.dashboards.queries import panel_queries
from orchestrator.farm.collector import FarmCollector
from orchestrator.farm.health import HealthPoller, Reading
from orchestrator.store import Store


def test_after_a_sweep_process_exits_every_farm_and_progress_query_has_data(
        tmp_path: Path) -> None:
    prometheus_binary()  # fails with the install command when missing
    results = tmp_path / "results"
    inventory = write_inventory(tmp_path, ["dev-a", "dev-b"])
    # Long enough (a few seconds a job) for several scrapes to land inside it: the
    # tiny models decode thousands of tokens a second.
    sweep = write_sweep(tmp_path, devices=["dev-a", "dev-b"], repetitions=6, warmup=1,
                        retries=0, matrix={"prompt_tokens": [64], "gen_tokens": [512],
                                           "threads": [1], "gpu_layers": [0]})
    listen, serve = free_port(), free_port()
    started = edgefarm("monitor", "up", "-r", str(results), "-i", str(inventory),
                       "--listen", f"127.0.0.1:{listen}", "--serve-addr", f"127.0.0.1:{serve}",
                       "--scrape-interval", "0.25", "--health-interval", "5", tmp=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    prom = Prometheus(None, f"http://127.0.0.1:{listen}", [])  # type: ignore[arg-type]
    try:
        config = yaml.safe_load((results / "prometheus" / "prometheus.yml").read_text())
        controller = config["scrape_configs"][0]
        assert controller["static_configs"] == [{"targets": [f"127.0.0.1:{serve}"]}], \
            "the farm service is the only controller target"
        # Before any sweep: the health readings already show the devices up and idle.
        prom.wait_for('edgefarm_device_up{device="dev-a"} == 1', 60)
        prom.wait_for('edgefarm_device_phase{device="dev-b", phase="idle"} == 1', 30)

        began = time.time()
        run = edgefarm("sweep", "run", str(sweep), "-i", str(inventory), "-r", str(results),
                       "--metrics-addr", "off", tmp=tmp_path, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        ended = time.time()
        prom.wait_for('edgefarm_sweep_state{state="finished"} == 1', 30)
        prom.wait_for('edgefarm_sweep_jobs{state="done"} == 2', 30)
        time.sleep(2.5)  # a few more scrapes with the sweep process gone

        # While it ran, the farm service alone showed the devices busy and in a phase.
        busy = prom.query_range("max(edgefarm_device_busy)", began, ended, step=0.25)
        assert busy and 1.0 in {float(v) for _, v in busy[0]["values"]}, busy
        working = prom.query_range('max(edgefarm_device_phase{phase!="idle"})', began, ended,
                                   step=0.25)
        assert working and 1.0 in {float(v) for _, v in working[0]["values"]}, working
        # And now: idle again, attempts and samples counted from the store.
        for device in ("dev-a", "dev-b"):
            (now,) = prom.query(f'edgefarm_device_busy{{device="{device}"}}')
            assert float(now["value"][1]) == 0.0
        done = prom.query('edgefarm_job_attempts_total{outcome="done"}')
        assert {r["metric"]["device"]: float(r["value"][1]) for r in done} == \
            {"dev-a": 1.0, "dev-b": 1.0}
        samples = prom.query("edgefarm_telemetry_samples_total > 0")
        assert {r["metric"]["device"] for r in samples} == {"dev-a", "dev-b"}

        failures = []
        checked = 0
        for q in panel_queries():
            if q.dashboard_uid not in (farm.UID, progress.UID):
                continue
            result = prom.query(q.expr)  # every query must at least be valid PromQL
            if q.may_be_empty:
                continue
            checked += 1
            if not result:
                failures.append(f"{q.dashboard_uid} / {q.panel_title} [{q.ref_id}]: {q.expr}")
            for series in result:
                missing = set(q.labels) - set(series["metric"])
                if missing:
                    failures.append(f"{q.panel_title}: series without {sorted(missing)}")
        assert checked >= 20
        assert failures == [], "queries without data after the sweep:\n" + "\n".join(failures)
    finally:
        stopped = edgefarm("monitor", "down", "-r", str(results), tmp=tmp_path)
    assert "edgefarm serve" in stopped.stdout and "prometheus" in stopped.stdout


# -- the collector's rules, on a real store with a moving clock ---------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def collect(collector: FarmCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    out = {}
    for family in collector.collect():
        for sample in family.samples:
            out[(sample.name, tuple(sample.labels.values()))] = sample.value
    return out


def running_sweep(tmp: Path) -> Store:
    store = Store(tmp / "results")
    inventory = {"devices": [{"name": "orin", "transport": "local", "platform": "jetson"}]}
    job = {"key": "k1", "device": "orin", "model_id": "m", "arch": "moe",
           "agent_spec": {"models": [{"id": "m"}]}, "timeout_s": 60}
    store.create_sweep("s1", "farm", {}, inventory, [job])
    store.start_attempt("s1", "k1", 1)
    return store


def event(seq: int, kind: str, **body: Any) -> dict[str, Any]:
    return {"v": 1, "seq": seq, "kind": kind, "job": "k1", "attempt": 1, "t": 5.0, **body}


def test_busy_and_phase_follow_fresh_events_and_go_stale(tmp_path: Path) -> None:
    store = running_sweep(tmp_path)
    clock = Clock(1000.0)
    collector = FarmCollector(tmp_path / "results", registry=CollectorRegistry(),
                              clock=clock, stale_s=60)
    collect(collector)  # the first read: nothing running has events yet
    store.add_events("s1", "orin", [event(0, "hello"), event(1, "phase", phase="decode")])
    store.add_sample_events("s1", "orin", [event(2, "sample", total_w=7.5,
                                                 rails_w={"VDD_IN": 7.5}, ram_used_mb=2048.0,
                                                 ram_total_mb=7620.0)])
    clock.now = 1010.0
    seen = collect(collector)
    assert seen[("edgefarm_device_busy", ("orin",))] == 1
    assert seen[("edgefarm_device_up", ("orin", "jetson"))] == 1
    assert seen[("edgefarm_device_phase", ("orin", "decode"))] == 1
    assert seen[("edgefarm_device_phase", ("orin", "idle"))] == 0
    assert seen[("edgefarm_device_power_watts", ("orin", "total"))] == 7.5
    assert seen[("edgefarm_device_memory_used_bytes", ("orin",))] == 2048 * 2 ** 20
    assert seen[("edgefarm_telemetry_samples_total", ("orin",))] == 1
    assert seen[("edgefarm_sweep_last_event_timestamp_seconds", ("s1",))] == 1010.0
    # Two minutes without an event (a dead controller): no longer busy, no live power,
    # and without a health reading "up" is not claimed either way.
    clock.now = 1130.0
    seen = collect(collector)
    assert seen[("edgefarm_device_busy", ("orin",))] == 0
    assert seen[("edgefarm_device_phase", ("orin", "idle"))] == 1
    assert ("edgefarm_device_power_watts", ("orin", "total")) not in seen
    assert ("edgefarm_device_up", ("orin", "jetson")) not in seen
    assert seen[("edgefarm_sweep_last_event_timestamp_seconds", ("s1",))] == 1010.0
    store.close()
    collector.close()


def test_between_sweeps_the_health_reading_fills_in(tmp_path: Path) -> None:
    store = running_sweep(tmp_path)
    store.close()
    clock = Clock(2000.0)
    poller = HealthPoller(lambda: [], tmp_path / "agent", None,  # type: ignore[arg-type]
                          interval_s=60, clock=clock)
    poller.readings["orin"] = Reading(1990.0, True, health={
        "sample": {"rails_w": {"VDD_IN": 4.1}, "total_w": 4.1, "temps_c": {"cpu": 41.5},
                   "ram_used_mb": 1024.0, "ram_total_mb": 7620.0},
        "measures_power": True, "throttled": ["tegrastats throttle: 1"],
        "lease": {"owner": "ctl:1:s1", "age_s": 3.0, "fresh": True}})
    poller.readings["gone"] = Reading(1990.0, False, error="connection refused")
    collector = FarmCollector(tmp_path / "results", registry=CollectorRegistry(), clock=clock,
                              health=poller)
    seen = collect(collector)
    assert seen[("edgefarm_device_up", ("orin", "jetson"))] == 1
    assert seen[("edgefarm_device_up", ("gone", "unknown"))] == 0
    assert seen[("edgefarm_device_power_watts", ("orin", "total"))] == 4.1
    assert seen[("edgefarm_device_temperature_celsius", ("orin", "cpu"))] == 41.5
    assert seen[("edgefarm_device_memory_total_bytes", ("orin",))] == 7620 * 2 ** 20
    assert seen[("edgefarm_device_throttled", ("orin",))] == 1
    assert seen[("edgefarm_device_power_measurable", ("orin",))] == 1
    assert seen[("edgefarm_device_leased", ("orin",))] == 1
    assert ("edgefarm_device_throttled", ("gone",)) not in seen
    # A reading older than three intervals (+30 s) no longer counts as current telemetry.
    clock.now = 2000.0 + 3 * 60 + 31
    seen = collect(collector)
    assert ("edgefarm_device_power_watts", ("orin", "total")) not in seen
    assert seen[("edgefarm_device_up", ("orin", "jetson"))] == 1  # last known answer
    collector.close()


def test_the_agent_health_command_reads_this_machine(tmp_path: Path) -> None:
    """`edgefarm-agent health` on this VM: memory from /proc, no power source, no lease."""
    import subprocess
    import sys

    from helpers import REPO

    done = subprocess.run([sys.executable, "-m", "agents", "health", "--seconds", "0.3",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    reading = json.loads(done.stdout)
    assert reading["sample"]["ram_total_mb"] > 0 and reading["sample"]["ram_used_mb"] > 0
    assert reading["lease"] is None and reading["throttled"] == []
    assert isinstance(reading["measures_power"], bool)
    (tmp_path / "lease.json").write_text(json.dumps(
        {"owner": "ctl:9:s1", "heartbeat": time.time(), "ttl": 120}))
    again = subprocess.run([sys.executable, "-m", "agents", "health", "--seconds", "0",
                            "--work-dir", str(tmp_path)], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
    assert json.loads(again.stdout)["lease"]["fresh"] is True


def test_the_direct_exposition_is_what_client_python_writes(tmp_path: Path) -> None:
    """The farm collector writes its text itself (speed); it must equal generate_latest's."""
    from prometheus_client import generate_latest

    store = running_sweep(tmp_path)
    clock = Clock(1000.0)
    registry = CollectorRegistry()
    collector = FarmCollector(tmp_path / "results", registry=registry, clock=clock)
    collect(collector)
    store.add_events("s1", "orin", [event(0, "hello"), event(1, "phase", phase="decode")])
    store.add_sample_events("s1", "orin", [event(2, "sample", total_w=7.25,
                                                 rails_w={'odd "rail"\\n\\\\x': 1.5},
                                                 temps_c={"cpu": 40.0}, ram_used_mb=10.0)])
    clock.now = 1001.0
    assert collector.exposition() == generate_latest(registry).decode()
    assert 'rail="odd \\"rail\\"\\\\n\\\\\\\\x"' in collector.exposition()
    store.close()
