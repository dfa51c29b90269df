"""Telemetry in the runner: energy per repetition, idle power, cooldown, sample events.

The runner runs real jobs (the test-only sleep backend, a stand-in llama-bench
and the real xllamacpp backend on a tiny synthetic model). Power comes from
the TEST-ONLY source a job spec can name (``telemetry_test_source``), so every
expected energy is exact: 12.5 W times the window's seconds. Without it the
job measures what this machine offers, which is no power at all (no RAPL, no
NVML): the events must say so.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import pytest
from agent_fixtures import (  # noqa: F401  (*_fixture: the fixtures stand_in_model, tiny_models)
    load_events,
    run_agent,
    stand_in_model_fixture,
    tiny_models_fixture,
    write_job,
)

from agents.runner import run_job
from agents.telemetry.job import JobTelemetry
from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source
from agents.telemetry.sources.nvml import NvmlSource

LIVE_SAMPLE_FIELDS = {"rails_w", "total_w", "total_rail", "ram_used_mb", "ram_total_mb",
                      "gpu_mem_used_mb", "temps_c"}
ENVELOPE = {"v", "seq", "kind", "job", "attempt", "t", "mono"}


def job_with(job_dir: Path, model: Path, *, backend: str = "sleep", device=None,
             **extra) -> Path:
    """A job.json written as the controller writes it, plus the telemetry keys in ``extra``."""
    params = {k: extra.pop(k) for k in ("gen_tokens", "repetitions", "warmup", "prompt_tokens",
                                        "gpu_layers") if k in extra}
    write_job(job_dir, {"path": str(model)}, backend=backend, **params)
    spec = json.loads((job_dir / "job.json").read_text())
    spec.update(extra)
    if device:
        spec["device"].update(device)
    (job_dir / "job.json").write_text(json.dumps(spec))
    return job_dir


def of(events, kind):
    return [e for e in events if e["kind"] == kind]


def span(window):
    return window[1] - window[0]


# -- the sleep backend with a constant 12.5 W --------------------------------------

def test_constant_power_gives_exact_energy_per_repetition(tmp_path, stand_in_model):
    job = job_with(tmp_path / "job", stand_in_model, gen_tokens=60, repetitions=3, warmup=1,
                   idle_s=0.2, telemetry_interval_s=0.02, telemetry_test_source="constant:12.5")
    assert run_job(str(job)) == 0
    events = load_events(job)
    kinds = [e["kind"] for e in events]
    phases = [e["phase"] for e in of(events, "phase")]
    assert phases[:3] == ["model", "idle", "warmup"]
    # Idle power: on the sample event right after the idle phase.
    idle = events[kinds.index("phase") + 2]
    assert idle["kind"] == "sample" and idle["idle_power_w"] == pytest.approx(12.5)
    assert idle["idle_s"] == pytest.approx(0.2, abs=0.05)
    assert idle["energy_source"] == "integrated:test"
    reps = of(events, "repetition")
    assert len(reps) == 4
    for rep in reps:
        window = rep["decode_window_mono"]
        assert span(window) == pytest.approx(rep["decode_s"], abs=0.005)
        assert rep["energy_decode_j"] == pytest.approx(12.5 * span(window), rel=1e-9)
        assert rep["j_per_token"] == pytest.approx(rep["energy_decode_j"] / 60, rel=1e-12)
        assert rep["avg_power_w"] == pytest.approx(12.5) and rep["peak_power_w"] == 12.5
        assert rep["idle_power_w"] == pytest.approx(12.5)
        assert rep["energy_decode_net_j"] == pytest.approx(0.0, abs=1e-9)
        assert rep["energy_source"] == "integrated:test"
        assert rep["energy_method"] == "trapezoid-window"
        assert rep["peak_mem_scope"] == "system" and rep["peak_mem_bytes"] > 2**20
        assert "energy_unmeasured_reason" not in rep and "energy_prefill_j" not in rep
        # The window lies between the phase event and the repetition event.
        phase = events[rep["seq"] - 1]
        assert phase["kind"] == "phase" and phase["mono"] <= window[0] <= window[1] <= rep["mono"]
    info = events[-1]["info"]
    assert info["energy"] == {"measured": True, "source": "integrated:test",
                              "idle_power_w": pytest.approx(12.5)}
    assert info["telemetry"]["sources"][0]["name"] == "test-constant"
    assert info["telemetry"]["samples"] >= 10


def test_counter_source_energy_in_the_runner(tmp_path, stand_in_model):
    job = job_with(tmp_path / "job", stand_in_model, gen_tokens=80, repetitions=2, warmup=0,
                   idle_s=0.1, telemetry_interval_s=0.02,
                   telemetry_test_source="counter:12.5:5")  # wraps every 0.4 s
    assert run_job(str(job)) == 0
    events = load_events(job)
    for rep in of(events, "repetition"):
        assert rep["energy_source"] == "test-counter"
        # rel: a reading's time stamp is the middle of the read, and the
        # thread can be preempted in between on a loaded machine.
        assert rep["energy_decode_j"] == pytest.approx(12.5 * span(rep["decode_window_mono"]),
                                                       rel=0.03)
        assert "peak_power_w" not in rep  # a counter reports no power
        assert rep["avg_power_w"] == pytest.approx(12.5, rel=0.03)


def test_this_machine_has_no_power_source_and_says_why(tmp_path, stand_in_model):
    """The default job here: no RAPL, no NVML, not a Jetson: energy absent, memory present."""
    job = job_with(tmp_path / "job", stand_in_model, gen_tokens=20, repetitions=2, warmup=1)
    started = time.monotonic()
    assert run_job(str(job)) == 0
    assert time.monotonic() - started < 2.0  # no idle wait without a power source
    events = load_events(job)
    reps = of(events, "repetition")
    info = events[-1]["info"]
    if info["energy"]["measured"]:
        pytest.skip(f"this machine measures power: {info['energy']['source']}")
    reason = info["energy"]["reason"]
    assert reason.startswith("energy not measured on this device: ")
    assert "rapl" in reason and "nvml" in reason
    assert "idle" not in [e["phase"] for e in of(events, "phase")]
    for rep in reps:
        assert rep["energy_unmeasured_reason"] == reason
        for absent in ("energy_decode_j", "j_per_token", "avg_power_w", "energy_source",
                       "idle_power_w"):
            assert absent not in rep
        assert rep["peak_mem_scope"] == "system" and rep["peak_mem_bytes"] > 2**20
    assert info["telemetry"]["unavailable"]["rapl"]
    samples = of(events, "sample")
    assert samples and set(samples[0]) - ENVELOPE <= LIVE_SAMPLE_FIELDS
    assert samples[0]["ram_used_mb"] > 0 and samples[0]["ram_total_mb"] > 0


def test_telemetry_false_turns_everything_off(tmp_path, stand_in_model):
    job = job_with(tmp_path / "job", stand_in_model, gen_tokens=5, repetitions=1, warmup=0,
                   telemetry=False, telemetry_test_source="constant:12.5")
    assert run_job(str(job)) == 0
    events = load_events(job)
    assert not of(events, "sample")
    rep = of(events, "repetition")[0]
    assert "telemetry: false" in rep["energy_unmeasured_reason"]
    assert "peak_mem_bytes" not in rep
    assert events[-1]["info"]["energy"]["measured"] is False
    assert events[-1]["info"]["telemetry"] == {"enabled": False}


@pytest.mark.parametrize("extra, words", [
    ({"telemetry_interval_s": 0}, "telemetry_interval_s"),
    ({"idle_s": "long"}, "idle_s"),
    ({"cooldown": {"timeout_s": 5}}, "cooldown"),
    ({"telemetry": "yes"}, "telemetry must be"),
    ({"telemetry_test_source": "ramp:1"}, "telemetry_test_source"),
])
def test_malformed_telemetry_settings_are_bad_job(tmp_path, stand_in_model, extra, words):
    job = job_with(tmp_path / "job", stand_in_model, **extra)
    assert run_job(str(job)) == 1
    events = load_events(job)
    error = of(events, "error")[0]
    assert error["error_kind"] == "bad-job" and words in error["message"]
    assert events[-1]["kind"] == "result"


def test_sample_events_are_at_most_one_a_second(tmp_path, stand_in_model):
    job = job_with(tmp_path / "job", stand_in_model, gen_tokens=300, repetitions=4, warmup=0,
                   idle_s=0, telemetry_interval_s=0.01, telemetry_test_source="constant:3:41")
    started = time.monotonic()
    assert run_job(str(job)) == 0
    seconds = time.monotonic() - started
    events = load_events(job)
    samples = of(events, "sample")
    info = events[-1]["info"]["telemetry"]
    assert info["samples"] >= 30  # sampled at up to 100 Hz...
    assert 1 <= len(samples) <= seconds + 1  # ...reported at most once a second
    assert info["sample_events"] == len(samples)
    for sample in samples:
        assert set(sample) - ENVELOPE <= LIVE_SAMPLE_FIELDS
        assert sample["total_w"] == 3.0 and sample["temps_c"] == {"test": 41.0}
    monos = [s["mono"] for s in samples]
    assert all(b - a >= 0.9 for a, b in zip(monos, monos[1:], strict=False))
    assert events[-1]["kind"] == "result"
    rep = of(events, "repetition")[0]
    assert rep["max_temp_c"] == 41.0 and rep["max_temp_sensor"] == "test"
    assert "idle_power_w" not in rep and "idle_s is 0" in rep["idle_unmeasured_reason"]


# -- cooldown ------------------------------------------------------------------------

def test_cooldown_times_out_on_a_hot_device(tmp_path, stand_in_model):
    job = job_with(tmp_path / "job", stand_in_model, gen_tokens=5, repetitions=2, warmup=0,
                   idle_s=0, telemetry_interval_s=0.02, telemetry_test_source="constant:5:70",
                   cooldown={"max_temp_c": 60, "timeout_s": 0.2})
    assert run_job(str(job)) == 0
    events = load_events(job)
    cooldowns = [e for e in of(events, "phase") if e["phase"] == "cooldown"]
    # Before the first repetition and between the two; not after the last.
    assert len(cooldowns) == 2
    assert cooldowns[0]["temp_c"] == 70.0 and cooldowns[0]["max_temp_c"] == 60
    for rep in of(events, "repetition"):
        assert rep["cooldown_s"] >= 0.2 and rep["cooldown_timed_out"] is True
        assert rep["cooldown_temp_c"] == 70.0
    assert events[-1]["info"]["telemetry"]["cooldown"]["waits"] == 2


def test_cooldown_not_needed_on_a_cool_device(tmp_path, stand_in_model):
    job = job_with(tmp_path / "job", stand_in_model, gen_tokens=5, repetitions=2, warmup=0,
                   idle_s=0, telemetry_test_source="constant:5:40",
                   cooldown={"max_temp_c": 60})
    assert run_job(str(job)) == 0
    events = load_events(job)
    assert "cooldown" not in [e["phase"] for e in of(events, "phase")]
    for rep in of(events, "repetition"):
        assert rep["cooldown_s"] == 0.0 and rep["cooldown_temp_c"] == 40.0
        assert "cooldown_timed_out" not in rep


class Cooling(Source):
    """Temperature falls 10 °C per read from 80 °C; the clock drops when ``throttled``."""

    name = "cooling"
    power = True

    def __init__(self):
        self.temp = 90.0
        self.throttled = False

    def available(self):
        return True, "fake"

    def read(self, into):
        self.temp = max(30.0, self.temp - 10.0)
        into.total_w = 7.0
        into.total_rail = "fake"
        into.temps_c["soc"] = self.temp
        into.clocks_mhz["cpu0"] = 1000.0 if self.throttled else 2000.0
        return True


def test_cooldown_waits_until_cool_and_reports_clock_changes():
    events = []
    source = Cooling()
    telemetry = JobTelemetry(lambda kind, fields: events.append((kind, fields)), [source],
                             interval=0.01, idle_s=0.0,
                             cooldown={"max_temp_c": 50.0, "timeout_s": 10.0},
                             expected_repetitions=2)
    telemetry.start()
    try:
        start = time.monotonic()
        telemetry.before("phase", {"phase": "decode"})
        telemetry.after("phase", {"phase": "decode"})
        time.sleep(0.1)
        source.throttled = True  # under load, the clock falls
        time.sleep(0.1)
        rep = telemetry.before("repetition", {"gen_tokens": 10, "decode_s": 0.2})
    finally:
        telemetry.stop()
    assert time.monotonic() - start < 5
    phases = [fields for kind, fields in events if kind == "phase"]
    assert phases[0] == ({"phase": "cooldown", "max_temp_c": 50.0, "timeout_s": 10.0,
                          "temp_c": 80.0, "sensor": "soc"})
    assert rep["cooldown_temp_c"] < 50.0 and rep["cooldown_s"] > 0
    assert rep["energy_decode_j"] == pytest.approx(7.0 * span(rep["decode_window_mono"]))
    assert rep["warning"] == "clock cpu0 fell from 2000 to 1000 MHz"


# -- llama-bench: per-run windows from its --progress lines ------------------------

LLAMA_BENCH_JSON = Path(__file__).parent / "data" / "llama_bench" / "ggml_org_b5163_rtx4080.json"


def llama_bench_stand_in(tmp_path: Path, monkeypatch, mode: str = "ok") -> Path:
    """tests/test_llama_bench.py's stand-in (llama-bench's documented --progress output)."""
    from test_llama_bench import STAND_IN

    binary = tmp_path / "bin" / "llama-bench"
    binary.parent.mkdir()
    binary.write_text(STAND_IN.replace("{python}", sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("FAKE_LLAMA_BENCH_OUTPUT", str(LLAMA_BENCH_JSON))
    monkeypatch.setenv("FAKE_LLAMA_BENCH_MODE", mode)
    monkeypatch.setenv("FAKE_LLAMA_BENCH_RUN_S", "0.05")
    for name in ("FAKE_LLAMA_BENCH_PREFIX", "FAKE_LLAMA_BENCH_STDERR",
                 "FAKE_LLAMA_BENCH_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    return binary


def llama_bench_job(tmp_path: Path, model: Path, binary: Path, source: str) -> Path:
    return job_with(tmp_path / "job", model, backend="llama-bench", prompt_tokens=512,
                    gen_tokens=128, repetitions=5, warmup=1, gpu_layers=99, idle_s=0.1,
                    telemetry_interval_s=0.02, telemetry_test_source=source,
                    device={"llama_bench": str(binary)}, cooldown={"max_temp_c": 200})


def test_llama_bench_energy_per_run_window(tmp_path, stand_in_model, monkeypatch):
    binary = llama_bench_stand_in(tmp_path, monkeypatch)
    job = llama_bench_job(tmp_path, stand_in_model, binary, "constant:10:30")
    assert run_job(str(job)) == 0
    events = load_events(job)
    assert [e["phase"] for e in of(events, "phase")] == ["model", "idle", "bench"]
    reps = of(events, "repetition")
    assert len(reps) == 5
    process = reps[0]["process_window_mono"]
    for rep in reps:
        prefill, decode = rep["prefill_window_mono"], rep["decode_window_mono"]
        assert process[0] <= prefill[0] < prefill[1] <= decode[0] < decode[1] <= process[1]
        assert rep["energy_method"] == "trapezoid-window"
        # 10 W over exactly each run's window, not the process's average.
        assert rep["energy_prefill_j"] == pytest.approx(10.0 * span(prefill), rel=1e-9)
        assert rep["energy_decode_j"] == pytest.approx(10.0 * span(decode), rel=1e-9)
        assert rep["j_per_token"] == pytest.approx(10.0 * span(decode) / 128, rel=1e-9)
        assert span(decode) == pytest.approx(rep["decode_s"], abs=2e-6)
        assert rep["energy_process_j"] == pytest.approx(10.0 * span(process), rel=1e-9)
        assert rep["avg_power_w"] == pytest.approx(10.0)
        assert rep["energy_decode_net_j"] == pytest.approx(0.0, abs=1e-6)
        assert "energy_unmeasured_reason" not in rep
    info = events[-1]["info"]
    assert info["phase_windows"] == "progress-lines"
    assert info["energy"]["measured"] is True
    # llama-bench's repetitions come after its process ends: no cooldown between them.
    assert "cooldown_s" in reps[0] and "cooldown_s" not in reps[1]


def test_llama_bench_counter_energy_per_run_window(tmp_path, stand_in_model, monkeypatch):
    binary = llama_bench_stand_in(tmp_path, monkeypatch)
    job = llama_bench_job(tmp_path, stand_in_model, binary, "counter:12.5")
    assert run_job(str(job)) == 0
    for rep in of(load_events(job), "repetition"):
        assert rep["energy_method"] == "counter-window"
        assert rep["energy_source"] == "test-counter"
        # rel: a reading's time stamp is the middle of the read (see above).
        assert rep["energy_decode_j"] == pytest.approx(
            12.5 * span(rep["decode_window_mono"]), rel=0.05)


def test_llama_bench_without_progress_reports_no_energy_per_phase(tmp_path, stand_in_model,
                                                                  monkeypatch):
    """An old build: the process's energy only, and J/token absent with the reason."""
    binary = llama_bench_stand_in(tmp_path, monkeypatch, mode="old-build")
    job = llama_bench_job(tmp_path, stand_in_model, binary, "constant:10:30")
    assert run_job(str(job)) == 0
    events = load_events(job)
    reps = of(events, "repetition")
    assert len(reps) == 5
    window = reps[0]["process_window_mono"]
    for rep in reps:
        assert rep["energy_method"] == "process-average"
        assert rep["energy_process_j"] == pytest.approx(10.0 * span(window), rel=1e-9)
        assert rep["avg_power_w"] == pytest.approx(10.0)
        for key in ("energy_prefill_j", "energy_decode_j", "j_per_token", "energy_decode_net_j"):
            assert key not in rep
        assert rep["energy_unmeasured_reason"].startswith("energy per phase not measured")
        assert "rejects --progress" in rep["energy_unmeasured_reason"]
    energy = events[-1]["info"]["energy"]
    assert energy["measured"] is False and "rejects --progress" in energy["reason"]


