"""The report's energy columns, from a store filled with recorded-shape events."""

from __future__ import annotations

from pathlib import Path

from orchestrator.report import build_report, render_markdown
from orchestrator.store import Store

SWEEP = {"models": [{"id": "moe", "arch": "moe"}, {"id": "dense", "arch": "dense"}],
         "pairs": [{"moe": "moe", "dense": ["dense"]}]}
CONFIG = {"prompt_tokens": 8, "gen_tokens": 9, "threads": 1, "gpu_layers": 0}


def fill(store: Store, energy: dict[str, float] | None) -> None:
    jobs = [dict(CONFIG, key=m, device="dev", model_id=m, arch=m) for m in ("moe", "dense")]
    store.create_sweep("s", "t", SWEEP, {"devices": []}, jobs)
    for job in jobs:
        key = job["key"]
        store.start_attempt("s", key, 1)
        events = []
        for i in range(3):
            rep = {"v": 1, "seq": i, "kind": "repetition", "job": key, "attempt": 1, "t": 1.0,
                   "index": i, "warmup": False, "decode_tps": 10.0 + i, "prefill_tps": 50.0}
            if energy is not None:
                rep["j_per_token"] = energy[key] + i * 0.01
                rep["idle_power_w"] = 3.0
            else:
                rep["energy_unmeasured_reason"] = "energy not measured on this device: test"
            events.append(rep)
        store.add_events("s", "dev", events)
        store.finish_job("s", key, "done", 1, result={})


def test_energy_per_token_and_ratio(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, {"moe": 0.50, "dense": 0.25})
    (c,) = build_report(store, "s")["comparisons"]
    assert c["moe"]["j_per_token_median"] == 0.51 and c["dense"]["j_per_token_median"] == 0.26
    assert abs(c["energy_ratio"] - 0.51 / 0.26) < 1e-12
    assert c["moe"]["energy_note"] is None
    assert "decode energy per token MoE/dense = 1.96x" in render_markdown(
        build_report(store, "s"))


def test_unmeasured_energy_says_why(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, None)
    report = build_report(store, "s")
    (c,) = report["comparisons"]
    assert c["energy_ratio"] is None and c["moe"]["j_per_token_median"] is None
    assert c["moe"]["energy_note"] == "energy not measured on this device: test"
    md = render_markdown(report)
    assert "not measured" in md and "- dev: energy not measured on this device: test" in md
