"""The MoE-vs-dense comparison: from the store to a table, Markdown or JSON.

For each device, configuration (prompt, generated tokens, threads, GPU
layers) and comparison pair, it puts the MoE's counted repetitions beside each
dense baseline's and answers "is the MoE behind or ahead, and by how much".
Only counted repetitions of a job's successful attempt are used; warm-ups
never are. A side with no measurements is reported with the job's reason,
never filled in.

The statistics are ``orchestrator.stats``'s, and the report says which:

* each model's decode throughput: median with a 95% CI (order statistics,
  n >= 6) or, below that, the range; CV, flagged above 5%;
* the MoE/dense ratio: per-round ratios of paired repetitions, their
  geometric mean and a t-interval on the logs (5 rounds or more), else the
  range; the verdict calls the MoE behind or ahead only when the 95% CI
  excludes 1.

Pairing: repetitions that carry a ``round`` (the runner's interleaved MoE and
dense rounds) are paired by it. Until the runner records rounds, repetition i
of the MoE job is paired with repetition i of the dense job; the two jobs ran
one after the other, not interleaved, so drift between them is not cancelled,
and the report says "paired by repetition index; rounds not interleaved".
A repetition whose ``disturbed`` field names a reason spoils its whole round:
every pair of that round in the job is left out and counted by reason, the
rule the agent's stopping rule uses too (``agents/round_runner.py``), since a
disturbance long enough to flag one repetition rarely spares its neighbours.

Provenance: each job's result carries the backend, llama.cpp build and the
settings that decide speed (``agents.backends.base.PROVENANCE_KEYS``). A pair
whose sides differ in any of them is not compared: the report names the
difference instead of a verdict.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.decode_traffic import KV_ELEMENT_BYTES
from orchestrator import stats
from orchestrator.planner import variant_label
from orchestrator.roofline import (
    GB,
    decode_roofline,
    device_chip,
    device_gpu_chip,
    mean_decode_context,
    measured_bandwidth,
    prefill_bytes,
    prefill_roofline,
)
from orchestrator.store import Store

CONFIG_KEYS = ("prompt_tokens", "gen_tokens", "threads", "gpu_layers")
#: A configuration as the report groups by: the matrix point (``CONFIG_KEYS``)
#: and, for backend torch, the job's variant (``planner.variant_label``: device,
#: dtype, experts, decode), "" otherwise.
ConfigKey = tuple[int, int, int, int, str]


def config_key(spec: Mapping[str, Any]) -> ConfigKey:
    """The configuration of a stored job record (its ``spec_json``)."""
    torch = spec.get("torch")
    return (int(spec["prompt_tokens"]), int(spec["gen_tokens"]), int(spec["threads"]),
            int(spec["gpu_layers"]), variant_label(torch if isinstance(torch, dict) else None))


def config_dict(key: ConfigKey, torch_device: str | None = None) -> dict[str, Any]:
    """A configuration for the comparisons: ``CONFIG_KEYS``, plus ``variant`` and
    ``torch_device`` for a torch job."""
    out: dict[str, Any] = dict(zip(CONFIG_KEYS, key[:4], strict=True))
    if key[4]:
        out["variant"] = key[4]
        out["torch_device"] = torch_device
    return out


def on_gpu(config: Mapping[str, Any]) -> bool:
    """Whether the configuration ran its layers on a GPU: llama.cpp's offload, or torch on cuda."""
    return bool(config.get("gpu_layers")) or config.get("torch_device") == "cuda"


PAIRED_BY_INDEX = "paired by repetition index; rounds not interleaved"
PAIRED_BY_ROUND = "paired by round (MoE and dense interleaved)"

#: Provenance keys in the order they are shown and compared; keys a newer
#: agent adds are compared too, after these.
PROVENANCE_ORDER = ("backend", "backend_version", "build_number", "build_commit", "threads",
                    "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v", "use_mmap",
                    "cpu_repack", "gpu_layers")


@dataclass
class ModelStats:
    """One model's counted repetitions on one device and configuration.

    ``decode`` is ``stats.summarize_model`` of the decode rates as a dict
    (median, low/high with ``interval`` "95% CI" or "range", its method and
    coverage, mean, sd, cv, cv_warning); None without measurements.
    """

    model_id: str
    arch: str
    n: int
    decode_tps_median: float | None
    decode: dict[str, Any] | None
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
    provenance: dict[str, Any] | None = None  # the job's result provenance, as recorded
    #: What one decode step reads (agents/decode_traffic.py), from the job's result.
    weight_bytes_per_token: float | None = None
    kv_bytes_per_position_f16: float | None = None
    expert_bytes_per_token: float | None = None
    expert_count: int | None = None
    expert_used_count: int | None = None
    #: ``routing_summary`` of the job's profiling pass (MoE models only).
    routing: dict[str, Any] | None = None
    #: ``memory_summary``: weights, KV cache and runtime against the peak and the device.
    memory: dict[str, Any] | None = None
    #: Counted repetitions that ran with the GPU at its own power cap (``power_limited``:
    #: recorded by the agent's telemetry, not a disturbance).
    power_limited: int = 0


@dataclass
class Comparison:
    """One MoE against one dense baseline under identical conditions.

    ``decode_ratio``/``prefill_ratio`` are the paired estimates' points (the
    geometric mean of per-round MoE/dense ratios); ``decode_estimate`` is the
    whole ``stats.RatioEstimate`` (interval, kind, method). ``not_compared``
    says why no verdict was given when the two sides' provenance differs;
    the ratios are then None.
    """

    device: str
    config: dict[str, Any]
    moe: ModelStats
    dense: ModelStats
    pairing: str | None
    rounds: int
    decode_ratio: float | None
    decode_estimate: dict[str, Any] | None
    prefill_ratio: float | None
    verdict: str
    significant: bool | None
    not_compared: str | None = None
    excluded: dict[str, int] = field(default_factory=dict)
    unpaired: int = 0
    energy_ratio: float | None = None  # MoE J/token ÷ dense J/token (medians)
    #: How the paired job ran its rounds (agents/round_runner.py): rounds run
    #: and kept, why it stopped, whether the models stayed loaded.
    schedule: dict[str, Any] | None = None
    #: ``roofline_summary``: each side's decode bound and achieved fraction,
    #: or the reason there is none.
    roofline: dict[str, Any] | None = None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _positive(values: Sequence[Any]) -> list[float]:
    """The positive, finite numbers among ``values`` (backends leave failed ones out)."""
    return [float(v) for v in values
            if isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0]


