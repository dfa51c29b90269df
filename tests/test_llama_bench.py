"""Tests for the llama-bench backend (agents/backends/llama_bench.py).

Parsing is checked against *recorded real llama-bench output* kept verbatim in
tests/data/llama_bench/ (each file has a ``.source`` sidecar naming where it
was published). No llama-bench can be built here, so ``run()`` is exercised
against a STAND-IN: a small Python script named ``llama-bench`` written to a
temporary directory, which logs the argv it receives and prints one of the
recorded outputs (or fails the way the real binary fails).

With ``--progress`` the stand-in also does what llama-bench.cpp (b11312, read in
the llama-cpp-python 0.3.36 sdist's vendored copy) does: before each test it
writes ``llama-bench: benchmark B/N: starting`` and its warm-up lines to
stderr, and for each counted run it takes the start time, writes
``llama-bench: benchmark B/N: prompt run I/R`` (``generation run`` for a tg
test), works (here: sleeps), and records the run's nanoseconds in
``samples_ns``; the recorded output is printed with those measured times in
place of the recorded ones. Nothing else of llama-bench is imitated: the
windows the backend derives are checked against what the stand-in measured.
With ``FAKE_LLAMA_BENCH_PROGRESS=0`` it accepts ``--progress`` but prints the
recording as it is and no progress line (output whose runs cannot be placed).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.backends.base import REPETITION_FIELDS, BackendError, JobParams
from agents.backends.llama_bench import (
    LlamaBenchBackend,
    build_argv,
    classify_failure,
    parse_llama_bench,
    phase_windows,
    progress_starts,
    repetition_events,
    run_windows,
    select_tests,
)

DATA = Path(__file__).parent / "data" / "llama_bench"
JSON_B5163 = DATA / "ggml_org_b5163_rtx4080.json"
JSONL_B5163 = DATA / "ggml_org_b5163_rtx4080_jsonl.jsonl"
JSON_B1275 = DATA / "ggerganov_b1275_rtx3090ti_cuda_metal_flags.json"
JSON_B5606 = DATA / "brayniac_b5606_rtx4090_rpc.json"
VULKAN_BANNER = DATA / "issue15554_vulkan_banner.txt"
JETSON_MARKDOWN = DATA / "pr4560_jetson_tx2_markdown_excerpt.txt"

RECORDED = [JSON_B5163, JSONL_B5163, JSON_B1275, JSON_B5606, VULKAN_BANNER, JETSON_MARKDOWN]
EVENT_FIELDS = set(REPETITION_FIELDS) | {"peak_rss_scope", "aggregate"}


def read(path):
    return path.read_text(encoding="utf-8")


# ----------------------------------------------------------- the recorded files

@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_every_recording_has_a_source_sidecar(path):
    sidecar = path.with_suffix(".source")
    assert sidecar.is_file(), f"missing {sidecar.name}"
    text = read(sidecar)
    assert "github.com" in text and "Retrieved:" in text


@pytest.mark.parametrize("path", [JSON_B5163, JSONL_B5163, JSON_B1275, JSON_B5606],
                         ids=lambda p: p.name)
def test_recordings_are_self_consistent(path):
    """Guards against transcription slips: the averages are the samples' means."""
    for rec in parse_llama_bench(read(path)):
        samples = rec["samples_ns"]
        assert abs(sum(samples) / len(samples) - rec["avg_ns"]) < 1
        tokens = rec["n_prompt"] or rec["n_gen"]
        for ns, ts in zip(samples, rec["samples_ts"], strict=True):
            assert tokens / (ns / 1e9) == pytest.approx(ts, rel=1e-5)


# ------------------------------------------------------------------ parsing

B5163_COMMON = {
    "build_commit": "8cf427ff",
    "build_number": 5163,
    "cpu_info": "AMD Ryzen 7 7800X3D 8-Core Processor",
    "gpu_info": "NVIDIA GeForce RTX 4080",
    "backends": "CUDA",
    "model_filename": "models/Qwen2.5-7B-Instruct-Q4_K_M.gguf",
    "model_type": "qwen2 7B Q4_K - Medium",
    "model_size": 4677120000,
    "model_n_params": 7615616512,
    "n_threads": 8,
    "n_gpu_layers": 99,
    "n_depth": 0,
}


def test_parse_modern_json_exact():
    records = parse_llama_bench(read(JSON_B5163))
    assert records == [
        dict(B5163_COMMON, test="pp", n_prompt=512, n_gen=0,
             test_time="2025-04-24T11:58:50Z", avg_ns=72135640, stddev_ns=1453752,
             avg_ts=7100.002165, stddev_ts=140.341520,
             samples_ns=[74601900, 71632900, 71745200, 71952700, 70745500],
             samples_ts=[6863.1, 7147.55, 7136.37, 7115.79, 7237.21]),
        dict(B5163_COMMON, test="tg", n_prompt=0, n_gen=128,
             test_time="2025-04-24T11:58:51Z", avg_ns=1076767880, stddev_ns=9449585,
             avg_ts=118.881588, stddev_ts=1.041811,
             samples_ns=[1075361300, 1065089400, 1071761200, 1081934900, 1089692600],
             samples_ts=[119.03, 120.178, 119.43, 118.307, 117.464]),
    ]
    assert isinstance(records[0]["avg_ns"], int)


