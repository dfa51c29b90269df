"""The telemetry data model (agents/telemetry/sample.py) and energy arithmetic (energy.py,
and a job's energy per repetition window in job.py).

Expected numbers are worked out by hand in the comments.
"""

import pytest

from agents.telemetry.energy import (
    average_and_peak,
    counter_delta,
    integrate_trapezoid,
    value_of,
)
from agents.telemetry.job import JobTelemetry
from agents.telemetry.sample import TOTAL_RAIL_PRIORITY, Sample, pick_total, unique_name
from agents.telemetry.sources.base import Source

# -- Sample ------------------------------------------------------------------------


def test_absent_values_are_left_out_never_zeroed():
    assert Sample().to_json() == {}
    assert not Sample().has_measurement()
    sample = Sample(cpu_util_pct=[None, None], extra={"note": "x"})
    assert sample.to_json() == {"extra": {"note": "x"}}  # no known core: no list
    assert not sample.has_measurement()
    zero = Sample(gpu_util_pct=0.0, rails_w={"VDD_IN": 0.0})
    assert zero.to_json() == {"rails_w": {"VDD_IN": 0.0}, "gpu_util_pct": 0.0}  # measured 0
    assert zero.has_measurement()


def test_to_json_key_order_and_round_trip():
    sample = Sample(t=1.5, wall=1700000000.0, rails_w={"VDD_IN": 4.5}, total_w=4.5,
                    total_rail="VDD_IN", ram_used_mb=1, ram_total_mb=2, swap_used_mb=0,
                    swap_total_mb=3, gpu_mem_used_mb=7.5, temps_c={"cpu": 40.0},
                    gpu_util_pct=10.0, cpu_util_pct=[1.0, None], clocks_mhz={"gpu": 612},
                    energy_j={"cpu": 3.0}, extra={"k": "v"})
    out = sample.to_json()
    assert list(out) == ["t", "wall", "rails_w", "total_w", "total_rail", "ram_used_mb",
                         "ram_total_mb", "swap_used_mb", "swap_total_mb", "gpu_mem_used_mb",
                         "temps_c", "gpu_util_pct", "cpu_util_pct", "clocks_mhz", "energy_j",
                         "extra"]
    assert Sample.from_json(out) == sample
    rebuilt = Sample.from_json({"total_w": 1.0, "new_field": 3})
    assert rebuilt.extra == {"new_field": 3} and rebuilt.total_w == 1.0
    assert repr(Sample(total_w=1.0)) == "Sample(total_w=1.0)"
    # The dicts are copies: changing the input does not change the sample.
    rails = {"a": 1.0}
    copy = Sample(rails_w=rails)
    rails["b"] = 2.0
    assert copy.rails_w == {"a": 1.0}


def test_total_rail_rule():
    assert TOTAL_RAIL_PRIORITY == ("VIN", "POM_5V_IN", "VDD_IN")
    # Thor: VIN wins over VIN_SYS_5V0, which is one rail among others.
    assert pick_total({"VIN_SYS_5V0": 5.635, "VIN": 19.78}) == (19.78, "VIN")
    assert pick_total({"POM_5V_CPU": 0.084, "POM_5V_IN": 0.933}) == (0.933, "POM_5V_IN")
    assert pick_total({"VDD_SOC": 1.451, "VDD_IN": 4.556}) == (4.556, "VDD_IN")
    # AGX Orin: no input rail, the sum (1.995 + 0 + 2.524 = 4.519).
    assert pick_total({"VDD_GPU_SOC": 1.995, "VDD_CPU_CV": 0.0, "VIN_SYS_5V0": 2.524}) == (
        4.519, "sum")
    assert pick_total({}) == (None, None)
    assert pick_total({"E-Cluster": 0.1}, ("combined",), ("cpu", "gpu", "ane")) == (None, None)
    assert pick_total({"cpu": 0.1, "gpu": 0.2, "E-Cluster": 0.05}, ("combined",),
                      ("cpu", "gpu", "ane")) == (0.3, "sum")


def test_unique_name():
    assert unique_name("NC", []) == "NC"
    assert unique_name("NC", ["NC"]) == "NC_2"
    assert unique_name("NC", ["NC", "NC_2"]) == "NC_3"


# -- energy ------------------------------------------------------------------------

def power(*points):
    return [Sample(t=t, total_w=w) for t, w in points]


