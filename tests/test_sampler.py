"""The live sampler and its sources (agents/telemetry/sampler.py, sources/).

Fake sources defined here produce known power curves, so every energy has an
analytic answer. Sources that read the system are pointed at fake /proc,
sysfs and powercap trees, fake tools (small Python scripts printing what
tegrastats, macmon and powermetrics print) and a fake ``pynvml`` module.
"""

from __future__ import annotations

import math
import os
import plistlib
import sys
import time
import types
from pathlib import Path

import pytest

from agents import probe
from agents.telemetry.sample import Sample
from agents.telemetry.sampler import EnergyUnavailable, Sampler
from agents.telemetry.sources.base import Source
from agents.telemetry.sources.fake import ConstantPowerSource, CounterSource, make_test_source
from agents.telemetry.sources.macmon import MacmonSource
from agents.telemetry.sources.nvml import NvmlSource
from agents.telemetry.sources.powermetrics import PowermetricsSource
from agents.telemetry.sources.rapl import RaplSource
from agents.telemetry.sources.selection import select_sources
from agents.telemetry.sources.system import SystemSource
from agents.telemetry.sources.tegrastats import TegrastatsSource

# -- fake sources ---------------------------------------------------------------


class Curve(Source):
    """A polled power source whose power is ``f(t - t_start)`` (monotonic seconds)."""

    name = "curve"
    power = True

    def __init__(self, f, temp=None, clocks=None):
        self.f = f
        self.temp = temp
        self.clocks = clocks
        self.t_start = None
        self.reads = 0

    def available(self):
        return True, "fake"

    def start(self):
        self.t_start = time.monotonic()

    def read(self, into):
        x = time.monotonic() - self.t_start
        into.total_w = self.f(x)
        into.total_rail = "curve"
        into.rails_w["curve"] = into.total_w
        if self.temp is not None:
            into.temps_c["curve"] = self.temp(x)
        if self.clocks is not None:
            into.clocks_mhz["gpu"] = self.clocks(x)
        self.reads += 1
        return True


class FedCounter(Source):
    """A counter source whose samples the test adds by hand (wraps at ``range_j``)."""

    name = "fed"
    power = True
    counter_keys = ("c",)
    counter_label = "fed-counter"

    def __init__(self, range_j=None):
        self.counter_ranges = {"c": range_j} if range_j else {}

    def available(self):
        return True, "fake"


class FedPower(Source):
    name = "fedpower"
    power = True

    def available(self):
        return True, "fake"


def feed(sampler, points, key="total_w"):
    for t, value in points:
        sample = Sample(t=t)
        if key == "total_w":
            sample.total_w = value
            sample.total_rail = "fed"
        else:
            sample.energy_j[key] = value
        sampler.add(sample)


# -- integration against analytic energies --------------------------------------

def test_linear_power_integrates_exactly_over_any_window():
    sampler = Sampler([FedPower()], interval=0.1)
    feed(sampler, [(i / 10, 5.0 + 2.0 * (i / 10)) for i in range(101)])  # P = 5 + 2t
    for t0, t1 in ((0.0, 10.0), (0.25, 7.6), (3.33, 3.34), (4.0, 4.0)):
        analytic = 5.0 * (t1 - t0) + (t1 ** 2 - t0 ** 2)
        assert sampler.energy_j(t0, t1) == pytest.approx(analytic, rel=1e-12, abs=1e-12)
    assert sampler.energy_source == "integrated:fed"
    average, peak = sampler.average_and_peak_w(2.0, 4.0)
    assert average == pytest.approx(5.0 + 2.0 * 3.0)
    assert peak == pytest.approx(13.0)


def test_sine_power_matches_the_analytic_energy_closely():
    sampler = Sampler([FedPower()], interval=0.05)
    feed(sampler, [(i * 0.05, 10.0 + 5.0 * math.sin(i * 0.05)) for i in range(401)])
    t0, t1 = 0.37, 19.41
    analytic = 10.0 * (t1 - t0) + 5.0 * (math.cos(t0) - math.cos(t1))
    assert sampler.energy_j(t0, t1) == pytest.approx(analytic, rel=2e-4)


