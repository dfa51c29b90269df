"""Backend torch on the CPU: real torch, real transformers, the tiny presets.

Everything runs for real: a sweep through the CLI (Ray, the agent, the
store, the report), a checkpoint written with ``save_pretrained`` and loaded
back by the agent, the routing hooks timing modules of known duration. Only
the cpu path can run here; the cuda path (CUDA events, CUDA graphs, the
allocator's peak) is exercised by ``bench/torch_decode.py`` on a GPU.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from agent_fixtures import load_events, write_job
from helpers import edgefarm, write_inventory, write_sweep
from transformers.integrations.moe import batched_mm_experts_forward, grouped_mm_experts_forward

from agents.backends import get_backend
from agents.backends.base import JobParams
from agents.backends.torch_backend import COMPILED_ON_HOST, RAN_EAGER, RAN_STATIC, moe_blocks
from agents.backends.torch_decode import StaticDecoder
from agents.backends.torch_experts import gemv_experts_forward
from agents.backends.torch_models import EXPERTS_IMPLEMENTATIONS, build_model
from agents.backends.torch_routing import METHOD, HookTimer, summarize
from agents.runner import run_job
from orchestrator.config.sweep import EXPERTS_IMPLEMENTATIONS as SWEEP_EXPERTS
from orchestrator.report import build_report, render_markdown
from orchestrator.store import Store

TINY = [{"id": "tiny-moe", "arch": "moe", "source": {"preset": "tiny-moe"}},
        {"id": "tiny-dense", "arch": "dense", "source": {"preset": "tiny-dense"}}]


def test_the_sweep_and_the_agent_know_the_same_experts_implementations() -> None:
    assert SWEEP_EXPERTS == EXPERTS_IMPLEMENTATIONS


# -- (a) a sweep through the CLI --------------------------------------------------------------


def test_torch_sweep_on_cpu_runs_every_variant_and_reports(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, ["local"])
    sweep = write_sweep(tmp_path, devices=["local"], models=TINY, name="torch-cpu",
                        backend="torch", telemetry={"idle_s": 0},
                        torch={"device": "cpu", "experts": ["eager", "batched_mm"],
                               "decode": ["eager", "compiled"]})
    results = tmp_path / "results"
    run = edgefarm("sweep", "run", str(sweep), "-i", str(inv), "-r", str(results),
                   "--metrics-addr", "off", tmp=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    sweep_id = run.stdout.splitlines()[0].split()[1]
    assert "done 4" in run.stdout  # the pair x 2 experts implementations x 2 decode loops

    store = Store(results)
    jobs = store.jobs(sweep_id)
    assert len(jobs) == 4 and all(j["state"] == "done" for j in jobs)
    variants = set()
    for job in jobs:
        spec = json.loads(job["spec_json"])
        asked = spec["torch"]
        assert spec["agent_spec"]["params"]["torch"] == asked
        assert all("quant" not in m["source"] for m in spec["models"])  # no GGUF setting
        variants.add((asked["experts"], asked["decode"]))
        result = json.loads(job["result_json"])["models"]
        moe, dense = result["tiny-moe"], result["tiny-dense"]
        for side in (moe, dense):
            facts = side["torch"]
            assert (facts["device"], facts["dtype"], facts["decode_asked"]) == \
                ("cpu", "float32", asked["decode"])
            # What ran: on the cpu, compiled is the static-cache step, said why.
            if asked["decode"] == "eager":
                assert (facts["decode"], facts["decode_note"]) == (RAN_EAGER, None)
            else:
                assert (facts["decode"], facts["decode_note"]) == (RAN_STATIC, COMPILED_ON_HOST)
            assert side["provenance"]["backend"] == "torch" and side["synthetic"] is True
            assert side["params_total"] >= side["params_active"] > 0
            assert side["weight_bytes_per_token"] > 0
        assert (moe["torch"]["experts_asked"], moe["torch"]["experts"]) == \
            (asked["experts"], asked["experts"])
        assert moe["torch"]["experts_fallback"] is None
        assert dense["torch"]["experts"] is None  # a dense model has none
        assert moe["params_total"] > moe["params_active"]
        # The hooks pass: every MoE layer of every decoded token.
        routing = moe["routing"]
        assert routing["method"] == METHOD and routing["method"].startswith("torch forward hooks")
        assert 0 < routing["share"] < 1 and routing["moe_layers"] == 4
        assert len(routing["samples"]) == 8 and len(routing["per_layer"]) == 4
        assert routing["experts"] == asked["experts"]
        assert "routing" not in dense
    assert variants == {(e, d) for e in ("eager", "batched_mm") for d in ("eager", "compiled")}

    counted = [r for r in store.counted_repetitions(sweep_id)]
    assert len(counted) == 4 * 2 * 2  # jobs x rounds x models
    for rep in counted:
        body = json.loads(rep["body"])
        assert rep["decode_tps"] > 0 and rep["prefill_tps"] > 0
        assert body["decode_window_tokens"] == 7 and len(body["decode_window_mono"]) == 2

    report = build_report(store, sweep_id)
    assert report["device_facts"]["local"]["backends"]["torch"]["present"] is True
    assert len(report["comparisons"]) == 4
    titles = set()
    for comp in report["comparisons"]:
        assert comp["not_compared"] is None  # MoE with experts vs dense: same provenance
        assert comp["config"]["variant"].startswith("cpu float32 · experts ")
        titles.add(comp["config"]["variant"])
        for side in (comp["moe"], comp["dense"]):
            assert side["n"] == 2 and side["decode_tps_median"] > 0
        assert 0 < comp["moe"]["routing"]["share"] < 1
    assert len(titles) == 4
    md = render_markdown(report)
    assert "torch forward hooks" in md and "· torch cpu float32 · experts batched_mm" in md
    # Provenance names torch's settings and none of llama.cpp's (said once, as unknown).
    assert "- tiny-moe: backend torch " in md and "; threads 1; KV f32/f32" in md
    assert "llama.cpp build" not in md
    assert "unknown: not a llama.cpp setting (torch backend)" in md
    # The CSV export tells the MoE's experts implementations apart.
    from orchestrator.report_export import repetition_rows

    columns, rows = repetition_rows(store, sweep_id)
    assert "torch_experts" in columns
    assert {r.get("torch_experts") for r in rows if r["arch"] == "moe"} == {"eager", "batched_mm"}
    assert {r.get("torch_experts") for r in rows if r["arch"] == "dense"} == {None}


# -- (b) the hooks against modules of known duration ------------------------------------------


class Sleeper(torch.nn.Module):
    """A module whose forward takes a known time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