# -- warnings only for what happens inside the counted windows ----------------------

class Clocked(Source):
    """10 W; the clock reads ``clock`` (a test sets it) and a throttle flag ``flag``."""

    name = "clocked"
    power = True
    throttle_keys = ("gpu0_throttle",)

    def __init__(self):
        self.clock = 2000.0
        self.flag = 0

    def available(self):
        return True, "fake"

    def read(self, into):
        into.total_w = 10.0
        into.total_rail = "fake"
        into.clocks_mhz["gpu0_sm"] = self.clock
        into.extra["gpu0_throttle"] = self.flag
        return True


def _tick(telemetry, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        telemetry.sampler.sample_now()
        time.sleep(0.005)


def test_clock_and_throttle_outside_the_windows_raise_no_warning():
    source = Clocked()
    telemetry = JobTelemetry(lambda kind, fields: None, [source], interval=10.0, idle_s=0.0)
    telemetry.start()
    try:
        t_start = time.monotonic()
        source.clock, source.flag = 1980.0, 0
        _tick(telemetry, 0.05)
        source.clock, source.flag = 345.0, 0x4  # model load: idle clock, a throttle flag
        _tick(telemetry, 0.05)
        source.clock, source.flag = 1980.0, 0
        p0 = time.monotonic()
        _tick(telemetry, 0.05)
        p1 = time.monotonic()
        source.clock = 400.0  # between the runs (context set-up)
        _tick(telemetry, 0.05)
        source.clock = 1980.0
        d0 = time.monotonic()
        _tick(telemetry, 0.05)
        d1 = time.monotonic()
        source.clock = 300.0  # after the last run
        _tick(telemetry, 0.05)
        t_end = time.monotonic()
        quiet = telemetry.before("repetition", {
            "gen_tokens": 8, "prefill_window_mono": [p0, p1], "decode_window_mono": [d0, d1],
            "process_window_mono": [t_start, t_end]})
        # The same drop inside a counted window is reported.
        source.clock = 1980.0
        d2 = time.monotonic()
        _tick(telemetry, 0.03)
        source.clock, source.flag = 1000.0, 0x4 | 0x20  # power cap and heat
        _tick(telemetry, 0.03)
        d3 = time.monotonic()
        loud = telemetry.before("repetition", {"gen_tokens": 8, "decode_window_mono": [d2, d3]})
        # The GPU at its own power cap alone, clocks steady: recorded, no warning.
        source.clock, source.flag = 1980.0, 0
        d4 = time.monotonic()
        _tick(telemetry, 0.03)
        source.flag = 0x4
        _tick(telemetry, 0.03)
        d5 = time.monotonic()
        capped = telemetry.before("repetition", {"gen_tokens": 8,
                                                 "decode_window_mono": [d4, d5]})
    finally:
        telemetry.stop()
    assert "warning" not in quiet
    assert quiet["energy_decode_j"] == pytest.approx(10.0 * (d1 - d0))
    assert quiet["avg_power_w"] == pytest.approx(10.0)
    assert quiet["energy_process_j"] == pytest.approx(10.0 * (t_end - t_start))
    assert loud["warning"] == ("clock gpu0_sm fell from 1980 to 1000 MHz; "
                               "clocked gpu0_throttle: sw-power-cap+sw-thermal")
    assert "power_limited" not in loud and "power_limited" not in quiet
    assert "warning" not in capped
    assert capped["power_limited"] == "clocked gpu0_throttle: sw-power-cap"


# -- NVML: which memory call, and the job's own processes ---------------------------

def _nvml(v2=True, driver_v2=True, processes=()):
    """A fake ``pynvml`` with the calls NvmlSource makes; memory as an H200 reports it.

    Version 1 counts the driver's reserved 600 MiB as used, version 2 does not.
    """
    mib = 1048576

    def memory_info(handle, version=None):
        if version is None:
            return types.SimpleNamespace(total=143771 * mib, used=(2048 + 600) * mib)
        if not driver_v2:
            raise RuntimeError("Function Not Found")
        assert version == 0x02000028
        return types.SimpleNamespace(total=143771 * mib, reserved=600 * mib, used=2048 * mib)

    fake = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: "Fake H200",
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 1000,
        nvmlDeviceGetPowerUsage=lambda h: 100_000,
        nvmlDeviceGetMemoryInfo=memory_info,
        nvmlDeviceGetTemperature=lambda h, k: 40,
        nvmlDeviceGetClockInfo=lambda h, k: 1980,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=0),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes])
    if v2:
        fake.nvmlMemory_v2 = 0x02000028  # pynvml's constant: sizeof | version 2 << 24
    return fake