def pair_repetitions(moe: Sequence[Mapping[str, Any]], dense: Sequence[Mapping[str, Any]]
                     ) -> tuple[list[tuple[Mapping[str, Any], Mapping[str, Any]]], str]:
    """Pairs of (MoE, dense) counted repetitions, and how they were paired.

    By ``round`` when every repetition on both sides has one (the runner's
    interleaved rounds); otherwise by ``index`` (repetition i of each job),
    which the returned method labels "rounds not interleaved". A round or
    index present on one side only has no partner and is left out.
    """
    by_round = bool(moe) and bool(dense) and all(
        r.get("round") is not None for r in (*moe, *dense))
    key = "round" if by_round else "index"
    moe_by, dense_by = _per_key(moe, key, by_round), _per_key(dense, key, by_round)
    pairs = [(m, dense_by[k]) for k, m in moe_by.items() if k in dense_by]
    return pairs, PAIRED_BY_ROUND if by_round else PAIRED_BY_INDEX


def _per_key(reps: Sequence[Mapping[str, Any]], key: str, merge: bool
             ) -> dict[Any, Mapping[str, Any]]:
    """One repetition per round (or index), in order of first appearance.

    Several counted repetitions of a model in one round
    (``repetitions_per_round``) count as one: the median of each rate, as
    the agent's stopping rule takes it, disturbed if any of them was. Without
    rounds a duplicate index keeps its first repetition.
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for rep in reps:
        groups.setdefault(rep.get(key), []).append(rep)
    out: dict[Any, Mapping[str, Any]] = {}
    for k, group in groups.items():
        if len(group) == 1 or not merge:
            out[k] = group[0]
            continue
        merged = dict(group[0])
        for metric in ("decode_tps", "prefill_tps"):
            values = _positive([r.get(metric) for r in group])
            merged[metric] = statistics.median(values) if values else None
        reasons = [str(r["disturbed"]) for r in group if r.get("disturbed")]
        merged["disturbed"] = "; ".join(reasons) or None
        out[k] = merged
    return out


def disturbance_kind(*reps: Mapping[str, Any]) -> str | None:
    """What disturbed a pair of repetitions, by kind ("other load", "hypervisor steal").

    The agent's reason carries the measured share ("other load: 33% of the
    CPUs ..."); the report counts excluded rounds per kind, with the rule
    and each repetition's numbers kept in the stored events.
    """
    kinds = sorted({part.split(":", 1)[0].strip() for rep in reps if rep.get("disturbed")
                    for part in str(rep["disturbed"]).split("; ")})
    return " and ".join(kinds) if kinds else None


def disturbed_rounds(reps: Iterable[Mapping[str, Any]]) -> dict[tuple[Any, Any], str]:
    """``(job_key, round) -> kind`` for every round in which any repetition was disturbed."""
    by_round: dict[tuple[Any, Any], list[Mapping[str, Any]]] = defaultdict(list)
    for rep in reps:
        if rep.get("round") is not None:
            by_round[(rep.get("job_key"), rep["round"])].append(rep)
    found = {key: disturbance_kind(*group) for key, group in by_round.items()}
    return {key: kind for key, kind in found.items() if kind}


def paired_rounds(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                  metric: str, spoiled: Mapping[tuple[Any, Any], str] | None = None
                  ) -> list[stats.PairedRound]:
    """``stats.PairedRound`` per pair where both sides measured ``metric``.

    A pair is disturbed when either side's ``disturbed`` names a reason, or
    when ``spoiled`` (``disturbed_rounds`` of the whole job) names its round.
    """
    spoiled = spoiled or {}
    rounds = []
    for m, d in pairs:
        a, b = _positive([m.get(metric)]), _positive([d.get(metric)])
        if a and b:
            kind = disturbance_kind(m, d) or spoiled.get((m.get("job_key"), m.get("round")))
            rounds.append(stats.PairedRound(moe_tps=a[0], dense_tps=b[0], disturbed=kind))
    return rounds


def _show(value: Any) -> str:
    """A provenance value as the refusal message prints it."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def provenance_difference(moe: Mapping[str, Any] | None,
                          dense: Mapping[str, Any] | None) -> str | None:
    """Why the two sides may not be compared, or None when their provenance agrees.

    Every provenance key counts (``PROVENANCE_ORDER`` first, then any other
    but ``unknown``); a value unknown on both sides agrees. Neither side
    recorded (an agent from before provenance, the test-only sleep backend)
    agrees too; only one side recorded does not.
    """
    if moe is None and dense is None:
        return None
    if moe is None or dense is None:
        return ("not compared: provenance recorded for "
                f"{'dense' if moe is None else 'moe'} only")
    extra = sorted((set(moe) | set(dense)) - set(PROVENANCE_ORDER) - {"unknown"})
    diffs = [f"{key} differs (moe: {_show(moe.get(key))}, dense: {_show(dense.get(key))})"
             for key in (*PROVENANCE_ORDER, *extra) if moe.get(key) != dense.get(key)]
    return "not compared: " + "; ".join(diffs) if diffs else None


def _summary(values: list[float]) -> dict[str, Any] | None:
    """``stats.summarize_model`` as a dict for JSON, with its CV warning; None without values."""
    if not values:
        return None
    s = stats.summarize_model(values)
    out = asdict(s)
    out["interval"] = out.pop("kind")
    out["cv_warning"] = s.cv_warning
    return out


def _missing_reason(moe: ModelStats, dense: ModelStats) -> str:
    missing = [s for s in (moe, dense) if s.decode_tps_median is None]
    if not missing:
        return "no repetition of the MoE has a partner in the dense job"
    return "not measured (" + "; ".join(
        f"{s.model_id}: {s.error or s.job_state}" for s in missing) + ")"


