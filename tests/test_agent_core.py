"""The device agent's core (standard library only): events, the runner with the
test-only sleep backend, probe, gguf_info and peakmem.

Real parts throughout: real files, real threads, the agent run in process or
as a real subprocess; the GGUF files are written by the agent's synthesizer
and cross-checked with the ``gguf`` package's reader.
"""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import gguf
import pytest
from agent_fixtures import (  # noqa: F401  (*_fixture: the fixtures stand_in_model, tiny_models)
    agent_env,
    load_events,
    run_agent,
    stand_in_model_fixture,
    tiny_models_fixture,
    write_job,
)

from agents import EVENT_SCHEMA, __version__, peakmem, probe
from agents.cli import main as agent_main
from agents.events import KINDS, EventWriter, Heartbeat, read_events
from agents.gguf_info import _TYPE_SIZES, read_gguf_info
from agents.runner import EVENTS_FILE, PID_FILE, run_job

ENVELOPE = ("v", "seq", "kind", "job", "attempt", "t", "mono")


# -- events -------------------------------------------------------------------

def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_are_numbered_from_zero_with_the_envelope(tmp_path):
    log = tmp_path / "events.jsonl"
    writer = EventWriter(str(log), "job-a", 3)
    returned = [writer.emit("hello", {"facts": {}}), writer.emit("phase", {"phase": "load"}),
                writer.emit("repetition", {"index": 0}), writer.emit("result", {"status": "ok"})]
    writer.close()
    events = _lines(log)
    assert events == returned
    assert [e["seq"] for e in events] == [0, 1, 2, 3]
    assert [e["kind"] for e in events] == ["hello", "phase", "repetition", "result"]
    for event in events:
        for key in ENVELOPE:
            assert key in event, key
        assert event["v"] == EVENT_SCHEMA
        assert event["job"] == "job-a" and event["attempt"] == 3
        assert isinstance(event["t"], float) and isinstance(event["mono"], float)
    assert abs(events[0]["t"] - time.time()) < 60
    assert events[0]["mono"] <= events[-1]["mono"]


def test_fields_cannot_override_the_envelope(tmp_path):
    writer = EventWriter(str(tmp_path / "e.jsonl"), "j", 1)
    event = writer.emit("phase", {"seq": 99, "kind": "result", "job": "other", "phase": "x"})
    writer.close()
    assert (event["seq"], event["kind"], event["job"], event["phase"]) == (0, "phase", "j", "x")


def test_unknown_kind_raises_and_writes_nothing(tmp_path):
    log = tmp_path / "e.jsonl"
    writer = EventWriter(str(log), "j", 1)
    with pytest.raises(ValueError, match="unknown event kind"):
        writer.emit("progress", {})
    assert writer.emit("phase", {"phase": "model"})["seq"] == 0  # no seq was used up
    writer.close()
    assert [e["kind"] for e in _lines(log)] == ["phase"]
    assert set(KINDS) == {"hello", "phase", "sample", "repetition", "result", "error",
                          "heartbeat", "routing"}


def test_emit_is_thread_safe(tmp_path):
    log = tmp_path / "e.jsonl"
    writer = EventWriter(str(log), "j", 1)
    threads_n, per_thread = 8, 250
    start = threading.Barrier(threads_n)

    def worker(n):
        start.wait()
        for i in range(per_thread):
            writer.emit("sample", {"thread": n, "i": i, "pad": "x" * (i % 50)})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    events = _lines(log)  # every line is whole JSON: no interleaved writes
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(threads_n * per_thread))  # unique, contiguous, in file order
    for n in range(threads_n):  # each thread's own events keep their order
        mine = [e["i"] for e in events if e["thread"] == n]
        assert mine == list(range(per_thread))