def test_parse_jsonl_exact():
    records = parse_llama_bench(read(JSONL_B5163))
    assert [r["test"] for r in records] == ["pp", "tg"]
    assert records[0] == dict(
        B5163_COMMON, test="pp", n_prompt=512, n_gen=0, test_time="2025-04-24T11:59:33Z",
        avg_ns=70497220, stddev_ns=883196, avg_ts=7263.609157, stddev_ts=90.940578,
        samples_ns=[71551000, 71222800, 70364100, 69439100, 69909100],
        samples_ts=[7155.74, 7188.71, 7276.44, 7373.37, 7323.8])
    assert records[1]["samples_ns"] == [1066331700, 1064864900, 1079042600, 1063328400,
                                        1066824400]
    assert records[1]["avg_ts"] == 119.844681


def test_parse_old_schema_with_backend_booleans():
    pp, tg = parse_llama_bench(read(JSON_B1275))
    assert pp == {
        "test": "pp", "n_prompt": 512, "n_gen": 0,
        "build_commit": "3469684", "build_number": 1275,
        "cpu_info": "13th Gen Intel(R) Core(TM) i9-13900K",
        "gpu_info": "NVIDIA GeForce RTX 3090 Ti",
        "backends": "CUDA",
        "backend_flags": {"cuda": True, "metal": False, "gpu_blas": True, "blas": True},
        "model_filename": "models/7B/ggml-model-q4_0.gguf",
        "model_type": "llama 7B mostly Q4_0",
        "model_size": 3825065984, "model_n_params": 6738415616,
        "n_threads": 16, "n_gpu_layers": 99,
        "test_time": "2023-09-23T12:09:57Z",
        "avg_ns": 212365953, "stddev_ns": 985423, "avg_ts": 2410.974041, "stddev_ts": 11.163766,
        "samples_ns": [213837238, 211635853, 212328053, 211329715, 212698907],
        "samples_ts": [2394.34, 2419.25, 2411.36, 2422.75, 2407.16],
    }
    assert "n_depth" not in pp  # this build had no depth field: absent, not zero
    assert tg["test"] == "tg" and tg["n_gen"] == 128 and tg["avg_ns"] == 977425219


def test_provenance_of_an_old_build_says_what_it_does_not_print():
    from agents.backends.llama_bench import _raw_record, bench_provenance

    text = read(JSON_B1275)
    pp = parse_llama_bench(text)[0]
    prov = bench_provenance(_raw_record(text, pp), pp)
    assert (prov["build_number"], prov["build_commit"], prov["threads"], prov["n_batch"],
            prov["gpu_layers"]) == (1275, "3469684", 16, 512, 99)
    for key in ("n_ubatch", "flash_attn", "type_k", "type_v", "use_mmap"):
        assert prov[key] is None
        assert prov["unknown"][key] == f"this llama-bench (build 1275) does not print {key}"
    assert prov["cpu_repack"] is None and prov["unknown"]["cpu_repack"] == (
        "this llama-bench (build 1275) does not print no_repack; llama.cpp repacks CPU weights "
        "by default")
    assert set(prov["unknown"]) == {"n_ubatch", "flash_attn", "type_k", "type_v", "use_mmap",
                                    "cpu_repack"}


def test_provenance_reads_no_repack_when_printed():
    from agents.backends.llama_bench import _raw_record, bench_provenance

    text = read(JSON_B5163)
    pp = parse_llama_bench(text)[0]
    raw = _raw_record(text, pp)
    assert raw is not None
    assert bench_provenance(dict(raw, no_repack=True), pp)["cpu_repack"] is False
    assert bench_provenance(dict(raw, no_repack=False), pp)["cpu_repack"] is True


def test_parse_mid_2025_json_with_rpc_backend():
    pp, tg = parse_llama_bench(read(JSON_B5606))
    assert pp["backends"] == "CUDA,RPC"
    assert (pp["test"], pp["n_prompt"], pp["n_threads"]) == ("pp", 8192, 56)
    assert pp["samples_ns"] == [2705811935, 2706655097, 2709186902, 2711432110, 2710084785]
    assert (tg["test"], tg["n_gen"], tg["avg_ns"], tg["stddev_ts"]) == \
        ("tg", 1280, 14970971478, 0.051750)
    assert "backend_flags" not in pp and "tensor_buft_overrides" not in pp


def test_parse_skips_leading_log_lines():
    """Recorded Vulkan banner (issue #15554) in front of recorded JSON."""
    plain = parse_llama_bench(read(JSON_B5163))
    assert parse_llama_bench(read(VULKAN_BANNER) + read(JSON_B5163)) == plain
    assert parse_llama_bench(read(VULKAN_BANNER) + read(JSONL_B5163)) == \
        parse_llama_bench(read(JSONL_B5163))