def test_trapezoid_over_exactly_the_window():
    samples = power((0.0, 2.0), (1.0, 4.0), (2.0, 4.0), (3.0, 0.0), (4.0, 0.0))
    # Whole span: 3 + 4 + 2 + 0 = 9 J.
    assert integrate_trapezoid(samples, 0.0, 4.0) == pytest.approx(9.0)
    # [0.5, 3.25]: P(0.5) = 3, P(3.25) = 0.
    # (0.5..1) 0.5*(3+4)/2 = 1.75; (1..2) 4; (2..3) 2; (3..3.25) 0  -> 7.75 J.
    assert integrate_trapezoid(samples, 0.5, 3.25) == pytest.approx(7.75)
    # A window between two samples: P(1.25)=4, P(1.75)=4 -> 2 J.
    assert integrate_trapezoid(samples, 1.25, 1.75) == pytest.approx(2.0)
    assert integrate_trapezoid(samples, 2.0, 2.0) == 0.0
    # Order of the input does not matter.
    assert integrate_trapezoid(list(reversed(samples)), 0.5, 3.25) == pytest.approx(7.75)


def test_trapezoid_skips_samples_without_time_or_value_and_reads_dicts():
    samples = power((0.0, 5.0), (1.0, 5.0), (2.0, 5.0))
    samples.insert(1, Sample(t=None, total_w=100.0))   # a parsed log line: no t
    samples.insert(2, Sample(t=0.5, total_w=None))     # total unknown at that moment
    assert integrate_trapezoid(samples, 0.5, 2.0) == pytest.approx(7.5)  # 5 W x 1.5 s
    as_json = [s.to_json() for s in samples]
    assert integrate_trapezoid(as_json, 0.5, 2.0) == pytest.approx(7.5)
    rails = [Sample(t=0.0, rails_w={"VDD_GPU_SOC": 1.0}),
             Sample(t=2.0, rails_w={"VDD_GPU_SOC": 3.0})]
    assert integrate_trapezoid(rails, 0.0, 2.0, key="rails_w.VDD_GPU_SOC") == pytest.approx(4.0)
    assert value_of(rails[0], "rails_w.missing") is None
    assert value_of({"total_w": True}, "total_w") is None


def test_trapezoid_refuses_a_window_the_samples_do_not_cover():
    samples = power((1.0, 5.0), (2.0, 5.0))
    with pytest.raises(ValueError, match=r"cover \[1.0, 2.0\] s"):
        integrate_trapezoid(samples, 0.5, 2.0)
    with pytest.raises(ValueError, match="not inside"):
        integrate_trapezoid(samples, 1.0, 2.5)
    with pytest.raises(ValueError, match="ends before it starts"):
        integrate_trapezoid(samples, 2.0, 1.0)
    with pytest.raises(ValueError, match="no sample has both t and total_w"):
        integrate_trapezoid([Sample(total_w=1.0)], 0.0, 1.0)


def test_average_and_peak():
    samples = power((0.0, 2.0), (1.0, 4.0), (2.0, 4.0), (3.0, 0.0))
    # [0, 2]: energy 3 + 4 = 7 J over 2 s.
    assert average_and_peak(samples, 0.0, 2.0) == (pytest.approx(3.5), 4.0)
    # [2.5, 3]: P(2.5) = 2 interpolated is the peak; energy 0.5*(2+0)/2 = 0.5 J over 0.5 s.
    assert average_and_peak(samples, 2.5, 3.0) == (pytest.approx(1.0), pytest.approx(2.0))
    with pytest.raises(ValueError, match="positive length"):
        average_and_peak(samples, 1.0, 1.0)


def test_counter_delta():
    assert counter_delta(100, 250) == 150
    assert counter_delta(5, 5) == 0
    # RAPL package range of an i5-13500: 50 uJ before the wrap, 100 after.
    assert counter_delta(262143328800, 100, max_range=262143328850) == 150
    with pytest.raises(ValueError, match="wrap range is unknown"):
        counter_delta(10, 5)
    with pytest.raises(ValueError, match="above its range"):
        counter_delta(300, 5, max_range=200)


# -- energy per window in a job (agents/telemetry/job.py) -----------------------------

class _Counter(Source):
    """A GPU energy counter that only the test feeds (``Sampler.add``)."""

    name = "counter"
    power = True
    counter_keys = ("gpu0",)
    counter_label = "nvml-counter"

    def available(self):
        return True, "test"

    def read(self, into):
        return False  # nothing new: the test adds every sample itself