def compare(device: str, config: dict[str, Any], moe: ModelStats, dense: ModelStats,
            moe_reps: Sequence[Mapping[str, Any]],
            dense_reps: Sequence[Mapping[str, Any]],
            spoiled: Mapping[tuple[Any, Any], str] | None = None) -> Comparison:
    """One pair's comparison: provenance check, pairing, ratio estimate and verdict.

    ``spoiled``: rounds of the job disturbed in any of its models
    (``disturbed_rounds``), left out of this pair's ratio too.
    """
    energy_ratio = None
    if moe.j_per_token_median and dense.j_per_token_median:
        energy_ratio = moe.j_per_token_median / dense.j_per_token_median
    refusal = provenance_difference(moe.provenance, dense.provenance)
    if refusal is not None and moe.n and dense.n:
        return Comparison(device=device, config=config, moe=moe, dense=dense, pairing=None,
                          rounds=0, decode_ratio=None, decode_estimate=None,
                          prefill_ratio=None, verdict=refusal, significant=None,
                          not_compared=refusal)
    pairs, pairing = pair_repetitions(moe_reps, dense_reps)
    decode_rounds = paired_rounds(pairs, "decode_tps", spoiled)
    kept = stats.exclude_disturbed(decode_rounds)
    estimate = stats.estimate_ratio(kept.kept)
    reason = _missing_reason(moe, dense)
    if decode_rounds and not kept.kept:
        reason = "every paired round was disturbed"
    said = stats.verdict(estimate, no_rounds_reason=reason)
    prefill = stats.exclude_disturbed(paired_rounds(pairs, "prefill_tps", spoiled))
    prefill_estimate = stats.estimate_ratio(prefill.kept)
    return Comparison(
        device=device, config=config, moe=moe, dense=dense,
        pairing=pairing if pairs else None, rounds=len(decode_rounds),
        decode_ratio=estimate.ratio,
        decode_estimate=asdict(estimate) if estimate.kind != "none" else None,
        prefill_ratio=prefill_estimate.ratio, verdict=said.text,
        significant=said.significant, excluded=kept.excluded,
        unpaired=max(len(moe_reps), len(dense_reps)) - len(pairs),
        energy_ratio=energy_ratio)


def _count(value: Any) -> float | None:
    """A positive, finite number from a stored result, else None (``_positive`` of one)."""
    found = _positive([value])
    return found[0] if found else None


def _kv_scale(side: ModelStats) -> float:
    """KV bytes per position relative to f16, from the provenance's KV types (f16 if unknown)."""
    prov = side.provenance or {}
    return (KV_ELEMENT_BYTES.get(str(prov.get("type_k")), 2.0)
            + KV_ELEMENT_BYTES.get(str(prov.get("type_v")), 2.0)) / 4.0


def roofline_summary(facts: dict[str, Any] | None, config: Mapping[str, Any],
                     *sides: ModelStats) -> dict[str, Any]:
    """Each side's decode bound (bandwidth / bytes per token) and the fraction achieved.

    Two bandwidths, kept apart: the vendor's peak for the device's chip (or,
    with layers offloaded to a discrete NVIDIA GPU, that GPU's) and the
    agent's measured copy bandwidth (host memory, one thread; not used for a
    discrete GPU). A Mac's or Jetson's GPU shares the SoC's memory, so its
    offloaded runs are held against the SoC's figures. Bytes per token
    are the weights a step reads plus the KV cache at the run's mean context
    (prompt + gen/2), at the KV types the provenance names (f16 when unknown).
    With neither bandwidth the summary says why instead.
    """
    gpu_chip, gpu_name = device_gpu_chip(facts)
    if on_gpu(config) and gpu_name is not None:  # a discrete GPU holds the layers
        chip, measured = gpu_chip, None
        if chip is None:
            return {"reason": f"GPU offload: no vendor bandwidth known for {gpu_name} "
                              "(orchestrator/roofline.py)"}
    else:
        # The CPU, or a unified-memory SoC (Apple, Jetson) whose GPU reads the
        # same memory; with no GPU at all, gpu_layers had nothing to offload to.
        chip, measured = device_chip(facts), measured_bandwidth(facts)
        if chip is None and measured is None:
            cpu = (facts or {}).get("cpu_model") or "this device"
            return {"reason": f"no vendor bandwidth known for {cpu} (orchestrator/roofline.py) "
                              "and no measured bandwidth in the device facts"}
    context = mean_decode_context(config["prompt_tokens"], config["gen_tokens"])
    out: dict[str, Any] = {"chip": chip.name if chip else None,
                           "bandwidth_gbps": chip.bandwidth_gbps if chip else None,
                           "source": chip.source if chip else None, "context": context,
                           "models": {}, "measured": None}
    if chip is None:
        out["no_vendor"] = (facts or {}).get("cpu_model") or "this device"
    if measured is not None:
        out["measured"] = {"bandwidth_gbps": measured[0] / GB, "method": measured[1],
                           "models": {}}
    for side in sides:
        if side.weight_bytes_per_token is None or side.kv_bytes_per_position_f16 is None:
            why = {"reason": "not measured" if side.decode_tps_median is None else
                   "bytes per token not in the result (an agent from before they were)"}
            out["models"][side.model_id] = why
            if out["measured"]:
                out["measured"]["models"][side.model_id] = why
            continue
        per_token = (side.weight_bytes_per_token
                     + side.kv_bytes_per_position_f16 * _kv_scale(side) * context)
        if chip is not None:
            line = decode_roofline(per_token, chip.bandwidth_gbps * GB, chip.source,
                                   side.decode_tps_median)
            out["models"][side.model_id] = {"bytes_per_token": per_token,
                                            "bound_tps": line.bound_tps,
                                            "fraction": line.fraction}
        if measured is not None:
            line = decode_roofline(per_token, measured[0], measured[1], side.decode_tps_median)
            out["measured"]["models"][side.model_id] = {"bytes_per_token": per_token,
                                                        "bound_tps": line.bound_tps,
                                                        "fraction": line.fraction}
    out["prefill"] = _prefill_summary(chip, measured, config, sides)
    return out


