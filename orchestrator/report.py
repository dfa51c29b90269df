"""The MoE-vs-dense comparison: from the store to a table, Markdown or JSON.

For each device, configuration (prompt, generated tokens, threads, GPU
layers) and comparison pair, it puts the MoE's counted repetitions beside each
dense baseline's and answers "is the MoE behind or ahead, and by how much".
Only counted repetitions of a job's successful attempt are used; warm-ups
never are. A side with no measurements is reported with the job's reason,
never filled in.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.store import Store

CONFIG_KEYS = ("prompt_tokens", "gen_tokens", "threads", "gpu_layers")


@dataclass
class ModelStats:
    """One model's counted repetitions on one device and configuration."""

    model_id: str
    arch: str
    n: int
    decode_tps_median: float | None
    decode_tps_min: float | None
    decode_tps_max: float | None
    prefill_tps_median: float | None
    ttft_s_median: float | None
    peak_rss_bytes: int | None
    model_size_bytes: int | None
    params_total: int | None
    params_active: int | None
    decode_tps: list[float]
    job_state: str
    error: str | None = None
    j_per_token_median: float | None = None
    idle_power_w: float | None = None
    energy_note: str | None = None  # why energy is absent, when it is


@dataclass
class Comparison:
    """One MoE against one dense baseline under identical conditions."""

    device: str
    config: dict[str, int]
    moe: ModelStats
    dense: ModelStats
    decode_ratio: float | None
    decode_ratio_ci95: tuple[float, float] | None
    prefill_ratio: float | None
    verdict: str
    energy_ratio: float | None = None  # MoE J/token ÷ dense J/token


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def bootstrap_ratio_ci(a: list[float], b: list[float], rounds: int = 2000,
                       seed: int = 0) -> tuple[float, float] | None:
    """95% bootstrap interval of median(a) / median(b); None with fewer than 2 each."""
    if len(a) < 2 or len(b) < 2:
        return None
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
        for _ in range(rounds))
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def verdict(ratio: float | None, moe: ModelStats, dense: ModelStats) -> str:
    if ratio is None:
        missing = [s for s in (moe, dense) if s.decode_tps_median is None]
        reasons = "; ".join(f"{s.model_id}: {s.error or s.job_state}" for s in missing)
        return f"not measured ({reasons})"
    pct = (ratio - 1.0) * 100.0
    if abs(pct) < 0.05:
        return "MoE is level with dense"
    return f"MoE is {abs(pct):.1f}% {'ahead' if pct > 0 else 'behind'}"


def build_report(store: Store, sweep_id: str, ci: bool = True) -> dict[str, Any]:
    """Collect everything the renderers need as plain, JSON-serialisable data.

    ``ci=False`` skips the bootstrap confidence intervals, the costly part,
    for callers that do not show them (the metrics exporter).
    """
    sweep_row = store.sweep(sweep_id)
    sweep = json.loads(sweep_row["sweep_json"])
    reps: dict[tuple[str, str, tuple[int, ...]], list[Any]] = defaultdict(list)
    for row in store.counted_repetitions(sweep_id):
        spec = json.loads(row["spec_json"])
        config = tuple(int(spec[k]) for k in CONFIG_KEYS)
        reps[(row["device"], row["model_id"], config)].append(row)
    jobs: dict[tuple[str, str, tuple[int, ...]], Any] = {}
    for row in store.jobs(sweep_id):
        spec = json.loads(row["spec_json"])
        jobs[(row["device"], row["model_id"], tuple(int(spec[k]) for k in CONFIG_KEYS))] = row

    def stats(device: str, model: dict[str, Any], config: tuple[int, ...]) -> ModelStats:
        rows = reps.get((device, model["id"], config), [])
        job = jobs.get((device, model["id"], config))
        result = json.loads(job["result_json"]) if job is not None and job["result_json"] else {}
        decode = [r["decode_tps"] for r in rows if r["decode_tps"] is not None]
        prefill = [r["prefill_tps"] for r in rows if r["prefill_tps"] is not None]
        ttft = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
        rss = [r["peak_rss_bytes"] for r in rows if r["peak_rss_bytes"] is not None]
        bodies = [json.loads(r["body"]) for r in rows]
        jpt = [b["j_per_token"] for b in bodies if isinstance(b.get("j_per_token"), int | float)]
        idle = [b["idle_power_w"] for b in bodies
                if isinstance(b.get("idle_power_w"), int | float)]
        notes = [b["energy_unmeasured_reason"] for b in bodies
                 if b.get("energy_unmeasured_reason")]
        return ModelStats(
            model_id=model["id"], arch=model["arch"], n=len(rows),
            decode_tps_median=_median(decode), decode_tps_min=min(decode, default=None),
            decode_tps_max=max(decode, default=None), prefill_tps_median=_median(prefill),
            ttft_s_median=_median(ttft), peak_rss_bytes=max(rss, default=None),
            model_size_bytes=result.get("model_size_bytes"),
            params_total=result.get("params_total"), params_active=result.get("params_active"),
            decode_tps=decode, job_state=job["state"] if job is not None else "not planned",
            error=job["error"] if job is not None else None,
            j_per_token_median=_median(jpt), idle_power_w=_median(idle),
            energy_note=None if jpt else (notes[0] if notes else None))

    models = {m["id"]: m for m in sweep["models"]}
    devices = sorted({key[0] for key in jobs}, key=lambda d: min(
        r["ordinal"] for r in store.jobs(sweep_id) if r["device"] == d))
    configs = sorted({key[2] for key in jobs})
    comparisons: list[Comparison] = []
    for device in devices:
        for config in configs:
            for pair in sweep["pairs"]:
                dense_ids = pair["dense"] if isinstance(pair["dense"], list) else [pair["dense"]]
                moe = stats(device, models[pair["moe"]], config)
                for dense_id in dense_ids:
                    dense = stats(device, models[dense_id], config)
                    ratio = interval = prefill_ratio = None
                    if moe.decode_tps_median and dense.decode_tps_median:
                        ratio = moe.decode_tps_median / dense.decode_tps_median
                        interval = (bootstrap_ratio_ci(moe.decode_tps, dense.decode_tps)
                                    if ci else None)
                    if moe.prefill_tps_median and dense.prefill_tps_median:
                        prefill_ratio = moe.prefill_tps_median / dense.prefill_tps_median
                    energy_ratio = None
                    if moe.j_per_token_median and dense.j_per_token_median:
                        energy_ratio = moe.j_per_token_median / dense.j_per_token_median
                    comparisons.append(Comparison(
                        device=device, config=dict(zip(CONFIG_KEYS, config, strict=True)),
                        moe=moe, dense=dense, decode_ratio=ratio, decode_ratio_ci95=interval,
                        prefill_ratio=prefill_ratio, verdict=verdict(ratio, moe, dense),
                        energy_ratio=energy_ratio))
    return {
        "sweep_id": sweep_id,
        "sweep_name": sweep_row["name"],
        "state": sweep_row["state"],
        "jobs": store.job_counts(sweep_id),
        "device_facts": store.device_facts(sweep_id),
        "comparisons": [asdict(c) for c in comparisons],
    }