def test_live_thread_integrates_a_ramp():
    curve = Curve(lambda x: 20.0 + 30.0 * x)
    sampler = Sampler([curve], interval=0.02)
    with sampler:
        time.sleep(0.1)
        t0 = time.monotonic()
        time.sleep(0.4)
        t1 = time.monotonic()
        assert sampler.cover(t1)
        start = curve.t_start
        got = sampler.energy_j(t0, t1)
    a, b = t0 - start, t1 - start
    analytic = 20.0 * (b - a) + 15.0 * (b * b - a * a)
    assert got == pytest.approx(analytic, rel=0.02)
    assert sampler.count >= 10  # 10 Hz would be 5: it really samples at 50 Hz
    assert curve.reads == sampler.count
    assert sampler.errors == {}
    times = [s.t for s in sampler.samples]
    assert times == sorted(times)
    assert all(s.wall and abs(s.wall - time.time()) < 60 for s in sampler.samples)


# -- counters -----------------------------------------------------------------

def test_counter_is_preferred_and_interpolated_at_the_edges():
    sampler = Sampler([FedCounter()], interval=0.1)
    feed(sampler, [(i * 0.1, 100.0 * i * 0.1) for i in range(11)], key="c")  # 100 W
    assert sampler.energy_source == "fed-counter"
    assert sampler.energy_j(0.05, 0.95) == pytest.approx(90.0)
    assert sampler.energy_j(0.3, 0.3) == pytest.approx(0.0)
    with pytest.raises(EnergyUnavailable, match="outside"):
        sampler.energy_j(0.5, 1.5)


