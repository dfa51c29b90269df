"""The decode roofline: how fast memory bandwidth lets a model generate, and how close a run came.

At batch 1 each generated token reads the weights it uses and the KV cache
once (``agents/decode_traffic.py`` counts those bytes from the GGUF), so

    decode upper bound (tokens/s) = memory bandwidth / bytes read per token

and a measured decode rate is a fraction of it. Two bandwidths are kept apart:
the vendor's peak (``CHIPS``, each with its source) and what the agent's copy
probe achieved on the device (``agents/bandwidth.py``, one thread); the report
says which it divides by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Chip:
    """A memory system's vendor peak bandwidth, and where the figure comes from."""

    name: str
    pattern: str  # regular expression matched against the device's chip / board / GPU name
    bandwidth_gbps: float  # GB/s (10^9 bytes per second), the vendor's peak
    source: str
    #: The vendor's peak compute in TFLOP/s for prefill's roof, where one is
    #: published for the precision named in ``compute_source``; None elsewhere.
    compute_tflops: float | None = None
    compute_source: str | None = None


_APPLE = "Apple's announcement of the chip (newsroom), unified memory bandwidth"
_JETSON = "NVIDIA Jetson module data sheet / Jetson modules comparison, memory bandwidth"
_APPLE_GPU = "Apple's announcement of the chip: GPU FP32 teraflops (the Metal backend's roof)"
_NV_BF16 = "NVIDIA data sheet: dense BF16/FP16 tensor-core TFLOP/s (without sparsity)"

#: Vendor peak bandwidths. Patterns are tried in order, most specific first
#: ("M2 Pro" before "M2"), against the names the agent's probe reports.
CHIPS: tuple[Chip, ...] = (
    Chip("Apple M1 Ultra", r"\bM1 Ultra\b", 800, _APPLE),
    Chip("Apple M1 Max", r"\bM1 Max\b", 400, _APPLE, 10.4, _APPLE_GPU),
    Chip("Apple M1 Pro", r"\bM1 Pro\b", 200, _APPLE, 5.2, _APPLE_GPU),
    Chip("Apple M1", r"\bM1\b", 68.25, "LPDDR4X-4266 on a 128-bit bus (Apple M1 memory spec)",
         2.6, _APPLE_GPU),
    Chip("Apple M2 Ultra", r"\bM2 Ultra\b", 800, _APPLE),
    Chip("Apple M2 Max", r"\bM2 Max\b", 400, _APPLE, 13.6, _APPLE_GPU),
    Chip("Apple M2 Pro", r"\bM2 Pro\b", 200, _APPLE, 6.8, _APPLE_GPU),
    Chip("Apple M2", r"\bM2\b", 100, _APPLE, 3.6, _APPLE_GPU),
    Chip("Apple M3 Ultra", r"\bM3 Ultra\b", 819, _APPLE),
    Chip("Apple M3 Max", r"\bM3 Max\b", 400, _APPLE + " (up to; 300 on the 14-core CPU)"),
    Chip("Apple M3 Pro", r"\bM3 Pro\b", 150, _APPLE),
    Chip("Apple M3", r"\bM3\b", 100, _APPLE),
    Chip("Apple M4 Max", r"\bM4 Max\b", 546, _APPLE + " (up to; 410 on the 14-core CPU)"),
    Chip("Apple M4 Pro", r"\bM4 Pro\b", 273, _APPLE),
    Chip("Apple M4", r"\bM4\b", 120, _APPLE),
    Chip("Jetson AGX Thor", r"\bThor\b", 273, _JETSON),
    Chip("Jetson AGX Orin", r"\bAGX Orin\b", 204.8, _JETSON),
    Chip("Jetson Orin NX", r"\bOrin NX\b", 102.4, _JETSON),
    Chip("Jetson Orin Nano Super", r"\bOrin Nano\b.*\bSuper\b|\bMAXN_SUPER\b", 102,
         _JETSON + " (Super mode, JetPack 6.1+)"),
    Chip("Jetson Orin Nano 8GB", r"\bOrin Nano\b", 68, _JETSON + " (8 GB module)"),
    Chip("Jetson AGX Xavier", r"\bAGX Xavier\b", 136.5, _JETSON),
    Chip("Jetson Xavier NX", r"\bXavier NX\b", 59.7, _JETSON),
    Chip("NVIDIA H200", r"\bH200\b", 4800, "NVIDIA H200 data sheet (SXM, HBM3e)", 989,
         _NV_BF16),
    Chip("NVIDIA H100 SXM", r"\bH100\b.*\b(SXM|HBM3)\b", 3350, "NVIDIA H100 data sheet", 989,
         _NV_BF16),
    Chip("NVIDIA H100 PCIe", r"\bH100\b", 2000, "NVIDIA H100 data sheet (PCIe)"),
    Chip("NVIDIA A100 80GB", r"\bA100\b.*\b80GB\b", 2039, "NVIDIA A100 data sheet (SXM)", 312,
         _NV_BF16),
    Chip("NVIDIA A100 40GB", r"\bA100\b", 1555, "NVIDIA A100 data sheet (40 GB PCIe)", 312,
         _NV_BF16),
    Chip("NVIDIA L40S", r"\bL40S\b", 864, "NVIDIA L40S data sheet"),
    Chip("NVIDIA L4", r"\bL4\b", 300, "NVIDIA L4 data sheet"),
    Chip("NVIDIA RTX 4090", r"\bRTX 4090\b", 1008, "NVIDIA GeForce RTX 4090 specifications"),
    Chip("NVIDIA RTX 4080", r"\bRTX 4080\b", 716.8, "NVIDIA GeForce RTX 4080 specifications"),
    Chip("NVIDIA RTX 3090", r"\bRTX 3090\b", 936.2, "NVIDIA GeForce RTX 3090 specifications"),
)


