"""The runner with the real xllamacpp backend on tiny synthetic models.

llama.cpp really loads and runs the random-weight tiny-moe/tiny-dense files
that the agent's synthesizer writes; nothing is mocked. Each job runs as a
separate agent process, as on a device.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from agent_fixtures import (  # noqa: F401  (tiny_models_fixture: the fixture tiny_models)
    load_events,
    run_agent,
    tiny_models_fixture,
    write_job,
)

from agents.backends.base import PROVENANCE_KEYS
from agents.backends.xllamacpp_backend import decode_rate
from agents.models.synth import cache_path

PROMPT, GEN, REPS, WARMUP = 24, 12, 2, 1


def _run(job: Path) -> list[dict]:
    proc = run_agent(job)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    events = load_events(job)
    assert events[-1]["kind"] == "result", events[-1]
    assert events[-1]["status"] == "ok", events
    return events


@pytest.fixture(scope="module")
def moe_events(tiny_models, tmp_path_factory) -> list[dict]:
    job = write_job(tmp_path_factory.mktemp("moe-job"), {"path": str(tiny_models["tiny-moe"])},
                    backend="xllamacpp", prompt_tokens=PROMPT, gen_tokens=GEN,
                    repetitions=REPS, warmup=WARMUP, threads=2)
    return _run(job)


def test_counted_repetitions_measure_what_was_asked(moe_events):
    counted = [e for e in moe_events if e["kind"] == "repetition" and not e["warmup"]]
    assert [r["index"] for r in counted] == list(range(REPS))
    for rep in counted:
        assert rep["prompt_tokens"] == PROMPT
        assert rep["gen_tokens"] == GEN  # ignore_eos: generation runs to the end
        assert rep["prefill_s"] > 0 and rep["decode_s"] > 0 and rep["ttft_s"] > 0
        assert rep["prefill_tps"] == pytest.approx(PROMPT / rep["prefill_s"])
        # llama.cpp's decode time spans the GEN - 1 decode steps after the first
        # token (which comes out of the prefill): see decode_rate().
        assert rep["decode_tps"] == pytest.approx((GEN - 1) / rep["decode_s"])
        assert rep["peak_rss_bytes"] > 10 * 2**20
        assert rep["peak_rss_scope"] == "since-reset"
        assert rep["ttft_s"] < rep["prefill_s"] + rep["decode_s"] + 1.0


def test_warmup_runs_are_marked_and_come_first(moe_events):
    reps = [e for e in moe_events if e["kind"] == "repetition"]
    assert [(r["warmup"], r["index"]) for r in reps] == (
        [(True, i) for i in range(WARMUP)] + [(False, i) for i in range(REPS)])
    phases = [e["phase"] for e in moe_events if e["kind"] == "phase"]
    assert phases[:2] == ["model", "load"]
    assert phases.count("warmup") == WARMUP and phases.count("prefill") == REPS


def test_warmup_runs_the_prompt_and_one_decode_step(moe_events):
    """As llama-bench's warm-up: the whole prompt, then a short generation, not the full one."""
    from agents.backends.xllamacpp_backend import WARMUP_GEN_TOKENS

    warm = [e for e in moe_events if e["kind"] == "repetition" and e["warmup"]]
    assert warm and WARMUP_GEN_TOKENS < GEN
    for rep in warm:
        assert rep["prompt_tokens"] == PROMPT
        assert rep["gen_tokens"] == WARMUP_GEN_TOKENS
        assert rep["decode_window_tokens"] == WARMUP_GEN_TOKENS - 1