def test_a_window_the_counter_did_not_tick_in_is_unmeasured_not_zero():
    # A counter that updates every 0.1 s (10 J a tick, 100 W), sampled every 0.02 s:
    # between ticks it stands still. A 40 ms window inside one step read 0 J
    # before; a powered device never uses nothing, so it is unmeasured.
    sampler = Sampler([FedCounter()], interval=0.02)
    feed(sampler, [(i * 0.02, 10.0 * ((i * 2) // 10)) for i in range(51)], key="c")
    with pytest.raises(EnergyUnavailable, match="did not advance over the 40 ms window"):
        sampler.energy_j(0.02, 0.06)
    assert sampler.energy_j(0.0, 1.0) == pytest.approx(100.0)  # long windows see the ticks


def test_counter_wraps_around_like_rapl():
    # 100 W, counter wraps to 0 at 50 J and starts at 40 J: it wraps between
    # 0.1 s and 0.2 s, 0.6 and 0.7, 1.1 and 1.2.
    sampler = Sampler([FedCounter(range_j=50.0)], interval=0.1)
    raw = [(i * 0.1, (40.0 + 10.0 * i) % 50.0) for i in range(16)]
    feed(sampler, raw, key="c")
    assert sampler.energy_j(0.0, 1.5) == pytest.approx(150.0)
    assert sampler.energy_j(0.15, 1.25) == pytest.approx(110.0)
    # The stored counter is unwrapped: it only grows.
    values = [s.energy_j["c"] for s in sampler.samples]
    assert values == sorted(values) and values[-1] == pytest.approx(190.0)


def test_live_counter_source_with_wrap_around():
    source = make_test_source("counter:12.5:6:2.5")  # wraps every 0.48 s
    assert isinstance(source, CounterSource)
    sampler = Sampler([source], interval=0.02)
    with sampler:
        time.sleep(0.05)
        t0 = time.monotonic()
        time.sleep(0.5)
        t1 = time.monotonic()
        sampler.cover(t1)
        got = sampler.energy_j(t0, t1)
    assert sampler.energy_source == "test-counter"
    # A reading's time stamp is the middle of the read: on a loaded machine the
    # thread can be preempted between the two, hence the tolerance.
    assert got == pytest.approx(12.5 * (t1 - t0), rel=0.03)


def test_mixed_counter_and_power_sources_integrate_the_total():
    sampler = Sampler([FedCounter(), FedPower()], interval=0.1)
    assert sampler.energy_source.startswith("integrated:")


# -- windows and edges --------------------------------------------------------------

def test_window_edges():
    sampler = Sampler([FedPower()], interval=0.1)
    feed(sampler, [(0.0, 0.0), (0.1, 10.0), (0.2, 20.0), (0.3, 30.0)])
    assert [s.t for s in sampler.window(0.12, 0.18)] == [0.1, 0.2]
    assert [s.t for s in sampler.window(0.1, 0.2)] == [0.1, 0.2]
    assert [s.t for s in sampler.window(0.05, 0.25)] == [0.0, 0.1, 0.2, 0.3]
    # Interpolated edges: the power is 5 W at 0.05 s and 15 W at 0.15 s.
    assert sampler.energy_j(0.05, 0.15) == pytest.approx(1.0)
    with pytest.raises(EnergyUnavailable, match="not inside"):
        sampler.energy_j(-0.1, 0.2)
    with pytest.raises(EnergyUnavailable, match="not inside"):
        sampler.energy_j(0.1, 0.31)
    with pytest.raises(EnergyUnavailable, match="ends before"):
        sampler.energy_j(0.2, 0.1)
    with pytest.raises(ValueError):
        sampler.window(0.2, 0.1)


def test_window_edges_skip_samples_without_the_value():
    # A streamed power source and polled memory samples interleave.
    sampler = Sampler([FedPower()], interval=0.1)
    feed(sampler, [(0.0, 10.0), (1.0, 10.0)])
    for t in (0.2, 0.5, 0.8):
        sampler.add(Sample(t=t, ram_used_mb=100.0 * t))
    edges = sampler.window(0.3, 0.6, "total_w")
    assert [s.t for s in edges] == [0.0, 0.2, 0.5, 0.8, 1.0]  # from edge to edge
    assert sampler.energy_j(0.3, 0.6) == pytest.approx(3.0)
    assert sampler.peak_memory(0.3, 0.6) == {"ram_used_bytes": int(round(80.0 * 1048576))}


def test_out_of_order_samples_are_inserted_in_time_order():
    sampler = Sampler([FedPower()], interval=0.1)
    feed(sampler, [(0.0, 1.0), (0.2, 1.0), (0.1, 1.0)])
    assert [s.t for s in sampler.samples] == [0.0, 0.1, 0.2]


def test_discard_before_keeps_the_edge_and_max_samples_bounds_memory():
    sampler = Sampler([FedPower()], interval=0.1, max_samples=10)
    feed(sampler, [(i * 0.1, 1.0) for i in range(5)])
    sampler.discard_before(0.25)
    assert [round(s.t, 1) for s in sampler.samples] == [0.2, 0.3, 0.4]
    assert sampler.energy_j(0.25, 0.4) == pytest.approx(0.15)
    feed(sampler, [(1.0 + i * 0.1, 1.0) for i in range(30)])
    assert len(sampler.samples) <= 11
    assert sampler.count == 35


def test_no_power_source_means_no_energy_with_a_reason():
    sampler = Sampler([], interval=0.1, unmeasured_reason="energy not measured on this "
                      "device: rapl: no RAPL zones")
    feed(sampler, [(0.0, 5.0), (1.0, 5.0)])
    assert sampler.energy_source is None and not sampler.measures_power
    assert sampler.unmeasured_reason.endswith("no RAPL zones")
    with pytest.raises(EnergyUnavailable, match="no RAPL zones"):
        sampler.energy_j(0.1, 0.9)


# -- memory, temperature, changes, listener ---------------------------------------

def test_peak_memory_temperature_and_latest():
    sampler = Sampler([FedPower()], interval=0.1)
    for i, (ram, gpu, temps) in enumerate([(100, None, {"cpu": 40.0}),
                                           (300, 50, {"cpu": 55.5, "gpu": 61.0}),
                                           (200, 70, {"cpu": 50.0})]):
        sampler.add(Sample(t=float(i), ram_used_mb=ram, ram_total_mb=1000,
                           gpu_mem_used_mb=gpu, temps_c=temps, total_w=5.0))
    assert sampler.peak_memory(0.0, 2.0) == {"ram_used_bytes": 300 * 1048576,
                                             "gpu_mem_used_bytes": 70 * 1048576}
    assert sampler.max_temp_c(0.0, 2.0) == (61.0, "gpu")
    assert sampler.max_temp_c(1.5, 2.0) == (61.0, "gpu")  # the edge sample at 1.0 counts
    latest = sampler.latest()
    assert latest["ram_used_mb"] == 200 and latest["ram_total_mb"] == 1000
    assert latest["gpu_mem_used_mb"] == 70 and latest["total_w"] == 5.0
    # The newest reading of each sensor, the ones the last sample lacked kept.
    assert latest["temps_c"] == {"cpu": 50.0, "gpu": 61.0}
    assert sampler.current_max_temp_c() == (61.0, "gpu")


def test_changes_report_clock_drops_and_throttle_flags_not_ramps():
    source = FedPower()
    source.throttle_keys = ("gpu0_throttle",)
    sampler = Sampler([source], interval=0.1)
    clocks = [345, 1980, 1980, 1400, 1950, 1980]
    for i, mhz in enumerate(clocks):
        extra = {"gpu0_throttle": 0x4 | 0x20} if mhz == 1400 else {"gpu0_throttle": 0}
        sampler.add(Sample(t=float(i), clocks_mhz={"gpu": mhz}, total_w=1.0, extra=extra))
    assert sampler.changes(0.0, 2.0) == []  # 345 -> 1980: a ramp up, not a change
    notes = sampler.changes(0.0, 5.0)
    assert notes == ["clock gpu fell from 1980 to 1400 MHz",
                     "fedpower gpu0_throttle: sw-power-cap+sw-thermal"]
    assert sampler.changes(4.0, 5.0) == []
    assert sampler.limits(0.0, 5.0) == []  # the cap came with heat: a change, not a limit


def test_a_gpu_at_its_own_power_cap_alone_is_a_limit_not_a_change():
    source = FedPower()
    source.throttle_keys = ("gpu0_throttle",)
    sampler = Sampler([source], interval=0.1)
    for i, flag in enumerate([0, 0x4, 0x4, 0]):  # a compute-bound prefill at the cap
        sampler.add(Sample(t=float(i), clocks_mhz={"gpu": 1980}, total_w=1.0,
                           extra={"gpu0_throttle": flag}))
    assert sampler.changes(0.0, 3.0) == []
    assert sampler.limits(0.0, 3.0) == ["fedpower gpu0_throttle: sw-power-cap"]
    assert sampler.limits(3.0, 3.0) == []


def test_listener_sees_every_sample_and_its_errors_do_not_stop_sampling():
    seen = []

    def listener(sample):
        seen.append(sample.t)
        if len(seen) == 2:
            raise RuntimeError("boom")

    sampler = Sampler([Curve(lambda x: 1.0)], interval=0.01, listener=listener)
    with sampler:
        time.sleep(0.15)
    assert len(seen) == sampler.count >= 5
    assert "boom" in sampler.errors["listener"]


def test_a_source_that_fails_to_start_is_dropped_with_a_reason():
    class Broken(Curve):
        name = "broken"

        def start(self):
            raise OSError("device gone")

    sampler = Sampler([Broken(lambda x: 1.0)], interval=0.05)
    with sampler:
        pass
    assert "device gone" in sampler.errors["broken"]
    assert not sampler.measures_power
    assert "device gone" in sampler.unmeasured_reason


def test_several_polled_power_sources_are_summed():
    a, b = Curve(lambda x: 2.0), Curve(lambda x: 3.0)
    a.start()
    b.start()
    sampler = Sampler([a, b], interval=0.05)
    sample = sampler.sample_now()
    assert sample.total_w == 5.0 and sample.total_rail == "curve+curve"


def test_sampler_rejects_a_bad_interval():
    with pytest.raises(ValueError):
        Sampler([], interval=0)


# -- the real sources against fake trees, tools and libraries --------------------

def test_system_source_reads_meminfo_and_thermal_zones(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(
        "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    6000000 kB\n"
        "SwapTotal:       1024000 kB\nSwapFree:         1000000 kB\n")
    thermal = tmp_path / "sys" / "class" / "thermal"
    for index, (kind, temp) in enumerate([("CPU-therm", "45500"), ("GPU-therm", "51000"),
                                          ("broken", "oops"), ("CPU-therm", "40000")]):
        zone = thermal / f"thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    source = SystemSource(str(proc), str(tmp_path / "sys"))
    assert source.available() == (True, "/proc/meminfo")
    source.start()
    try:
        sample = Sample()
        assert source.read(sample)
        assert sample.ram_total_mb == pytest.approx(8000000 / 1024)
        assert sample.ram_used_mb == pytest.approx(2000000 / 1024)
        assert sample.swap_used_mb == pytest.approx(24000 / 1024, rel=1e-4)
        assert sample.temps_c == {"cpu-therm": 45.5, "gpu-therm": 51.0, "cpu-therm_2": 40.0}
        # Re-read from offset 0: a new value is seen.
        (thermal / "thermal_zone1" / "temp").write_text("52000\n")
        again = Sample()
        source.read(again)
        assert again.temps_c["gpu-therm"] == 52.0
        assert source.describe()["thermal_zones"] == ["cpu-therm", "gpu-therm", "cpu-therm_2"]
    finally:
        source.stop()


def test_system_source_on_this_machine():
    source = SystemSource()
    assert source.available()[0]
    source.start()
    try:
        sample = Sample()
        assert source.read(sample)
        assert 0 < sample.ram_used_mb < sample.ram_total_mb
    finally:
        source.stop()


def _rapl_tree(root: Path, energy_uj: int, max_uj: int) -> None:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    core = root / "intel-rapl:0:0"
    core.mkdir()
    (core / "name").write_text("core\n")
    (core / "energy_uj").write_text("5\n")
    (core / "max_energy_range_uj").write_text(f"{max_uj}\n")


def test_rapl_source_counts_packages_across_a_wrap(tmp_path):
    root = tmp_path / "powercap"
    _rapl_tree(root, 990_000_000, 1_000_000_000)  # 990 J of a 1000 J range
    source = RaplSource(str(root))
    assert source.available()[0]
    assert source.counter_keys == ("package-0",)  # the core subzone is part of it
    assert source.counter_ranges == {"package-0": 1000.0}
    sampler = Sampler([source], interval=0.1)
    assert sampler.energy_source == "rapl-counter"
    first = Sample(t=0.0)
    source.read(first)
    sampler.add(first)
    (root / "intel-rapl:0" / "energy_uj").write_text("15000000\n")  # wrapped: +25 J
    second = Sample(t=0.5)
    time.sleep(0.01)
    source.read(second)
    sampler.add(second)
    assert sampler.energy_j(0.0, 0.5) == pytest.approx(25.0)
    assert second.total_w is not None and second.total_w > 0  # derived from the counter


def test_rapl_source_says_why_not(tmp_path):
    ok, reason = RaplSource(str(tmp_path / "none")).available()
    assert not ok and "no RAPL zones" in reason


def _fake_nvml(energy=True, instant=True, throttle=0x4 | 0x1):
    state = {"t0": time.monotonic()}

    class NVMLError(Exception):
        pass

    def total_energy(handle):
        if not energy:
            raise NVMLError("Not Supported")
        return int((time.monotonic() - state["t0"]) * 250_000)  # 250 W in mJ

    def field_values(handle, fields):
        if not instant:
            raise NVMLError("Not Supported")
        return [types.SimpleNamespace(nvmlReturn=0, valueType=1,
                                      value=types.SimpleNamespace(uiVal=251_000))]

    return types.SimpleNamespace(
        NVMLError=NVMLError, NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: b"Fake H200",
        nvmlDeviceGetTotalEnergyConsumption=total_energy,
        nvmlDeviceGetFieldValues=field_values,
        nvmlDeviceGetPowerUsage=lambda h: 240_000,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2048 * 1048576),
        nvmlDeviceGetTemperature=lambda h, k: 47,
        nvmlDeviceGetClockInfo=lambda h, k: 1980 if k == 1 else 3201,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=97),
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: throttle)


def test_nvml_source_with_energy_counter_and_instant_power():
    source = NvmlSource(_fake_nvml())
    assert source.available() == (True, "1 GPU(s) (Fake H200), energy counter")
    sampler = Sampler([source], interval=0.02)
    with sampler:
        time.sleep(0.05)
        t0 = time.monotonic()
        time.sleep(0.2)
        t1 = time.monotonic()
        sampler.cover(t1)
        got = sampler.energy_j(t0, t1)
        sample = sampler.samples[-1]
    assert sampler.energy_source == "nvml-counter"
    assert got == pytest.approx(250.0 * (t1 - t0), rel=0.05)  # mJ steps, read timing
    assert sample.rails_w == {"gpu0": 251.0} and sample.total_w == 251.0
    assert sample.extra["nvml_power"] == "instant"
    assert sample.gpu_mem_used_mb == 2048 and sample.temps_c == {"gpu0": 47.0}
    assert sample.clocks_mhz == {"gpu0_sm": 1980, "gpu0_mem": 3201}
    assert sample.gpu_util_pct == 97.0
    assert sample.extra["gpu0_throttle"] == 0x4  # GPU-idle (0x1) is not throttling
    assert sampler.changes(t0, t1) == []  # the power cap alone: a limit, not a change
    assert sampler.limits(t0, t1) == ["nvml gpu0_throttle: sw-power-cap"]


def test_nvml_source_without_counter_integrates_average_power():
    source = NvmlSource(_fake_nvml(energy=False, instant=False, throttle=0))
    assert "power only" in source.available()[1]
    sampler = Sampler([source], interval=0.05)
    with sampler:
        sample = sampler.sample_now()
    assert sampler.energy_source == "integrated:gpu0"
    assert sample.total_w == 240.0 and sample.extra["nvml_power"] == "average"
    assert "gpu0" not in sample.energy_j


def test_nvml_source_says_why_not(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    ok, reason = NvmlSource().available()
    assert not ok and "nvidia-ml-py" in reason

    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    broken = _fake_nvml()
    broken.nvmlInit = fail
    ok, reason = NvmlSource(broken).available()
    assert not ok and "Shared Library Not Found" in reason


def _tool(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    path.chmod(0o755)
    return str(path)


TEGRA_LINE = ("11-21-2025 08:49:48 RAM 2448/7620MB (lfb 4x4MB) SWAP 0/3810MB (cached 0MB) "
              "CPU [5%@1510,3%@1510] GR3D_FREQ 0% cpu@45.5C gpu@44C "
              "VDD_IN 5000mW/5000mW VDD_CPU_GPU_CV 1000mW/1000mW VDD_SOC 1500mW/1500mW")


def test_tegrastats_source_streams_lines_into_the_sampler(tmp_path):
    tool = _tool(tmp_path, "tegrastats", f"""
assert sys.argv[1:] == ["--interval", "20"], sys.argv
while True:
    print({TEGRA_LINE!r}, flush=True)
    time.sleep(0.02)
""")
    source = TegrastatsSource(0.02, binary=tool)
    assert source.available() == (True, tool)
    sampler = Sampler([source, SystemSource(temps=False)], interval=0.02)
    with sampler:
        assert sampler.cover(time.monotonic(), timeout=10)  # the tool is up and printing
        t0 = time.monotonic()
        time.sleep(0.3)
        t1 = time.monotonic()
        assert sampler.cover(t1)
        got = sampler.energy_j(t0, t1)
        proc = source._proc
    assert source._proc is None and proc.poll() is not None  # stopped
    assert sampler.energy_source == "integrated:VDD_IN"
    assert got == pytest.approx(5.0 * (t1 - t0), rel=1e-9)
    streamed = [s for s in sampler.samples if s.total_w is not None]
    assert len(streamed) >= 8
    assert streamed[-1].temps_c == {"cpu": 45.5, "gpu": 44.0}
    # Memory comes from both sources (tegrastats' RAM line, the host's /proc/meminfo):
    # the newest to arrive wins, and which one that is depends on timing.
    polled = [s.ram_used_mb for s in sampler.samples
              if s.total_w is None and s.ram_used_mb is not None]
    assert streamed[-1].ram_used_mb == 2448
    assert sampler.latest()["ram_used_mb"] in {2448, *polled[-1:]}


def test_records_that_arrive_together_are_back_dated_by_the_interval(tmp_path):
    tool = _tool(tmp_path, "tegrastats", f"""
sys.stdout.write(({TEGRA_LINE!r} + "\\n") * 3)
sys.stdout.flush()
time.sleep(30)
""")
    source = TegrastatsSource(0.05, binary=tool)
    sampler = Sampler([source], interval=0.05)
    with sampler:
        assert sampler.cover(time.monotonic() - 1, timeout=10)
        time.sleep(0.05)
    times = [s.t for s in sampler.samples]
    assert len(times) == 3
    assert times[1] - times[0] == pytest.approx(0.05) and times[2] - times[1] == pytest.approx(0.05)


def test_a_tool_that_exits_stops_streaming_and_says_how(tmp_path):
    tool = _tool(tmp_path, "tegrastats", f"""
print({TEGRA_LINE!r}, flush=True)
sys.stderr.write("tegrastats: lost the monitors\\n")
sys.exit(4)
""")
    source = TegrastatsSource(0.02, binary=tool)
    sampler = Sampler([source], interval=0.02)
    with sampler:
        deadline = time.monotonic() + 5
        while "tegrastats" not in sampler.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    assert sampler.count == 1
    assert sampler.errors == {"tegrastats": "tegrastats exited (status 4): "
                                            "tegrastats: lost the monitors"}


def test_a_tool_that_exited_before_the_first_read_is_still_read_to_the_end(tmp_path):
    # The race CI hit once: the tool printed and exited before the sampler
    # looked at its pipe. What it printed and how it ended are in the pipe.
    tool = _tool(tmp_path, "tegrastats", f"""
print({TEGRA_LINE!r}, flush=True)
sys.stderr.write("tegrastats: lost the monitors\\n")
sys.exit(4)
""")

    class ExitsFirst(TegrastatsSource):
        def start(self) -> None:
            super().start()
            assert self._proc is not None
            self._proc.wait(timeout=10)

    sampler = Sampler([ExitsFirst(0.02, binary=tool)], interval=0.02)
    with sampler:
        deadline = time.monotonic() + 5
        while "tegrastats" not in sampler.errors and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sampler.count == 1
    assert sampler.errors == {"tegrastats": "tegrastats exited (status 4): "
                                            "tegrastats: lost the monitors"}


def test_macmon_source(tmp_path):
    line = ('{"timestamp": "2025-02-24T20:38:15.427569+00:00", "all_power": 3.0, '
            '"sys_power": 9.5, "memory": {"ram_total": 17179869184, "ram_usage": 8589934592}, '
            '"temp": {"cpu_temp_avg": 43.7}}')
    tool = _tool(tmp_path, "macmon", f"""
assert sys.argv[1:] == ["pipe", "-i", "20"], sys.argv
print("not json", flush=True)
while True:
    print({line!r}, flush=True)
    time.sleep(0.02)
""")
    source = MacmonSource(0.02, binary=tool)
    sampler = Sampler([source], interval=0.02)
    with sampler:
        time.sleep(0.15)
        sampler.cover(time.monotonic())
    assert sampler.energy_source == "integrated:sys"
    assert source.bad_records == 1
    latest = sampler.latest()
    assert latest["total_w"] == 9.5 and latest["ram_used_mb"] == 8192.0
    assert latest["temps_c"] == {"cpu_avg": 43.7}


def test_powermetrics_source_accumulates_energy(tmp_path, monkeypatch):
    record = plistlib.dumps({"processor": {"cpu_power": 2000.0, "gpu_power": 500.0,
                                           "combined_power": 2500.0, "cpu_energy": 40,
                                           "gpu_energy": 10}, "thermal_pressure": "Nominal"})
    tool = _tool(tmp_path, "powermetrics", f"""
assert sys.argv[1:] == ["--samplers", "cpu_power,gpu_power,ane_power,thermal", "-f", "plist",
                        "-i", "20"], sys.argv
while True:
    sys.stdout.buffer.write({record!r} + b"\\0")
    sys.stdout.buffer.flush()
    time.sleep(0.02)
""")
    monkeypatch.setattr("agents.telemetry.sources.powermetrics._euid", lambda: 0)
    source = PowermetricsSource(0.02, binary=tool)
    assert source.available() == (True, f"{tool} (as root)")
    assert source.argv()[0] == tool
    sampler = Sampler([source], interval=0.02)
    with sampler:
        time.sleep(0.2)
    assert sampler.energy_source == "powermetrics-counter"
    counted = [s for s in sampler.samples if "cpu" in s.energy_j]
    assert len(counted) >= 3
    # 50 mJ per plist (cpu 40 + gpu 10), accumulated as counters.
    assert counted[-1].energy_j["cpu"] == pytest.approx(0.04 * len(counted))
    energy = sampler.energy_j(counted[0].t, counted[-1].t)
    assert energy == pytest.approx(0.05 * (len(counted) - 1))


def test_powermetrics_without_passwordless_sudo_says_how_to_fix_it(tmp_path, monkeypatch):
    sudo = _tool(tmp_path, "sudo", """
sys.stderr.write("sudo: a password is required\\n")
sys.exit(1)
""")
    monkeypatch.setattr("agents.telemetry.sources.powermetrics._euid", lambda: 501)
    source = PowermetricsSource(0.1, binary="/usr/bin/powermetrics", sudo=sudo)
    ok, reason = source.available()
    assert not ok
    assert "a password is required" in reason
    assert "NOPASSWD: /usr/bin/powermetrics" in reason and "docs/telemetry.md" in reason
    assert source.argv()[:2] == [sudo, "-n"]


def test_select_sources_on_this_machine_says_why_energy_is_not_measured():
    chosen, missing = select_sources()
    names = [s.name for s in chosen]
    assert names[-1] == "system"
    if not any(s.power for s in chosen):
        # This VM: no RAPL, no NVML, not a Jetson; every one says why.
        assert {"nvml", "rapl"} <= set(missing)
        assert all(missing.values())
    mac, mac_missing = select_sources("mac-m2", check=True)
    if sys.platform != "darwin":
        assert "macmon" in mac_missing and "powermetrics" in mac_missing
    everything, _ = select_sources("linux-nvidia", check=False)
    assert [s.name for s in everything] == ["nvml", "rapl", "system"]


def test_probe_reports_sources_and_reasons():
    facts = probe.telemetry_sources()
    assert facts["system"]
    assert isinstance(facts["unavailable"], dict)
    if not os.path.exists("/sys/class/powercap"):
        assert "no RAPL zones" in facts["unavailable"]["rapl"]


def test_make_test_source():
    constant = make_test_source("constant:12.5:45")
    assert isinstance(constant, ConstantPowerSource)
    sample = Sample()
    constant.read(sample)
    assert (sample.total_w, sample.temps_c) == (12.5, {"test": 45.0})
    counter = make_test_source("counter:2")
    assert counter.counter_ranges == {}
    for bad in ("constant", "constant:x", "ramp:1", "counter:1:2:3:4"):
        with pytest.raises(ValueError, match="telemetry_test_source"):
            make_test_source(bad)


@pytest.mark.gpu
def test_nvml_on_a_real_gpu():
    """Needs nvidia-ml-py and an NVIDIA GPU: deselected by default (marker ``gpu``).

    Run it on a GPU machine with ``pytest -m gpu tests/test_sampler.py`` (done on
    the H200, see docs/results/nvml-energy.md); there a missing GPU fails it.
    """
    source = NvmlSource()
    ok, reason = source.available()
    assert ok, reason
    sampler = Sampler([source], interval=0.05)
    with sampler:
        time.sleep(0.2)
        t0 = time.monotonic()
        time.sleep(1.0)
        t1 = time.monotonic()
        assert sampler.cover(t1)
        counter = sampler.energy_j(t0, t1)
        integrated = sampler.window(t0, t1, "total_w")
    from agents.telemetry.energy import integrate_trapezoid

    power = integrate_trapezoid(integrated, t0, t1)
    assert sampler.energy_source == "nvml-counter"
    assert counter > 0 and power > 0
    assert abs(power - counter) / counter < 0.2  # idle GPU, one second: loose
    sample = sampler.samples[-1]
    assert sample.gpu_mem_used_mb is not None and sample.temps_c
