"""Paired rounds on the agent: round order, the stopping rule, disturbance records.

The order and stopping logic (agents/rounds.py) and the disturbance rule
(agents/disturbance.py) are checked against hand-computed answers; the round
runner is run end to end through the real agent runner with the test-only
sleep backend (stand-in "models" of known speeds) and with real llama.cpp
(xllamacpp) on the project's tiny synthetic models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from agent_fixtures import (  # noqa: F401  (tiny_models_fixture: the fixture tiny_models)
    load_events,
    tiny_models_fixture,
)
from scipy import stats as scipy_stats

from agents import disturbance
from agents.round_runner import auto_per_round, job_per_round
from agents.rounds import RoundPlan, half_width_pct, t975
from agents.runner import run_job


def test_t_quantiles_match_scipy() -> None:
    for df in list(range(1, 31)) + [31, 40, 60, 120, 1000]:
        assert t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-6), df
    with pytest.raises(ValueError):
        t975(0)


def test_half_width_by_hand() -> None:
    # ratios 0.9, 0.8, 1.0, 0.85, 0.95: logs -0.105361, -0.223144, 0, -0.162519,
    # -0.051293; mean -0.108463; squared deviations sum 0.031116, /4 = 0.007779,
    # sd 0.088199; t(4) = 2.776445; t*sd/sqrt(5) = 0.109513; exp(0.109513) - 1 = 11.573%.
    assert half_width_pct([0.9, 0.8, 1.0, 0.85, 0.95]) == pytest.approx(11.573, abs=0.01)
    assert half_width_pct([1.1, 1.1, 1.1]) == 0.0
    assert half_width_pct([0.9]) is None


@pytest.mark.parametrize(("spec", "expected"), [
    (12, (12, 12, None)),
    ({"min": 5, "max": 40, "target_ci_pct": 2}, (5, 40, 2.0)),
])
def test_round_plan_from_spec(spec: Any, expected: tuple[int, int, float | None]) -> None:
    plan = RoundPlan.from_spec(spec, seed=3)
    assert (plan.minimum, plan.maximum, plan.target_ci_pct) == expected


@pytest.mark.parametrize("spec", ["many", True, {"min": 5}, {"min": 5, "max": 2,
                                                             "target_ci_pct": 1},
                                  {"min": 1, "max": 2, "target_ci_pct": 0}, 0])
def test_round_plan_rejects_bad_specs(spec: Any) -> None:
    with pytest.raises(ValueError):
        RoundPlan.from_spec(spec)


def test_round_orders_are_seeded_and_vary() -> None:
    plan = RoundPlan(10, 10, seed=7)
    orders = [tuple(plan.order(r, 2)) for r in range(10)]
    assert orders == [tuple(RoundPlan(10, 10, seed=7).order(r, 2)) for r in range(10)]
    assert set(orders) == {(0, 1), (1, 0)}, "both orders occur in ten rounds"
    assert sorted(plan.order(3, 4)) == [0, 1, 2, 3]


def test_fixed_plan_stops_at_its_count_only() -> None:
    plan = RoundPlan(3, 3)
    assert plan.decide(2, {(0, 1): [1.0, 1.0]}) == (False, "")
    stop, reason = plan.decide(3, {(0, 1): [1.0, 1.0, 1.0]})
    assert stop and "fixed count of 3" in reason


def test_adaptive_plan_stops_at_the_target_or_max() -> None:
    plan = RoundPlan(3, 6, target_ci_pct=2.0)
    tight = {(0, 1): [0.80, 0.81, 0.80]}  # half-width ~1.8% (t(2)=4.30, sd 0.00718)
    loose = {(0, 1): [0.8, 0.9, 1.0]}
    assert plan.decide(2, {(0, 1): [0.8, 0.8]}) == (False, "")  # below min
    stop, reason = plan.decide(3, tight)
    assert stop and "target reached" in reason
    assert plan.decide(3, loose) == (False, "")
    stop, reason = plan.decide(6, loose)
    assert stop and "max rounds (6) reached" in reason
    # Every pair must reach the target.
    assert plan.decide(3, {**tight, (0, 2): [0.8, 0.9, 1.0]}) == (False, "")


def _snap(mono: float, cpu_s: float, machine: tuple[float, float, float] | None,
          nivcsw: int = 0) -> disturbance.Snapshot:
    snap = disturbance.Snapshot.__new__(disturbance.Snapshot)
    snap.mono, snap.cpu_s, snap.machine, snap.nivcsw = mono, cpu_s, machine, nivcsw
    return snap


@pytest.mark.parametrize(("own_cpu", "busy", "steal", "cpu_inference", "reason"), [
    # 1 s on 2 CPUs, 2 threads. Quiet: the machine was busy only with us.
    (1.9, 1.95, 0.0, True, None),
    # Another process took 0.9 of the 2 CPU-seconds: other load 45% > 10%.
    (1.0, 1.9, 0.0, True, "other load: 45% of the CPUs busy with other work"),
    # Another took 0.16 of 2: 8%, under the threshold (a low CPU share alone decides nothing).
    (0.6, 0.76, 0.0, True, None),
    # 0.3 of 2: 15% > 10%.
    (1.5, 1.8, 0.0, True, "other load: 15% of the CPUs busy with other work"),
    # Steal 0.3 of 2 CPU-seconds = 15% > 10%.
    (1.6, 1.6, 0.3, False, "hypervisor steal: 15% of the CPUs' time"),
    # GPU inference: low process CPU is expected, not a disturbance.
    (0.1, 0.15, 0.0, False, None),
])
def test_disturbance_rule_by_hand(own_cpu: float, busy: float, steal: float,
                                  cpu_inference: bool, reason: str | None) -> None:
    before = _snap(10.0, 5.0, (100.0, 1.0, 500.0), nivcsw=3)
    after = _snap(11.0, 5.0 + own_cpu, (100.0 + busy, 1.0 + steal, 502.0), nivcsw=10)
    fields = disturbance.assess(before, after, threads=2, cpu_inference=cpu_inference, ncpu=2)
    assert fields["disturbed"] == reason
    assert fields["involuntary_switches"] == 7
    assert fields["other_load_share"] == pytest.approx(max(0.0, busy - own_cpu) / 2, abs=1e-4)
    assert "disturbance_rule" in fields


def test_a_window_too_short_for_the_ticks_is_not_judged() -> None:
    # 0.1 s on 2 CPUs = 0.2 CPU-seconds < 0.5: 20 ticks cannot resolve a 10% share.
    before = _snap(10.0, 5.0, (100.0, 1.0, 500.0))
    after = _snap(10.1, 5.05, (100.2, 1.0, 500.2))
    fields = disturbance.assess(before, after, threads=2, cpu_inference=True, ncpu=2)
    assert fields["disturbed"] is None and fields["other_load_share"] == 0.75
    assert "too short to judge" in str(fields["disturbance_unjudged_reason"])


def test_a_clock_or_throttle_warning_disturbs_a_judged_repetition() -> None:
    judged = {"disturbed": None, "disturbance_rule": disturbance.RULE,
              "warning": "clock gpu fell from 1980 to 1410 MHz"}
    disturbance.add_telemetry_reason(judged)
    assert judged["disturbed"] == ("clock or throttle change: clock gpu fell from 1980 to "
                                   "1410 MHz")
    both = {"disturbed": "hypervisor steal: 15% of the CPUs' time",
            "disturbance_rule": disturbance.RULE,
            "warning": "nvml throttle: thermal"}
    disturbance.add_telemetry_reason(both)
    assert both["disturbed"] == ("hypervisor steal: 15% of the CPUs' time; clock or "
                                 "throttle change: nvml throttle: thermal")
    warm_up = {"warning": "clock fell"}  # not judged (a warm-up): left alone
    disturbance.add_telemetry_reason(warm_up)
    assert "disturbed" not in warm_up


def test_disturbance_without_proc_stat_says_so() -> None:
    fields = disturbance.assess(_snap(0, 0, None), _snap(1, 1.0, None), 1, True, ncpu=1)
    assert fields["other_load_unmeasured_reason"] == "no /proc/stat on this system"
    assert fields["disturbed"] is None and fields["cpu_share"] == 1.0


# -- the round runner, end to end through the agent ---------------------------------

def _group_job(job_dir: Path, models: list[dict[str, Any]], backend: str,
               repetitions: Any, warmup: int = 1, gen_tokens: int = 20,
               keep_loaded: bool = True, **params: Any) -> Path:
    job_dir.mkdir(parents=True)
    p = {"prompt_tokens": 8, "gen_tokens": gen_tokens, "threads": 2, "gpu_layers": 0,
         "repetitions": repetitions, "warmup": warmup, "seed": 11, "keep_loaded": keep_loaded}
    p.update(params)
    spec = {"schema": 1, "job_key": "group", "attempt": 1, "backend": backend,
            "models": models, "model": models[0], "params": p, "device": {},
            "telemetry": False}
    (job_dir / "job.json").write_text(json.dumps(spec))
    return job_dir


def _stand_in(tmp: Path, name: str, scale: float, load_s: float = 0.0) -> dict[str, Any]:
    path = tmp / f"{name}.gguf"
    path.write_text(f"sleep-scale={scale} sleep-load={load_s} not a model: a stand-in for "
                    "the sleep backend\n")
    return {"id": name, "arch": "moe" if name.startswith("moe") else "dense",
            "source": {"path": str(path)}}


def test_a_group_job_alternates_its_models_round_by_round(tmp_path: Path) -> None:
    models = [_stand_in(tmp_path, "moe", 1.5), _stand_in(tmp_path, "dense", 1.0)]
    job = _group_job(tmp_path / "job", models, "sleep", repetitions=8)
    assert run_job(str(job)) == 0
    events = load_events(job)
    rounds = [e for e in events if e["kind"] == "phase" and e.get("phase") == "round"]
    assert [r["round"] for r in rounds] == list(range(8))
    orders = {tuple(r["order"]) for r in rounds}
    assert orders == {("moe", "dense"), ("dense", "moe")}, "the order changes between rounds"
    reps = [e for e in events if e["kind"] == "repetition"]
    warm = [r for r in reps if r["warmup"]]
    counted = [r for r in reps if not r["warmup"]]
    assert [(r["model"], r["index"]) for r in warm] == [("moe", 0), ("dense", 1)]
    assert [r["index"] for r in counted] == list(range(16))
    for round_ in rounds:  # each round: one repetition per model, in the recorded order
        mine = [r for r in counted if r["round"] == round_["round"]]
        assert [r["model"] for r in sorted(mine, key=lambda r: r["position"])] == \
            round_["order"]
    result = events[-1]
    assert result["status"] == "ok"
    summary = result["info"]["rounds"]
    assert summary["rounds_run"] == 8 and summary["kept_rounds"] == 8
    assert summary["resident"] == "all" and summary["stop_reason"] == "fixed count of 8 rounds"
    assert set(result["info"]["models"]) == {"moe", "dense"}
    # The sleep "moe" is 1.5 times slower: every round's ratio is about 1/1.5.
    for round_ in rounds:
        tps = {r["model"]: r["decode_tps"] for r in counted if r["round"] == round_["round"]}
        assert tps["moe"] / tps["dense"] == pytest.approx(1 / 1.5, rel=0.15)


def test_several_repetitions_per_round_count_by_their_median(tmp_path: Path) -> None:
    """``repetitions_per_round: 3``: 3 counted repetitions of each model in every round."""
    models = [_stand_in(tmp_path, "moe", 1.5), _stand_in(tmp_path, "dense", 1.0)]
    job = _group_job(tmp_path / "job", models, "sleep", gen_tokens=20, warmup=0,
                     repetitions=4, repetitions_per_round=3)
    assert run_job(str(job)) == 0
    events = load_events(job)
    counted = [e for e in events if e["kind"] == "repetition" and not e["warmup"]]
    assert len(counted) == 4 * 2 * 3
    for round_ in range(4):
        mine = [r["model"] for r in counted if r["round"] == round_]
        assert sorted(mine) == ["dense"] * 3 + ["moe"] * 3
    summary = events[-1]["info"]["rounds"]
    assert summary["repetitions_per_round"] == 3 and summary["kept_rounds"] == 4


@pytest.mark.parametrize(("overhead", "counted", "expected"), [
    # 4 x 65 / 24 = 10.83 -> 11: 11 x 24 = 264 of 65 + 264 = 329 s is 80.2% >= 80%
    # (10 would give 240 / 305 = 78.7%).
    (65.0, 24.0, 11),
    (10.0, 10.0, 4),    # exactly 4: 40 / 50 = 80%
    (0.0, 5.0, 1),      # no load to spread
    (5.0, 0.0, 1),      # nothing timed
    (100.0, 1.0, 12),   # would need 300: capped
])
def test_auto_repetitions_per_round_by_hand(overhead: float, counted: float,
                                            expected: int) -> None:
    assert auto_per_round(overhead, counted) == expected


@pytest.mark.parametrize(("args", "expected"), [
    # 77 s so far (22 counted), 7 rounds of 25 s loads + k x 22 s, 45 s after:
    # k >= (0.8 x (77 + 175 + 45) - 22) / (7 x 22 x 0.2) = 215.6 / 30.8 = 7.0 -> 7:
    # (22 + 7 x 154) / (77 + 7 x 179 + 45) = 1100 / 1375 = 80.0%.
    ((77.0, 22.0, 7, 25.0, 22.0, 45.0), 7),
    ((77.0, 22.0, 7, 25.0, 22.0, 0.0), 6),   # no profiling after: (201.6 - 22) / 30.8 = 5.83
    ((10.0, 10.0, 3, 0.0, 10.0, 0.0), 1),    # nothing to spread: already 100% counting
    ((100.0, 0.0, 1, 50.0, 1.0, 0.0), 12),   # would need 600: capped
])
def test_auto_repetitions_for_the_whole_job_by_hand(args: tuple, expected: int) -> None:
    assert job_per_round(*args) == expected


def test_auto_repetitions_per_round_spread_each_fresh_load(tmp_path: Path) -> None:
    """``auto`` with fresh loads: round 0 runs one repetition each and is timed; every
    later round loads each model afresh and runs the chosen number of repetitions."""
    models = [_stand_in(tmp_path, "moe", 1.5, load_s=0.04),
              _stand_in(tmp_path, "dense", 1.0, load_s=0.04)]
    job = _group_job(tmp_path / "job", models, "sleep", gen_tokens=20, warmup=0,
                     repetitions=3, repetitions_per_round="auto", keep_loaded=False)
    assert run_job(str(job)) == 0
    events = load_events(job)
    summary = events[-1]["info"]["rounds"]
    chosen = summary["repetitions_per_round_auto"]
    # ~0.08 s of loads against ~0.05 s of counted repetitions: 4 x 0.08 / 0.05 ~ 7.
    # At least what one round needs, more for the whole job (round 1 counted little).
    assert chosen["chosen"] >= auto_per_round(chosen["overhead_s"], chosen["repetition_s"])
    assert 4 <= chosen["chosen"] <= 12, chosen
    assert summary["repetitions_per_round"] == chosen["chosen"]
    counted = [e for e in events if e["kind"] == "repetition" and not e["warmup"]]
    for round_, each in ((0, 1), (1, chosen["chosen"]), (2, chosen["chosen"])):
        mine = sorted(r["model"] for r in counted if r["round"] == round_)
        assert mine == ["dense"] * each + ["moe"] * each
    loads = [e for e in events if e["kind"] == "phase" and e.get("phase") == "load"]
    assert len(loads) == 3 * 2  # a fresh load of each model in every round
    assert summary["kept_rounds"] == 3


def test_auto_repetitions_per_round_never_run_into_the_jobs_time_limit(tmp_path: Path) -> None:
    """Loads of 0.1 s against 0.05 s of counting ask for k = 8; with a 2 s limit and
    5 rounds the 4 rounds left may take 0.8 x 2 s less the ~0.15 s spent: ~0.36 s each,
    0.1 s of it loads, so about 5 (and the job ends within its limit)."""
    models = [_stand_in(tmp_path, "moe", 1.5, load_s=0.05),
              _stand_in(tmp_path, "dense", 1.0, load_s=0.05)]
    job = _group_job(tmp_path / "job", models, "sleep", gen_tokens=20, warmup=0,
                     repetitions=5, repetitions_per_round="auto", keep_loaded=False)
    spec = json.loads((job / "job.json").read_text())
    spec["timeout_s"] = 2
    (job / "job.json").write_text(json.dumps(spec))
    assert run_job(str(job)) == 0
    summary = load_events(job)[-1]["info"]["rounds"]
    chosen = summary["repetitions_per_round_auto"]
    assert "capped at" in chosen["rule"] and "2 s limit" in chosen["rule"], chosen
    assert chosen["chosen"] < auto_per_round(chosen["overhead_s"], chosen["repetition_s"])
    assert 1 <= chosen["chosen"] <= 6


def test_auto_repetitions_per_round_with_models_kept_loaded_stay_at_one(
        tmp_path: Path) -> None:
    models = [_stand_in(tmp_path, "moe", 1.5, load_s=0.05),
              _stand_in(tmp_path, "dense", 1.0, load_s=0.05)]
    job = _group_job(tmp_path / "job", models, "sleep", gen_tokens=10, warmup=0,
                     repetitions=3, repetitions_per_round="auto", keep_loaded=True)
    assert run_job(str(job)) == 0
    summary = load_events(job)[-1]["info"]["rounds"]
    assert summary["resident"] == "all"
    assert summary["repetitions_per_round_auto"]["chosen"] == 1
    assert "no load to spread" in summary["repetitions_per_round_auto"]["rule"]


def test_adaptive_rounds_stop_once_the_interval_is_tight(tmp_path: Path) -> None:
    models = [_stand_in(tmp_path, "moe", 1.25), _stand_in(tmp_path, "dense", 1.0)]
    job = _group_job(tmp_path / "job", models, "sleep", gen_tokens=30, warmup=0,
                     repetitions={"min": 3, "max": 12, "target_ci_pct": 25})
    assert run_job(str(job)) == 0
    summary = load_events(job)[-1]["info"]["rounds"]
    assert summary["adaptive"] == {"min": 3, "max": 12, "target_ci_pct": 25.0}
    assert 3 <= summary["rounds_run"] < 12, summary
    assert summary["stop_reason"].startswith("target reached")


def _carried_rep(model: str, round_: int, position: int, tps: float,
                disturbed: str | None = None) -> dict[str, Any]:
    """A counted repetition as an earlier attempt's events hold it."""
    body: dict[str, Any] = {"v": 1, "seq": 40 + round_, "kind": "repetition", "job": "group",
                            "attempt": 1, "t": 1000.0 + round_, "mono": 5.0, "index": 7,
                            "warmup": False, "model": model,
                            "model_arch": "moe" if model == "moe" else "dense",
                            "round": round_, "position": position, "decode_tps": tps,
                            "synthetic": True}
    if disturbed:
        body["disturbed"] = disturbed
    return body