def _prefill_summary(chip: Any, measured: tuple[float, str] | None, config: Mapping[str, Any],
                     sides: Sequence[ModelStats]) -> dict[str, Any]:
    """Prefill's arithmetic intensity and bound per model (``roofline.prefill_roofline``).

    Bandwidth: the vendor's where known, else the measured copy rate. The
    compute roof only where the layers ran on a GPU whose peak is known (the
    CPUs have no entry). Tokens: the prompt up to the micro-batch (n_ubatch), the
    whole prompt for backend torch (one forward).
    """
    if chip is not None:
        bandwidth, which = chip.bandwidth_gbps * GB, "vendor peak"
    elif measured is not None:
        bandwidth, which = measured[0], "measured copy bandwidth"
    else:
        return {"reason": "no bandwidth"}
    compute = (chip.compute_tflops * 1e12 if chip is not None and chip.compute_tflops
               and on_gpu(config) else None)
    out: dict[str, Any] = {"bandwidth": which, "compute_tflops": compute / 1e12 if compute
                           else None, "compute_source": chip.compute_source if compute else None,
                           "ridge": compute / bandwidth if compute else None, "models": {}}
    for side in sides:
        # llama.cpp prefills in micro-batches (512 tokens unless the provenance says);
        # backend torch runs the whole prompt in one forward.
        whole = (side.provenance or {}).get("backend") == "torch"
        ubatch = (side.provenance or {}).get("n_ubatch")
        tokens = config["prompt_tokens"] if whole else min(
            config["prompt_tokens"], ubatch if isinstance(ubatch, int) and ubatch > 0 else 512)
        if not side.params_active or side.weight_bytes_per_token is None:
            out["models"][side.model_id] = {
                "reason": "not measured" if side.prefill_tps_median is None and
                side.decode_tps_median is None else "parameters or bytes per token not recorded"}
            continue
        read = prefill_bytes(side.weight_bytes_per_token, side.expert_bytes_per_token or 0.0,
                             side.expert_count or 0, side.expert_used_count or 0, tokens)
        roof = prefill_roofline(side.params_active, read, tokens, bandwidth, compute,
                                side.prefill_tps_median)
        out["models"][side.model_id] = asdict(roof) | {"tokens": tokens, "bytes_read": read}
    return out


def _roofline_parts(models: dict[str, Any]) -> str:
    parts = []
    for model_id, m in models.items():
        if "reason" in m:
            parts.append(f"{model_id} {m['reason']}")
        elif m["fraction"] is None:
            parts.append(f"{model_id} bound {m['bound_tps']:.0f} tok/s")
        else:
            parts.append(f"{model_id} {100 * m['fraction']:.1f}% of {m['bound_tps']:.0f} tok/s")
    return "; ".join(parts)


def prefill_roofline_line(c: dict[str, Any]) -> str | None:
    """Prefill's arithmetic intensity and the achieved share of its roof, on one line."""
    p = (c.get("roofline") or {}).get("prefill")
    if not p or "reason" in p:
        return None
    parts = []
    for model_id, m in p["models"].items():
        if "reason" in m:
            parts.append(f"{model_id} {m['reason']}")
            continue
        limit = "compute" if m["compute_bound_tps"] is not None and \
            m["compute_bound_tps"] <= m["memory_bound_tps"] else "memory"
        share = f"{100 * m['fraction']:.1f}% of " if m["fraction"] is not None else ""
        parts.append(f"{model_id} {m['intensity']:.0f} FLOP/B over {m['tokens']} tokens, "
                     f"{share}{m['bound_tps']:.0f} tok/s ({limit}-bound)")
    roof = (f"compute roof {p['compute_tflops']:g} TFLOP/s, ridge at {p['ridge']:.0f} FLOP/B"
            if p.get("compute_tflops") else "no compute roof known for this chip")
    return (f"prefill roofline ({p['bandwidth']}; {roof}; weights read once per micro-batch, "
            "experts as uniform routing touches them, attention FLOPs left out): "
            + "; ".join(parts))


def per_round_text(schedule: dict[str, Any]) -> str:
    """``"; 9 repetitions per round (auto: ...)"`` when a round held more than one."""
    auto = schedule.get("repetitions_per_round_auto")
    each = schedule.get("repetitions_per_round")
    if isinstance(auto, dict):
        return (f"; {auto.get('chosen')} repetition(s) per model per round after round 1 "
                f"(auto: {auto.get('overhead_s')} s of loads and warm-ups against "
                f"{auto.get('repetition_s')} s of counted repetitions in round 1)")
    if isinstance(each, int) and each > 1:
        return f"; {each} repetitions per model per round"
    return ""


def roofline_line(c: dict[str, Any]) -> str | None:
    """The roofline of one comparison, on one line (None when there is nothing to say)."""
    r = c.get("roofline")
    if not r:
        return None
    if "reason" in r:
        return f"roofline: {r['reason']}"
    measured = r.get("measured")
    if r.get("chip"):
        line = (f"roofline ({r['chip']}, {r['bandwidth_gbps']:g} GB/s vendor peak; KV at "
                f"{r['context']:g} positions): " + _roofline_parts(r["models"]))
        if measured:
            line += (f"; against the measured copy bandwidth ({measured['bandwidth_gbps']:.1f} "
                     "GB/s, one thread): " + _roofline_parts(measured["models"]))
        return line
    return (f"roofline (measured copy bandwidth {measured['bandwidth_gbps']:.1f} GB/s, one "
            f"thread; no vendor figure for {r.get('no_vendor')}; KV at {r['context']:g} "
            "positions): " + _roofline_parts(measured["models"]))


#: A run whose peak memory is within this fraction of the device's is flagged
#: (the study's OLMoE run sat at the Jetson's 8 GB ceiling).
MEMORY_WARN_FRACTION = 0.9


