"""'edgefarm · MoE vs dense': how far a MoE model is behind its dense baselines, per device."""

from __future__ import annotations

from orchestrator.dashboards.model import Dashboard, Panel, Query, Row, Variable
from orchestrator.dashboards.promql import paired, sel

__all__ = ["UID", "dashboard"]

UID = "edgefarm-moe-vs-dense"

_MODEL_LABELS = ("sweep", "device", "model", "arch", "config")
_PAIR_LABELS = ("sweep", "device", "pair", "config")
_ROUTING_LABELS = ("sweep", "device", "model", "config")

_ENERGY_ABSENT = ("absent when energy was not measured: the device has no power sensor or "
                  "energy counter (for example a VM)")
_ROUTING_ABSENT = ("absent when routing time was not measured (the backend does not time the "
                   "router, or the model is dense)")
_TTFT_ABSENT = "absent when the backend does not measure it (llama-bench has no TTFT)"

_RATIO = "edgefarm_moe_dense_decode_ratio"


def _both_sides(metric: str, may_be_empty: str = "") -> tuple[Query, Query]:
    """One query for the MoE side and one for the dense side of the selected pairs."""
    return (
        Query(paired(metric, "moe"), "{{device}} · {{model}} (MoE) · {{config}}",
              _MODEL_LABELS, instant=True, may_be_empty=may_be_empty),
        Query(paired(metric, "dense"), "{{device}} · {{model}} (dense) · {{config}}",
              _MODEL_LABELS, instant=True, may_be_empty=may_be_empty),
    )


def _deficit(ratio_metric: str) -> Query:
    return Query(f"(1 - {sel(ratio_metric, 'sweep', 'device', 'pair', 'config')}) * 100",
                 "{{device}} · {{pair}} · {{config}}", _PAIR_LABELS, instant=True)


_DEFICIT_THRESHOLDS = (("green", None), ("orange", 10), ("red", 30))


def dashboard() -> Dashboard:
    """The comparison: deficits, throughput, latency, memory, energy and routing."""
    return Dashboard(
        uid=UID,
        title="edgefarm · MoE vs dense",
        description="Each MoE model against its dense baselines on the same device and "
                    "configuration: medians of counted repetitions, as the sweep produces them.",
        variables=(
            Variable("sweep", "Sweep", "edgefarm_sweep_info", "sweep", sort=2, multi=False,
                     description="The running sweep or the last finished one."),
            Variable("device", "Device", sel(_RATIO, "sweep"), "device",
                     description="Devices with at least one MoE/dense result in the sweep."),
            Variable("pair", "Pair", sel(_RATIO, "sweep", "device"), "pair",
                     description="MoE model _vs_ dense baseline."),
            Variable("config", "Config", sel(_RATIO, "sweep", "device", "pair"), "config",
                     description="Matrix point: p<prompt>-g<gen>-t<threads>-ngl<layers>."),
        ),
        layout=(
            (
                Panel("MoE behind dense, % (decode)", "bargauge",
                      (_deficit("edgefarm_moe_dense_decode_ratio"),),
                      unit="percent", decimals=1, thresholds=_DEFICIT_THRESHOLDS,
                      description="(1 − MoE decode tok/s ÷ dense decode tok/s) × 100. "
                                  "Positive: the MoE model decodes slower than its dense "
                                  "baseline; negative: it is ahead."),
                Panel("MoE behind dense, % (prefill)", "bargauge",
                      (_deficit("edgefarm_moe_dense_prefill_ratio"),),
                      unit="percent", decimals=1, thresholds=_DEFICIT_THRESHOLDS,
                      description="(1 − MoE prefill tok/s ÷ dense prefill tok/s) × 100. "
                                  "Positive: the MoE model is behind."),
            ),
            Row("Throughput"),
            (
                Panel("Decode tok/s", "bargauge", _both_sides("edgefarm_decode_tokens_per_second"),
                      unit="suffix: tok/s", decimals=1, min=0,
                      description="Median decode tokens per second of counted repetitions, "
                                  "MoE and dense side of each selected pair."),
                Panel("Prefill tok/s", "bargauge",
                      _both_sides("edgefarm_prefill_tokens_per_second"),
                      unit="suffix: tok/s", decimals=1, min=0,
                      description="Median prompt-processing tokens per second."),
            ),
            Row("Latency and memory"),
            (
                Panel("Time to first token", "bargauge",
                      _both_sides("edgefarm_ttft_seconds", _TTFT_ABSENT),
                      unit="s", min=0,
                      description="Median time from sending the request to the first token."),
                Panel("Peak memory", "bargauge", _both_sides("edgefarm_peak_memory_bytes"),
                      unit="bytes", min=0,
                      description="Peak RSS of the inference process. A MoE model's memory "
                                  "follows its total parameters, not its active ones."),
            ),
            Row("Energy and routing"),
            (
                Panel("Energy per token", "bargauge",
                      _both_sides("edgefarm_energy_per_token_joules", _ENERGY_ABSENT),
                      w=8, unit="joule", min=0,
                      description="Median decode energy per generated token (J/token)."),
                Panel("Energy ratio, MoE ÷ dense", "bargauge", (
                    Query(sel("edgefarm_moe_dense_energy_ratio", "sweep", "device", "pair",
                              "config"),
                          "{{device}} · {{pair}} · {{config}}", _PAIR_LABELS, instant=True,
                          may_be_empty=_ENERGY_ABSENT),
                ), w=8, decimals=2, min=0, thresholds=(("green", None), ("orange", 1)),
                    description="MoE J/token ÷ dense J/token. Above 1: the MoE model costs "
                                "more energy per token."),
                Panel("Routing share of MoE time", "bargauge", (
                    Query(paired("edgefarm_routing_share_ratio", "moe"),
                          "{{device}} · {{model}} · {{config}}", _ROUTING_LABELS,
                          instant=True, may_be_empty=_ROUTING_ABSENT),
                ), w=8, unit="percentunit", decimals=1, min=0, max=1,
                    description="Share of MoE-block time spent in the router."),
            ),
            Row("Over time"),
            (
                Panel("MoE ÷ dense decode ratio", "timeseries", (
                    Query(sel(_RATIO, "sweep", "device", "pair", "config"),
                          "{{device}} · {{pair}} · {{config}}", _PAIR_LABELS),
                ), w=24, h=7, decimals=2, step=True,
                    thresholds=(("orange", None), ("green", 1)),
                    description="The decode ratio as results arrive; below 1 the MoE model "
                                "is behind."),
            ),
        ),
    )