def test_parse_ignores_garbage_lines_between_and_after():
    # Synthetic noise around recorded JSON lines: bracketed non-records included.
    lines = read(JSONL_B5163).splitlines()
    text = "\n".join(["[1]    13557 segmentation fault", "{not json", lines[0],
                      "[ 50%] something", "{\"timestamp\": 3}", lines[1], "trailing junk ]}"])
    assert parse_llama_bench(text) == parse_llama_bench(read(JSONL_B5163))


def test_parse_truncated_json_keeps_complete_records():
    text = read(JSON_B5163)
    cut_in_second = text[: text.index('"avg_ts": 118.881588')]
    records = parse_llama_bench(cut_in_second)
    assert [r["test"] for r in records] == ["pp"]
    assert records[0]["samples_ns"][0] == 74601900
    assert parse_llama_bench(text[: text.index('"samples_ns"')]) == []


def test_parse_truncated_jsonl_keeps_complete_lines():
    text = read(JSONL_B5163)
    assert [r["test"] for r in parse_llama_bench(text[:-40])] == ["pp"]


@pytest.mark.parametrize("text", ["", "   \n\t", "]", "[]", "{}", "null", "not json at all",
                                  None, 12, b""])
def test_parse_empty_or_garbage_returns_empty_list(text):
    assert parse_llama_bench(text) == []


def test_parse_accepts_bytes():
    assert parse_llama_bench(JSON_B5163.read_bytes()) == parse_llama_bench(read(JSON_B5163))


def test_parse_markdown_output_from_a_jetson_gives_no_records():
    assert parse_llama_bench(read(JETSON_MARKDOWN)) == []


def test_parse_non_finite_numbers_are_left_out():
    # C printf writes nan/inf, which is not JSON: the record still parses.
    text = read(JSON_B5163).replace('"stddev_ts": 1.041811', '"stddev_ts": -nan')
    records = parse_llama_bench(text)
    assert len(records) == 2
    assert "stddev_ts" not in records[1] and records[1]["avg_ts"] == 118.881588


def test_missing_fields_are_absent_not_zero():
    raw = json.loads(read(JSON_B5163))
    for rec in raw:
        for key in ("samples_ns", "samples_ts", "gpu_info", "model_size", "stddev_ns"):
            del rec[key]
    rec = parse_llama_bench(json.dumps(raw))[0]
    for key in ("samples_ns", "samples_ts", "gpu_info", "model_size", "stddev_ns"):
        assert key not in rec
    assert rec["avg_ns"] == 72135640


def test_wrongly_typed_fields_are_dropped():
    raw = json.loads(read(JSON_B5163))
    raw[0]["samples_ns"] = [1, "x", 3]
    raw[0]["n_threads"] = True
    raw[0]["gpu_info"] = 7
    rec = parse_llama_bench(json.dumps(raw))[0]
    assert "samples_ns" not in rec and "n_threads" not in rec and "gpu_info" not in rec
    assert rec["samples_ts"][0] == 6863.1


def test_combined_pg_record_is_classified():
    raw = json.loads(read(JSON_B5163))[0]
    raw["n_gen"] = 128
    assert parse_llama_bench(json.dumps([raw]))[0]["test"] == "pg"


# ------------------------------------------------------- mapping to repetitions

def params(prompt=512, gen=128, reps=5, warmup=1, threads=8, ngl=99):
    return JobParams(prompt, gen, threads, ngl, reps, warmup)