def chip_for(*names: str | None) -> Chip | None:
    """The first ``CHIPS`` entry whose pattern matches any of ``names`` (chip, board, GPU)."""
    text = " | ".join(n for n in names if n)
    if not text:
        return None
    for chip in CHIPS:
        if re.search(chip.pattern, text):
            return chip
    return None


@dataclass(frozen=True)
class Roofline:
    """One model's decode bound on one device, and the measured fraction of it."""

    bytes_per_token: float
    bandwidth_bytes_per_s: float
    bandwidth_source: str
    bound_tps: float
    measured_tps: float | None
    fraction: float | None  # measured / bound


def device_chip(facts: dict[str, object] | None) -> Chip | None:
    """The chip of a device from its agent's facts (Mac chip, Jetson module, CPU model)."""
    if not facts:
        return None
    jetson = facts.get("jetson")
    module = jetson.get("module") if isinstance(jetson, dict) else None
    names = [facts.get("chip"), module, facts.get("power_mode"), facts.get("cpu_model")]
    return chip_for(*(n for n in names if isinstance(n, str)))


def device_gpu_chip(facts: dict[str, object] | None) -> tuple[Chip | None, str | None]:
    """The vendor entry of a device's first NVIDIA GPU (agent facts ``gpus``), and its name."""
    gpus = (facts or {}).get("gpus")
    if not isinstance(gpus, list) or not gpus or not isinstance(gpus[0], dict):
        return None, None
    name = gpus[0].get("name")
    return (chip_for(name) if isinstance(name, str) else None), (
        name if isinstance(name, str) else None)


