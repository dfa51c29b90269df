"""Metric definitions, LiveMetrics and StoreCollector, each on a fresh registry.

No Ray and no agents here: LiveMetrics gets synthetic event dicts shaped like
the agent's, and the store is filled by hand through Store's public methods
with the events a real sweep writes (hello, phase, repetition, result).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, sleep_models, write_inventory, write_sweep
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.config.sweep import load_sweep_with_inventory
from orchestrator.metrics import (
    METRICS,
    PHASES,
    LiveMetrics,
    MultiProgress,
    StoreCollector,
    config_label,
    pair_label,
)
from orchestrator.planner import plan
from orchestrator.report import build_report
from orchestrator.store import Store
from orchestrator.sweeps import job_record


# -- the contract ------------------------------------------------------------------
def contract_rows() -> list[tuple[str, str, tuple[str, ...]]]:
    rows = []
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\| `(edgefarm_\w+)` \| (gauge|counter)[^|]*\| ([^|]*) \|", line)
        if m:
            labels = tuple(x.strip() for x in m.group(3).split(",") if x.strip())
            rows.append((m.group(1), m.group(2), labels))
    return rows


def test_definitions_match_docs_metrics_md_exactly() -> None:
    rows = contract_rows()
    assert len(rows) == 27
    assert [(d.name, d.kind, d.labels) for d in METRICS.values()] == rows
    for d in METRICS.values():
        assert d.name.startswith("edgefarm_")
        assert (d.kind == "counter") == d.name.endswith("_total")
        assert not d.unit or d.name.endswith("_" + d.unit)


def test_labels_helpers() -> None:
    assert config_label({"prompt_tokens": 128, "gen_tokens": 64, "threads": 2,
                         "gpu_layers": 0}) == "p128-g64-t2-ngl0"
    assert pair_label("olmoe", "llama") == "olmoe_vs_llama"


# -- LiveMetrics ---------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


JOB = {"device": "orin", "model_id": "olmoe", "arch": "moe", "prompt_tokens": 16,
       "gen_tokens": 8, "threads": 2, "gpu_layers": 0, "key": "0123456789abcdef"}


def sample(**fields: Any) -> dict[str, Any]:
    return {"v": 1, "kind": "sample", "job": JOB["key"], "attempt": 1, "seq": 5,
            "t": 1.7e9, **fields}


def live(clock: Clock | None = None, **kw: Any) -> tuple[CollectorRegistry, LiveMetrics]:
    registry = CollectorRegistry()
    return registry, LiveMetrics(registry, clock=clock or Clock(), **kw)


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def test_known_devices_start_idle_and_up_is_unknown() -> None:
    reg, _ = live(platforms={"orin": "jetson", "m2": "apple-silicon"})
    assert value(reg, "edgefarm_device_busy", device="orin") == 0
    assert value(reg, "edgefarm_device_phase", device="m2", phase="idle") == 1
    assert value(reg, "edgefarm_device_up", device="orin", platform="jetson") is None
    assert value(reg, "edgefarm_job_attempts_total", device="orin", outcome="done") == 0


def test_busy_and_phase_follow_the_job() -> None:
    reg, lm = live(platforms={"orin": "jetson"})
    lm.job_started(JOB, 1)
    assert value(reg, "edgefarm_device_busy", device="orin") == 1
    assert value(reg, "edgefarm_device_phase", device="orin", phase="idle") is None
    lm.job_event(JOB, {"kind": "hello", "facts": {"ram_total_bytes": 8 << 30}})
    assert value(reg, "edgefarm_device_up", device="orin", platform="jetson") == 1
    assert value(reg, "edgefarm_device_memory_total_bytes", device="orin") == 8 << 30
    for phase in ("model", "load", "warmup", "decode"):
        lm.job_event(JOB, {"kind": "phase", "phase": phase})
    assert value(reg, "edgefarm_device_phase", device="orin", phase="decode") == 1
    # A state set: every phase has a series, only the current one is 1.
    assert value(reg, "edgefarm_device_phase", device="orin", phase="warmup") == 0
    assert sum(value(reg, "edgefarm_device_phase", device="orin", phase=p) or 0
               for p in PHASES) == 1
    lm.job_event(JOB, {"kind": "phase", "phase": "something-new"})  # not in the contract
    assert value(reg, "edgefarm_device_phase", device="orin", phase="decode") == 1
    lm.job_finished(JOB, "done", None, False)
    assert value(reg, "edgefarm_device_busy", device="orin") == 0
    assert value(reg, "edgefarm_device_phase", device="orin", phase="idle") == 1
    assert value(reg, "edgefarm_job_attempts_total", device="orin", outcome="done") == 1


def test_attempt_outcomes_and_a_device_that_never_answered() -> None:
    reg, lm = live(platforms={"orin": "jetson"})
    lm.job_started(JOB, 1)
    lm.job_finished(JOB, "failed", "ssh: connection refused", True)  # no event arrived
    assert value(reg, "edgefarm_device_up", device="orin", platform="jetson") == 0
    assert value(reg, "edgefarm_device_busy", device="orin") == 0
    lm.job_started(JOB, 2)
    lm.job_event(JOB, {"kind": "hello"})
    lm.job_finished(JOB, "failed", "agent crashed", False)  # it answered, then failed
    assert value(reg, "edgefarm_device_up", device="orin", platform="jetson") == 1
    lm.job_started(JOB, 3)
    lm.job_finished(JOB, "cancelled", None, False)
    assert value(reg, "edgefarm_job_attempts_total", device="orin", outcome="failed") == 2
    assert value(reg, "edgefarm_job_attempts_total", device="orin", outcome="cancelled") == 1
    assert value(reg, "edgefarm_job_attempts_total", device="orin", outcome="done") == 0


def test_samples_set_power_memory_temperatures_and_count() -> None:
    clock = Clock()
    reg, lm = live(clock, platforms={"orin": "jetson"})
    lm.job_started(JOB, 1)
    lm.job_event(JOB, sample(rails_w={"VDD_IN": 5.1, "VDD_CPU_GPU_CV": 1.2}, total_w=5.1,
                             ram_used_mb=3100, ram_total_mb=7620,
                             temps_c={"cpu": 45.5, "tj": 47.0}))
    assert value(reg, "edgefarm_device_power_watts", device="orin", rail="VDD_IN") == 5.1
    assert value(reg, "edgefarm_device_power_watts", device="orin", rail="total") == 5.1
    assert value(reg, "edgefarm_device_memory_used_bytes", device="orin") == 3100 * 2**20
    assert value(reg, "edgefarm_device_memory_total_bytes", device="orin") == 7620 * 2**20
    assert value(reg, "edgefarm_device_temperature_celsius", device="orin", sensor="tj") == 47.0
    # A sample without temperatures keeps the last ones (absent fields are absent,
    # not a reading of nothing); a newer power value replaces the old.
    clock.now += 1
    lm.job_event(JOB, sample(rails_w={"VDD_IN": 6.0}))
    assert value(reg, "edgefarm_device_power_watts", device="orin", rail="VDD_IN") == 6.0
    assert value(reg, "edgefarm_device_temperature_celsius", device="orin", sensor="cpu") == 45.5
    assert value(reg, "edgefarm_telemetry_samples_total", device="orin") == 2
    # Telemetry that stopped arriving stops being exported; memory size stays.
    clock.now += 29.5
    assert value(reg, "edgefarm_device_power_watts", device="orin", rail="VDD_IN") == 6.0
    assert value(reg, "edgefarm_device_power_watts", device="orin", rail="total") is None
    clock.now += 1
    assert value(reg, "edgefarm_device_power_watts", device="orin", rail="VDD_IN") is None
    assert value(reg, "edgefarm_device_memory_used_bytes", device="orin") is None
    assert value(reg, "edgefarm_device_memory_total_bytes", device="orin") == 7620 * 2**20
    assert value(reg, "edgefarm_telemetry_samples_total", device="orin") == 2


def test_a_device_without_telemetry_has_no_power_series() -> None:
    reg, lm = live(platforms={"orin": "jetson"})
    lm.job_started(JOB, 1)
    lm.job_event(JOB, {"kind": "phase", "phase": "decode"})
    text = generate_latest(reg).decode()
    for name in ("edgefarm_device_power_watts", "edgefarm_device_temperature_celsius",
                 "edgefarm_device_memory_used_bytes"):
        assert name not in text
    assert value(reg, "edgefarm_telemetry_samples_total", device="orin") == 0


def test_rails_per_device_are_capped() -> None:
    reg, lm = live()
    lm.job_started(JOB, 1)
    lm.job_event(JOB, sample(rails_w={f"R{i}": 1.0 for i in range(100)}))
    text = generate_latest(reg).decode()
    assert text.count("edgefarm_device_power_watts{") == 32


def test_exact_exposition_text() -> None:
    reg, lm = live(platforms={"orin": "jetson"})
    lm.job_started(JOB, 1)
    lm.job_event(JOB, {"kind": "phase", "phase": "decode"})
    lm.job_event(JOB, sample(total_w=7.25))
    assert generate_latest(reg).decode() == """\