def test_repetitions_from_samples_exact():
    pp, tg = select_tests(parse_llama_bench(read(JSON_B5163)), params())
    events = repetition_events(pp, tg, params(), peak_rss_bytes=123456789)
    assert len(events) == 5
    assert events[0] == {
        "index": 0, "warmup": False, "prompt_tokens": 512, "gen_tokens": 128,
        "prefill_s": 74601900 / 1e9, "prefill_tps": 512 / (74601900 / 1e9),
        "decode_s": 1075361300 / 1e9, "decode_tps": 128 / (1075361300 / 1e9),
        "peak_rss_bytes": 123456789, "peak_rss_scope": "child-process",
    }
    assert [e["index"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["decode_s"] for e in events] == [ns / 1e9 for ns in tg["samples_ns"]]
    for event, pp_ts, tg_ts in zip(events, pp["samples_ts"], tg["samples_ts"], strict=True):
        assert event["prefill_tps"] == pytest.approx(pp_ts, rel=1e-5)
        assert event["decode_tps"] == pytest.approx(tg_ts, rel=1e-5)
        assert "ttft_s" not in event  # llama-bench does not measure it; never estimated
        assert event["peak_rss_bytes"] == 123456789  # one process peak for every repetition
        assert set(event) <= EVENT_FIELDS


def test_repetitions_old_schema_and_prompt_only_job():
    pp, tg = select_tests(parse_llama_bench(read(JSON_B1275)), params(gen=0))
    assert tg is None
    events = repetition_events(pp, tg, params(gen=0))
    assert len(events) == 5
    assert events[4]["prefill_s"] == 212698907 / 1e9
    assert "decode_s" not in events[4] and "peak_rss_bytes" not in events[4]


def test_aggregate_when_no_samples():
    raw = json.loads(read(JSON_B5163))
    for rec in raw:
        del rec["samples_ns"], rec["samples_ts"]
    pp, tg = select_tests(parse_llama_bench(json.dumps(raw)), params())
    assert repetition_events(pp, tg, params()) == [{
        "index": 0, "warmup": False, "aggregate": True, "prompt_tokens": 512, "gen_tokens": 128,
        "prefill_s": 72135640 / 1e9, "prefill_tps": 7100.002165,
        "decode_s": 1076767880 / 1e9, "decode_tps": 118.881588,
    }]


def test_select_tests_matches_token_counts_and_skips_depth():
    records = parse_llama_bench(read(JSON_B5163))
    assert select_tests(records, params(prompt=256, gen=64)) == (None, None)
    deep = [dict(r, n_depth=512) for r in records]
    assert select_tests(deep + records, params()) == (records[0], records[1])


def test_build_argv():
    argv = build_argv("/opt/llama-bench", "/m/x.gguf", params(warmup=2))
    assert argv == ["/opt/llama-bench", "-m", "/m/x.gguf", "-p", "512", "-n", "128", "-t", "8",
                    "-ngl", "99", "-r", "5", "-o", "json", "--progress"]
    assert build_argv("b", "m", params(), progress=False)[-2:] == ["-o", "json"]
    assert build_argv("b", "m", params(warmup=0))[-1] == "--no-warmup"
    assert "-t" not in build_argv("b", "m", params(threads=0))
    assert build_argv("b", "m", params(ngl=-1))[9:11] == ["-ngl", "-1"]


# ------------------------------------------- per-run windows from --progress lines

def line(t, text):
    return (t, "llama-bench: benchmark " + text)


# Stamped stderr of a job with -p 512 -n 128 -r 3, as llama-bench.cpp (b11312)
# writes it with --progress, at constructed times (seconds, monotonic).
PROGRESS = [
    (9.0, "ggml_cuda_init: found 1 CUDA devices:"),  # other stderr is ignored
    line(10.0, "1/2: starting"),
    line(10.5, "1/2: warmup prompt run"),
    line(11.0, "1/2: prompt run 1/3"),
    line(11.2, "1/2: prompt run 2/3"),
    line(11.4, "1/2: prompt run 3/3"),
    line(12.0, "2/2: starting"),
    line(12.1, "2/2: warmup generation run"),
    line(12.2, "2/2: generation run 1/3"),
    line(12.7, "2/2: generation run 2/3"),
    line(13.2, "2/2: generation run 3/3\r"),
]
PP_NS = [150_000_000, 150_000_000, 160_000_000]
TG_NS = [450_000_000, 480_000_000, 500_000_000]


def test_progress_starts_groups_counted_runs_only():
    assert progress_starts(PROGRESS) == {
        (1, "prompt"): [(1, 3, 11.0), (2, 3, 11.2), (3, 3, 11.4)],
        (2, "generation"): [(1, 3, 12.2), (2, 3, 12.7), (3, 3, 13.2)],
    }


@pytest.mark.parametrize("kind, ns, windows, slack", [
    # start = the line's stamp, end = start + samples_ns; slack = next start - end
    ("prompt", PP_NS, [(11.0, 11.15), (11.2, 11.35), (11.4, 11.56)], 0.05),
    ("generation", TG_NS, [(12.2, 12.65), (12.7, 13.18), (13.2, 13.7)], 0.02),
    # A window reaching 1 ms past the next line (a late stamp) is kept.
    ("generation", [500_000_000, 480_000_000, 500_000_000],
     [(12.2, 12.7), (12.7, 13.18), (13.2, 13.7)], 0.0),
    ("generation", [501_000_000, 480_000_000, 500_000_000],
     [(12.2, 12.701), (12.7, 13.18), (13.2, 13.7)], -0.001),
])
def test_run_windows_from_constructed_lines(kind, ns, windows, slack):
    got, why, least = run_windows(PROGRESS, kind, ns)
    assert why == "progress-lines"
    assert got == [pytest.approx(w, abs=1e-9) for w in windows]
    assert least == pytest.approx(slack, abs=1e-9)


@pytest.mark.parametrize("lines, kind, ns, words", [
    (PROGRESS, "generation", TG_NS[:2], "3 'generation run' progress lines (1,2,3) for 2"),
    ([x for x in PROGRESS if "run 2/3" not in x[1] or "prompt" not in x[1]], "prompt", PP_NS,
     "2 'prompt run' progress lines (1,3) for 3"),
    ([x for x in PROGRESS if "prompt run" not in x[1]], "prompt", PP_NS,
     "no 'prompt run' progress line"),
    # Two pp benchmarks (not this job's argv): which is the job's cannot be told.
    (PROGRESS + [line(14.0, "3/3: prompt run 1/3")], "prompt", PP_NS, "several benchmarks (1, 3)"),
    # A pg test prints prompt and generation lines under one benchmark number.
    ([line(1.0, "1/1: prompt run 1/1"), line(1.1, "1/1: generation run 1/1")], "generation",
     [1], "no 'generation run' progress line"),
    # Run 1's line came 0.4 s late: its window would cover most of run 2.
    ([line(11.0, "1/2: prompt run 1/2"), line(11.2, "1/2: prompt run 2/2")], "prompt",
     [300_000_000, 100_000_000], "arrived 0.1000 s before run 1's measured end"),
])
def test_run_windows_refuses_what_it_cannot_place(lines, kind, ns, words):
    got, why, _least = run_windows(lines, kind, ns)
    assert got is None and words in why


def test_phase_windows_for_the_job():
    pp = {"test": "pp", "samples_ns": PP_NS}
    tg = {"test": "tg", "samples_ns": TG_NS}
    events = [{"index": i} for i in range(3)]
    windows, why, least = phase_windows(PROGRESS, pp, tg, events)
    assert why == "progress-lines" and least == pytest.approx(0.02)
    assert windows["prefill_window_mono"][2] == pytest.approx((11.4, 11.56))
    assert windows["decode_window_mono"][0] == pytest.approx((12.2, 12.65))
    # A generation-only job needs only the tg lines.
    windows, why, _ = phase_windows(PROGRESS, None, tg, events)
    assert list(windows) == ["decode_window_mono"]
    # One test's runs cannot be placed: no repetition gets any window.
    assert phase_windows(PROGRESS[:5], pp, tg, events)[0] is None
    assert phase_windows(PROGRESS, pp, tg, [{"index": 0, "aggregate": True}])[1] == \
        "llama-bench's output has no per-run times (samples_ns)"
    assert phase_windows(PROGRESS, pp, tg, events, "rejected")[:2] == (None, "rejected")


# --------------------------------------------------------- failure classification

@pytest.mark.parametrize("returncode, stderr, timed_out, kind", [
    (-signal.SIGKILL, "", False, "out-of-memory"),
    (-signal.SIGKILL, "", True, "timeout"),
    (1, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: "
        "cudaMalloc failed: out of memory\n", False, "out-of-memory"),
    (1, "ggml_metal: failed to allocate buffer\n", False, "out-of-memory"),
    (-signal.SIGABRT, "terminate called after throwing an instance of 'std::bad_alloc'\n",
     False, "out-of-memory"),
    (-signal.SIGSEGV, "", False, "backend-error"),
    (1, "llama_bench: error: failed to load model 'x.gguf'\n", False, "backend-error"),
    (1, "error: invalid parameter for argument: --no-warmup\n", False, "backend-error"),
    (2, "", False, "backend-error"),
])
def test_classify_failure(returncode, stderr, timed_out, kind):
    error = classify_failure(returncode, stderr, timed_out, 5.0)
    assert isinstance(error, BackendError) and error.kind == kind


def test_classify_failure_messages():
    assert "SIGSEGV" in classify_failure(-signal.SIGSEGV, "").message
    assert "older" in classify_failure(
        1, "error: invalid parameter for argument: --no-warmup").message
    tail = classify_failure(3, "\n".join(f"line {i:02d}" for i in range(50))).message
    assert "line 49" in tail and "line 30" in tail and "line 29" not in tail


# -------------------------------------------- run() against a stand-in executable

STAND_IN = '''#!{python}
# STAND-IN for the llama-bench binary, written by tests/test_llama_bench.py:
# no real llama-bench can be built in the test environment. It appends its argv
# to <this file>.argv.jsonl, then acts as FAKE_LLAMA_BENCH_MODE says, printing
# the recorded output file named by FAKE_LLAMA_BENCH_OUTPUT.
import json, os, signal, sys, time
with open(os.path.abspath(__file__) + ".argv.jsonl", "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
mode = os.environ.get("FAKE_LLAMA_BENCH_MODE", "ok")
if "--version" in sys.argv[1:]:
    if mode == "version":  # what llama.cpp tools with the common arg parser print
        sys.stderr.write("version: 5163 (8cf427ff)\\nbuilt with cc for x86_64-linux-gnu\\n")
        sys.exit(0)
    # what llama-bench.cpp does with an unknown argument
    sys.stderr.write("error: invalid parameter for argument: --version\\n")
    sys.exit(1)
model = sys.argv[sys.argv.index("-m") + 1]
if mode == "load-fail":
    sys.stdout.write("[\\n]\\n")
    sys.stderr.write("llama_bench: error: failed to load model '%s'\\n" % model)
    sys.exit(1)
if mode == "oom":
    sys.stderr.write("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on "
                     "device 0: cudaMalloc failed: out of memory\\n")
    sys.exit(1)
if mode == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "abort":
    os.abort()
if mode == "sleep":
    time.sleep(60)
if mode == "noisy-fail":
    for i in range(50):
        sys.stderr.write("line %02d\\n" % i)
    sys.exit(3)
ballast = None
if mode == "alloc":
    ballast = bytearray(96 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
if mode == "old-build" and "--progress" in sys.argv[1:]:
    # llama-bench.cpp's answer to a flag it does not know (then its usage, on stdout)
    sys.stderr.write("error: invalid parameter for argument: --progress\\n")
    sys.stdout.write("usage: %s [options]\\n" % sys.argv[0])
    sys.exit(1)
sys.stderr.write(os.environ.get("FAKE_LLAMA_BENCH_STDERR", ""))
prefix = os.environ.get("FAKE_LLAMA_BENCH_PREFIX")
if prefix:
    sys.stdout.write(open(prefix, encoding="utf-8").read())
output = open(os.environ["FAKE_LLAMA_BENCH_OUTPUT"], encoding="utf-8").read()
try:
    records = json.loads(output)
except ValueError:  # markdown or JSON lines: printed as they are
    records = None
if records and "--progress" in sys.argv[1:] and \\
        os.environ.get("FAKE_LLAMA_BENCH_PROGRESS", "1") == "1":
    # Run as llama-bench.cpp does with --progress (see the module docstring).
    run_s = float(os.environ.get("FAKE_LLAMA_BENCH_RUN_S", "0.01"))
    for b, rec in enumerate(records, 1):
        head = "llama-bench: benchmark %d/%d: " % (b, len(records))
        kind = "prompt" if rec["n_prompt"] > 0 else "generation"
        sys.stderr.write(head + "starting\\n")
        if "--no-warmup" not in sys.argv[1:]:
            sys.stderr.write(head + "warmup %s run\\n" % kind)
        samples = []
        for i in range(len(rec["samples_ns"])):
            t_start = time.monotonic_ns()
            sys.stderr.write(head + "%s run %d/%d\\n" % (kind, i + 1, len(rec["samples_ns"])))
            sys.stderr.flush()
            time.sleep(run_s)
            samples.append(time.monotonic_ns() - t_start)
        rec["samples_ns"] = samples
        rec["avg_ns"] = sum(samples) // len(samples)
    output = json.dumps(records, indent=2) + "\\n"
sys.stdout.write(output)
sys.exit(0)
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A fake ``llama-bench`` executable and a model file to hand it."""
    binary = tmp_path / "bin" / "llama-bench"
    binary.parent.mkdir()
    binary.write_text(STAND_IN.replace("{python}", sys.executable), encoding="utf-8")
    binary.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF stand-in model bytes")
    monkeypatch.setenv("FAKE_LLAMA_BENCH_OUTPUT", str(JSON_B5163))
    for name in ("FAKE_LLAMA_BENCH_MODE", "FAKE_LLAMA_BENCH_PREFIX", "FAKE_LLAMA_BENCH_STDERR",
                 "FAKE_LLAMA_BENCH_RUN_S", "FAKE_LLAMA_BENCH_PROGRESS"):
        monkeypatch.delenv(name, raising=False)

    class StandIn:
        path = binary

        @staticmethod
        def calls():
            log = Path(str(binary) + ".argv.jsonl")
            if not log.exists():
                return []
            return [json.loads(line) for line in read(log).splitlines()]

    StandIn.model = model
    return StandIn


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, kind, fields):
        self.events.append((kind, fields))

    def of(self, kind):
        return [fields for k, fields in self.events if k == kind]


def test_run_end_to_end_with_recorded_json(stand_in, monkeypatch):
    """The recording as printed (no progress lines): no per-phase windows, and why."""
    monkeypatch.setenv("FAKE_LLAMA_BENCH_PROGRESS", "0")
    emit = Recorder()
    info = LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), emit)

    assert stand_in.calls() == [["-m", str(stand_in.model), "-p", "512", "-n", "128",
                                 "-t", "8", "-ngl", "99", "-r", "5", "-o", "json",
                                 "--progress"]]
    assert emit.events[0] == ("phase", {"phase": "bench"})
    reps = emit.of("repetition")
    assert [kind for kind, _ in emit.events] == ["phase"] + ["repetition"] * 5
    assert reps[2]["prefill_s"] == 71745200 / 1e9 and reps[2]["decode_s"] == 1071761200 / 1e9
    peak = reps[0]["peak_rss_bytes"]
    assert isinstance(peak, int) and peak > 1024 * 1024  # a Python process is > 1 MiB
    for rep in reps:
        assert "ttft_s" not in rep and rep["warmup"] is False and rep["peak_rss_bytes"] == peak
        assert set(rep) <= EVENT_FIELDS
        assert rep["phase_window_reason"] == "llama-bench printed no 'prompt run' progress line"
        assert "prefill_window_mono" not in rep and "decode_window_mono" not in rep
    assert info.pop("phase_windows") == reps[0]["phase_window_reason"]
    assert info.pop("process_s") > 0 and info.pop("counted_fraction") > 0
    assert info == {
        "backend": "llama-bench",
        "backend_version": "5163 (8cf427ff)",
        "binary": str(stand_in.path),
        "argv": stand_in.calls()[0],
        "build_commit": "8cf427ff",
        "build_number": 5163,
        "cpu_info": "AMD Ryzen 7 7800X3D 8-Core Processor",
        "gpu_info": "NVIDIA GeForce RTX 4080",
        "backends": "CUDA",
        "model_size_bytes": 4677120000,
        "model_n_params": 7615616512,
        "model_type": "qwen2 7B Q4_K - Medium",
        "n_threads": 8,
        "n_gpu_layers": 99,
        "peak_rss_bytes": peak,
        "warmup_requested": 1,
        "warmup_runs_builtin": 1,
        "repetitions_reported": 5,
        "aggregate": False,
        # Straight from the recorded JSON's fields (n_batch 2048, flash_attn false...).
        "provenance": {
            "backend": "llama-bench", "backend_version": "5163 (8cf427ff)",
            "build_number": 5163, "build_commit": "8cf427ff", "threads": 8, "n_batch": 2048,
            "n_ubatch": 512, "flash_attn": "off", "type_k": "f16", "type_v": "f16",
            "use_mmap": True, "cpu_repack": None, "gpu_layers": 99,
            "unknown": {"cpu_repack": "this llama-bench (build 5163) does not print no_repack; "
                                      "llama.cpp repacks CPU weights by default"},
        },
    }


@pytest.mark.parametrize("recording, job", [
    (JSONL_B5163, (512, 128)),
    (JSON_B1275, (512, 128)),
    (JSON_B5606, (8192, 1280)),
], ids=lambda v: getattr(v, "name", str(v)))
def test_run_with_other_recordings(stand_in, monkeypatch, recording, job):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_OUTPUT", str(recording))
    monkeypatch.setenv("FAKE_LLAMA_BENCH_PROGRESS", "0")  # the recorded times, as printed
    emit = Recorder()
    info = LlamaBenchBackend(str(stand_in.path)).run(
        str(stand_in.model), params(prompt=job[0], gen=job[1]), emit)
    pp, tg = parse_llama_bench(read(recording))
    reps = emit.of("repetition")
    assert [r["prefill_s"] for r in reps] == [ns / 1e9 for ns in pp["samples_ns"]]
    assert [r["decode_s"] for r in reps] == [ns / 1e9 for ns in tg["samples_ns"]]
    assert info["backends"] == pp["backends"]
    assert info["build_number"] == pp["build_number"]


def test_run_with_progress_gives_each_run_its_window(stand_in, monkeypatch):
    """Windows start at the progress lines' arrival and last the run's measured time."""
    monkeypatch.setenv("FAKE_LLAMA_BENCH_RUN_S", "0.03")
    emit = Recorder()
    before = time.monotonic()
    info = LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), emit)
    after = time.monotonic()
    reps = emit.of("repetition")
    assert len(reps) == 5 and info["phase_windows"] == "progress-lines"
    process = reps[0]["process_window_mono"]
    assert before <= process[0] < process[1] <= after
    prefill = [rep["prefill_window_mono"] for rep in reps]
    decode = [rep["decode_window_mono"] for rep in reps]
    for rep, pw, dw in zip(reps, prefill, decode, strict=True):
        assert "phase_window_reason" not in rep and set(rep) <= EVENT_FIELDS
        # The length is llama-bench's own time for the run (rounded to the microsecond).
        assert pw[1] - pw[0] == pytest.approx(rep["prefill_s"], abs=2e-6)
        assert dw[1] - dw[0] == pytest.approx(rep["decode_s"], abs=2e-6)
        assert rep["decode_s"] >= 0.03 and rep["prefill_s"] >= 0.03  # the stand-in slept
    # Every pp run before every tg run, each inside the process. A stamp is
    # late by the reader thread's delay (on a loaded machine, milliseconds), so
    # a window may reach past the next line by up to the backend's limit.
    ordered = prefill + decode
    assert process[0] <= ordered[0][0] and ordered[-1][1] <= process[1] + 0.01
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        assert later[0] > earlier[0]
        assert later[0] >= earlier[1] - 0.25 * (earlier[1] - earlier[0])
    assert info["progress_least_slack_s"] >= -0.25 * 0.03
    # The counted runs are part of this stand-in's time, never more than all of it.
    assert 0.0 < info["counted_fraction"] <= 1.0


def test_run_of_a_build_without_progress_runs_again_without_it(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_MODE", "old-build")
    emit = Recorder()
    info = LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), emit)
    calls = stand_in.calls()
    assert len(calls) == 2 and calls[0][-1] == "--progress" and "--progress" not in calls[1]
    assert info["argv"] == calls[1]
    reps = emit.of("repetition")
    assert len(reps) == 5
    for rep in reps:
        assert "decode_window_mono" not in rep and "process_window_mono" in rep
        assert rep["phase_window_reason"].startswith("this llama-bench rejects --progress: "
                                                     "error: invalid parameter")
    assert info["phase_windows"] == reps[0]["phase_window_reason"]


def test_run_skips_leading_banner_and_reports_warnings(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_PREFIX", str(VULKAN_BANNER))
    monkeypatch.setenv("FAKE_LLAMA_BENCH_STDERR",
                       "warning: debug build, performance may be affected\n")
    emit = Recorder()
    info = LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), emit)
    assert len(emit.of("repetition")) == 5
    assert info["warnings"] == ["warning: debug build, performance may be affected"]


def test_run_without_warmup_passes_no_warmup(stand_in):
    info = LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(warmup=0),
                                                     Recorder())
    assert stand_in.calls()[-1][-1] == "--no-warmup"
    assert info["warmup_runs_builtin"] == 0 and info["warmup_requested"] == 0


def test_run_measures_peak_rss_of_the_child(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_MODE", "alloc")  # touches 96 MiB
    emit = Recorder()
    info = LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), emit)
    assert info["peak_rss_bytes"] >= 96 * 1024 * 1024
    assert info["peak_rss_bytes"] < 4 * 1024 ** 3  # KiB/bytes mix-up would be 1024x off


def test_run_output_without_json_is_a_clear_error(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_OUTPUT", str(JETSON_MARKDOWN))
    emit = Recorder()
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), emit)
    assert info.value.kind == "backend-error"
    assert "no result for pp 512 and tg 128" in info.value.message
    assert "Tegra X2" in info.value.message  # the start of stdout is quoted
    assert emit.of("repetition") == []


def test_run_output_for_other_token_counts_is_an_error(stand_in):
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(prompt=256),
                                                  Recorder())
    assert info.value.kind == "backend-error" and "pp 256" in info.value.message


def test_run_refuses_cpu_repack_off_before_starting(stand_in):
    """edgefarm does not pass ``cpu_repack: false`` to llama-bench: refused, nothing run."""
    job = JobParams(512, 128, 8, 99, 5, 1, cpu_repack=False)
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), job, Recorder())
    assert info.value.kind == "bad-job" and "xllamacpp backend only" in info.value.message
    assert stand_in.calls() == []


@pytest.mark.parametrize("mode, kind, words", [
    ("load-fail", "backend-error", "could not load the model"),
    ("oom", "out-of-memory", "cudaMalloc failed"),
    ("sigkill", "out-of-memory", "SIGKILL"),
    ("abort", "backend-error", "SIGABRT"),
    ("noisy-fail", "backend-error", "line 49"),
])
def test_run_failures_are_classified(stand_in, monkeypatch, mode, kind, words):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_MODE", mode)
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), Recorder())
    assert info.value.kind == kind
    assert words in info.value.message


def test_run_timeout_kills_the_child(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_MODE", "sleep")
    backend = LlamaBenchBackend(str(stand_in.path), timeout_s=30)
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.run(str(stand_in.model), params(), Recorder(), timeout_s=1.0)  # kwarg wins
    assert info.value.kind == "timeout" and "1.0s" in info.value.message
    assert time.monotonic() - start < 15


def test_run_timeout_from_attribute(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_BENCH_MODE", "sleep")
    backend = LlamaBenchBackend(str(stand_in.path))
    backend.timeout_s = 0.5
    with pytest.raises(BackendError) as info:
        backend.run(str(stand_in.model), params(), Recorder())
    assert info.value.kind == "timeout"


def test_run_missing_model(stand_in):
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model) + ".nope", params(),
                                                  Recorder())
    assert info.value.kind == "model-missing"
    assert stand_in.calls() == []  # never started


def test_run_missing_or_non_executable_binary(stand_in, tmp_path):
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(tmp_path / "nope")).run(str(stand_in.model), params(), Recorder())
    assert info.value.kind == "backend-missing"
    stand_in.path.chmod(0o644)
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(), Recorder())
    assert info.value.kind == "backend-missing"


def test_run_rejects_an_empty_job(stand_in):
    with pytest.raises(BackendError) as info:
        LlamaBenchBackend(str(stand_in.path)).run(str(stand_in.model), params(prompt=0, gen=0),
                                                  Recorder())
    assert info.value.kind == "bad-job"


def test_available(stand_in, tmp_path, monkeypatch):
    # Current llama-bench rejects --version (as the stand-in does by default).
    assert LlamaBenchBackend(str(stand_in.path)).available() == (True, "unknown")
    assert stand_in.calls()[-1] == ["--version"]
    monkeypatch.setenv("FAKE_LLAMA_BENCH_MODE", "version")
    assert LlamaBenchBackend(str(stand_in.path)).available() == (True, "5163 (8cf427ff)")
    ok, reason = LlamaBenchBackend(str(tmp_path / "nope")).available()
    assert not ok and "not found" in reason
    stand_in.path.chmod(0o644)
    ok, reason = LlamaBenchBackend(str(stand_in.path)).available()
    assert not ok and "not executable" in reason


def test_expands_user_in_binary_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert LlamaBenchBackend("~/llama.cpp/build/bin/llama-bench").binary == \
        str(tmp_path / "llama.cpp" / "build" / "bin" / "llama-bench")


# ------------------------------------------------------------ runs on Python 3.8

def test_module_is_python38_compatible():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    assert os.path.exists(vermin), "vermin is a test dependency (pip install -e .[test])"
    module = Path(__file__).parent.parent / "agents" / "backends" / "llama_bench.py"
    done = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", str(module)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    assert done.returncode == 0, done.stdout.decode()