def measured_bandwidth(facts: dict[str, object] | None) -> tuple[float, str] | None:
    """The device's measured copy traffic in bytes/s and how it was measured, if the facts hold it.

    From the agent's copy probe (agents/bandwidth.py), carried in every job's
    ``hello``: host memory, one thread.
    """
    found = (facts or {}).get("memory_bandwidth")
    if not isinstance(found, dict):
        return None
    traffic = found.get("traffic_bytes_per_s")
    if not isinstance(traffic, int | float) or isinstance(traffic, bool) or traffic <= 0:
        return None
    return float(traffic), str(found.get("method") or "copy probe")


@dataclass(frozen=True)
class PrefillRoofline:
    """One model's prefill bound: weights streamed once per micro-batch, or compute.

    ``intensity`` is FLOP per byte of weights read: ``2 x active params x
    tokens / bytes``, with ``tokens`` the micro-batch (a prompt up to
    ``n_ubatch`` tokens is one) and ``bytes`` what that micro-batch reads
    (``prefill_bytes``). Attention's own FLOPs are left out.
    """

    intensity: float
    memory_bound_tps: float
    compute_bound_tps: float | None  # None: no compute roof known for the chip
    ridge: float | None  # FLOP/byte where the two roofs meet
    bound_tps: float
    fraction: float | None


def prefill_bytes(weight_bytes_per_token: float, expert_bytes_per_token: float,
                  n_expert: int, n_expert_used: int, tokens: int) -> float:
    """Weight bytes one micro-batch of ``tokens`` reads, experts counted as touched.

    Everything but the experts is read once; of each MoE layer's experts, a
    batch touches ``n_expert x (1 - (1 - k/n_expert)^tokens)`` on average when
    each token picks ``k`` of them at random (uniform routing, as random
    weights give; real routers favour some experts, so fewer are touched). One
    token reads exactly the top-k (``expert_bytes_per_token``); a long prompt
    reads every expert.
    """
    if expert_bytes_per_token <= 0 or n_expert <= 0 or n_expert_used <= 0:
        return weight_bytes_per_token
    share = n_expert_used / n_expert
    all_experts = expert_bytes_per_token / share
    touched = 1.0 - (1.0 - share) ** tokens
    return weight_bytes_per_token - expert_bytes_per_token + all_experts * touched


def prefill_roofline(params_active: float, weight_bytes: float, tokens: int,
                     bandwidth_bytes_per_s: float, compute_flops: float | None,
                     measured_tps: float | None = None) -> PrefillRoofline:
    """Tokens/s that bandwidth (and compute, where known) allow a prefill of ``tokens``."""
    if params_active <= 0 or weight_bytes <= 0 or tokens <= 0 or bandwidth_bytes_per_s <= 0:
        raise ValueError("parameters, bytes, tokens and bandwidth must be positive")
    flops_per_token = 2.0 * params_active
    intensity = flops_per_token * tokens / weight_bytes
    memory = bandwidth_bytes_per_s * intensity / flops_per_token
    compute = compute_flops / flops_per_token if compute_flops else None
    bound = min(memory, compute) if compute is not None else memory
    return PrefillRoofline(
        intensity, memory, compute,
        compute_flops / bandwidth_bytes_per_s if compute_flops else None, bound,
        measured_tps / bound if measured_tps is not None else None)


def mean_decode_context(prompt_tokens: int, gen_tokens: int) -> float:
    """Positions in the KV cache, averaged over a run's decode steps: prompt + gen/2."""
    return prompt_tokens + gen_tokens / 2


def decode_roofline(bytes_per_token: float, bandwidth_bytes_per_s: float, source: str,
                    measured_tps: float | None = None) -> Roofline:
    """``bandwidth / bytes_per_token`` and, given a measured rate, the fraction achieved."""
    if bytes_per_token <= 0 or bandwidth_bytes_per_s <= 0:
        raise ValueError("bytes per token and bandwidth must be positive")
    bound = bandwidth_bytes_per_s / bytes_per_token
    fraction = measured_tps / bound if measured_tps is not None else None
    return Roofline(bytes_per_token, bandwidth_bytes_per_s, source, bound, measured_tps,
                    fraction)