def test_echo_gets_the_same_lines_and_a_closed_echo_is_dropped(tmp_path):
    log = tmp_path / "e.jsonl"
    echo = io.StringIO()
    writer = EventWriter(str(log), "j", 1, echo=echo)
    writer.emit("phase", {"phase": "a"})
    assert echo.getvalue() == log.read_text()
    echo.close()
    writer.emit("phase", {"phase": "b"})  # must not raise: the log is the durable copy
    writer.close()
    assert [e["phase"] for e in _lines(log)] == ["a", "b"]


def test_read_events_never_returns_half_a_line(tmp_path):
    log = tmp_path / "e.jsonl"
    writer = EventWriter(str(log), "j", 1)
    writer.emit("phase", {"phase": "model"})
    writer.emit("phase", {"phase": "load"})
    writer.close()
    whole = log.stat().st_size
    partial = json.dumps({"v": 1, "seq": 2, "kind": "result", "job": "j", "attempt": 1,
                          "t": 1.0, "mono": 1.0, "status": "ok"}, sort_keys=True)
    cut = len(partial) // 2
    with open(log, "a") as handle:
        handle.write(partial[:cut])

    events, offset = read_events(str(log))
    assert [e["seq"] for e in events] == [0, 1]
    assert offset == whole
    assert read_events(str(log), offset) == ([], offset)  # still only half a line

    with open(log, "a") as handle:
        handle.write(partial[cut:] + "\n")
    events, offset2 = read_events(str(log), offset)
    assert [(e["seq"], e["kind"], e["status"]) for e in events] == [(2, "result", "ok")]
    assert offset2 == log.stat().st_size
    assert read_events(str(log), offset2) == ([], offset2)


def test_read_events_skips_a_malformed_line(tmp_path, capsys):
    log = tmp_path / "e.jsonl"
    log.write_text('{"seq": 0}\n{not json\n\n{"seq": 1}\n')
    events, offset = read_events(str(log))
    assert events == [{"seq": 0}, {"seq": 1}]
    assert offset == log.stat().st_size
    assert "malformed" in capsys.readouterr().err


def test_heartbeat_thread_emits_heartbeats_and_stops(tmp_path):
    log = tmp_path / "e.jsonl"
    writer = EventWriter(str(log), "j", 1)
    with Heartbeat(writer, interval=0.02):
        time.sleep(0.2)
    stopped = len(_lines(log))
    time.sleep(0.1)
    writer.emit("result", {"status": "ok"})
    writer.close()
    events = _lines(log)
    beats = [e for e in events if e["kind"] == "heartbeat"]
    assert len(beats) >= 3
    assert all(b["pid"] == os.getpid() for b in beats)
    assert len(events) == stopped + 1  # nothing after the context exited but our result
    assert events[-1]["kind"] == "result"
    assert [e["seq"] for e in events] == list(range(len(events)))


# -- runner with the test-only sleep backend ---------------------------------

def test_sleep_job_runs_hello_to_result(tmp_path, stand_in_model):
    job = write_job(tmp_path / "job", {"path": str(stand_in_model)}, gen_tokens=5,
                    repetitions=3, warmup=2, job_key="k-sleep", attempt=2)
    assert run_job(str(job)) == 0
    events = load_events(job)
    assert (job / PID_FILE).read_text() == str(os.getpid())
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(e["job"] == "k-sleep" and e["attempt"] == 2 for e in events)
    assert events[0]["kind"] == "hello"
    assert events[0]["facts"]["agent_version"] == __version__
    assert events[-1]["kind"] == "result" and events[-1]["status"] == "ok"
    assert events[-1]["info"]["backend"] == "sleep"
    assert events[-1]["info"]["model_path"] == str(stand_in_model)
    assert events[-1]["info"]["model_size_bytes"] == stand_in_model.stat().st_size
    # A stand-in that is not GGUF: the facts say why they are missing.
    assert "not a GGUF file" in events[-1]["info"]["model_facts_error"]
    reps = [e for e in events if e["kind"] == "repetition"]
    assert [(r["warmup"], r["index"]) for r in reps] == [
        (True, 0), (True, 1), (False, 0), (False, 1), (False, 2)]
    for rep in reps:
        assert rep["synthetic"] is True
        assert rep["gen_tokens"] == 5 and rep["prompt_tokens"] == 16
        assert rep["decode_s"] >= 0.004
        assert rep["decode_tps"] == pytest.approx(5 / rep["decode_s"])
    assert not [e for e in events if e["kind"] == "error"]