def memory_summary(side: ModelStats, facts: dict[str, Any] | None, config: Mapping[str, Any],
                   peak_system_bytes: int | None, peak_gpu_bytes: int | None) -> dict[str, Any]:
    """Weights, KV cache and the rest against the measured peak and the device's memory.

    * weights: the model file's size (what llama.cpp maps or copies);
    * KV cache: bytes per position (agents/decode_traffic.py, at the run's KV
      types) x the positions the run fills (prompt + gen; llama.cpp may pad
      its allocation a little beyond that);
    * runtime: the measured peak minus both (compute buffers, the process
      itself); with mmap'd weights of which only part was touched it can come
      out negative and is then reported as 0 with a note.

    The peak is the process's RSS on a CPU run and the GPU's used memory on an
    offloaded one; against the device's RAM the system-wide peak counts when
    telemetry measured it (that is what meets the ceiling). A peak within 10%
    of the device's memory gets a warning.
    """
    out: dict[str, Any] = {"weights_bytes": side.model_size_bytes, "kv_bytes": None,
                           "runtime_bytes": None, "peak_bytes": None, "peak_scope": None,
                           "device_bytes": None, "device_scope": None, "fraction": None,
                           "warning": None, "note": None}
    positions = config["prompt_tokens"] + config["gen_tokens"]
    if side.kv_bytes_per_position_f16 is not None:
        out["kv_bytes"] = side.kv_bytes_per_position_f16 * _kv_scale(side) * positions
    gpus = (facts or {}).get("gpus")
    against: int | None
    if on_gpu(config) and peak_gpu_bytes:
        out["peak_bytes"], out["peak_scope"] = peak_gpu_bytes, "GPU memory used"
        if isinstance(gpus, list) and gpus and isinstance(gpus[0], dict):
            out["device_bytes"] = _count(gpus[0].get("memory_total_bytes"))
            out["device_scope"] = f"{gpus[0].get('name', 'GPU')} memory"
        against = peak_gpu_bytes
    else:
        out["peak_bytes"], out["peak_scope"] = side.peak_rss_bytes, "process RSS"
        out["device_bytes"] = _count((facts or {}).get("ram_total_bytes"))
        out["device_scope"] = "RAM"
        against = peak_system_bytes or side.peak_rss_bytes
    if out["peak_bytes"] and out["weights_bytes"] is not None and out["kv_bytes"] is not None:
        rest = out["peak_bytes"] - out["weights_bytes"] - out["kv_bytes"]
        out["runtime_bytes"] = max(0.0, rest)
        if rest < 0:
            out["note"] = ("the peak is below weights + KV: not every weight page was "
                           "resident (mmap'd weights, experts never touched)")
    if against and out["device_bytes"]:
        out["fraction"] = against / out["device_bytes"]
        if out["fraction"] >= MEMORY_WARN_FRACTION:
            out["warning"] = (f"peak memory {against / 2**30:.2f} GiB is within "
                              f"{(1 - MEMORY_WARN_FRACTION) * 100:.0f}% of the device's "
                              f"{out['device_bytes'] / 2**30:.2f} GiB {out['device_scope']}")
    return out


def mark_shared_memory(memory: dict[str, Any] | None, schedule: dict[str, Any] | None) -> None:
    """Say so when one process held every model of the job: its peak is the job's.

    Kept-loaded models of a backend that shares a process (torch) are all in
    the measured process at once, so "weights + KV + runtime = peak" would
    charge the other models to this one's runtime.
    """
    if not memory or not schedule:
        return
    models = schedule.get("models") or []
    if (schedule.get("resident") == "all" and len(models) > 1
            and schedule.get("model_processes") != "one per model"):
        memory["shared_by"] = len(models)
        memory["runtime_bytes"] = None
        memory["note"] = None


def memory_line(side: dict[str, Any]) -> str | None:
    """One model's memory breakdown on one line (None without a measured peak)."""
    m = side.get("memory")
    if not m or not m.get("peak_bytes"):
        return None

    def gib(v: float | None) -> str:
        return "?" if v is None else f"{v / 2**30:.2f}"

    if m.get("shared_by"):
        return (f"memory of {side['model_id']}: weights {gib(m['weights_bytes'])} + KV "
                f"{gib(m['kv_bytes'])} GiB; the peak of {gib(m['peak_bytes'])} GiB "
                f"({m['peak_scope']}) is the job's process, which held all "
                f"{m['shared_by']} models at once")

    line = (f"memory of {side['model_id']}: weights {gib(m['weights_bytes'])} + KV "
            f"{gib(m['kv_bytes'])} + runtime {gib(m['runtime_bytes'])} GiB = peak "
            f"{gib(m['peak_bytes'])} GiB ({m['peak_scope']})")
    if m.get("fraction") is not None:
        line += f"; {m['fraction'] * 100:.0f}% of the device's {gib(m['device_bytes'])} GiB"
    if m.get("note"):
        line += f" ({m['note']})"
    if m.get("warning"):
        line += f". WARNING: {m['warning']}"
    return line


def _rep(row: Any) -> dict[str, Any]:
    """A counted repetition as the pairing reads it: its body, with the stored columns."""
    body = json.loads(row["body"])
    return dict(body, index=row["idx"], decode_tps=row["decode_tps"],
                prefill_tps=row["prefill_tps"], job_key=row["job_key"])