def test_carried_rounds_are_replayed_then_only_the_missing_ones_run(tmp_path: Path) -> None:
    """Round 0 kept, round 1 disturbed (left out again), round 2 incomplete (run afresh)."""
    models = [_stand_in(tmp_path, "moe", 1.5), _stand_in(tmp_path, "dense", 1.0)]
    job = _group_job(tmp_path / "job", models, "sleep", repetitions=4, warmup=0)
    spec = json.loads((job / "job.json").read_text())
    spec["attempt"] = 2
    spec["telemetry"] = True  # carried repetitions must pass the job's telemetry untouched
    measured = dict(_carried_rep("dense", 0, 0, 40.0), j_per_token=0.5, energy_decode_j=3.2,
                    decode_window_mono=[5.0, 6.0])
    spec["carried"] = {"attempt": 1, "rounds": [
        [measured, _carried_rep("moe", 0, 1, 20.0)],
        [_carried_rep("moe", 1, 0, 21.0, "other load: 30% of the CPUs busy with other work"),
         _carried_rep("dense", 1, 1, 41.0)],
        [_carried_rep("moe", 2, 0, 22.0)]]}  # dense missing: not a whole round
    (job / "job.json").write_text(json.dumps(spec))
    assert run_job(str(job)) == 0
    events = load_events(job)
    counted = [e for e in events if e["kind"] == "repetition" and not e["warmup"]]
    carried = [e for e in counted if e.get("carried_from")]
    assert [(e["model"], e["round"], e["decode_tps"]) for e in carried] == [
        ("moe", 0, 20.0), ("dense", 0, 40.0), ("moe", 1, 21.0), ("dense", 1, 41.0)]
    assert all(e["attempt"] == 2 and e["carried_from"] == {"attempt": 1, "t": 1000.0 + e["round"]}
               for e in carried)
    assert carried[2]["disturbed"].startswith("other load")
    # The energy it was measured with stays; this attempt's telemetry adds nothing.
    assert (carried[1]["j_per_token"], carried[1]["energy_decode_j"]) == (0.5, 3.2)
    assert all("energy_unmeasured_reason" not in e for e in carried)
    assert all("energy_unmeasured_reason" in e for e in counted if not e.get("carried_from"))
    assert [e["index"] for e in counted] == list(range(8)), "indices stay unique in the attempt"
    fresh = [e for e in counted if not e.get("carried_from")]
    assert sorted({e["round"] for e in fresh}) == [2, 3]
    summary = events[-1]["info"]["rounds"]
    assert summary["carried_rounds"] == 2 and summary["carried_from_attempt"] == 1
    assert summary["rounds_run"] == 4 and summary["kept_rounds"] == 3
    assert summary["excluded_rounds"] == {"other load": 1}
    assert set(events[-1]["info"]["models"]) == {"moe", "dense"}