def test_result_is_last_even_with_fast_heartbeats(tmp_path, stand_in_model):
    for n in range(5):
        job = write_job(tmp_path / f"job{n}", {"path": str(stand_in_model)}, gen_tokens=3,
                        repetitions=4, warmup=1, heartbeat_s=0.001)
        assert run_job(str(job)) == 0
        events = load_events(job)
        assert [e["kind"] for e in events].count("result") == 1
        assert events[-1]["kind"] == "result"
        assert any(e["kind"] == "heartbeat" for e in events)
        assert [e["seq"] for e in events] == list(range(len(events)))


def _failure(job: Path) -> tuple[dict, dict]:
    events = load_events(job)
    assert events[0]["kind"] == "hello"
    errors = [e for e in events if e["kind"] == "error"]
    assert len(errors) == 1
    assert events[-1]["kind"] == "result" and events[-1]["status"] == "failed"
    assert events[-1]["error_kind"] == errors[0]["error_kind"]
    return errors[0], events[-1]


def test_missing_model_path_is_model_missing(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    job = write_job(tmp_path / "job", {"path": str(missing)})
    assert run_job(str(job)) == 1
    error, _ = _failure(job)
    assert error["error_kind"] == "model-missing"
    assert str(missing) in error["message"]


def test_unknown_backend_is_bad_job(tmp_path, stand_in_model):
    job = write_job(tmp_path / "job", {"path": str(stand_in_model)}, backend="tensorrt")
    assert run_job(str(job)) == 1
    error, _ = _failure(job)
    assert error["error_kind"] == "bad-job"
    assert "tensorrt" in error["message"]


def test_unknown_preset_is_bad_job(tmp_path):
    job = write_job(tmp_path / "job", {"preset": "no-such-model", "quant": "Q4_0"},
                    models_dir=tmp_path / "models")
    assert run_job(str(job)) == 1
    error, _ = _failure(job)
    assert error["error_kind"] == "bad-job"


def test_malformed_repetitions_are_a_bad_job_not_a_crash(tmp_path, stand_in_model):
    job = write_job(tmp_path / "job", {"path": str(stand_in_model)}, repetitions="many")
    assert run_job(str(job)) == 1
    error, _ = _failure(job)
    assert error["error_kind"] == "bad-job"
    assert "repetitions must be a number or a mapping" in error["message"]


def test_malformed_params_are_an_agent_error_not_a_crash(tmp_path, stand_in_model):
    job = write_job(tmp_path / "job", {"path": str(stand_in_model)}, threads="many")
    assert run_job(str(job)) == 1
    error, _ = _failure(job)
    assert error["error_kind"] == "agent-error"
    assert error["message"].startswith("ValueError")
    assert error["traceback"]


def test_sleep_fail_error_is_backend_error(tmp_path, stand_in_model, monkeypatch):
    monkeypatch.setenv("EDGEFARM_SLEEP_FAIL", "error")
    job = write_job(tmp_path / "job", {"path": str(stand_in_model)})
    assert run_job(str(job)) == 1
    error, _ = _failure(job)
    assert error["error_kind"] == "backend-error"


def test_agent_process_exit_status_and_crash(tmp_path, stand_in_model):
    ok = write_job(tmp_path / "ok", {"path": str(stand_in_model)}, gen_tokens=1)
    missing = write_job(tmp_path / "missing", {"path": str(tmp_path / "absent.gguf")})
    crash = write_job(tmp_path / "crash", {"path": str(stand_in_model)}, gen_tokens=1,
                      warmup=1, repetitions=2)
    assert run_agent(ok).returncode == 0
    assert load_events(ok)[-1]["status"] == "ok"
    proc = run_agent(missing)
    assert proc.returncode == 1
    assert _failure(missing)[0]["error_kind"] == "model-missing"

    proc = run_agent(crash, env=agent_env(EDGEFARM_SLEEP_FAIL="crash"))
    assert proc.returncode == 3
    events = load_events(crash)  # what was emitted before the crash is all there
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "hello"
    assert "result" not in kinds and "error" not in kinds
    reps = [e for e in events if e["kind"] == "repetition"]
    assert [r["warmup"] for r in reps] == [True]  # it died in the first counted one
    assert (crash / PID_FILE).read_text().strip().isdigit()


def test_run_writes_events_to_stdout_and_the_log(tmp_path, stand_in_model):
    job = write_job(tmp_path / "job", {"path": str(stand_in_model)}, gen_tokens=1)
    proc = subprocess.run([sys.executable, "-m", "agents", "run", str(job)],
                          cwd=str(job), env=agent_env(), capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == (job / EVENTS_FILE).read_text()

    quiet = write_job(tmp_path / "quiet", {"path": str(stand_in_model)}, gen_tokens=1)
    proc = subprocess.run([sys.executable, "-m", "agents", "run", "--quiet", str(quiet)],
                          cwd=str(quiet), env=agent_env(), capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and proc.stdout == b""
    assert (quiet / EVENTS_FILE).read_text().count("\n") >= 3


# -- probe ----------------------------------------------------------------------

def test_probe_facts():
    facts = probe.facts()
    assert facts["os"] == platform.system()
    assert facts["python"] == platform.python_version()
    assert facts["cpu_count"] == os.cpu_count()
    assert facts["agent_version"] == __version__
    assert facts["event_schema"] == EVENT_SCHEMA
    assert facts["machine"] == platform.machine()
    xl = facts["backends"]["xllamacpp"]
    assert xl["present"] is True
    assert xl["version"]
    assert "llama-bench" not in facts["backends"]  # only looked up when named
    if sys.platform.startswith("linux"):
        assert facts["ram_total_bytes"] > 100 * 2**20
    json.dumps(facts)  # a hello event must be able to carry it


def test_probe_command_reports_a_missing_llama_bench(capsys):
    assert agent_main(["probe", "--llama-bench", "/nonexistent"]) == 0
    facts = json.loads(capsys.readouterr().out)
    bench = facts["backends"]["llama-bench"]
    assert bench["present"] is False
    assert bench["path"] == "/nonexistent"
    assert bench["reason"]


def test_probe_finds_an_executable_llama_bench(tmp_path):
    binary = tmp_path / "llama-bench"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    assert probe.backends(str(binary))["llama-bench"] == {"present": True, "path": str(binary)}
    binary.chmod(0o644)  # there but not executable
    assert probe.backends(str(binary))["llama-bench"]["present"] is False


# -- gguf_info --------------------------------------------------------------------

def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("preset", ["tiny-moe", "tiny-dense"])
def test_gguf_info_params_match_the_metadata(tiny_models, preset):
    path = tiny_models[preset]
    info = read_gguf_info(str(path))
    reader = gguf.GGUFReader(str(path))  # the reference reader
    assert info["params_total"] == _field(reader, "edgefarm.params.total")
    assert info["params_active"] == _field(reader, "edgefarm.params.active")
    assert info["params_total"] == sum(int(t.n_elements) for t in reader.tensors)
    assert info["architecture"] == _field(reader, "general.architecture")
    assert info["architecture"] == ("olmoe" if preset == "tiny-moe" else "llama")
    assert info["n_tensors"] == len(reader.tensors)
    assert info["gguf_version"] == 3
    meta = info["metadata"]
    assert meta["edgefarm.preset"] == preset and meta["edgefarm.synthetic"] is True
    assert meta["tokenizer.ggml.tokens"] == {"array_len": len(reader.fields[
        "tokenizer.ggml.tokens"].data)}  # long arrays are summarized, not kept
    if preset == "tiny-moe":
        assert info["params_active"] < info["params_total"]
    else:
        assert info["params_active"] == info["params_total"]


@pytest.mark.parametrize("preset", ["tiny-moe", "tiny-dense"])
def test_gguf_info_counts_params_of_files_without_edgefarm_keys(tiny_models, tmp_path, preset):
    """A GGUF that edgefarm did not write: counts come from the tensor table."""
    data = tiny_models[preset].read_bytes()
    # Same-length renames keep the layout: the reader no longer finds the keys.
    for key in (b"edgefarm.params.total", b"edgefarm.params.active"):
        assert data.count(key) == 1
        data = data.replace(key, key[:-1] + b"X")
    other = tmp_path / "other.gguf"
    other.write_bytes(data)
    counted = read_gguf_info(str(other))
    assert "edgefarm.params.total" not in counted["metadata"]
    expected = read_gguf_info(str(tiny_models[preset]))
    assert counted["params_total"] == expected["params_total"]
    assert counted["params_active"] == expected["params_active"]


def test_gguf_info_rejects_non_gguf_files(tmp_path):
    for name, data in [("text.gguf", b"hello, this is not a model\n" * 10),
                       ("empty.gguf", b""), ("ggml.bin", b"ggjt" + b"\0" * 64)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError):
            read_gguf_info(str(path))


def test_gguf_info_rejects_truncated_files(tiny_models, tmp_path):
    data = tiny_models["tiny-moe"].read_bytes()
    reader = gguf.GGUFReader(str(tiny_models["tiny-moe"]))
    data_start = int(reader.data_offset)
    cuts = {"magic": 3, "counts": 12, "metadata": data_start // 3,
            "tensor table": data_start - 40, "tensor data": data_start + 100,
            "last byte": len(data) - 1}
    for where, size in cuts.items():
        path = tmp_path / f"cut-{size}.gguf"
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match="truncated|not a GGUF"):
            read_gguf_info(str(path))
        assert where  # (named for the failure message)


def test_gguf_info_rejects_corrupt_lengths_without_allocating(tmp_path):
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    for name, body in [("huge-key", struct.pack("<Q", 2**62)),
                       ("huge-array", struct.pack("<Q", 3) + b"key" + struct.pack("<IIQ", 9, 8,
                                                                                   2**60)),
                       ("huge-scalar-array", struct.pack("<Q", 3) + b"key"
                        + struct.pack("<IIQ", 9, 10, 2**60))]:
        path = tmp_path / name
        path.write_bytes(head + body)
        with pytest.raises(ValueError, match="truncated"):
            read_gguf_info(str(path))


def test_gguf_info_rejects_gguf_v1(tmp_path):
    path = tmp_path / "v1.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<III", 1, 0, 0))
    with pytest.raises(ValueError, match="version"):
        read_gguf_info(str(path))


def test_gguf_info_type_sizes_agree_with_the_gguf_package():
    sizes = {int(t): size for t, size in gguf.constants.GGML_QUANT_SIZES.items()}
    for type_id, size in _TYPE_SIZES.items():
        assert sizes[type_id] == size, type_id


# -- peakmem ------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_peak_rss_resets_and_grows_with_an_allocation():
    assert peakmem.reset_peak() is True
    before, scope = peakmem.peak_rss_bytes()
    assert scope == "since-reset"
    block = b"\x01" * (50 * 2**20)  # written, so every page is resident
    grown, _ = peakmem.peak_rss_bytes()
    assert grown >= before + 45 * 2**20
    del block
    assert peakmem.reset_peak() is True
    after, _ = peakmem.peak_rss_bytes()
    assert after <= grown - 40 * 2**20  # the mark really was reset


def test_rusage_maxrss_is_in_bytes():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    factor = 1 if sys.platform == "darwin" else 1024
    assert peakmem.rusage_maxrss_bytes(usage) == usage.ru_maxrss * factor
    assert peakmem.rusage_maxrss_bytes(usage) > 10 * 2**20