# HELP edgefarm_job_attempts_total Finished job attempts by outcome (done, failed, cancelled) \
since the exporter started.
# TYPE edgefarm_job_attempts_total counter
edgefarm_job_attempts_total{device="orin",outcome="done"} 0.0
edgefarm_job_attempts_total{device="orin",outcome="failed"} 0.0
edgefarm_job_attempts_total{device="orin",outcome="cancelled"} 0.0
# HELP edgefarm_device_up 1 while the device answers (its last attempt delivered events), 0 \
when an attempt got nothing from it.
# TYPE edgefarm_device_up gauge
edgefarm_device_up{device="orin",platform="jetson"} 1.0
# HELP edgefarm_device_busy 1 while a job runs on the device, else 0.
# TYPE edgefarm_device_busy gauge
edgefarm_device_busy{device="orin"} 1.0
# HELP edgefarm_device_phase Phase of the device's job as a state set: every phase is \
exported, the current one 1 and the others 0 ('idle' between jobs).
# TYPE edgefarm_device_phase gauge
edgefarm_device_phase{device="orin",phase="model"} 0.0
edgefarm_device_phase{device="orin",phase="synth"} 0.0
edgefarm_device_phase{device="orin",phase="load"} 0.0
edgefarm_device_phase{device="orin",phase="warmup"} 0.0
edgefarm_device_phase{device="orin",phase="prefill"} 0.0
edgefarm_device_phase{device="orin",phase="decode"} 1.0
edgefarm_device_phase{device="orin",phase="bench"} 0.0
edgefarm_device_phase{device="orin",phase="cooldown"} 0.0
edgefarm_device_phase{device="orin",phase="profile"} 0.0
edgefarm_device_phase{device="orin",phase="idle"} 0.0
# HELP edgefarm_device_power_watts Live power per rail in watts; rail 'total' is the \
designated total.
# TYPE edgefarm_device_power_watts gauge
edgefarm_device_power_watts{device="orin",rail="total"} 7.25
# HELP edgefarm_telemetry_samples_total Telemetry samples received.
# TYPE edgefarm_telemetry_samples_total counter
edgefarm_telemetry_samples_total{device="orin"} 1.0
"""


def test_multiprogress_fans_out_and_survives_a_failing_sink() -> None:
    calls: list[str] = []

    class Broken:
        def job_started(self, job: dict[str, Any], attempt: int) -> None:
            raise RuntimeError("display bug")

        job_event = job_finished = job_started  # type: ignore[assignment]

    class Recorder:
        def job_started(self, job: dict[str, Any], attempt: int) -> None:
            calls.append("started")

        def job_event(self, job: dict[str, Any], event: dict[str, Any]) -> None:
            calls.append(event["kind"])

        def job_finished(self, job: dict[str, Any], state: str, error: str | None,
                         retrying: bool) -> None:
            calls.append(state)

    reg, lm = live()
    multi = MultiProgress(Broken(), None, Recorder(), lm)
    multi.job_started(JOB, 1)
    multi.job_event(JOB, {"kind": "phase", "phase": "load"})
    multi.job_finished(JOB, "done", None, False)
    assert calls == ["started", "phase", "done"]
    assert value(reg, "edgefarm_job_attempts_total", device="orin", outcome="done") == 1


# -- StoreCollector over a hand-filled store -------------------------------------------
def planned_store(tmp: Path, sweep_id: str, **sweep_kw: Any) -> tuple[Store, list[dict]]:
    tmp.mkdir(parents=True, exist_ok=True)
    inv = write_inventory(tmp, ["dev-a", "dev-b"])
    sweep = write_sweep(tmp, devices=["dev-a", "dev-b"], models=sleep_models(tmp, 3),
                        backend="sleep", name=f"study-{sweep_id}",
                        matrix={"prompt_tokens": 16, "gen_tokens": [8, 32], "threads": 1,
                                "gpu_layers": 0}, **sweep_kw)
    s, i = load_sweep_with_inventory(sweep, inv)
    store = Store(tmp / "results")
    jobs = [job_record(j) for j in plan(s, i)]
    store.create_sweep(sweep_id, s.name, s.model_dump(mode="json"),
                       i.model_dump(mode="json", exclude_unset=True), jobs)
    return store, jobs


Rates = Callable[[str], list[float]]


def run_job_by_hand(store: Store, sweep_id: str, job: dict[str, Any], rates: Rates, *,
                    energy: Callable[[str], list[float]] | None = None,
                    fail: bool = False) -> None:
    """Write what the driver writes for one attempt of a (paired) job: start, events, end.

    As the agent's round runner does: each model's warm-up, then round i runs
    repetition i of every model of the job (``rates(model_id)[i]``).
    """
    store.start_attempt(sweep_id, job["key"], 1)
    events: list[dict[str, Any]] = []
    models = job["models"]

    def ev(kind: str, **fields: Any) -> None:
        events.append({"v": 1, "seq": len(events), "kind": kind, "job": job["key"],
                       "attempt": 1, "t": 1.7e9 + len(events), "mono": float(len(events)),
                       **fields})

    ev("hello", facts={"ram_total_bytes": 8 << 30, "os": "Linux"})
    ev("phase", phase="model")
    for n, model in enumerate(models):
        ev("phase", phase="warmup")
        ev("repetition", index=n, warmup=True, prompt_tokens=16, gen_tokens=job["gen_tokens"],
           decode_tps=1.0, prefill_tps=1.0, model=model["id"], model_arch=model["arch"])
    if fail:
        ev("error", error_kind="out-of-memory", message="the agent ran out of memory")
        ev("result", status="failed", error_kind="out-of-memory")
        store.add_events(sweep_id, job["device"], events)
        store.end_attempt(sweep_id, job["key"], 1, "failed", "out-of-memory", "oom")
        store.finish_job(sweep_id, job["key"], "failed", 1, error_kind="out-of-memory",
                         error="oom")
        return
    counted = 0
    for i in range(len(rates(models[0]["id"]))):
        ev("phase", phase="round", round=i, order=[m["id"] for m in models])
        for position, model in enumerate(models):
            rate = rates(model["id"])[i]
            ev("phase", phase="decode")
            rep: dict[str, Any] = dict(index=counted, warmup=False, prompt_tokens=16,
                                       gen_tokens=job["gen_tokens"], decode_tps=rate,
                                       prefill_tps=rate * 4, ttft_s=0.05 + i / 100,
                                       decode_s=job["gen_tokens"] / rate,
                                       peak_rss_bytes=(100 + i) << 20, model=model["id"],
                                       model_arch=model["arch"], round=i, position=position)
            counted += 1
            if energy is not None:
                rep["energy_j"] = energy(model["id"])[i] * job["gen_tokens"]
            ev("repetition", **rep)
    info = {"models": {m["id"]: {"model_size_bytes": 1 << 20} for m in models}}
    ev("result", status="ok", info=info)
    store.add_events(sweep_id, job["device"], events)
    store.end_attempt(sweep_id, job["key"], 1, "done")
    store.finish_job(sweep_id, job["key"], "done", 1, result=info)


def rates_for(job: dict[str, Any]) -> Rates:
    """Each model's three decode rates on the job's device."""
    def rates(model_id: str) -> list[float]:
        base = {"m-moe": 20.0, "m-dense1": 25.0, "m-dense2": 30.0}[model_id]
        base += 3.0 if job["device"] == "dev-b" else 0.0
        return [base, base + 1.5, base - 0.5]

    return rates


def store_registry(tmp: Path, **kw: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    StoreCollector(tmp / "results", registry=registry, rebuild_s=0, **kw)
    return registry


def test_store_collector_exports_what_build_report_computes(tmp_path: Path) -> None:
    store, jobs = planned_store(tmp_path, "s1")
    # One paired job per device and config: the one on dev-b at 32 tokens fails.
    for job in jobs:
        run_job_by_hand(store, "s1", job, rates_for(job),
                        fail=job["device"] == "dev-b" and job["gen_tokens"] == 32)
    store.set_sweep_state("s1", "finished")
    reg = store_registry(tmp_path)

    assert value(reg, "edgefarm_sweep_info", sweep="s1", name="study-s1") == 1
    assert value(reg, "edgefarm_sweep_state", sweep="s1", state="finished") == 1
    assert value(reg, "edgefarm_sweep_state", sweep="s1", state="running") == 0
    assert value(reg, "edgefarm_sweep_jobs", sweep="s1", state="done") == 3
    assert value(reg, "edgefarm_sweep_jobs", sweep="s1", state="failed") == 1
    assert value(reg, "edgefarm_sweep_jobs", sweep="s1", state="pending") == 0

    report = build_report(store, "s1")
    assert len(report["comparisons"]) == 8  # 2 devices x 2 configs x 2 dense baselines
    checked = 0
    for c in report["comparisons"]:
        config = config_label(c["config"])
        for side in ("moe", "dense"):
            s = c[side]
            labels = dict(sweep="s1", device=c["device"], model=s["model_id"], arch=s["arch"],
                          config=config)
            assert value(reg, "edgefarm_decode_tokens_per_second", **labels) == \
                s["decode_tps_median"]
            assert value(reg, "edgefarm_prefill_tokens_per_second", **labels) == \
                s["prefill_tps_median"]
            assert value(reg, "edgefarm_ttft_seconds", **labels) == s["ttft_s_median"]
            assert value(reg, "edgefarm_peak_memory_bytes", **labels) == s["peak_rss_bytes"]
            assert value(reg, "edgefarm_energy_per_token_joules", **labels) is None
        pair = dict(sweep="s1", device=c["device"],
                    pair=pair_label(c["moe"]["model_id"], c["dense"]["model_id"]), config=config)
        assert value(reg, "edgefarm_moe_dense_decode_ratio", **pair) == c["decode_ratio"]
        assert value(reg, "edgefarm_moe_dense_prefill_ratio", **pair) == c["prefill_ratio"]
        checked += c["decode_ratio"] is not None
    assert checked == 6  # the failed job's two comparisons have no ratio: absent
    # The report's paired estimate: round i of the MoE over round i of the
    # dense model (rates_for: 20, 21.5, 19.5 against 25, 26.5, 24.5), then
    # the geometric mean of the three per-round ratios.
    paired = (20 / 25 * 21.5 / 26.5 * 19.5 / 24.5) ** (1 / 3)
    assert value(reg, "edgefarm_moe_dense_decode_ratio", sweep="s1", device="dev-a",
                 pair="m-moe_vs_m-dense1", config="p16-g8-t1-ngl0") == pytest.approx(paired)
    assert paired == pytest.approx(0.802387, abs=1e-6)
    # The failed job's models were not measured at that config: absent, not zero.
    assert value(reg, "edgefarm_decode_tokens_per_second", sweep="s1", device="dev-b",
                 model="m-dense2", arch="dense", config="p16-g32-t1-ngl0") is None
    assert value(reg, "edgefarm_decode_tokens_per_second", sweep="s1", device="dev-b",
                 model="m-dense2", arch="dense", config="p16-g8-t1-ngl0") == 33.0
    text = generate_latest(reg).decode()
    for name in ("edgefarm_energy_per_token_joules", "edgefarm_moe_dense_energy_ratio",
                 "edgefarm_routing_share_ratio"):
        assert name not in text


def test_energy_is_exported_when_repetitions_carry_it(tmp_path: Path) -> None:
    store, jobs = planned_store(tmp_path, "s1")
    jpt = {"m-moe": 0.30, "m-dense1": 0.20, "m-dense2": 0.25}
    for job in jobs:
        run_job_by_hand(store, "s1", job, rates_for(job),
                        energy=lambda model: [jpt[model] * f for f in (1.0, 1.1, 0.9)])
    store.set_sweep_state("s1", "finished")
    reg = store_registry(tmp_path)
    labels = dict(sweep="s1", device="dev-a", config="p16-g32-t1-ngl0")
    assert value(reg, "edgefarm_energy_per_token_joules", model="m-moe", arch="moe",
                 **labels) == pytest.approx(0.30)
    assert value(reg, "edgefarm_moe_dense_energy_ratio", pair="m-moe_vs_m-dense1",
                 **labels) == pytest.approx(0.30 / 0.20)


def test_only_the_running_and_the_last_finished_sweep_are_exported(tmp_path: Path) -> None:
    old, jobs = planned_store(tmp_path / "a", "old")
    for job in jobs:
        run_job_by_hand(old, "old", job, rates_for(job))
    old.set_sweep_state("old", "finished")
    results = tmp_path / "a" / "results"

    def add(sweep_id: str, state: str) -> None:
        store = Store(results)
        row = old.sweep("old")
        store.create_sweep(sweep_id, f"study-{sweep_id}", json.loads(row["sweep_json"]),
                           json.loads(row["inventory_json"]),
                           [json.loads(r["spec_json"]) for r in old.jobs("old")])
        store.set_sweep_state(sweep_id, state)

    add("newer", "interrupted")
    add("now", "running")
    registry = CollectorRegistry()
    StoreCollector(results, registry=registry, rebuild_s=0)
    text = generate_latest(registry).decode()
    assert set(re.findall(r'sweep="([^"]+)"', text)) == {"newer", "now"}
    assert value(registry, "edgefarm_sweep_info", sweep="now", name="study-now") == 1
    assert value(registry, "edgefarm_sweep_state", sweep="now", state="running") == 1

    finished_only = CollectorRegistry()
    StoreCollector(results, registry=finished_only, include_running=False)
    text = generate_latest(finished_only).decode()
    assert set(re.findall(r'sweep="([^"]+)"', text)) == {"newer"}

    one = CollectorRegistry()
    StoreCollector(results, registry=one, sweep_id="old")
    assert set(re.findall(r'sweep="([^"]+)"', generate_latest(one).decode())) == {"old"}


def test_label_sets_are_bounded(tmp_path: Path) -> None:
    store, jobs = planned_store(tmp_path, "s1")
    for job in jobs:
        run_job_by_hand(store, "s1", job, rates_for(job))
    registry = CollectorRegistry()
    StoreCollector(tmp_path / "results", registry=registry, rebuild_s=0)
    lm = LiveMetrics(registry, platforms={"dev-a": "linux-cpu"})
    for job in jobs:
        lm.job_started(job, 1)
        lm.job_event(job, {"kind": "phase", "phase": "decode", "seq": 3, "job": job["key"]})
        lm.job_event(job, sample(total_w=3.0))
        lm.job_finished(job, "done", None, False)
    keys = {j["key"] for j in jobs}
    for family in registry.collect():
        allowed = set(METRICS[family.name + ("_total" if family.type == "counter" else "")]
                      .labels)
        for s in family.samples:
            assert set(s.labels) == allowed, (s.name, s.labels)
            assert not keys & set(s.labels.values()), s


def test_store_collector_without_a_store_exports_nothing_and_creates_nothing(
        tmp_path: Path) -> None:
    registry = CollectorRegistry()
    StoreCollector(tmp_path / "nowhere", registry=registry)
    assert generate_latest(registry) == b""
    assert not (tmp_path / "nowhere").exists()


def test_running_sweep_aggregates_are_rebuilt_at_most_every_rebuild_s(tmp_path: Path) -> None:
    store, jobs = planned_store(tmp_path, "s1")
    clock = Clock()
    registry = CollectorRegistry()
    StoreCollector(tmp_path / "results", registry=registry, rebuild_s=5, clock=clock)
    first = jobs[0]
    labels = dict(sweep="s1", device=first["device"], model="m-moe", arch="moe",
                  config=config_label(first))
    assert value(registry, "edgefarm_decode_tokens_per_second", **labels) is None
    run_job_by_hand(store, "s1", first, lambda model: [10.0, 12.0, 11.0])
    # Job counts are always fresh; the medians wait for the next rebuild.
    assert value(registry, "edgefarm_sweep_jobs", sweep="s1", state="done") == 1
    assert value(registry, "edgefarm_decode_tokens_per_second", **labels) is None
    clock.now += 5
    assert value(registry, "edgefarm_decode_tokens_per_second", **labels) == 11.0
    # A change of sweep state (it finished) rebuilds at once.
    run_job_by_hand(store, "s1", jobs[1], lambda model: [10.0])
    store.set_sweep_state("s1", "finished")
    second = dict(labels, config=config_label(jobs[1]))
    assert value(registry, "edgefarm_decode_tokens_per_second", **second) == 10.0


# -- the samples table ----------------------------------------------------------------
def test_samples_are_stored_once_and_read_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    events = [dict(sample(rails_w={"VDD_IN": 5.0 + i}, total_w=5.0 + i, ram_used_mb=100,
                          temps_c={"cpu": 40.0}), seq=i, t=1.7e9 + i) for i in range(5)]
    assert store.add_sample_events("s1", "orin", events[:3]) == 3
    assert store.add_events("s1", "orin", events) == 2  # the generic path agrees on keys
    assert store.add_samples("s1", "orin", events) == 2
    assert store.add_sample_events("s1", "orin", events) == 0
    assert store.sample_count("s1") == 5
    got = store.samples("s1", device="orin")
    assert [s["total_w"] for s in got] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert got[0]["rails_w"] == {"VDD_IN": 5.0} and got[0]["temps_c"] == {"cpu": 40.0}
    assert got[0]["ram_used_bytes"] == 100 * 2**20 and "ram_total_bytes" not in got[0]
    assert len(store.events("s1")) == 5
    with pytest.raises(ValueError, match="sample events only"):
        store.add_sample_events("s1", "orin", [{"kind": "repetition"}])


def test_malformed_telemetry_is_skipped_not_raised() -> None:
    reg, lm = live()
    lm.job_started(JOB, 1)
    lm.job_event(JOB, sample(rails_w={"VDD_IN": "n/a", "VDD_SOC": 1.5, "X": True},
                             total_w=None, temps_c={"cpu": [1]}, ram_used_mb="lots"))
    lm.job_event(JOB, {"kind": "phase", "phase": ["decode"]})
    lm.job_event(JOB, {"kind": "hello", "facts": {"ram_total_bytes": "8G"}})
    assert value(reg, "edgefarm_device_power_watts", device="orin", rail="VDD_SOC") == 1.5
    text = generate_latest(reg).decode()
    assert 'rail="VDD_IN"' not in text and 'rail="X"' not in text
    assert "temperature" not in text and "memory" not in text
    assert value(reg, "edgefarm_telemetry_samples_total", device="orin") == 1


def test_a_registry_refuses_the_same_collector_twice(tmp_path: Path) -> None:
    from orchestrator.farm.collector import FARM_METRICS
    from orchestrator.metrics import FARM_ONLY_METRICS, LIVE_METRICS, STORE_METRICS

    assert sorted(LIVE_METRICS + FARM_ONLY_METRICS + STORE_METRICS) == sorted(METRICS)
    # The farm service's two collectors share a registry: together every metric, once.
    assert sorted(FARM_METRICS + STORE_METRICS) == sorted(METRICS)
    registry = CollectorRegistry()
    LiveMetrics(registry)
    StoreCollector(tmp_path, registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LiveMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        StoreCollector(tmp_path, registry=registry)