class Block(torch.nn.Module):
    """A MoE block's shape: a router (``gate``) and an ``experts`` module."""

    def __init__(self, routing_s: float, experts_s: float) -> None:
        super().__init__()
        self.gate = Sleeper(routing_s)
        self.experts = Sleeper(experts_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(self.gate(x))


class Toy(torch.nn.Module):
    def __init__(self, times: list[tuple[float, float]]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Block(r, e) for r, e in times)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_hook_timer_measures_router_and_experts_of_known_duration() -> None:
    # Layer 0: routing 20 ms, experts 60 ms (share 0.25); layer 1: 40 and 40 ms (0.5).
    # Per token: mean routing 30 ms, mean experts 50 ms, so 30 / 80 = 0.375.
    toy = Toy([(0.02, 0.06), (0.04, 0.04)])
    blocks = moe_blocks(toy)
    assert [(layer, name) for layer, name, _, _ in blocks] == [(0, "layers.0"), (1, "layers.1")]
    timer = HookTimer(blocks)
    timer.attach()
    toy(torch.zeros(1))  # no token set (a prefill): not recorded
    for token in range(3):
        timer.token = token
        toy(torch.zeros(1))
    timer.detach()
    toy(torch.zeros(1))  # detached: nothing more is recorded
    assert len(timer.spans) == 3 * 2 * 2
    out = summarize(timer.seconds())
    assert len(out["samples"]) == 3 and all(s[0] == -1 for s in out["samples"])
    assert out["share"] == pytest.approx(0.375, abs=0.03)
    layers = {x["layer"]: x for x in out["per_layer"]}
    assert layers[0]["share"] == pytest.approx(0.25, abs=0.03)
    assert layers[1]["share"] == pytest.approx(0.5, abs=0.03)
    assert layers[0]["routing_us"] == pytest.approx(20_000, rel=0.25)
    assert layers[0]["experts_us"] == pytest.approx(60_000, rel=0.25)
    assert (out["layer_share_min"], out["layer_share_max"]) == \
        (layers[0]["share"], layers[1]["share"])


# -- (c) sweep errors: exit 2, file:line and the field ----------------------------------------


SWEEP_HEAD = """\
name: bad
models:
  - id: m
    arch: moe
"""


@pytest.mark.parametrize(("body", "where", "field", "words"), [
    ("    source: {preset: tiny-moe}\nbackend: llama-bench\ntorch: {device: cpu}\n"
     "devices: {names: [local]}\n", 7, "torch", "needs backend: torch"),
    ("    source: {preset: tiny-moe}\nbackend: torch\ntorch: {experts: [eager, fastest]}\n"
     "devices: {names: [local]}\n", 7, "torch.experts[1]", "unknown value 'fastest'"),
    ("    source: {preset: tiny-moe, quant: Q8_0}\nbackend: torch\n"
     "devices: {names: [local]}\n", 5, "models[0].source.quant", "dtype instead"),
    ("    source: {hf_dir: models/olmoe}\nbackend: torch\n"
     "devices: {names: [local]}\n", 5, "models[0].source.hf_dir", "must be an absolute path"),
])
def test_torch_sweep_errors_exit_2_at_the_line_and_field(tmp_path: Path, body: str, where: int,
                                                         field: str, words: str) -> None:
    inv = write_inventory(tmp_path, ["local"])
    path = tmp_path / "bad.yaml"
    path.write_text(SWEEP_HEAD + body)
    run = edgefarm("sweep", "plan", str(path), "-i", str(inv), tmp=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{path}:{where}:" in run.stderr and f" {field}: " in run.stderr, run.stderr
    assert words in run.stderr


# -- (d) a Hugging Face checkpoint directory --------------------------------------------------


def test_an_hf_dir_checkpoint_runs_through_the_agent(tmp_path: Path) -> None:
    model, _, _ = build_model("tiny-moe", "cpu", "float32", None, seed=3)
    checkpoint = tmp_path / "tiny-olmoe"
    model.save_pretrained(checkpoint)
    total = sum(p.numel() for p in model.parameters())
    job = write_job(tmp_path / "job", {"hf_dir": str(checkpoint)}, backend="torch",
                    threads=1, repetitions=2, warmup=1)
    spec = json.loads((job / "job.json").read_text())
    spec["model"].update(id="ckpt", arch="moe")
    spec["params"]["torch"] = {"device": "cpu", "dtype": "float32", "experts": "batched_mm",
                               "decode": "eager"}
    spec["idle_s"] = 0
    (job / "job.json").write_text(json.dumps(spec))
    assert run_job(str(job)) == 0
    events = load_events(job)
    assert events[-1]["status"] == "ok", events[-3:]
    reps = [e for e in events if e["kind"] == "repetition" and not e["warmup"]]
    assert len(reps) == 2 and all(r["decode_tps"] > 0 for r in reps)
    info = events[-1]["info"]
    assert (info["synthetic"], info["preset"], info["hf_dir"]) == (False, None, str(checkpoint))
    assert info["architecture"] == "olmoe" and info["params_total"] == total
    assert info["torch"]["experts"] == "batched_mm"
    assert 0 < info["routing"]["share"] < 1  # the hooks pass ran on the loaded checkpoint

    (tmp_path / "empty").mkdir()
    for missing, words in ((tmp_path / "nowhere", "not a directory"),
                           (tmp_path / "empty", "holds no config.json")):
        bad = write_job(tmp_path / f"job-{missing.name}", {"hf_dir": str(missing)},
                        backend="torch")
        assert run_job(str(bad)) != 0
        error = [e for e in load_events(bad) if e["kind"] == "error"][0]
        assert error["error_kind"] == "model-missing" and words in error["message"]


# -- (e) an experts implementation this device cannot run -------------------------------------


def test_an_experts_implementation_the_cpu_cannot_run_falls_back_with_its_reason() -> None:
    # sonicmoe is a CUDA kernel from the `kernels` hub package: transformers
    # accepts the name, the forward cannot run here.
    params = JobParams(8, 4, 1, 0, 1, 0, torch_options={"device": "cpu", "experts": "sonicmoe"})
    backend = get_backend("torch", torch_device="cpu")
    events: list[tuple[str, dict[str, Any]]] = []
    session = backend.open("preset:tiny-moe:0", params,
                           lambda kind, fields: events.append((kind, fields)) or fields)
    try:
        rep = session.repetition(0, False, lambda kind, fields: fields)
        facts = session.info()["torch"]
    finally:
        session.close()
    assert rep["decode_tps"] > 0  # it ran, on the fallback
    assert facts["experts_asked"] == "sonicmoe" and facts["experts"] == "grouped_mm"
    assert facts["experts_fallback"].startswith("sonicmoe could not run on cpu (")
    assert facts["experts_fallback"].endswith("fell back to grouped_mm")
    assert backend.cpu_in_process and not backend.isolate_models


# -- gemv: a one-token step reads each routed expert in place -----------------------------------


def _experts_module(model: Any) -> Any:
    return moe_blocks(model)[0][3]


def test_gemv_gives_batched_mms_answer_for_a_step_and_grouped_mms_for_a_prompt() -> None:
    model, used, why = build_model("tiny-moe", "cpu", "float32", "gemv")
    assert (used, why) == ("gemv", None)
    experts = _experts_module(model)
    torch.manual_seed(1)
    k = model.config.num_experts_per_tok
    for tokens, reference in ((1, batched_mm_experts_forward), (5, grouped_mm_experts_forward)):
        hidden = torch.randn(tokens, model.config.hidden_size)
        ids = torch.stack([torch.randperm(model.config.num_experts)[:k] for _ in range(tokens)])
        weights = torch.rand(tokens, k)
        ours = gemv_experts_forward(experts, hidden, ids, weights)
        theirs = reference(experts, hidden, ids, weights)
        assert ours.shape == (tokens, model.config.hidden_size)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # A routed expert that is not the first: swapping two ids changes the answer.
    hidden = torch.randn(1, model.config.hidden_size)
    ids, weights = torch.tensor([[0, 1]]), torch.tensor([[0.9, 0.1]])
    assert not torch.allclose(gemv_experts_forward(experts, hidden, ids, weights),
                              gemv_experts_forward(experts, hidden, ids.flip(1), weights))


def test_gemv_under_torch_compile_never_materialises_the_gathered_experts() -> None:
    # The reason gemv exists: compiled, the gather is an indirect load inside
    # the reduction, so no buffer holds the routed experts' weights (the
    # k x 2I x H copy batched_mm feeds cuBLAS on a GPU). Every buffer inductor
    # allocates is read from its code. This pins gemv's own formulation (a
    # .contiguous() or an op inductor cannot fuse would fail it); it says
    # nothing of batched_mm, whose small bmm inductor also decomposes on a CPU.
    # The GPU kernels are measured by bench/torch_decode.py.
    from torch._inductor.utils import run_and_get_code

    model, _, _ = build_model("tiny-moe", "cpu", "float32", "gemv")
    experts = _experts_module(model)
    k, hidden_size = model.config.num_experts_per_tok, model.config.hidden_size
    gathered = k * experts.gate_up_proj.shape[1] * hidden_size
    hidden = torch.randn(1, hidden_size)
    ids, weights = torch.tensor([[3, 5]]), torch.tensor([[0.25, 0.75]])
    compiled = torch.compile(lambda h, i, w: gemv_experts_forward(experts, h, i, w))
    with torch.no_grad():
        out, codes = run_and_get_code(compiled, hidden, ids, weights)
        torch.testing.assert_close(out, batched_mm_experts_forward(experts, hidden, ids, weights),
                                   rtol=1e-5, atol=1e-6)
    shapes = [tuple(int(n) for n in m.split(",") if n.strip())
              for code in codes for m in re.findall(r"empty_strided_cpu\(\(([\d, ]*)\)", code)]
    assert shapes, codes  # the parse found the buffers
    assert max(math.prod(s) for s in shapes) < gathered / 4, shapes


def test_a_compiled_gemv_decode_picks_the_tokens_batched_mm_picks() -> None:
    # The whole model through torch.compile (the experts dispatched by
    # transformers inside the traced graph), greedy, on the static cache the
    # torch backend's compiled decode uses: the same tokens as batched_mm run
    # eagerly, prompt and steps alike.
    model, _, _ = build_model("tiny-moe", "cpu", "float32", "gemv")
    prompt = torch.randint(0, model.config.vocab_size, (1, 8),
                           generator=torch.Generator().manual_seed(5))

    def decode(compiled: Any) -> torch.Tensor:
        decoder = StaticDecoder(model, 32, compiled=compiled)
        token = decoder.prefill(prompt)
        tokens = [token]
        for _ in range(6):
            token = decoder.step(token)
            tokens.append(token)
        return torch.cat(tokens, 1)

    ours = decode(torch.compile(model, dynamic=False))
    model.set_experts_implementation("batched_mm")
    theirs = decode(None)
    assert ours.shape == (1, 7) and torch.equal(ours, theirs), (ours, theirs)


def test_a_gemv_job_runs_and_records_it() -> None:
    params = JobParams(8, 4, 1, 0, 1, 0, torch_options={"device": "cpu", "experts": "gemv"})
    backend = get_backend("torch", torch_device="cpu")
    session = backend.open("preset:tiny-moe:0", params, lambda kind, fields: fields)
    try:
        rep = session.repetition(0, False, lambda kind, fields: fields)
        facts = session.info()["torch"]
    finally:
        session.close()
    assert rep["decode_tps"] > 0
    assert (facts["experts"], facts["experts_fallback"]) == ("gemv", None)


# -- prefill_experts: one implementation for the prefill, another for the decode ---------------


@pytest.mark.parametrize("decode", ["eager", "compiled"])
def test_the_prefill_runs_its_own_experts_implementation_and_the_steps_the_other(
        decode: str) -> None:
    params = JobParams(8, 4, 1, 0, 1, 0, torch_options={
        "device": "cpu", "experts": "batched_mm", "prefill_experts": "grouped_mm",
        "decode": decode})
    backend = get_backend("torch", torch_device="cpu")
    session = backend.open("preset:tiny-moe:0", params, lambda kind, fields: fields)
    seen: list[tuple[int, str]] = []  # (tokens in the call, implementation in force)

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        seen.append((int(args[0].shape[0]), session.model.config._experts_implementation))

    try:
        hooks = [experts.register_forward_pre_hook(record)
                 for _, _, _, experts in moe_blocks(session.model)]
        rep = session.repetition(0, False, lambda kind, fields: fields)
        facts = session.info()["torch"]
        for hook in hooks:
            hook.remove()
    finally:
        session.close()
    assert rep["decode_tps"] > 0 and rep["prefill_tps"] > 0
    assert (facts["experts"], facts["prefill_experts"]) == ("batched_mm", "grouped_mm")
    assert facts["prefill_experts_fallback"] is None
    layers = 4  # the tiny MoE's
    prefill, steps = seen[:layers], seen[layers:]
    assert prefill == [(8, "grouped_mm")] * layers  # the prompt's 8 tokens in one call
    assert steps == [(1, "batched_mm")] * (3 * layers)  # gen 4: three decode steps


def test_prefill_experts_is_part_of_a_moe_jobs_variant_only_when_it_differs(
        tmp_path: Path) -> None:
    from orchestrator.config import load_sweep_with_inventory
    from orchestrator.planner import plan, variant_label

    models = [*TINY, {"id": "tiny-alone", "arch": "dense", "source": {"preset": "tiny-dense"}}]
    sweep_file = write_sweep(tmp_path, devices=["local"], models=models, backend="torch",
                             pairs=[{"moe": "tiny-moe", "dense": ["tiny-dense"]}],
                             torch={"device": "cpu", "experts": ["batched_mm", "grouped_mm"],
                                    "prefill_experts": "grouped_mm"})
    sweep, inventory = load_sweep_with_inventory(sweep_file, write_inventory(tmp_path, ["local"]))
    labels = [(tuple(m.id for m in job.models), variant_label(job.torch))
              for job in plan(sweep, inventory)]
    pair = ("tiny-moe", "tiny-dense")
    assert labels == [
        (pair, "cpu float32 · prefill experts grouped_mm · experts batched_mm · decode eager"),
        (pair, "cpu float32 · experts grouped_mm · decode eager"),  # the same for both phases
        (("tiny-alone",), "cpu float32 · decode eager"),  # no MoE, no experts
    ]


# -- keep_models_loaded: torch models are sized from their shapes -------------------------------


def test_a_torch_pair_kept_loaded_is_sized_from_the_presets_shapes(tmp_path: Path) -> None:
    from agents.backends.torch_backend import weights_bytes
    from agents.models.presets import get_shape, tensor_table

    moe = sum(t.n_elements for t in tensor_table(get_shape("tiny-moe")))
    assert weights_bytes("preset:tiny-moe:0", "float32") == moe * 4
    assert weights_bytes("preset:tiny-moe:0", "bfloat16") == moe * 2
    job = write_job(tmp_path / "job", {"preset": "tiny-moe"}, backend="torch", threads=1,
                    repetitions=3, warmup=0, keep_loaded=True, routing_profile=False)
    spec = json.loads((job / "job.json").read_text())
    spec["models"] = [{"id": "moe", "arch": "moe", "source": {"preset": "tiny-moe"}},
                      {"id": "dense", "arch": "dense", "source": {"preset": "tiny-dense"}}]
    spec["model"] = spec["models"][0]
    spec["params"]["torch"] = {"device": "cpu", "dtype": "float32", "decode": "eager"}
    spec["telemetry"] = False
    (job / "job.json").write_text(json.dumps(spec))
    assert run_job(str(job)) == 0
    events = load_events(job)
    rounds = events[-1]["info"]["rounds"]
    # (3.5 M + 1.2 M parameters) x 4 bytes x 1.3: well under 80% of this machine's memory.
    assert rounds["resident"] == "all", rounds
    assert "MiB estimated for all models <= 80% of" in rounds["resident_reason"]
    loads = [e for e in events if e["kind"] == "phase" and e.get("phase") == "load"]
    assert len(loads) == 2 and rounds["kept_rounds"] == 3