class _Power(_Counter):
    name = "power"
    counter_keys = ()
    counter_label = None


def _telemetry(source, samples, idle_power_w=None):
    telemetry = JobTelemetry(lambda kind, fields: None, [source], interval=10.0, idle_s=0.0)
    for sample in samples:
        telemetry.sampler.add(sample)
    telemetry.idle_power_w = idle_power_w
    return telemetry


# A counter read once a second: power 100 W over [0, 1], 200 W over [1, 2],
# 300 W over [2, 3] (the counter 0, 100, 300, 600 J), as a GPU's is.
COUNTER = [Sample(t=float(t), energy_j={"gpu0": j}) for t, j in
           ((0, 0.0), (1, 100.0), (2, 300.0), (3, 600.0))]


def test_counter_energy_over_the_phase_windows_only():
    telemetry = _telemetry(_Counter(), COUNTER, idle_power_w=50.0)
    rep = telemetry.before("repetition", {
        "gen_tokens": 10, "prefill_window_mono": [0.5, 1.0], "decode_window_mono": [2.0, 2.5],
        "process_window_mono": [0.0, 3.0]})
    # The counter read at the edges by linear interpolation:
    # E(0.5) = 50, E(1.0) = 100, E(2.0) = 300, E(2.5) = 450.
    assert rep["energy_method"] == "counter-window"
    assert rep["energy_prefill_j"] == pytest.approx(50.0)     # 100 - 50
    assert rep["energy_decode_j"] == pytest.approx(150.0)     # 450 - 300
    assert rep["j_per_token"] == pytest.approx(15.0)          # 150 J / 10 tokens
    # Average power over the two windows (1 s in all), not over the 1 s gap between them.
    assert rep["avg_power_w"] == pytest.approx(200.0)         # (50 + 150) / (0.5 + 0.5)
    # Idle power is taken out only in its own field: 150 - 50 W x 0.5 s.
    assert rep["energy_decode_net_j"] == pytest.approx(125.0)
    assert rep["idle_power_w"] == 50.0
    # The whole process, beside them: 600 J over 3 s.
    assert rep["energy_process_j"] == pytest.approx(600.0) and rep["process_s"] == 3.0
    assert "peak_power_w" not in rep  # a counter reports no power
    assert rep["energy_source"] == "nvml-counter"


def test_trapezoid_energy_over_a_window():
    # Power 100 W at t=0 rising linearly to 300 W at t=2.
    samples = [Sample(t=float(t), total_w=w, total_rail="gpu0")
               for t, w in ((0, 100.0), (1, 200.0), (2, 300.0))]
    telemetry = _telemetry(_Power(), samples)
    rep = telemetry.before("repetition", {"gen_tokens": 4, "decode_window_mono": [0.5, 1.5]})
    # P(0.5) = 150, P(1) = 200, P(1.5) = 250: 0.5 x (150 + 200) / 2 + 0.5 x (200 + 250) / 2
    assert rep["energy_method"] == "trapezoid-window"
    assert rep["energy_decode_j"] == pytest.approx(87.5 + 112.5)
    assert rep["j_per_token"] == pytest.approx(50.0)
    # The highest sample covering the window, the nearest one past each edge included.
    assert rep["peak_power_w"] == 300.0
    assert "energy_decode_net_j" not in rep  # no idle power was measured


def test_a_process_window_alone_gives_no_energy_per_phase():
    telemetry = _telemetry(_Counter(), COUNTER)
    rep = telemetry.before("repetition", {
        "gen_tokens": 10, "decode_s": 0.5, "prefill_s": 0.5, "process_window_mono": [0.0, 3.0],
        "phase_window_reason": "this llama-bench rejects --progress"})
    assert rep["energy_method"] == "process-average"
    assert rep["energy_process_j"] == pytest.approx(600.0)
    assert rep["avg_power_w"] == pytest.approx(200.0)  # 600 J / 3 s
    # Not 200 W x 0.5 s = 100 J per phase: that average counts the load.
    assert "energy_decode_j" not in rep and "j_per_token" not in rep
    assert "energy_prefill_j" not in rep
    assert rep["energy_unmeasured_reason"] == (
        "energy per phase not measured: the backend reported only its whole process's window "
        "(this llama-bench rejects --progress); that process's energy is energy_process_j")
    assert telemetry.result_info()["energy"]["measured"] is False