def test_at_most_max_minus_one_rounds_are_carried(tmp_path: Path) -> None:
    """Every attempt measures a round of its own (and so records its own provenance)."""
    models = [_stand_in(tmp_path, "moe", 1.5), _stand_in(tmp_path, "dense", 1.0)]
    job = _group_job(tmp_path / "job", models, "sleep", repetitions=2, warmup=0)
    spec = json.loads((job / "job.json").read_text())
    spec["carried"] = {"attempt": 1, "rounds": [
        [_carried_rep("moe", r, 0, 20.0), _carried_rep("dense", r, 1, 40.0)] for r in range(2)]}
    (job / "job.json").write_text(json.dumps(spec))
    assert run_job(str(job)) == 0
    events = load_events(job)
    counted = [e for e in events if e["kind"] == "repetition" and not e["warmup"]]
    assert [e["round"] for e in counted if e.get("carried_from")] == [0, 0]
    assert [e["round"] for e in counted if not e.get("carried_from")] == [1, 1]
    assert events[-1]["info"]["models"]["moe"]["backend"] == "sleep"


def test_xllamacpp_group_keeps_both_models_loaded_and_records_disturbance(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    models = [{"id": "tiny-moe", "arch": "moe", "source": {"path": str(tiny_models["tiny-moe"])}},
              {"id": "tiny-dense", "arch": "dense",
               "source": {"path": str(tiny_models["tiny-dense"])}}]
    job = _group_job(tmp_path / "job", models, "xllamacpp", repetitions=4, gen_tokens=8)
    assert run_job(str(job)) == 0
    events = load_events(job)
    loads = [e for e in events if e["kind"] == "phase" and e.get("phase") == "load"]
    assert len(loads) == 2, "each model loaded once, before the rounds"
    counted = [e for e in events if e["kind"] == "repetition" and not e["warmup"]]
    assert len(counted) == 8
    for rep in counted:
        assert rep["model"] in ("tiny-moe", "tiny-dense")
        assert 0 <= rep["cpu_share"] and rep["process_cpu_s"] > 0
        assert "other_load_share" in rep and "disturbed" in rep
    info = events[-1]["info"]
    assert info["rounds"]["resident"] == "all"
    # llama.cpp contexts slow each other down in one process: one worker per model.
    assert info["rounds"]["model_processes"] == "one per model"
    for model in ("tiny-moe", "tiny-dense"):
        one = info["models"][model]
        assert one["backend"] == "xllamacpp" and one["load_rss_bytes"] > 0
        assert one["provenance"]["backend"] == "xllamacpp"
    assert not math.isnan(float(counted[0]["decode_tps"]))


def test_a_model_worker_reports_backend_errors_with_their_kind(tmp_path: Path) -> None:
    from agents.backends.base import BackendError, JobParams
    from agents.model_worker import WorkerSession

    params = JobParams(8, 8, 1, 0, 1, 0)
    with pytest.raises(BackendError) as failed:
        WorkerSession("xllamacpp", None, str(tmp_path / "missing.gguf"), params,
                      lambda kind, fields: fields)
    assert failed.value.kind == "model-missing" and "missing.gguf" in failed.value.message


def test_a_model_worker_runs_repetitions_and_forwards_its_events(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from agents.backends.base import JobParams
    from agents.model_worker import WorkerSession

    seen: list[tuple[str, dict[str, Any]]] = []
    session = WorkerSession("xllamacpp", None, str(tiny_models["tiny-dense"]),
                            JobParams(8, 8, 1, 0, 1, 0),
                            lambda kind, fields: seen.append((kind, fields)) or fields)
    try:
        rep = session.repetition(0, False, lambda kind, fields: seen.append((kind, fields))
                                 or fields)
        assert rep["gen_tokens"] == 8 and rep["decode_tps"] > 0
        assert session.info()["backend"] == "xllamacpp" and session.pid > 0
    finally:
        session.close()
    assert ("phase", {"phase": "load"}) in seen and ("phase", {"phase": "prefill"}) in seen
    assert session.proc.returncode == 0


def test_by_default_a_pair_loads_each_model_afresh_for_every_repetition(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    models = [{"id": "tiny-moe", "arch": "moe", "source": {"path": str(tiny_models["tiny-moe"])}},
              {"id": "tiny-dense", "arch": "dense",
               "source": {"path": str(tiny_models["tiny-dense"])}}]
    job = _group_job(tmp_path / "job", models, "xllamacpp", repetitions=3, gen_tokens=8,
                     keep_loaded=False)
    assert run_job(str(job)) == 0
    events = load_events(job)
    loads = [e for e in events if e["kind"] == "phase" and e.get("phase") == "load"]
    assert len(loads) == 2 * 3, "a load (and its warm-up) before every counted repetition"
    reps = [e for e in events if e["kind"] == "repetition"]
    assert sum(r["warmup"] for r in reps) == 2 * 3 and sum(not r["warmup"] for r in reps) == 6
    summary = events[-1]["info"]["rounds"]
    assert summary["resident"] == "one-at-a-time"
    assert summary["resident_reason"].startswith("a fresh load per repetition")
    assert summary["model_processes"] == "the agent's"  # alone in memory: no worker needed