def _same_job(moe: list[dict[str, Any]], dense: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dense repetitions measured in the MoE's own (paired) job, where there are any.

    A dense model that is the baseline of two MoEs runs in both pairs' jobs;
    its rounds pair only with the MoE rounds of the same job.
    """
    keys = {r["job_key"] for r in moe}
    mine = [r for r in dense if r["job_key"] in keys]
    return mine or dense


def _schedule(job: Any) -> dict[str, Any] | None:
    """The ``rounds`` summary of a job's result, if its agent recorded one."""
    if job is None or not job["result_json"]:
        return None
    rounds = json.loads(job["result_json"]).get("rounds")
    return rounds if isinstance(rounds, dict) else None


def _job_models(record: dict[str, Any], model_id: str) -> list[str]:
    """The ids of the models a stored job ran (a pair's, or its one ``model_id``)."""
    models = record.get("models")
    if isinstance(models, list) and models:
        return [str(m["id"]) for m in models if isinstance(m, dict)]
    return [model_id]


def routing_summary(profile: Any) -> dict[str, Any] | None:
    """The routing share of a MoE model's profiling pass (``stats.routing_share``), or why none.

    None when the job recorded no pass (a dense model, or ``routing_profile: false``).
    """
    if not isinstance(profile, dict):
        return None
    if profile.get("unmeasured"):
        return {"unmeasured": str(profile["unmeasured"])}
    samples = profile.get("samples")
    try:
        estimate = stats.routing_share(samples if isinstance(samples, list) else [])
    except (ValueError, TypeError, IndexError) as exc:
        return {"unmeasured": f"the profiling pass recorded unusable samples: {exc}"}
    if estimate is None:
        return {"unmeasured": "the profiling pass recorded no samples"}
    out = asdict(estimate)
    out["agent_method"] = profile.get("method")
    out["routing_end"] = profile.get("routing_end")
    out["callback_overhead_us"] = (profile["callback_overhead_s"] * 1e6
                                   if isinstance(profile.get("callback_overhead_s"), int | float)
                                   else None)
    out["profiled_decode_tps"] = _count(profile.get("profiled_decode_tps"))
    # Backend torch's hooks pass (agents/backends/torch_routing.py): the spread
    # over layers, the clock, and the same loop's rate without hooks.
    for key in ("layer_share_min", "layer_share_max", "reference_decode_tps"):
        out[key] = _count(profile.get(key))
    out["timer"] = profile.get("timer")
    return out


#: Below this fraction of the unprofiled decode rate, the cuts' own cost is
#: large beside the segments (typically a GPU: every cut adds a kernel-launch
#: and synchronise round trip, and CUDA graphs stop replaying).
PERTURBED_BELOW = 0.8


def routing_line(moe: dict[str, Any]) -> str | None:
    """The MoE side's routing share on one line (None when no pass was recorded)."""
    r = moe.get("routing")
    if not r:
        return None
    if r.get("unmeasured"):
        return f"routing share of {moe['model_id']}: not measured ({r['unmeasured']})"
    pct = f"{r['share'] * 100:.1f}% of MoE-block time"
    interval = f"{r['kind']} {r['low'] * 100:.1f}–{r['high'] * 100:.1f}%"
    if str(r.get("agent_method") or "").startswith("torch forward hooks"):
        return _hooks_routing_line(moe["model_id"], r, pct, interval)
    overhead = r.get("callback_overhead_us")
    line = (f"routing share of {moe['model_id']}: {pct} ({interval}, {r['n']} tokens, one "
            f"layer cut per token; median per layer: routing {r['routing_us']:.1f} µs, "
            f"experts {r['experts_us']:.1f} µs"
            + (f"; callback crossing {overhead:.1f} µs, included" if overhead else "")
            + "; llama.cpp graph-evaluation callback)")
    cut, plain = r.get("profiled_decode_tps"), moe.get("decode_tps_median")
    if cut and plain:
        line += (f"; the cut pass decoded at {cut:.3g} tok/s, {cut / plain * 100:.0f}% of the "
                 f"counted {plain:.3g}")
        if cut < PERTURBED_BELOW * plain and r["routing_us"] <= r["experts_us"]:
            line += (": each segment carries the cut's own launch and synchronise cost, so "
                     "this share is an upper bound")
    return line


def _hooks_routing_line(model_id: str, r: dict[str, Any], pct: str, interval: str) -> str:
    """The routing line of backend torch's hooks pass: every layer of every token is timed."""
    low, high = r.get("layer_share_min"), r.get("layer_share_max")
    spread = (f"; layers {low * 100:.1f}–{high * 100:.1f}%" if low is not None
              and high is not None else "")
    line = (f"routing share of {model_id}: {pct} ({interval}, {r['n']} tokens, every MoE layer "
            f"timed per token; per layer: routing {r['routing_us']:.1f} µs, experts "
            f"{r['experts_us']:.1f} µs{spread}; torch forward hooks on the router and the "
            f"experts, {r.get('timer') or 'clock unknown'})")
    hooked, plain = r.get("profiled_decode_tps"), r.get("reference_decode_tps")
    if hooked and plain:
        line += (f"; the hooked eager loop decoded at {hooked:.3g} tok/s, "
                 f"{hooked / plain * 100:.0f}% of the same loop without hooks")
    return line


def model_result(result: dict[str, Any], model_id: str) -> dict[str, Any]:
    """One model's part of a job's result (a paired job keeps one per model)."""
    per_model = result.get("models")
    if isinstance(per_model, dict) and isinstance(per_model.get(model_id), dict):
        return per_model[model_id]
    return result


def build_report(store: Store, sweep_id: str) -> dict[str, Any]:
    """Collect everything the renderers need as plain, JSON-serialisable data."""
    sweep_row = store.sweep(sweep_id)
    sweep = json.loads(sweep_row["sweep_json"])
    reps: dict[tuple[str, str, ConfigKey], list[Any]] = defaultdict(list)
    for row in store.counted_repetitions(sweep_id):
        spec = json.loads(row["spec_json"])
        reps[(row["device"], row["model_id"], config_key(spec))].append(row)
    jobs: dict[tuple[str, str, ConfigKey], Any] = {}
    for row in store.jobs(sweep_id):
        spec = json.loads(row["spec_json"])
        for model_id in _job_models(spec, row["model_id"]):
            jobs[(row["device"], model_id, config_key(spec))] = row

    facts = store.device_facts(sweep_id)
    torch_device = ((sweep.get("torch") or {}).get("device") or "cpu"
                    if sweep.get("backend") == "torch" else None)

    def model_stats(device: str, model: dict[str, Any], config: ConfigKey) -> ModelStats:
        rows = reps.get((device, model["id"], config), [])
        job = jobs.get((device, model["id"], config))
        result = json.loads(job["result_json"]) if job is not None and job["result_json"] else {}
        result = model_result(result, model["id"])
        decode = _positive([r["decode_tps"] for r in rows])
        prefill = [r["prefill_tps"] for r in rows if r["prefill_tps"] is not None]
        ttft = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
        rss = [r["peak_rss_bytes"] for r in rows if r["peak_rss_bytes"] is not None]
        bodies = [json.loads(r["body"]) for r in rows]
        jpt = [b["j_per_token"] for b in bodies if isinstance(b.get("j_per_token"), int | float)]
        idle = [b["idle_power_w"] for b in bodies
                if isinstance(b.get("idle_power_w"), int | float)]
        notes = [b["energy_unmeasured_reason"] for b in bodies
                 if b.get("energy_unmeasured_reason")]
        provenance = result.get("provenance")

        def peak(key: str, scope: str | None = None) -> int | None:
            found = [int(b[key]) for b in bodies if isinstance(b.get(key), int | float)
                     and (scope is None or b.get("peak_mem_scope") == scope)]
            return max(found, default=None)

        # NVML's per-process figure first; backend torch without NVML: its allocator's peak.
        peak_gpu = (peak("peak_gpu_mem_job_bytes") or peak("peak_mem_bytes", "gpu")
                    or peak("peak_gpu_alloc_bytes"))
        stats_ = ModelStats(
            model_id=model["id"], arch=model["arch"], n=len(rows),
            decode_tps_median=_median(decode), decode=_summary(decode),
            prefill_tps_median=_median(prefill),
            ttft_s_median=_median(ttft), peak_rss_bytes=max(rss, default=None),
            model_size_bytes=result.get("model_size_bytes"),
            params_total=result.get("params_total"), params_active=result.get("params_active"),
            decode_tps=decode, job_state=job["state"] if job is not None else "not planned",
            error=job["error"] if job is not None else None,
            j_per_token_median=_median(jpt), idle_power_w=_median(idle),
            energy_note=None if jpt else (notes[0] if notes else None),
            provenance=provenance if isinstance(provenance, dict) else None,
            weight_bytes_per_token=_count(result.get("weight_bytes_per_token")),
            kv_bytes_per_position_f16=_count(result.get("kv_bytes_per_position_f16")),
            expert_bytes_per_token=_count(result.get("expert_bytes_per_token")),
            expert_count=result.get("expert_count") if isinstance(
                result.get("expert_count"), int) else None,
            expert_used_count=result.get("expert_used_count") if isinstance(
                result.get("expert_used_count"), int) else None,
            routing=routing_summary(result.get("routing")),
            power_limited=sum(1 for b in bodies if b.get("power_limited")))
        stats_.memory = memory_summary(stats_, facts.get(device),
                                       config_dict(config, torch_device),
                                       peak("peak_mem_bytes", "system"), peak_gpu)
        mark_shared_memory(stats_.memory, _schedule(job))
        return stats_

    models = {m["id"]: m for m in sweep["models"]}
    all_jobs = store.jobs(sweep_id)
    devices = sorted({key[0] for key in jobs}, key=lambda d: min(
        r["ordinal"] for r in all_jobs if r["device"] == d))
    configs = sorted({key[2] for key in jobs})
    comparisons: list[Comparison] = []
    for device in devices:
        for config in configs:
            cfg = config_dict(config, torch_device)
            for pair in sweep["pairs"]:
                dense_ids = pair["dense"] if isinstance(pair["dense"], list) else [pair["dense"]]
                moe = model_stats(device, models[pair["moe"]], config)
                moe_reps = [_rep(r) for r in reps.get((device, pair["moe"], config), [])]
                all_dense = {d: _same_job(moe_reps, [_rep(r) for r in
                                                     reps.get((device, d, config), [])])
                             for d in dense_ids}
                spoiled = disturbed_rounds([*moe_reps, *(r for rs in all_dense.values()
                                                         for r in rs)])
                for dense_id in dense_ids:
                    dense = model_stats(device, models[dense_id], config)
                    comparison = compare(device, cfg, moe, dense, moe_reps, all_dense[dense_id],
                                         spoiled)
                    comparison.schedule = _schedule(jobs.get((device, pair["moe"], config)))
                    comparison.roofline = roofline_summary(facts.get(device), cfg, moe, dense)
                    comparisons.append(comparison)
    return {
        "sweep_id": sweep_id,
        "sweep_name": sweep_row["name"],
        "state": sweep_row["state"],
        "jobs": store.job_counts(sweep_id),
        "device_facts": facts,
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


def _num(value: float) -> str:
    """A throughput with one decimal, thousands separated only when long."""
    return f"{value:,.1f}" if value >= 10_000 else f"{value:.1f}"


def _decode_cells(s: dict[str, Any]) -> tuple[str, str, str]:
    """Median (n), its interval with kind, and CV (flagged when high) of one model."""
    d = s.get("decode")
    if not d:
        return "n/a", "n/a", "n/a"
    interval = f"{d['interval']} {_num(d['low'])}–{_num(d['high'])}"
    cv = "n/a" if d["cv"] is None else f"{d['cv'] * 100:.1f}%"
    if d["cv_warning"]:
        cv += " (high)"
    return f"{_num(d['median'])} (n={d['n']})", interval, cv


ROW_HEADERS = ("model", "decode tok/s median", "decode interval", "decode CV",
               "prefill tok/s", "TTFT", "peak RSS", "decode J/token", "file",
               "params total/active")


def model_row(s: dict[str, Any]) -> tuple[str, ...]:
    """One model's measures, in ``ROW_HEADERS`` order."""
    return (f"{s['model_id']} ({s['arch']})", *_decode_cells(s), _fmt(s["prefill_tps_median"]),
            _fmt(s["ttft_s_median"], ".0f", 1000, " ms"), _mib(s["peak_rss_bytes"]),
            _fmt(s.get("j_per_token_median"), ".3f", 1, " J") if s.get("j_per_token_median")
            is not None else "not measured",
            _mib(s["model_size_bytes"]),
            f"{_params(s['params_total'])} / {_params(s['params_active'])}")


PROVENANCE_HEADERS = ("backend", "llama.cpp build", "threads · batch/ubatch",
                      "flash attn · KV · mmap · repack")


def provenance_row(s: dict[str, Any]) -> tuple[str, ...]:
    """One model's provenance, compact, in ``PROVENANCE_HEADERS`` order ("?" = unknown).

    llama-bench's version is its build, so the build cell is not repeated there.
    """
    p = s.get("provenance")
    if not p:
        return ("not recorded",) * len(PROVENANCE_HEADERS)

    def v(key: str) -> str:
        value = p.get(key)
        if value is None:
            return "?"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    backend = f"{v('backend')} {v('backend_version')}"
    if p.get("backend") == "torch":  # its settings beside the version; llama.cpp's are "?"
        backend += (f" · transformers {v('transformers_version')} · {v('torch_device')} "
                    f"{v('torch_dtype')} · decode {v('torch_decode')}")
    build = "?" if p.get("build_number") is None and p.get("build_commit") is None \
        else f"{v('build_number')} ({v('build_commit')})"
    return (backend, build, f"{v('threads')} · {v('n_batch')}/{v('n_ubatch')}",
            f"{v('flash_attn')} · {v('type_k')}/{v('type_v')} · {v('use_mmap')}"
            f" · {v('cpu_repack')}")


def provenance_line(s: dict[str, Any]) -> str:
    """One model's provenance on one line, for Markdown.

    A torch result names its own settings and leaves out llama.cpp's, which
    it does not have (``provenance_notes`` says so once).
    """
    row = provenance_row(s)
    p = s.get("provenance") or {}
    if p.get("backend") == "torch":
        return (f"{s['model_id']}: backend {row[0]}; threads {p.get('threads', '?')}; "
                f"KV {p.get('type_k') or '?'}/{p.get('type_v') or '?'}")
    return f"{s['model_id']}: " + "; ".join(
        f"{h} {c}" for h, c in zip(PROVENANCE_HEADERS, row, strict=True))


def comparison_title(c: dict[str, Any]) -> str:
    cfg = c["config"]
    return (f"{c['device']} · {c['moe']['model_id']} vs {c['dense']['model_id']} · "
            f"prompt {cfg['prompt_tokens']}, gen {cfg['gen_tokens']}, "
            f"threads {cfg['threads']}, ngl {cfg['gpu_layers']}"
            + (f" · torch {cfg['variant']}" if cfg.get("variant") else ""))


def energy_notes(report: dict[str, Any]) -> list[str]:
    """One line per device on which energy was not measured, with the reason."""
    seen: dict[str, str] = {}
    for c in report["comparisons"]:
        for side in (c["moe"], c["dense"]):
            if side.get("energy_note") and c["device"] not in seen:
                seen[c["device"]] = side["energy_note"]
    return [f"{device}: {note}" for device, note in seen.items()]


def provenance_notes(report: dict[str, Any]) -> list[str]:
    """Why each "?" in the provenance rows is unknown, once per distinct reason."""
    seen: dict[str, list[str]] = {}
    for c in report["comparisons"]:
        for side in (c["moe"], c["dense"]):
            for key, why in ((side.get("provenance") or {}).get("unknown") or {}).items():
                keys = seen.setdefault(why, [])
                if key not in keys:
                    keys.append(key)
    return [f"{', '.join(keys)} unknown: {why}" for why, keys in seen.items()]


def ratio_lines(c: dict[str, Any]) -> list[str]:
    """The verdict, then how it was reached, then the other ratios and any warnings."""
    if c.get("not_compared"):
        lines = [c["not_compared"]]
    else:
        lines = [f"Decode: {c['verdict']}"]
    est = c.get("decode_estimate")
    if est is not None:
        how = f"MoE/dense {est['ratio']:.3f}, {est['method']}"
        if c.get("pairing"):
            how += f"; {c['pairing']}"
        lines.append(how)
    extra = []
    if c.get("prefill_ratio") is not None:
        extra.append(f"prefill MoE/dense {c['prefill_ratio']:.3f}")
    if c.get("energy_ratio") is not None:
        extra.append(f"decode energy per token MoE/dense {c['energy_ratio']:.2f}x")
    if extra:
        lines.append("; ".join(extra))
    for reason, count in (c.get("excluded") or {}).items():
        lines.append(f"{count} round{'s' if count != 1 else ''} left out: {reason}")
    schedule = c.get("schedule")
    if schedule:
        apart = schedule.get("model_processes") == "one per model"
        lines.append(f"rounds: {schedule.get('rounds_run')} run, {schedule.get('kept_rounds')} "
                     f"kept; {schedule.get('stop_reason')}; models loaded: "
                     f"{schedule.get('resident')}"
                     + (", each in its own process" if apart else "")
                     + per_round_text(schedule)
                     + (f"; rounds 1-{schedule['carried_rounds']} carried from attempt "
                        f"{schedule.get('carried_from_attempt')}"
                        if schedule.get("carried_rounds") else ""))
    roofline = roofline_line(c)
    if roofline:
        lines.append(roofline)
    prefill_roof = prefill_roofline_line(c)
    if prefill_roof:
        lines.append(prefill_roof)
    routing = routing_line(c["moe"])
    if routing:
        lines.append(routing)
    for side in (c["moe"], c["dense"]):
        memory = memory_line(side)
        if memory:
            lines.append(memory)
    if c.get("unpaired"):
        lines.append(f"{c['unpaired']} repetition(s) without a partner on the other side")
    for side in (c["moe"], c["dense"]):
        warning = (side.get("decode") or {}).get("cv_warning")
        if warning:
            lines.append(f"{side['model_id']} decode: {warning}")
        if side.get("power_limited"):
            lines.append(f"{side['model_id']}: the GPU at its own power cap in "
                         f"{side['power_limited']} of {side['n']} counted repetitions "
                         "(recorded, not a disturbance)")
    return lines


def ratio_line(c: dict[str, Any]) -> str:
    """``ratio_lines`` joined, for a table caption."""
    return "\n".join(ratio_lines(c))


def render_markdown(report: dict[str, Any]) -> str:
    out = [f"# edgefarm report: {report['sweep_name']} ({report['sweep_id']})", ""]
    counts = ", ".join(f"{k} {v}" for k, v in report["jobs"].items() if v)
    out += [f"Sweep state: {report['state']}; jobs: {counts}.", ""]
    for c in report["comparisons"]:
        first, *rest = ratio_lines(c)
        out += [f"## {comparison_title(c)}", "", f"**{first}**", ""]
        if rest:
            out += [f"- {line}" for line in rest] + [""]
        out += ["| " + " | ".join(ROW_HEADERS) + " |", "|" + "---|" * len(ROW_HEADERS)]
        for side in (c["moe"], c["dense"]):
            out.append("| " + " | ".join(model_row(side)) + " |")
        out += ["", "Provenance:", ""]
        out += [f"- {provenance_line(side)}" for side in (c["moe"], c["dense"])]
        out.append("")
    if not report["comparisons"]:
        out.append("No comparison pairs with results in this sweep.")
    for note in energy_notes(report) + provenance_notes(report):
        out.append(f"- {note}")
    return "\n".join(out) + "\n"


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