def _proc_tree(root: Path, parents: dict[int, int]) -> str:
    for pid, ppid in parents.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (llama bench) S {ppid} {pid} 0 0\n")
    return str(root)


@pytest.mark.parametrize("fake, used, call", [
    (_nvml(), 2048, "v2"),                    # the call that leaves reserved memory out
    (_nvml(v2=False), 2648, "v1"),            # an old nvidia-ml-py without nvmlMemory_v2
    (_nvml(driver_v2=False), 2648, "v1"),     # a driver without nvmlDeviceGetMemoryInfo_v2
])
def test_nvml_memory_call_choice(fake, used, call):
    source = NvmlSource(fake)
    source.start()
    sample = Sample()
    source.read(sample)
    source.stop()
    assert sample.gpu_mem_used_mb == used and sample.extra["nvml_memory"] == call


def test_nvml_job_memory_counts_this_process_and_its_descendants(tmp_path):
    gib = 1 << 30
    proc = _proc_tree(tmp_path / "proc", {100: 1, 200: 100, 250: 200, 300: 1})
    fake = _nvml(processes=[(200, gib), (250, gib // 2), (300, 5 * gib), (100, None),
                            (999, gib)])  # 999: no /proc entry (another PID namespace)
    source = NvmlSource(fake, proc_root=proc, root_pid=100)
    source.start()
    sample = Sample()
    source.read(sample)
    assert sample.extra["gpu_mem_job_mb"] == 1536.0  # 200 and its child 250, not 300 or 999
    # None of the listed processes is this job's: absent, not zero.
    alone = NvmlSource(_nvml(processes=[(300, gib)]), proc_root=proc, root_pid=100)
    alone.start()
    other = Sample()
    alone.read(other)
    assert "gpu_mem_job_mb" not in other.extra and other.gpu_mem_used_mb == 2048


def test_job_memory_reaches_the_repetition():
    gib = 1 << 30
    source = NvmlSource(_nvml(processes=[(os.getpid(), gib)]))
    telemetry = JobTelemetry(lambda kind, fields: None, [source], interval=10.0, idle_s=0.0,
                             gpu_layers=99)
    telemetry.start()
    try:
        t0 = time.monotonic()
        telemetry.sampler.sample_now()
        t1 = time.monotonic()
        rep = telemetry.before("repetition", {"gen_tokens": 4, "decode_window_mono": [t0, t1]})
    finally:
        telemetry.stop()
    assert rep["peak_mem_bytes"] == 2048 * 1048576 and rep["peak_mem_scope"] == "gpu"
    assert rep["peak_gpu_mem_job_bytes"] == gib


# -- the real xllamacpp backend --------------------------------------------------

def test_xllamacpp_with_the_sampler_reports_consistent_windows(tmp_path, tiny_models):
    job = job_with(tmp_path / "job", tiny_models["tiny-dense"], backend="xllamacpp",
                   prompt_tokens=24, gen_tokens=32, repetitions=2, warmup=1, idle_s=0.1,
                   telemetry_interval_s=0.05, telemetry_test_source="constant:12.5")
    proc = run_agent(job)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    events = load_events(job)
    assert events[-1]["status"] == "ok"
    reps = of(events, "repetition")
    assert len(reps) == 3
    for rep in reps:
        prefill, decode = rep["prefill_window_mono"], rep["decode_window_mono"]
        assert prefill[1] == decode[0]  # the first token ends prefill and starts decode
        assert span(prefill) == pytest.approx(rep["ttft_s"], abs=2e-6)
        assert rep["ttft_s"] >= rep["prefill_s"] * 0.5
        assert span(decode) == pytest.approx(rep["decode_s"], abs=0.05)
        assert decode[1] <= rep["mono"]
        # A warm-up generates 2 tokens (one decode step), as llama-bench's does.
        steps = 1 if rep["warmup"] else 31
        assert rep["decode_window_tokens"] == steps
        assert rep["energy_prefill_j"] == pytest.approx(12.5 * span(prefill), rel=1e-6,
                                                        abs=1e-9)
        assert rep["energy_decode_j"] == pytest.approx(12.5 * span(decode), rel=1e-6, abs=1e-9)
        assert rep["j_per_token"] == pytest.approx(rep["energy_decode_j"] / steps)
        assert rep["peak_rss_bytes"] > 10 * 2**20  # the backend's own fields are unchanged
        assert rep["peak_mem_scope"] == "system"
    phase = [e for e in of(events, "phase") if e["phase"] == "prefill"][0]
    first_counted = [r for r in reps if not r["warmup"]][0]
    assert phase["mono"] <= first_counted["prefill_window_mono"][0]
    assert events[-1]["info"]["energy"]["measured"] is True


def test_xllamacpp_default_telemetry_on_this_machine(tmp_path, tiny_models):
    job = job_with(tmp_path / "job", tiny_models["tiny-moe"], backend="xllamacpp",
                   prompt_tokens=16, gen_tokens=8, repetitions=1, warmup=0)
    proc = run_agent(job)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    events = load_events(job)
    rep = of(events, "repetition")[0]
    info = events[-1]["info"]
    assert rep["decode_tps"] > 0 and rep["peak_mem_bytes"] > 0
    if not info["energy"]["measured"]:
        assert rep["energy_unmeasured_reason"] == info["energy"]["reason"]


def test_sampler_feeds_are_thread_safe_under_the_runner_hooks():
    """The runner's thread asks for samples while the sampler thread takes them."""
    telemetry = JobTelemetry(lambda kind, fields: None, [Cooling()], interval=0.001,
                             idle_s=0.0, expected_repetitions=50)
    telemetry.start()
    try:
        for _ in range(50):
            telemetry.before("phase", {"phase": "decode"})
            telemetry.after("phase", {"phase": "decode"})
            rep = telemetry.before("repetition", {"gen_tokens": 1})
            telemetry.after("repetition", rep)
            assert rep["energy_decode_j"] == pytest.approx(
                7.0 * span(rep["decode_window_mono"]), abs=1e-9)
    finally:
        telemetry.stop()
    samples = telemetry.sampler.samples
    assert [s.t for s in samples] == sorted(s.t for s in samples)
    assert isinstance(samples[0], Sample)


class Dying(Source):
    """Reads 8 W a few times, then its device goes away."""

    name = "dying"
    power = True

    def __init__(self):
        self.reads = 0

    def available(self):
        return True, "fake"

    def read(self, into):
        self.reads += 1
        if self.reads > 3:
            raise OSError("device went away")
        into.total_w = 8.0
        into.total_rail = "fake"
        return True


def test_a_source_that_dies_leaves_energy_absent_with_the_reason():
    telemetry = JobTelemetry(lambda kind, fields: None, [Dying()], interval=0.01, idle_s=0.0,
                             expected_repetitions=1)
    telemetry.start()
    try:
        telemetry.before("phase", {"phase": "decode"})
        telemetry.after("phase", {"phase": "decode"})
        time.sleep(0.1)
        rep = telemetry.before("repetition", {"gen_tokens": 4})
        info = telemetry.result_info()
    finally:
        telemetry.stop()
    assert "energy_decode_j" not in rep
    assert rep["energy_unmeasured_reason"].startswith("energy not measured: samples of total_w")
    assert "dying: read failed: OSError: device went away" in rep["energy_unmeasured_reason"]
    assert info["energy"] == {"measured": False, "reason": rep["energy_unmeasured_reason"]}
    assert "device went away" in info["telemetry"]["errors"]["dying"]