def _fmt(value: float | None, spec: str = ".1f", scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if value is None else f"{value * scale:{spec}}{unit}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def _params(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e9:.2f}B" if value >= 1e8 else f"{value / 1e6:.2f}M"


def _spread(s: dict[str, Any]) -> str:
    if s["decode_tps_median"] is None:
        return "n/a"
    return (f"{s['decode_tps_median']:.1f} "
            f"[{s['decode_tps_min']:.1f}–{s['decode_tps_max']:.1f}] (n={s['n']})")


ROW_HEADERS = ("model", "decode tok/s median [min–max]", "prefill tok/s", "TTFT",
               "peak RSS", "decode J/token", "file", "params total/active")


def model_row(s: dict[str, Any]) -> tuple[str, ...]:
    return (f"{s['model_id']} ({s['arch']})", _spread(s), _fmt(s["prefill_tps_median"]),
            _fmt(s["ttft_s_median"], ".0f", 1000, " ms"), _mib(s["peak_rss_bytes"]),
            _fmt(s.get("j_per_token_median"), ".3f", 1, " J") if s.get("j_per_token_median")
            is not None else "not measured",
            _mib(s["model_size_bytes"]),
            f"{_params(s['params_total'])} / {_params(s['params_active'])}")


def comparison_title(c: dict[str, Any]) -> str:
    cfg = c["config"]
    return (f"{c['device']} · {c['moe']['model_id']} vs {c['dense']['model_id']} · "
            f"prompt {cfg['prompt_tokens']}, gen {cfg['gen_tokens']}, "
            f"threads {cfg['threads']}, ngl {cfg['gpu_layers']}")


def energy_notes(report: dict[str, Any]) -> list[str]:
    """One line per device on which energy was not measured, with the reason."""
    seen: dict[str, str] = {}
    for c in report["comparisons"]:
        for side in (c["moe"], c["dense"]):
            if side.get("energy_note") and c["device"] not in seen:
                seen[c["device"]] = side["energy_note"]
    return [f"{device}: {note}" for device, note in seen.items()]


def ratio_line(c: dict[str, Any]) -> str:
    line = c["verdict"]
    if c["decode_ratio"] is not None:
        line += f" in decode (MoE/dense = {c['decode_ratio']:.3f}"
        if c["decode_ratio_ci95"]:
            lo, hi = c["decode_ratio_ci95"]
            line += f", 95% CI {lo:.3f}–{hi:.3f}"
        line += ")"
    if c["prefill_ratio"] is not None:
        line += f"; prefill MoE/dense = {c['prefill_ratio']:.3f}"
    if c.get("energy_ratio") is not None:
        line += f"; decode energy per token MoE/dense = {c['energy_ratio']:.2f}x"
    return line


def render_markdown(report: dict[str, Any]) -> str:
    out = [f"# edgefarm report: {report['sweep_name']} ({report['sweep_id']})", ""]
    counts = ", ".join(f"{k} {v}" for k, v in report["jobs"].items() if v)
    out += [f"Sweep state: {report['state']}; jobs: {counts}.", ""]
    for c in report["comparisons"]:
        out += [f"## {comparison_title(c)}", "", f"**{ratio_line(c)}**", "",
                "| " + " | ".join(ROW_HEADERS) + " |",
                "|" + "---|" * len(ROW_HEADERS)]
        for side in (c["moe"], c["dense"]):
            out.append("| " + " | ".join(model_row(side)) + " |")
        out.append("")
    if not report["comparisons"]:
        out.append("No comparison pairs with results in this sweep.")
    for note in energy_notes(report):
        out.append(f"- {note}")
    return "\n".join(out) + "\n"


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
