"""Routing share of MoE-block time: measured on real llama.cpp, summarised by hand-checked stats.

The profiler (agents/routing_share.py) runs the llama.cpp that xllamacpp links
in, through its C API and the graph-evaluation callback, on the tiny synthetic
models the project writes itself: no stand-ins.
"""

from __future__ import annotations

import ctypes.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_fixtures import (  # noqa: F401  (tiny_models_fixture: the fixture tiny_models)
    load_events,
    tiny_models_fixture,
)

from agents import routing_share
from agents.routing_share import (
    ContextParams,
    ModelParams,
    RoutingError,
    _check_layout,
    library_for,
    profile_routing,
)
from agents.runner import run_job
from orchestrator import stats
from orchestrator.report import routing_line, routing_summary

REPO = Path(__file__).resolve().parents[1]
GEN = 12


@pytest.fixture(scope="module")
def profile(tiny_models: dict[str, Path]) -> dict[str, Any]:
    """One profiling pass of tiny-moe as the runner starts it: ``agent routing``, own process."""
    proc = subprocess.run(
        [sys.executable, "-m", "agents", "routing", str(tiny_models["tiny-moe"]), "--prompt",
         "16", "--gen", str(GEN), "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_token_cuts_one_moe_layer_in_rotation(profile: dict[str, Any]) -> None:
    layers = profile["moe_layers"]
    assert layers >= 2
    assert [s[0] for s in profile["samples"]] == [i % layers for i in range(GEN)]
    assert profile["routing_end"] == ["ffn_moe_weights"]  # OLMoE-style gating: no weight norm
    for _layer, routing, experts in profile["samples"]:
        assert 0 < routing < 0.05 and 0 < experts < 0.05


def test_the_share_is_the_routing_segments_part_of_the_block(profile: dict[str, Any]) -> None:
    samples = profile["samples"]
    assert profile["share"] == pytest.approx(sum(r / (r + e) for _, r, e in samples) / GEN)
    est = stats.routing_share(samples)
    assert est is not None and profile["share"] == pytest.approx(est.share)
    assert 0 < profile["share"] < 1
    assert profile["method"].startswith("llama.cpp graph-evaluation callback")
    assert profile["library"].endswith(".so")  # xllamacpp's extension module
    # A C -> Python -> C crossing costs microseconds, not milliseconds.
    assert 0 < profile["callback_overhead_s"] < 1e-3


def test_a_dense_model_has_no_routing_to_measure(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(RoutingError, match="no experts"):
        profile_routing(str(tiny_models["tiny-dense"]), 8, 4, 1)


def test_a_library_that_is_not_llama_cpp_is_refused(tiny_models: dict[str, Path]) -> None:
    libc = ctypes.util.find_library("c")
    assert libc
    with pytest.raises(RoutingError, match="does not export llama_backend_init"):
        profile_routing(str(tiny_models["tiny-moe"]), 8, 4, 1, library=libc)


def test_a_struct_layout_from_another_revision_is_refused() -> None:
    """The defaults check: zeroed structs stand for fields read from the wrong offsets."""
    model = ModelParams(n_gpu_layers=-1, use_extra_bufts=True)
    with pytest.raises(RoutingError, match="llama_context_params .*default n_ctx read as 0"):
        _check_layout(model, ContextParams())
    context = ContextParams(n_ctx=512, n_batch=2048, n_ubatch=512, n_seq_max=1,
                            n_outputs_max_per_seq=1, yarn_ext_factor=-1.0,
                            yarn_attn_factor=-1.0, defrag_thold=-1.0, type_k=1, type_v=1,
                            offload_kqv=True, no_perf=True, op_offload=True, swa_full=True)
    _check_layout(model, context)  # the header's defaults pass
    context.swa_full = False  # a bool one byte off
    with pytest.raises(RoutingError, match="default swa_full read as False"):
        _check_layout(model, context)


def test_the_library_each_backend_runs(tmp_path: Path) -> None:
    path, why = library_for("xllamacpp", None)
    assert path is not None and path.endswith(".so"), why
    bench = tmp_path / "build" / "bin" / "llama-bench"
    bench.parent.mkdir(parents=True)
    bench.write_text("")
    path, why = library_for("llama-bench", str(bench))
    assert path is None and "BUILD_SHARED_LIBS=ON" in why
    (bench.parent / "libllama.so").write_text("")
    assert library_for("llama-bench", str(bench)) == (str(bench.parent / "libllama.so"), "")
    assert library_for("sleep", None)[0] is None


def _pair_job(job_dir: Path, tiny_models: dict[str, Path], **params: Any) -> Path:
    job_dir.mkdir(parents=True)
    models = [{"id": "tiny-moe", "arch": "moe", "source": {"path": str(tiny_models["tiny-moe"])}},
              {"id": "tiny-dense", "arch": "dense",
               "source": {"path": str(tiny_models["tiny-dense"])}}]
    p = {"prompt_tokens": 8, "gen_tokens": 8, "threads": 2, "gpu_layers": 0, "repetitions": 2,
         "warmup": 0, "seed": 3}
    p.update(params)
    spec = {"schema": 1, "job_key": "pair", "attempt": 1, "backend": "xllamacpp",
            "models": models, "model": models[0], "params": p, "device": {}, "telemetry": False}
    (job_dir / "job.json").write_text(json.dumps(spec))
    return job_dir


def test_a_job_profiles_its_moe_after_every_counted_repetition(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    job = _pair_job(tmp_path / "job", tiny_models)
    assert run_job(str(job)) == 0
    events = load_events(job)
    kinds = [e["kind"] for e in events]
    routing = [e for e in events if e["kind"] == "routing"]
    assert [e["model"] for e in routing] == ["tiny-moe"]  # the dense model has no router
    last_rep = max(i for i, k in enumerate(kinds) if k == "repetition")
    assert kinds.index("routing") > last_rep, "the pass runs after the counted repetitions"
    assert len(routing[0]["samples"]) == 8
    models = events[-1]["info"]["models"]
    assert models["tiny-moe"]["routing"]["share"] == routing[0]["share"]
    assert "routing" not in models["tiny-dense"]


def test_routing_profile_false_runs_no_pass(tmp_path: Path,
                                            tiny_models: dict[str, Path]) -> None:
    job = _pair_job(tmp_path / "job", tiny_models, routing_profile=False)
    assert run_job(str(job)) == 0
    events = load_events(job)
    assert not [e for e in events if e["kind"] == "routing"]
    assert not [e for e in events if e.get("phase") == "profile"]


# -- the statistic, by hand ---------------------------------------------------------------

@pytest.mark.parametrize("samples, share, low, high, kind", [
    # shares 1/4, 1/2, 0, 1/2, 1/5: mean 0.29; sd = sqrt(0.182 / 4) = 0.213307;
    # t(0.975, 4) = 2.776445; h = 2.776445 * 0.213307 / sqrt(5) = 0.264856.
    ([[0, 1, 3], [1, 1, 1], [2, 0, 2], [3, 2, 2], [0, 1, 4]], 0.29, 0.025144, 0.554856,
     "95% CI"),
    # four tokens: below 5, the min-max of the shares
    ([[0, 1, 3], [1, 1, 1], [2, 0, 2], [3, 2, 2]], 0.3125, 0.0, 0.5, "range"),
    # all equal: zero spread, the interval is the point
    ([[i % 2, 1, 9] for i in range(6)], 0.1, 0.1, 0.1, "95% CI"),
])
def test_routing_share_by_hand(samples: list[list[float]], share: float, low: float,
                               high: float, kind: str) -> None:
    est = stats.routing_share(samples)
    assert est is not None
    assert (est.share, est.low, est.high) == pytest.approx((share, low, high), abs=1e-6)
    assert est.kind == kind and est.n == len(samples)


def test_routing_share_degenerate_inputs() -> None:
    assert stats.routing_share([]) is None
    with pytest.raises(ValueError, match="#1"):
        stats.routing_share([[0, 1, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="#0"):
        stats.routing_share([[0, -1, 1]])
    with pytest.raises(ValueError):
        stats.routing_share([[0, math.nan, 1]])


def test_the_report_line_names_the_share_its_interval_and_method() -> None:
    profile = {"samples": [[0, 1e-5, 3e-5], [1, 1e-5, 1e-5], [2, 0.0, 2e-5], [3, 2e-5, 2e-5],
                           [0, 1e-5, 4e-5]],
               "method": routing_share.METHOD, "routing_end": ["ffn_moe_weights"],
               "callback_overhead_s": 8e-7}
    line = routing_line({"model_id": "olmoe", "routing": routing_summary(profile)})
    assert line == ("routing share of olmoe: 29.0% of MoE-block time (95% CI 2.5–55.5%, 5 "
                    "tokens, one layer cut per token; median per layer: routing 10.0 µs, "
                    "experts 20.0 µs; callback crossing 0.8 µs, included; llama.cpp "
                    "graph-evaluation callback)")
    unmeasured = routing_summary({"unmeasured": "backend sleep runs no llama.cpp"})
    assert routing_line({"model_id": "m", "routing": unmeasured}) == (
        "routing share of m: not measured (backend sleep runs no llama.cpp)")
    assert routing_summary(None) is None


def test_a_pass_much_slower_than_the_counted_rate_is_called_an_upper_bound() -> None:
    """Numbers of the H200 CUDA run (docs/results/routing-share.md): 236 tok/s cut, 810 counted."""
    profile = {"samples": [[i % 16, 28e-6, 46e-6] for i in range(8)],
               "profiled_decode_tps": 236.0}
    summary = routing_summary(profile)
    line = routing_line({"model_id": "olmoe", "routing": summary, "decode_tps_median": 810.0})
    assert line is not None
    assert line.endswith("; the cut pass decoded at 236 tok/s, 29% of the counted 810: each "
                         "segment carries the cut's own launch and synchronise cost, so this "
                         "share is an upper bound")
    assert "37.8% of MoE-block time" in line  # 28 / (28 + 46)
    close = routing_line({"model_id": "olmoe", "routing": summary, "decode_tps_median": 250.0})
    assert close is not None and close.endswith("94% of the counted 250")
