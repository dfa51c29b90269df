"""The report from a real SQLite store filled with recorded-shape events.

Numbers are checked against answers worked out by hand (the formulas are
written out beside them), not against the code's own output.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from orchestrator.cli.render import print_report
from orchestrator.report import (
    PAIRED_BY_INDEX,
    PAIRED_BY_ROUND,
    build_report,
    mark_shared_memory,
    memory_line,
    per_round_text,
    provenance_difference,
    render_json,
    render_markdown,
    roofline_line,
)
from orchestrator.store import Store

SWEEP = {"models": [{"id": "moe", "arch": "moe"}, {"id": "dense", "arch": "dense"}],
         "pairs": [{"moe": "moe", "dense": ["dense"]}]}
CONFIG = {"prompt_tokens": 8, "gen_tokens": 9, "threads": 1, "gpu_layers": 0}

#: Student t, 97.5% quantile, 4 degrees of freedom (any t table: 2.776).
T_975_4 = 2.7764451051977934

PROVENANCE = {"backend": "xllamacpp", "backend_version": "2026.10.11549", "build_number": None,
              "build_commit": None, "threads": 1, "n_batch": 512, "n_ubatch": 512,
              "flash_attn": "auto", "type_k": "f16", "type_v": "f16", "use_mmap": None,
              "cpu_repack": True, "gpu_layers": 0,
              "unknown": {"build_number": "wheel says 0", "build_commit": "wheel says unknown",
                          "use_mmap": "load_mode auto"}}


def fill(store: Store, reps: dict[str, list[dict[str, Any]]],
         results: dict[str, dict[str, Any]] | None = None) -> None:
    """One sweep with a MoE and a dense job on device "dev", each with these counted reps."""
    jobs = [dict(CONFIG, key=m, device="dev", model_id=m, arch=m) for m in ("moe", "dense")]
    store.create_sweep("s", "t", SWEEP, {"devices": []}, jobs)
    for job in jobs:
        key = job["key"]
        store.start_attempt("s", key, 1)
        events = [dict({"v": 1, "seq": i, "kind": "repetition", "job": key, "attempt": 1,
                        "t": 1.0, "index": i, "warmup": False}, **rep)
                  for i, rep in enumerate(reps[key])]
        store.add_events("s", "dev", events)
        store.finish_job("s", key, "done", 1, result=(results or {}).get(key, {}))


def decode(values: list[float], **extra: Any) -> list[dict[str, Any]]:
    return [dict(extra, decode_tps=v, prefill_tps=50.0) for v in values]


def one(store: Store) -> dict[str, Any]:
    (c,) = build_report(store, "s")["comparisons"]
    return c


def test_energy_per_token_and_ratio(tmp_path: Path) -> None:
    store = Store(tmp_path)
    reps = {m: [dict(decode_tps=10.0 + i, prefill_tps=50.0, j_per_token=jpt + i * 0.01,
                     idle_power_w=3.0) for i in range(3)]
            for m, jpt in (("moe", 0.50), ("dense", 0.25))}
    fill(store, reps)
    c = one(store)
    assert c["moe"]["j_per_token_median"] == 0.51 and c["dense"]["j_per_token_median"] == 0.26
    assert abs(c["energy_ratio"] - 0.51 / 0.26) < 1e-12
    assert c["moe"]["energy_note"] is None
    assert "decode energy per token MoE/dense 1.96x" in render_markdown(build_report(store, "s"))


def test_unmeasured_energy_says_why(tmp_path: Path) -> None:
    store = Store(tmp_path)
    note = "energy not measured on this device: test"
    fill(store, {m: decode([10.0, 11.0, 12.0], energy_unmeasured_reason=note)
                 for m in ("moe", "dense")})
    report = build_report(store, "s")
    (c,) = report["comparisons"]
    assert c["energy_ratio"] is None and c["moe"]["j_per_token_median"] is None
    assert c["moe"]["energy_note"] == note
    md = render_markdown(report)
    assert "not measured" in md and f"- dev: {note}" in md


def test_five_paired_rounds_give_a_t_interval_and_a_verdict(tmp_path: Path) -> None:
    """Per-round ratios 0.7 * e^(k * 0.05), k = -2..2, against a steady dense 100 tok/s.

    Logs: mean ln 0.7, sd = 0.05 * sqrt(10 / 4); half-width on the log scale
    h = t(0.975, 4) * sd / sqrt(5); CI = 0.7 * e^(-h) .. 0.7 * e^(+h)
    = 0.634551 .. 0.772200: 22.8% to 36.5% behind, printed whole (point >= 10%).
    """
    store = Store(tmp_path)
    moe = [100 * 0.7 * math.exp(k * 0.05) for k in (-2, -1, 0, 1, 2)]
    fill(store, {"moe": decode(moe), "dense": decode([100.0] * 5)})
    c = one(store)
    h = T_975_4 * 0.05 * math.sqrt(10 / 4) / math.sqrt(5)
    est = c["decode_estimate"]
    assert c["decode_ratio"] == pytest.approx(0.7, rel=1e-12)
    assert (est["low"], est["high"]) == (pytest.approx(0.7 * math.exp(-h), rel=1e-9),
                                         pytest.approx(0.7 * math.exp(h), rel=1e-9))
    assert est["low"] == pytest.approx(0.634551, abs=1e-6)
    assert est["high"] == pytest.approx(0.772200, abs=1e-6)
    assert est["kind"] == "95% CI" and est["n"] == 5
    assert est["method"] == "t-interval on log per-round ratios, n=5"
    assert c["verdict"] == "MoE is 30% behind (95% CI 23–37%)"
    assert c["significant"] is True
    assert c["pairing"] == PAIRED_BY_INDEX and c["rounds"] == 5
    # The prefill ratio is paired the same way: 50 / 50 every round.
    assert c["prefill_ratio"] == pytest.approx(1.0)
    md = render_markdown(build_report(store, "s"))
    assert "**Decode: MoE is 30% behind (95% CI 23–37%)**" in md
    assert ("- MoE/dense 0.700, t-interval on log per-round ratios, n=5; "
            "paired by repetition index; rounds not interleaved") in md


def test_few_rounds_give_a_range_not_a_ci(tmp_path: Path) -> None:
    """Ratios 0.5, 0.6, 0.7: geometric mean (0.21)^(1/3) = 0.594392, range 30–50% behind."""
    store = Store(tmp_path)
    fill(store, {"moe": decode([50.0, 60.0, 70.0]), "dense": decode([100.0] * 3)})
    c = one(store)
    assert c["decode_ratio"] == pytest.approx(0.21 ** (1 / 3), rel=1e-12)
    assert c["decode_estimate"]["kind"] == "range"
    assert (c["decode_estimate"]["low"], c["decode_estimate"]["high"]) == \
        (pytest.approx(0.5), pytest.approx(0.7))
    assert c["verdict"] == "MoE is 41% behind (range 30–50% over 3 rounds, too few for a 95% CI)"
    assert c["significant"] is None


def test_per_model_median_interval_and_cv(tmp_path: Path) -> None:
    """n = 6: the 95% CI of the median is [x(1), x(6)] (coverage 62/64); n = 3: the range.

    Dense 100, 100, 100, 100, 100, 112: mean 102, sd = sqrt(5 * 2^2 + 10^2) / sqrt(5)
    = sqrt(24) = 4.898979, CV 4.80% (not flagged). MoE 50, 60, 70, 80, 90, 100:
    mean 75, sd = sqrt(1750 / 5) = 18.708287, CV 24.94% (flagged, > 5%).
    """
    store = Store(tmp_path)
    fill(store, {"moe": decode([50.0, 60.0, 70.0, 80.0, 90.0, 100.0]),
                 "dense": decode([100.0] * 5 + [112.0])})
    c = one(store)
    m, d = c["moe"]["decode"], c["dense"]["decode"]
    assert (m["median"], m["low"], m["high"], m["interval"]) == (75.0, 50.0, 100.0, "95% CI")
    assert m["coverage"] == pytest.approx(62 / 64)
    assert m["cv"] == pytest.approx(math.sqrt(350) / 75)
    assert m["cv_warning"] == ("coefficient of variation 24.9% is above 5%: noisy "
                               "measurements (throttling or competing load?)")
    assert (d["median"], d["low"], d["high"]) == (100.0, 100.0, 112.0)
    assert d["cv"] == pytest.approx(math.sqrt(24) / 102) and d["cv_warning"] is None
    md = render_markdown(build_report(store, "s"))
    assert "| 75.0 (n=6) | 95% CI 50.0–100.0 | 24.9% (high) |" in md
    assert "| 100.0 (n=6) | 95% CI 100.0–112.0 | 4.8% |" in md
    assert "- moe decode: coefficient of variation 24.9% is above 5%" in md

    store2 = Store(tmp_path / "small")
    fill(store2, {"moe": decode([50.0, 60.0, 70.0]), "dense": decode([100.0] * 3)})
    m = one(store2)["moe"]["decode"]
    assert (m["interval"], m["low"], m["high"]) == ("range", 50.0, 70.0)
    assert m["coverage"] == pytest.approx(6 / 8)  # 1 - 2 * (1/2)^3


def test_a_round_field_pairs_by_round_instead_of_index(tmp_path: Path) -> None:
    """By index: 10/20 and 20/10 (ratios 0.5 and 2); by round: 20/20 and 10/10 (both 1)."""
    store = Store(tmp_path)
    fill(store, {"moe": [dict(decode_tps=10.0, round=1), dict(decode_tps=20.0, round=0)],
                 "dense": [dict(decode_tps=20.0, round=0), dict(decode_tps=10.0, round=1)]})
    c = one(store)
    assert c["pairing"] == PAIRED_BY_ROUND
    assert (c["decode_estimate"]["low"], c["decode_estimate"]["high"]) == (1.0, 1.0)
    assert c["verdict"] == "MoE is level with dense (all 2 rounds identical, too few for a 95% CI)"

    store2 = Store(tmp_path / "by-index")
    fill(store2, {"moe": decode([10.0, 20.0]), "dense": decode([20.0, 10.0])})
    c = one(store2)
    assert c["pairing"] == PAIRED_BY_INDEX
    assert (c["decode_estimate"]["low"], c["decode_estimate"]["high"]) == (0.5, 2.0)
    assert c["decode_ratio"] == pytest.approx(1.0)  # sqrt(0.5 * 2)


def test_disturbed_rounds_are_left_out_and_counted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    moe = decode([50.0, 60.0]) + [dict(decode_tps=10.0, disturbed="thermal throttling")]
    fill(store, {"moe": moe, "dense": decode([100.0] * 3)})
    c = one(store)
    assert c["excluded"] == {"thermal throttling": 1} and c["rounds"] == 3
    assert (c["decode_estimate"]["low"], c["decode_estimate"]["high"]) == (0.5, 0.6)
    assert "- 1 round left out: thermal throttling" in render_markdown(build_report(store, "s"))


def test_excluded_rounds_are_counted_by_kind_not_by_measured_share(tmp_path: Path) -> None:
    store = Store(tmp_path)
    moe = decode([50.0, 60.0, 55.0]) + [
        dict(decode_tps=10.0, disturbed="other load: 33% of the CPUs busy with other work"),
        dict(decode_tps=12.0, disturbed="other load: 41% of the CPUs busy with other work"),
        dict(decode_tps=11.0,
             disturbed="hypervisor steal: 15% of the CPUs' time; clock or throttle change: x")]
    fill(store, {"moe": moe, "dense": decode([100.0] * 6)})
    c = one(store)
    assert c["excluded"] == {"other load": 2,
                             "clock or throttle change and hypervisor steal": 1}


def test_a_disturbed_repetition_spoils_its_round_for_every_pair_of_the_job(
        tmp_path: Path) -> None:
    """One paired job, MoE against d1 and d2: d1 disturbed in round 2 drops round 2 of both.

    The rule the agent's stopping rule applies (agents/round_runner.py); d2's
    slow round 2 (the same disturbance, below the threshold) must not count.
    """
    store = Store(tmp_path)
    sweep = {"models": [{"id": "moe", "arch": "moe"}, {"id": "d1", "arch": "dense"},
                        {"id": "d2", "arch": "dense"}],
             "pairs": [{"moe": "moe", "dense": ["d1", "d2"]}]}
    job = dict(CONFIG, key="j", device="dev", model_id="moe vs d1,d2", arch="pair",
               models=[{"id": m, "arch": a} for m, a in (("moe", "moe"), ("d1", "dense"),
                                                          ("d2", "dense"))])
    store.create_sweep("s", "t", sweep, {"devices": []}, [job])
    store.start_attempt("s", "j", 1)
    events, seq = [], 0
    for rnd in range(6):
        for model, tps in (("moe", 90.0), ("d1", 100.0), ("d2", 100.0 if rnd != 2 else 60.0)):
            rep: dict[str, Any] = {"v": 1, "seq": seq, "kind": "repetition", "job": "j",
                                   "attempt": 1, "t": 1.0, "index": seq, "warmup": False,
                                   "model": model, "round": rnd, "decode_tps": tps,
                                   "prefill_tps": 50.0}
            if model == "d1" and rnd == 2:
                rep["disturbed"] = "other load: 30% of the CPUs busy with other work"
            events.append(rep)
            seq += 1
    store.add_events("s", "dev", events)
    store.finish_job("s", "j", "done", 1, result={})
    by_dense = {c["dense"]["model_id"]: c for c in build_report(store, "s")["comparisons"]}
    for dense in ("d1", "d2"):
        c = by_dense[dense]
        assert c["excluded"] == {"other load": 1} and c["rounds"] == 6, dense
        assert c["decode_ratio"] == pytest.approx(0.9), dense  # the 60 tok/s round is out


def test_several_repetitions_per_round_count_as_their_median(tmp_path: Path) -> None:
    """``repetitions_per_round: 3``: MoE 80, 90, 100 tok/s and dense 100 in every round.

    The round's MoE rate is the median, 90, so every ratio is 0.9 (not 0.8,
    the first repetition's); one disturbed repetition spoils its round.
    """
    store = Store(tmp_path)
    job = dict(CONFIG, key="j", device="dev", model_id="moe vs dense", arch="pair",
               models=[{"id": "moe", "arch": "moe"}, {"id": "dense", "arch": "dense"}])
    store.create_sweep("s", "t", SWEEP, {"devices": []}, [job])
    store.start_attempt("s", "j", 1)
    events: list[dict[str, Any]] = []
    for rnd in range(6):
        for model, rates in (("moe", (80.0, 90.0, 100.0)), ("dense", (100.0,) * 3)):
            for tps in rates:
                rep: dict[str, Any] = {"v": 1, "seq": len(events), "kind": "repetition",
                                       "job": "j", "attempt": 1, "t": 1.0,
                                       "index": len(events), "warmup": False, "model": model,
                                       "round": rnd, "decode_tps": tps, "prefill_tps": 50.0}
                if rnd == 5 and model == "dense" and tps == 100.0 and not any(
                        e.get("disturbed") for e in events):
                    rep["disturbed"] = "other load: 20% of the CPUs busy with other work"
                events.append(rep)
    store.add_events("s", "dev", events)
    store.finish_job("s", "j", "done", 1, result={})
    c = one(store)
    assert c["rounds"] == 6 and c["excluded"] == {"other load": 1}
    assert c["decode_ratio"] == pytest.approx(0.9)


def test_roofline_against_the_vendor_peak_of_the_device_chip(tmp_path: Path) -> None:
    """An M2 Pro (200 GB/s), the study's models' bytes per token, KV at prompt + gen/2.

    Context 8 + 9/2 = 12.5 positions. MoE: 670,852,224 + 12.5 x 131,072 =
    672,490,624 B/token, bound 200e9 / that = 297.40 tok/s, 30 tok/s = 10.1%.
    Dense: 695,377,920 + 12.5 x 32,768 = 695,787,520 B, bound 287.44, 40 = 13.9%.
    """
    store = Store(tmp_path)
    results = {"moe": {"weight_bytes_per_token": 670_852_224,
                       "kv_bytes_per_position_f16": 131_072.0, "provenance": PROVENANCE},
               "dense": {"weight_bytes_per_token": 695_377_920,
                         "kv_bytes_per_position_f16": 32_768.0, "provenance": PROVENANCE}}
    fill(store, {"moe": decode([30.0] * 5), "dense": decode([40.0] * 5)}, results=results)
    store.add_events("s", "dev", [{"v": 1, "seq": 99, "kind": "hello", "job": "moe",
                                   "attempt": 1, "t": 1.0,
                                   "facts": {"chip": "Apple M2 Pro", "cpu_model": "Apple M2 Pro"}}])
    r = one(store)["roofline"]
    assert (r["chip"], r["bandwidth_gbps"], r["context"]) == ("Apple M2 Pro", 200, 12.5)
    assert r["models"]["moe"]["bytes_per_token"] == 672_490_624
    assert r["models"]["moe"]["bound_tps"] == pytest.approx(297.4019, abs=1e-4)
    assert r["models"]["moe"]["fraction"] == pytest.approx(0.100874, abs=1e-6)
    assert r["models"]["dense"]["bound_tps"] == pytest.approx(287.4441, abs=1e-4)
    assert r["models"]["dense"]["fraction"] == pytest.approx(0.139158, abs=1e-6)
    assert ("- roofline (Apple M2 Pro, 200 GB/s vendor peak; KV at 12.5 positions): moe 10.1% "
            "of 297 tok/s; dense 13.9% of 287 tok/s") in render_markdown(build_report(store, "s"))


def test_roofline_says_why_when_the_chip_is_unknown(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, {"moe": decode([30.0] * 5), "dense": decode([40.0] * 5)})
    store.add_events("s", "dev", [{"v": 1, "seq": 99, "kind": "hello", "job": "moe",
                                   "attempt": 1, "t": 1.0,
                                   "facts": {"cpu_model": "Intel(R) Xeon(R) Gold 6338"}}])
    assert one(store)["roofline"] == {
        "reason": "no vendor bandwidth known for Intel(R) Xeon(R) Gold 6338 "
                  "(orchestrator/roofline.py) and no measured bandwidth in the device facts"}


BYTES = {"moe": {"weight_bytes_per_token": 670_852_224, "kv_bytes_per_position_f16": 131_072.0,
                 "provenance": PROVENANCE, "model_size_bytes": 3_900_752_544,
                 "params_active": 1_282_017_280, "expert_bytes_per_token": 452_984_832,
                 "expert_count": 64, "expert_used_count": 8},
         "dense": {"weight_bytes_per_token": 695_377_920, "kv_bytes_per_position_f16": 32_768.0,
                   "provenance": PROVENANCE, "model_size_bytes": 773_025_952}}


def _hello(store: Store, facts: dict[str, Any]) -> None:
    store.add_events("s", "dev", [{"v": 1, "seq": 99, "kind": "hello", "job": "moe",
                                   "attempt": 1, "t": 1.0, "facts": facts}])


def test_roofline_against_the_measured_copy_bandwidth(tmp_path: Path) -> None:
    """An x86 box with no vendor entry but a measured 20 GB/s (agents/bandwidth.py).

    Same bytes as above: MoE 672,490,624 B/token -> bound 20e9 / that = 29.7401
    tok/s, 10 tok/s = 33.6%; dense 695,787,520 -> 28.7444, 12 tok/s = 41.7%.
    """
    store = Store(tmp_path)
    fill(store, {"moe": decode([10.0] * 5), "dense": decode([12.0] * 5)}, results=BYTES)
    _hello(store, {"cpu_model": "Intel(R) Xeon(R) Gold 6338",
                   "memory_bandwidth": {"traffic_bytes_per_s": 20e9, "threads": 1,
                                        "method": "ctypes.memmove copy, best of 5 per size, "
                                                  "one thread"}})
    c = one(store)
    r = c["roofline"]
    assert r["chip"] is None and r["measured"]["bandwidth_gbps"] == pytest.approx(20.0)
    assert r["measured"]["models"]["moe"]["bound_tps"] == pytest.approx(29.7401, abs=1e-4)
    assert r["measured"]["models"]["dense"]["fraction"] == pytest.approx(12 / 28.74441, abs=1e-5)
    assert roofline_line(c) == (
        "roofline (measured copy bandwidth 20.0 GB/s, one thread; no vendor figure for "
        "Intel(R) Xeon(R) Gold 6338; KV at 12.5 positions): moe 33.6% of 30 tok/s; dense "
        "41.7% of 29 tok/s")


def test_an_offloaded_run_divides_by_its_gpus_vendor_bandwidth(tmp_path: Path) -> None:
    """H200, 4800 GB/s: MoE bound 4800e9 / 672,490,624 = 7137.65 tok/s; 854 tok/s = 12.0%."""
    store = Store(tmp_path)
    jobs = [dict(CONFIG, gpu_layers=99, key=m, device="dev", model_id=m, arch=m)
            for m in ("moe", "dense")]
    store.create_sweep("s", "t", SWEEP, {"devices": []}, jobs)
    for key, tps in (("moe", 854.0), ("dense", 1023.0)):
        store.start_attempt("s", key, 1)
        store.add_events("s", "dev", [{"v": 1, "seq": i, "kind": "repetition", "job": key,
                                       "attempt": 1, "t": 1.0, "index": i, "warmup": False,
                                       "decode_tps": tps, "prefill_tps": 5e4,
                                       "peak_gpu_mem_job_bytes": 5 * 2**30,
                                       "peak_mem_bytes": 6 * 2**30, "peak_mem_scope": "gpu"}
                                      for i in range(5)])
        store.finish_job("s", key, "done", 1, result=BYTES[key])
    _hello(store, {"cpu_model": "AMD EPYC", "gpus": [{"name": "NVIDIA H200",
                                                      "memory_total_bytes": 143771 * 2**20}],
                   "memory_bandwidth": {"traffic_bytes_per_s": 20e9}})
    c = one(store)
    r = c["roofline"]
    assert r["chip"] == "NVIDIA H200" and r["measured"] is None  # host copies say nothing here
    assert r["models"]["moe"]["bound_tps"] == pytest.approx(7137.65, abs=0.01)
    assert r["models"]["moe"]["fraction"] == pytest.approx(854 / 7137.65, abs=1e-5)
    # Prefill of 8 tokens (the prompt): 2,596,549,032 B read (tests/test_roofline.py),
    # intensity 2 x 1,282,017,280 x 8 / that = 7.8998 FLOP/B, memory roof 4.8e12 x 8 /
    # that = 14,788.86 tok/s, far below the compute roof (989e12 / 2,564,034,560 =
    # 385,720 tok/s). The made-up 50,000 tok/s here would be 338% of it: a fraction
    # above 1 is printed as it comes out, never clipped.
    p = r["prefill"]
    assert p["compute_tflops"] == 989 and p["ridge"] == pytest.approx(206.0417, abs=1e-3)
    moe = p["models"]["moe"]
    assert moe["tokens"] == 8 and moe["bytes_read"] == pytest.approx(2_596_549_032, abs=1)
    assert moe["intensity"] == pytest.approx(7.89982, abs=1e-5)
    assert moe["bound_tps"] == pytest.approx(14_788.86, abs=0.01)
    assert p["models"]["dense"] == {"reason": "parameters or bytes per token not recorded"}
    assert "prefill roofline (vendor peak; compute roof 989 TFLOP/s, ridge at 206 FLOP/B" \
        in render_markdown(build_report(store, "s"))
    mem = c["moe"]["memory"]
    assert mem["peak_bytes"] == 5 * 2**30 and mem["peak_scope"] == "GPU memory used"
    assert mem["device_scope"] == "NVIDIA H200 memory"
    assert mem["fraction"] == pytest.approx(5 * 1024 / 143771)
    assert mem["warning"] is None


def test_memory_breakdown_and_the_ceiling_warning(tmp_path: Path) -> None:
    """An 8 GB board: weights 3,900,752,544 B; KV 131,072 x (8 + 9) = 2,228,224 B.

    Process peak 4.0 GiB -> runtime 4,294,967,296 - 3,900,752,544 - 2,228,224 =
    391,986,528 B. The system-wide peak, 7.5 GiB of 7.9 GiB (94.9%), is within
    10% of the device's RAM: warned. The dense side, 1.0 GiB of both, is not.
    """
    store = Store(tmp_path)
    ram = int(7.9 * 2**30)
    reps = {"moe": decode([10.0] * 5, peak_rss_bytes=4 * 2**30, peak_mem_bytes=int(7.5 * 2**30),
                          peak_mem_scope="system"),
            "dense": decode([12.0] * 5, peak_rss_bytes=2**30, peak_mem_bytes=2**30,
                            peak_mem_scope="system")}
    fill(store, reps, results=BYTES)
    _hello(store, {"jetson": {"module": "Jetson Orin Nano 8GB"}, "ram_total_bytes": ram})
    c = one(store)
    mem = c["moe"]["memory"]
    assert mem["weights_bytes"] == 3_900_752_544 and mem["kv_bytes"] == 2_228_224
    assert mem["runtime_bytes"] == 391_986_528 and mem["note"] is None
    assert mem["fraction"] == pytest.approx(7.5 / 7.9)
    assert mem["warning"] == ("peak memory 7.50 GiB is within 10% of the device's 7.90 GiB RAM")
    assert memory_line(c["moe"]) == (
        "memory of moe: weights 3.63 + KV 0.00 + runtime 0.37 GiB = peak 4.00 GiB (process "
        "RSS); 95% of the device's 7.90 GiB. WARNING: peak memory 7.50 GiB is within 10% of "
        "the device's 7.90 GiB RAM")
    dense = c["dense"]["memory"]
    assert dense["warning"] is None
    # 1 GiB peak < 773,025,952 + 32,768 x 17: never negative, and said why.
    assert dense["runtime_bytes"] == 2**30 - 773_025_952 - 557_056
    assert "WARNING" in render_markdown(build_report(store, "s"))


def test_a_peak_below_the_weights_is_explained_not_negative(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, {"moe": decode([10.0] * 5, peak_rss_bytes=2**30),
                 "dense": decode([12.0] * 5, peak_rss_bytes=2**30)}, results=BYTES)
    mem = one(store)["moe"]["memory"]
    assert mem["runtime_bytes"] == 0.0 and "not every weight page was resident" in mem["note"]
    assert mem["fraction"] is None  # no RAM in the facts: no share, no warning


def test_a_missing_side_gives_no_verdict_with_the_reason(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, {"moe": decode([50.0, 60.0]), "dense": []})
    c = one(store)
    assert c["decode_ratio"] is None and c["decode_estimate"] is None
    assert c["verdict"] == "no verdict: not measured (dense: done)"


def test_a_pair_whose_provenance_differs_is_not_compared(tmp_path: Path) -> None:
    store = Store(tmp_path)
    dense_prov = dict(PROVENANCE, n_batch=2048)
    fill(store, {"moe": decode([50.0, 60.0, 70.0]), "dense": decode([100.0] * 3)},
         results={"moe": {"provenance": PROVENANCE}, "dense": {"provenance": dense_prov}})
    report = build_report(store, "s")
    (c,) = report["comparisons"]
    assert c["not_compared"] == c["verdict"] == \
        "not compared: n_batch differs (moe: 512, dense: 2048)"
    assert c["decode_ratio"] is None and c["prefill_ratio"] is None and c["significant"] is None
    assert c["moe"]["decode"]["median"] == 60.0  # the measurements are still shown
    md = render_markdown(report)
    assert "**not compared: n_batch differs (moe: 512, dense: 2048)**" in md
    assert "MoE is" not in md
    assert json.loads(render_json(report))["comparisons"][0]["moe"]["provenance"] == PROVENANCE


def test_provenance_difference_rules() -> None:
    assert provenance_difference(PROVENANCE, dict(PROVENANCE)) is None
    assert provenance_difference(None, None) is None  # neither recorded (sleep backend)
    assert provenance_difference(PROVENANCE, None) == \
        "not compared: provenance recorded for moe only"
    # Unknown on both sides agrees; unknown on one side does not.
    both = dict(PROVENANCE, use_mmap=True, flash_attn="off")
    assert provenance_difference(PROVENANCE, both) == (
        "not compared: flash_attn differs (moe: auto, dense: off); "
        "use_mmap differs (moe: unknown, dense: yes)")
    # Reasons are not compared; a key a newer agent adds is.
    assert provenance_difference(PROVENANCE, dict(PROVENANCE, unknown={})) is None
    assert provenance_difference(PROVENANCE, dict(PROVENANCE, cpu_repack=False)) == (
        "not compared: cpu_repack differs (moe: yes, dense: no)")
    assert provenance_difference(dict(PROVENANCE, numa="off"), PROVENANCE) == \
        "not compared: numa differs (moe: off, dense: unknown)"


def test_table_shows_provenance_and_fits_100_columns(tmp_path: Path) -> None:
    store = Store(tmp_path)
    moe = [100 * 0.7 * math.exp(k * 0.05) for k in (-2, -1, 0, 1, 2)]
    fill(store, {"moe": decode(moe), "dense": decode([100.0] * 5)},
         results={m: {"provenance": PROVENANCE} for m in ("moe", "dense")})
    out = io.StringIO()
    print_report(Console(file=out, width=100, color_system=None), build_report(store, "s"))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "Decode: MoE is 30% behind (95% CI 23–37%)" in text
    assert "t-interval on log per-round ratios, n=5" in text
    assert text.count("xllamacpp 2026.10.11549") == 2
    assert text.count("1 · 512/512") == 2 and text.count("auto · f16/f16 · ? · yes") == 2
    assert "use_mmap unknown: load_mode auto" in text
    md = render_markdown(build_report(store, "s"))
    assert ("- moe: backend xllamacpp 2026.10.11549; llama.cpp build ?; threads · batch/ubatch "
            "1 · 512/512; flash attn · KV · mmap · repack auto · f16/f16 · ? · yes") in md


def test_the_schedule_line_says_how_many_repetitions_a_round_held() -> None:
    auto = {"repetitions_per_round": 11,
            "repetitions_per_round_auto": {"chosen": 11, "overhead_s": 65.2,
                                           "repetition_s": 24.1, "rule": "..."}}
    assert per_round_text(auto) == ("; 11 repetition(s) per model per round after round 1 "
                                    "(auto: 65.2 s of loads and warm-ups against 24.1 s of "
                                    "counted repetitions in round 1)")
    assert per_round_text({"repetitions_per_round": 3}) == "; 3 repetitions per model per round"
    assert per_round_text({"repetitions_per_round": 1}) == ""


def test_a_peak_shared_by_every_loaded_model_is_not_charged_to_one() -> None:
    """Backend torch keeps a job's models in one process: the peak is the job's."""
    def memory() -> dict:
        return {"weights_bytes": 2 * 2**30, "kv_bytes": 2**27, "runtime_bytes": 70 * 2**30,
                "peak_bytes": 80 * 2**30, "peak_scope": "GPU memory used", "note": None}

    shared = memory()
    mark_shared_memory(shared, {"resident": "all", "models": ["m", "a", "b", "c"],
                                "model_processes": "the agent's"})
    assert memory_line({"model_id": "a", "memory": shared}) == (
        "memory of a: weights 2.00 + KV 0.12 GiB; the peak of 80.00 GiB (GPU memory used) is "
        "the job's process, which held all 4 models at once")
    for schedule in ({"resident": "one-at-a-time", "models": ["m", "a"]},
                     {"resident": "all", "models": ["m", "a"],
                      "model_processes": "one per model"}):
        alone = memory()
        mark_shared_memory(alone, schedule)
        assert "runtime 70.00 GiB" in str(memory_line({"model_id": "a", "memory": alone}))
