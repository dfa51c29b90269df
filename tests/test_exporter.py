"""A sweep's own /metrics endpoint: start, stop, and a real sweep seen by a real Prometheus.

The sweeps here run in-process and their exporter is stopped after the
checks, as ``sweep run --metrics-linger`` keeps it up for a last scrape;
what the user gets from the farm service with the sweep process gone is
tests/test_farm_service.py. No telemetry is injected: on this VM the
agents' real samples carry memory only, and power stays absent.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import sleep_models, write_inventory, write_sweep
from prometheus_client import CollectorRegistry
from prometheus_fixture import Prometheus, running_prometheus

from orchestrator.config.sweep import load_sweep_with_inventory
from orchestrator.exporter import (
    ExporterError,
    exporter_url,
    parse_addr,
    start_exporter,
    start_sweep_exporter,
    stop_exporter,
)
from orchestrator.metrics import LiveMetrics, MultiProgress, config_label, pair_label
from orchestrator.planner import plan
from orchestrator.report import build_report
from orchestrator.scheduler import run_sweep
from orchestrator.store import Store
from orchestrator.sweeps import job_record


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_addr(":9464") == ("127.0.0.1", 9464)
    assert parse_addr("[::1]:9000") == ("::1", 9000)
    assert parse_addr("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad, why in (("9464", "expected host:port"), ("host:http", "not a number"),
                     ("h:70000", "out of range")):
        with pytest.raises(ExporterError, match=why):
            parse_addr(bad)


def test_start_serves_the_injected_registry_and_stop_frees_the_port() -> None:
    registry = CollectorRegistry()
    live = LiveMetrics(registry, platforms={"dev-a": "linux-cpu"})
    server, thread = start_exporter("127.0.0.1:0", registry=registry)
    url = exporter_url(server)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        live.job_started({"device": "dev-a"}, 1)
        text = get(url)
        assert 'edgefarm_device_busy{device="dev-a"} 1.0' in text
        assert "python_gc" not in text  # not the global registry
    finally:
        stop_exporter(server, thread)
    assert not thread.is_alive()
    with pytest.raises(OSError):  # connection refused: the port is closed
        get(url)


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ExporterError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_exporter(f"127.0.0.1:{port}", registry=CollectorRegistry())


def test_sweep_exporter_lingers_then_stops(tmp_path: Path) -> None:
    exporter = start_sweep_exporter(tmp_path, "127.0.0.1:0", linger_s=0.6)
    assert "edgefarm_" not in get(exporter.url)  # nothing known yet: nothing exported
    started = time.monotonic()
    import threading

    stopper = threading.Thread(target=exporter.stop)
    stopper.start()
    time.sleep(0.2)
    get(exporter.url)  # still answering during the grace period
    stopper.join(10)
    assert time.monotonic() - started >= 0.6
    with pytest.raises(OSError):
        get(exporter.url)
    exporter.stop()  # a second stop is harmless


# -- a real sweep, a real Prometheus ----------------------------------------------------
def create_sweep(tmp: Path, sweep_path: Path, inv_path: Path, sweep_id: str) -> Store:
    sweep, inv = load_sweep_with_inventory(sweep_path, inv_path)
    store = Store(tmp / "results")
    store.create_sweep(sweep_id, sweep.name, sweep.model_dump(mode="json"),
                       inv.model_dump(mode="json", exclude_unset=True),
                       [job_record(j) for j in plan(sweep, inv)])
    return store


def values(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"][k] for k in labels): float(r["value"][1]) for r in result}


def test_a_real_sweep_reaches_prometheus(tmp_path: Path, ray_cluster: Any) -> None:
    inv = write_inventory(tmp_path, ["dev-a", "dev-b"])
    sweep = write_sweep(tmp_path, devices=["dev-a", "dev-b"], models=sleep_models(tmp_path, 3),
                        backend="sleep", repetitions=2, warmup=1, retries=0,
                        matrix={"prompt_tokens": 1, "gen_tokens": 400, "threads": 1,
                                "gpu_layers": 0})
    store = create_sweep(tmp_path, sweep, inv, "s1")
    exporter = start_sweep_exporter(tmp_path / "results", "127.0.0.1:0", sweep_id="s1")
    target = exporter.url.removeprefix("http://").removesuffix("/metrics")
    try:
        with running_prometheus(tmp_path / "prom", [target]) as prom:
            prom.wait_for('up{job="edgefarm"} == 1')
            began = time.time()
            summary = run_sweep(store, "s1", poll_s=0.1, progress=MultiProgress(exporter.live))
            # One paired job (the MoE and both baselines) per device.
            assert summary.counts["done"] == 2 and not summary.failed
            prom.wait_for('edgefarm_sweep_state{sweep="s1", state="finished"} == 1')
            for device in ("dev-a", "dev-b"):  # both idle in a scrape before checking ranges
                prom.wait_for(f'edgefarm_device_busy{{device="{device}"}} == 0')
            check_sweep_series(prom, store, began)
            check_panel_queries(prom)
    finally:
        exporter.stop()


def check_sweep_series(prom: Prometheus, store: Store, began: float) -> None:
    config = "p1-g400-t1-ngl0"
    jobs = values(prom.query('edgefarm_sweep_jobs{sweep="s1"}'), "state")
    assert jobs == {("done",): 2, ("pending",): 0, ("running",): 0, ("failed",): 0,
                    ("cancelled",): 0}

    report = build_report(store, "s1")
    decode = values(prom.query('edgefarm_decode_tokens_per_second{sweep="s1"}'),
                    "device", "model", "arch", "config")
    expected = {}
    for c in report["comparisons"]:
        for side in ("moe", "dense"):
            s = c[side]
            expected[(c["device"], s["model_id"], s["arch"], config_label(c["config"]))] = \
                s["decode_tps_median"]
    assert decode == expected and len(decode) == 6
    assert {m for _, m, _, _ in decode} == {"m-moe", "m-dense1", "m-dense2"}

    ratios = values(prom.query('edgefarm_moe_dense_decode_ratio{sweep="s1"}'),
                    "device", "pair", "config")
    assert ratios == {(c["device"], pair_label(c["moe"]["model_id"], c["dense"]["model_id"]),
                       config): c["decode_ratio"] for c in report["comparisons"]}
    assert len(ratios) == 4

    # Busy went 1 while jobs ran and is 0 now, on both devices.
    for device in ("dev-a", "dev-b"):
        series = prom.query_range(f'edgefarm_device_busy{{device="{device}"}}', began,
                                  time.time(), step=0.5)
        seen = [float(v) for _, v in series[0]["values"]]
        assert 1.0 in seen, (device, seen)  # busy while its jobs ran...
        (now,) = prom.query(f'edgefarm_device_busy{{device="{device}"}}')
        assert float(now["value"][1]) == 0.0, (device, now)  # ...and idle at the end
    attempts = values(prom.query('edgefarm_job_attempts_total{outcome="done"}'), "device")
    assert attempts == {("dev-a",): 1, ("dev-b",): 1}
    # This VM has no power source: power is absent, never zero or made up; memory
    # comes from the agents' real samples (/proc/meminfo).
    assert prom.query("edgefarm_device_power_watts") == []
    memory = values(prom.query("edgefarm_device_memory_total_bytes"), "device")
    assert set(memory) == {("dev-a",), ("dev-b",)} and all(v > 0 for v in memory.values())
    up = values(prom.query("edgefarm_device_up"), "device", "platform")
    assert up == {("dev-a", "linux-cpu"): 1, ("dev-b", "linux-cpu"): 1}
    # The sleep backend measures neither prefill nor energy: those stay absent.
    assert prom.query('edgefarm_prefill_tokens_per_second{sweep="s1"}') == []
    assert prom.query("edgefarm_energy_per_token_joules") == []


#: What the test-only sleep backend does not measure (it sleeps; it never
#: prefills). Panels built only on these are checked with a real llama.cpp
#: sweep in test_panel_queries_on_a_real_llama_cpp_sweep.
NOT_MEASURED_BY_SLEEP = ("edgefarm_prefill_tokens_per_second", "edgefarm_moe_dense_prefill_ratio",
                         "edgefarm_ttft_seconds", "edgefarm_peak_memory_bytes")


def check_panel_queries(prom: Prometheus, skip: tuple[str, ...] = NOT_MEASURED_BY_SLEEP) -> None:
    from orchestrator.dashboards.queries import panel_queries

    empty = []
    for q in panel_queries():
        result = prom.query(q.expr)  # every query must at least be valid PromQL
        if q.may_be_empty or any(name in q.expr for name in skip):
            continue
        if not result:
            empty.append(f"{q.dashboard_uid} / {q.panel_title} [{q.ref_id}]: {q.expr}")
            continue
        for r in result:
            missing = set(q.labels) - set(r["metric"])
            assert not missing, f"{q.panel_title}: series lack {missing}: {r['metric']}"
    assert not empty, "panels with no series:\n" + "\n".join(empty)


def test_panel_queries_on_a_real_llama_cpp_sweep(tmp_path: Path, ray_cluster: Any) -> None:
    """Every dashboard query returns series after a real (tiny) llama.cpp sweep."""
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], repetitions=2, warmup=1, retries=0)
    store = create_sweep(tmp_path, sweep, inv, "s1")
    exporter = start_sweep_exporter(tmp_path / "results", "127.0.0.1:0", sweep_id="s1")
    target = exporter.url.removeprefix("http://").removesuffix("/metrics")
    try:
        with running_prometheus(tmp_path / "prom", [target]) as prom:
            prom.wait_for('up{job="edgefarm"} == 1')
            summary = run_sweep(store, "s1", poll_s=0.1, progress=MultiProgress(exporter.live))
            assert summary.counts["done"] == 1, summary  # the pair is one job
            prom.wait_for('edgefarm_sweep_state{sweep="s1", state="finished"} == 1')
            prom.wait_for('edgefarm_prefill_tokens_per_second{sweep="s1"}')
            check_panel_queries(prom, skip=())
    finally:
        exporter.stop()


def test_results_reach_prometheus_within_two_scrape_intervals(tmp_path: Path,
                                                              ray_cluster: Any) -> None:
    """From the moment a job's result is in the store to the moment Prometheus answers
    with its series: at most two scrape intervals (1 s here), plus polling slack."""
    import sqlite3
    import threading

    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2),
                        backend="sleep", repetitions=2, warmup=0, retries=0,
                        matrix={"prompt_tokens": 1, "gen_tokens": 1500, "threads": 1,
                                "gpu_layers": 0})
    store = create_sweep(tmp_path, sweep, inv, "lat")
    exporter = start_sweep_exporter(tmp_path / "results", "127.0.0.1:0", sweep_id="lat")
    target = exporter.url.removeprefix("http://").removesuffix("/metrics")
    seen: dict[str, float] = {}
    done: dict[str, float] = {}
    try:
        with running_prometheus(tmp_path / "prom", [target], scrape_interval="1s") as prom:
            prom.wait_for('up{job="edgefarm"} == 1')
            stop = threading.Event()

            def watch() -> None:
                db = sqlite3.connect(store.path)
                while not stop.is_set():
                    now = time.monotonic()
                    for (spec,) in db.execute(
                            "SELECT spec_json FROM jobs WHERE sweep_id = 'lat' AND"
                            " state = 'done'"):  # the pair's job: both models at once
                        for model in json.loads(spec)["models"]:
                            done.setdefault(model["id"], now)
                    for r in prom.query('edgefarm_decode_tokens_per_second{sweep="lat"}'):
                        seen.setdefault(r["metric"]["model"], time.monotonic())
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            run_sweep(store, "lat", poll_s=0.1, progress=exporter.live)
            deadline = time.monotonic() + 10
            while len(seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
            watcher.join()
    finally:
        exporter.stop()
    assert set(done) == set(seen) == {"m-moe", "m-dense1"}
    for model in done:
        assert seen[model] - done[model] <= 2 * 1.0 + 0.5, (model, seen[model] - done[model])