def test_result_info_has_the_provenance(moe_events):
    """What llama.cpp was asked to run with, read back from the bindings, and why any is absent."""
    import xllamacpp

    prov = moe_events[-1]["info"]["provenance"]
    assert set(prov) == set(PROVENANCE_KEYS) | {"unknown"}
    assert prov["backend"] == "xllamacpp" and prov["backend_version"] == xllamacpp.__version__
    # The job's threads; n_batch = max(prompt, 512); the rest llama.cpp's defaults.
    assert (prov["threads"], prov["n_batch"], prov["n_ubatch"], prov["gpu_layers"]) == \
        (2, 512, 512, 0)
    assert (prov["flash_attn"], prov["type_k"], prov["type_v"]) == ("auto", "f16", "f16")
    assert prov["cpu_repack"] is True  # llama.cpp's default, read back from no_extra_bufts
    for key, value in prov.items():
        if value is None:
            assert prov["unknown"][key], key  # every absent value says why
    build = xllamacpp.BUILD_INFO
    if build["build_number"] > 0:
        assert prov["build_number"] == build["build_number"]
    else:  # this wheel: built without git metadata, and the reason quotes llama.cpp
        assert prov["build_number"] is None
        assert "reports build_number 0" in prov["unknown"]["build_number"]
    assert moe_events[-1]["info"]["llama_system_info"].startswith("CPU :")


def test_cpu_repack_off_is_applied_and_recorded(tiny_models, tmp_path):
    """``cpu_repack: false`` reaches llama.cpp (no_extra_bufts), read back into the provenance."""
    job = write_job(tmp_path / "job", {"path": str(tiny_models["tiny-moe"])},
                    backend="xllamacpp", prompt_tokens=PROMPT, gen_tokens=GEN,
                    repetitions=1, warmup=0, threads=2, cpu_repack=False)
    events = _run(job)
    assert events[-1]["info"]["provenance"]["cpu_repack"] is False


def test_result_info_has_the_gguf_facts(moe_events, tiny_models):
    info = moe_events[-1]["info"]
    reader = gguf.GGUFReader(str(tiny_models["tiny-moe"]))
    assert info["params_total"] == reader.fields["edgefarm.params.total"].contents()
    assert info["params_active"] == reader.fields["edgefarm.params.active"].contents()
    assert info["params_active"] < info["params_total"]
    assert info["architecture"] == "olmoe"
    assert info["synthetic"] is True and info["preset"] == "tiny-moe"
    assert info["backend"] == "xllamacpp" and info["backend_version"]
    assert info["load_s"] > 0
    assert info["model_path"] == str(tiny_models["tiny-moe"])
    assert info["model_size_bytes"] == tiny_models["tiny-moe"].stat().st_size
    assert moe_events[0]["facts"]["backends"]["xllamacpp"]["present"] is True


def test_preset_source_is_synthesized_once_and_reused(tmp_path):
    models = tmp_path / "models"
    source = {"preset": "tiny-dense", "quant": "Q4_0"}
    first = _run(write_job(tmp_path / "first", source, backend="xllamacpp", models_dir=models,
                           prompt_tokens=8, gen_tokens=4, repetitions=1, warmup=0))
    path = Path(cache_path(str(models), "tiny-dense", "Q4_0"))
    assert first[-1]["info"]["model_path"] == str(path)
    assert first[-1]["info"]["params_active"] == first[-1]["info"]["params_total"]
    assert first[-1]["info"]["architecture"] == "llama"
    synth = [e for e in first if e.get("phase") == "synth"]
    assert synth and synth[-1]["done_bytes"] == synth[-1]["total_bytes"] == path.stat().st_size
    before = path.stat()

    # The second job (the sleep backend resolves models the same way) reuses it.
    second = _run(write_job(tmp_path / "second", source, backend="sleep", models_dir=models,
                            gen_tokens=1, repetitions=1, warmup=0))
    after = path.stat()
    assert second[-1]["info"]["model_path"] == str(path)
    assert not [e for e in second if e.get("phase") == "synth"]
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in path.parent.glob("*.gguf")) == [path.name]


def test_decode_rate_counts_decode_steps():
    assert decode_rate(12, 0.5) == pytest.approx(22.0)
    assert decode_rate(1, 0.000001) is None  # one token: no decode step was timed
    assert decode_rate(8, 0.0) is None
