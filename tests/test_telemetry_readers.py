"""Sysfs readers (agents/telemetry/hwmon.py, rapl.py) on fake trees.

The trees follow the layouts the readers document: INA3221 through hwmon
(JetPack 5+), INA3221 through NVIDIA's iio driver (JetPack 4), INA238 on
Thor, and the powercap RAPL zones of tests/data/telemetry/samples/
rapl-powercap-samples.txt (names, counters and wrap ranges copied from there,
which a test checks).

Root-only counters: these tests run as root, for whom mode 0400 changes
nothing, so a chmod cannot reproduce what a normal user sees. The reader takes
an ``opener`` (like client_python's ProcessCollector takes a proc root), and
the test passes one that raises the kernel's PermissionError for energy_uj
while the file really has mode 0400; the reason the reader gives is checked.
"""

import errno
import os
import re
from pathlib import Path

import pytest

from agents.telemetry.hwmon import JetsonPowerReader
from agents.telemetry.rapl import RaplReader

# The recorded powercap listings the RAPL trees below are built from.
RAPL_LISTING = Path(__file__).parent / "data/telemetry/samples/rapl-powercap-samples.txt"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


INA3221 = "sys/bus/i2c/drivers/ina3221"

# AGX Orin, JetPack 5/6: two INA3221 chips; the rail names are those tegrastats
# prints on that board (VDD_GPU_SOC VDD_CPU_CV VIN_SYS_5V0 NC VDDQ_VDD2_1V8AO NC).
AGX_ORIN = {
    f"{INA3221}/1-0040/hwmon/hwmon3/name": "ina3221",
    f"{INA3221}/1-0040/hwmon/hwmon3/in1_label": "VDD_GPU_SOC",
    f"{INA3221}/1-0040/hwmon/hwmon3/in1_input": "19200",   # mV
    f"{INA3221}/1-0040/hwmon/hwmon3/curr1_input": "104",   # mA -> 1.9968 W
    f"{INA3221}/1-0040/hwmon/hwmon3/in2_label": "VDD_CPU_CV",
    f"{INA3221}/1-0040/hwmon/hwmon3/in2_input": "19200",
    f"{INA3221}/1-0040/hwmon/hwmon3/curr2_input": "0",     # -> 0 W
    f"{INA3221}/1-0040/hwmon/hwmon3/in3_label": "VIN_SYS_5V0",
    f"{INA3221}/1-0040/hwmon/hwmon3/in3_input": "5000",
    f"{INA3221}/1-0040/hwmon/hwmon3/curr3_input": "505",   # -> 2.525 W
    f"{INA3221}/1-0040/hwmon/hwmon3/in4_input": "1040",    # shunt voltages, uV: not rails
    f"{INA3221}/1-0040/hwmon/hwmon3/in7_label": "sum of shunt voltages",
    f"{INA3221}/1-0040/hwmon/hwmon3/in7_input": "1234",
    f"{INA3221}/1-0041/hwmon/hwmon4/name": "ina3221",
    f"{INA3221}/1-0041/hwmon/hwmon4/in1_label": "NC",
    f"{INA3221}/1-0041/hwmon/hwmon4/in1_input": "0",
    f"{INA3221}/1-0041/hwmon/hwmon4/curr1_input": "0",
    f"{INA3221}/1-0041/hwmon/hwmon4/in2_label": "VDDQ_VDD2_1V8AO",
    f"{INA3221}/1-0041/hwmon/hwmon4/in2_input": "5000",
    f"{INA3221}/1-0041/hwmon/hwmon4/curr2_input": "80",    # -> 0.4 W
    f"{INA3221}/1-0041/hwmon/hwmon4/in3_label": "NC",
    f"{INA3221}/1-0041/hwmon/hwmon4/in3_input": "0",
    f"{INA3221}/1-0041/hwmon/hwmon4/curr3_input": "0",
}

# Orin Nano, JetPack 6: one chip, VDD_IN is the module input.
ORIN_NANO = {
    f"{INA3221}/1-0040/hwmon/hwmon1/in1_label": "VDD_IN",
    f"{INA3221}/1-0040/hwmon/hwmon1/in1_input": "5000",
    f"{INA3221}/1-0040/hwmon/hwmon1/curr1_input": "911",   # -> 4.555 W
    f"{INA3221}/1-0040/hwmon/hwmon1/in2_label": "VDD_CPU_GPU_CV",
    f"{INA3221}/1-0040/hwmon/hwmon1/in2_input": "5000",
    f"{INA3221}/1-0040/hwmon/hwmon1/curr2_input": "97",    # -> 0.485 W
    f"{INA3221}/1-0040/hwmon/hwmon1/in3_label": "VDD_SOC",
    f"{INA3221}/1-0040/hwmon/hwmon1/in3_input": "5000",
    f"{INA3221}/1-0040/hwmon/hwmon1/curr3_input": "290",   # -> 1.45 W
    f"{INA3221}/1-0040/hwmon/hwmon1/in3_enable": "1",
}

# Jetson Nano, JetPack 4: NVIDIA's ina3221x iio driver, power in mW.
NANO_JP4 = {
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_0": "POM_5V_IN",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power0_input": "933",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_1": "POM_5V_GPU",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power1_input": "0",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_2": "POM_5V_CPU",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power2_input": "84",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_current0_input": "186",
}

# Jetson Thor: INA3221 rails plus an INA238 on the module input (uW).
THOR = {
    f"{INA3221}/2-0040/hwmon/hwmon2/in1_label": "VDD_GPU",
    f"{INA3221}/2-0040/hwmon/hwmon2/in1_input": "19000",
    f"{INA3221}/2-0040/hwmon/hwmon2/curr1_input": "103",   # -> 1.957 W
    f"{INA3221}/2-0040/hwmon/hwmon2/in2_label": "VDD_CPU_SOC_MSS",
    f"{INA3221}/2-0040/hwmon/hwmon2/in2_input": "19000",
    f"{INA3221}/2-0040/hwmon/hwmon2/curr2_input": "310",   # -> 5.89 W
    f"{INA3221}/2-0040/hwmon/hwmon2/in3_label": "VIN_SYS_5V0",
    f"{INA3221}/2-0040/hwmon/hwmon2/in3_input": "5000",
    f"{INA3221}/2-0040/hwmon/hwmon2/curr3_input": "1127",  # -> 5.635 W
    "sys/bus/i2c/drivers/ina238/2-0044/hwmon/hwmon5/name": "ina238",
    "sys/bus/i2c/drivers/ina238/2-0044/hwmon/hwmon5/power1_input": "19780000",  # uW
    "sys/bus/i2c/drivers/ina238/2-0044/hwmon/hwmon5/in1_input": "19104",
}


# -- hwmon ----------------------------------------------------------------------

def test_agx_orin_hwmon_rails_and_sum(tmp_path):
    write(tmp_path, AGX_ORIN)
    reader = JetsonPowerReader(str(tmp_path))
    assert [c.rail for c in reader.channels] == [
        "VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO", "NC_2"]
    ok, reason = reader.available()
    assert ok and reason.startswith("rails: VDD_GPU_SOC")
    sample = reader.read()
    # 19200 mV x 104 mA = 1.9968 W; 5000 x 505 = 2.525 W; 5000 x 80 = 0.4 W
    assert sample.rails_w == {"VDD_GPU_SOC": 1.9968, "VDD_CPU_CV": 0.0, "VIN_SYS_5V0": 2.525,
                              "NC": 0.0, "VDDQ_VDD2_1V8AO": 0.4, "NC_2": 0.0}
    assert sample.total_rail == "sum" and sample.total_w == pytest.approx(4.9218)
    assert isinstance(sample.t, float) and isinstance(sample.wall, float)
    assert "unreadable" not in sample.extra


def test_orin_nano_total_is_vdd_in_and_disabled_channels_are_skipped(tmp_path):
    files = dict(ORIN_NANO)
    files[f"{INA3221}/1-0040/hwmon/hwmon1/in3_enable"] = "0"
    write(tmp_path, files)
    sample = JetsonPowerReader(str(tmp_path)).read()
    assert sample.rails_w == {"VDD_IN": 4.555, "VDD_CPU_GPU_CV": 0.485}
    assert (sample.total_w, sample.total_rail) == (4.555, "VDD_IN")


def test_jetpack4_iio_rails_in_milliwatts(tmp_path):
    write(tmp_path, NANO_JP4)
    sample = JetsonPowerReader(str(tmp_path)).read()
    assert sample.rails_w == {"POM_5V_IN": 0.933, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.084}
    assert (sample.total_w, sample.total_rail) == (0.933, "POM_5V_IN")


def test_thor_ina238_vin_is_the_total(tmp_path):
    write(tmp_path, THOR)
    reader = JetsonPowerReader(str(tmp_path))
    assert [(c.rail, c.kind) for c in reader.channels][-1] == ("VIN", "ina238")
    sample = reader.read()
    assert sample.rails_w == {"VDD_GPU": 1.957, "VDD_CPU_SOC_MSS": 5.89, "VIN_SYS_5V0": 5.635,
                              "VIN": 19.78}
    assert (sample.total_w, sample.total_rail) == (19.78, "VIN")


def test_unreadable_rails_are_named_not_zeroed(tmp_path):
    files = dict(ORIN_NANO)
    files[f"{INA3221}/1-0040/hwmon/hwmon1/curr1_input"] = "garbage"
    write(tmp_path, files)
    reader = JetsonPowerReader(str(tmp_path))
    sample = reader.read()
    assert "VDD_IN" not in sample.rails_w and sample.extra["unreadable"] == "VDD_IN"
    assert sample.total_rail == "sum"  # the input rail is missing: only what was read
    assert reader.available()[0]


def test_hwmon_unavailable_reasons(tmp_path):
    ok, reason = JetsonPowerReader(str(tmp_path)).available()
    assert not ok and "no INA3221" in reason and "not a Jetson" in reason
    write(tmp_path, {f"{INA3221}/1-0040/hwmon/hwmon1/in1_label": "VDD_IN",
                     f"{INA3221}/1-0040/hwmon/hwmon1/in1_input": "x",
                     f"{INA3221}/1-0040/hwmon/hwmon1/curr1_input": "1"})
    ok, reason = JetsonPowerReader(str(tmp_path)).available()
    assert not ok and reason.startswith("no rail could be read") and "in1_input" in reason
    empty = JetsonPowerReader(str(tmp_path / "nothing")).read()
    assert empty.to_json().keys() == {"t", "wall"}  # nothing measured, nothing invented


# -- RAPL -----------------------------------------------------------------------

INTEL_MAX = "262143328850"  # max_energy_range_uj of [A] and [B] (and the i5-7400 of [C])
AMD_MAX = "65532610987"     # max_energy_range_uj of the EPYC 7543 of [C]

# [A] Hetzner EX44 (i5-13500) and [B] the laptop's intel-rapl-mmio zone, flat
# as /sys/class/powercap lists them (the real entries are symlinks).
RAPL_FLAT = {
    "intel-rapl/enabled": "1",
    "intel-rapl:0/name": "package-0",
    "intel-rapl:0/enabled": "0",
    "intel-rapl:0/max_energy_range_uj": INTEL_MAX,
    "intel-rapl:0/energy_uj": "65997277274",
    "intel-rapl:0/constraint_0_name": "long_term",
    "intel-rapl:0/constraint_0_power_limit_uw": "65000000",
    "intel-rapl:0:0/name": "core",
    "intel-rapl:0:0/max_energy_range_uj": INTEL_MAX,
    "intel-rapl:0:0/energy_uj": "48265700414",
    "intel-rapl:0:1/name": "uncore",
    "intel-rapl:0:1/max_energy_range_uj": INTEL_MAX,
    "intel-rapl:0:1/energy_uj": "5981",
    "intel-rapl-mmio/enabled": "1",
    "intel-rapl-mmio:0/name": "package-0",
    "intel-rapl-mmio:0/max_energy_range_uj": INTEL_MAX,  # [B] lists no energy_uj here
}


def test_rapl_tree_holds_only_values_of_the_recorded_listing():
    """Every file of the fake tree is a ``name: value`` line of the recorded listing."""
    listing = RAPL_LISTING.read_text(encoding="utf-8")
    for rel, value in RAPL_FLAT.items():
        leaf = re.sub(r"^constraint_\d+_", "", rel.rsplit("/", 1)[-1])
        assert f"{leaf}: {value}" in listing, rel
    assert f"// {AMD_MAX} (amd?)" in listing and f"// {INTEL_MAX} (intel?)" in listing


def test_rapl_zones_from_the_recorded_listing(tmp_path):
    write(tmp_path, RAPL_FLAT)
    reader = RaplReader(str(tmp_path))
    assert [(z.zone, z.label, z.max_range_uj) for z in reader.zones] == [
        ("intel-rapl:0", "package-0", 262143328850),
        ("intel-rapl:0:0", "package-0/core", 262143328850),
        ("intel-rapl:0:1", "package-0/uncore", 262143328850),
        ("intel-rapl-mmio:0", "intel-rapl-mmio/package-0", 262143328850),
    ]
    assert reader.read() == {"intel-rapl:0": 65997277274, "intel-rapl:0:0": 48265700414,
                             "intel-rapl:0:1": 5981}
    ok, reason = reader.available()
    assert ok and "intel-rapl:0 (package-0)" in reason
    sample = reader.read_sample()
    assert sample.energy_j["package-0"] == pytest.approx(65997.277274)
    assert sample.energy_j["package-0/uncore"] == pytest.approx(0.005981)


def test_rapl_nested_layout_is_found(tmp_path):
    write(tmp_path, {"intel-rapl/intel-rapl:0/name": "package-0",
                     "intel-rapl/intel-rapl:0/energy_uj": "10",
                     "intel-rapl/intel-rapl:0/max_energy_range_uj": AMD_MAX,
                     "intel-rapl/intel-rapl:0/intel-rapl:0:0/name": "core",
                     "intel-rapl/intel-rapl:0/intel-rapl:0:0/energy_uj": "5",
                     "intel-rapl/intel-rapl:0/intel-rapl:0:0/max_energy_range_uj": AMD_MAX})
    reader = RaplReader(str(tmp_path))
    assert [z.label for z in reader.zones] == ["package-0", "package-0/core"]
    assert reader.read() == {"intel-rapl:0": 10, "intel-rapl:0:0": 5}


def test_rapl_energy_delta_and_wrap_around(tmp_path):
    write(tmp_path, RAPL_FLAT)
    reader = RaplReader(str(tmp_path))
    before = reader.read()
    # package-0 gains 10 J; core wraps: 50 uJ below the range, then 100 past 0.
    (tmp_path / "intel-rapl:0/energy_uj").write_text("66007277274\n")
    (tmp_path / "intel-rapl:0:0/energy_uj").write_text("100\n")
    before["intel-rapl:0:0"] = 262143328800
    after = reader.read()
    delta = reader.energy_delta_j(before, after)
    assert delta["intel-rapl:0"] == pytest.approx(10.0)
    assert delta["intel-rapl:0:0"] == pytest.approx(150e-6)  # (850e8... - ...800) + 100 uJ
    assert delta["intel-rapl:0:1"] == 0.0


def test_rapl_wrap_uses_each_zones_own_range(tmp_path):
    write(tmp_path, {"intel-rapl:0/name": "package-0", "intel-rapl:0/energy_uj": "13",
                     "intel-rapl:0/max_energy_range_uj": AMD_MAX})
    reader = RaplReader(str(tmp_path))
    # 65532610987 - 65532610900 = 87, plus 13 after the wrap
    assert reader.energy_delta_j({"intel-rapl:0": 65532610900},
                                 reader.read()) == {"intel-rapl:0": pytest.approx(100e-6)}


def test_rapl_root_only_counter_gives_a_clear_reason(tmp_path):
    write(tmp_path, RAPL_FLAT)
    for zone in ("intel-rapl:0", "intel-rapl:0:0", "intel-rapl:0:1"):
        os.chmod(tmp_path / zone / "energy_uj", 0o400)  # as on Linux >= 5.10

    def kernel_like_open(path, *args, **kwargs):
        # What open() does for a non-root user on a mode-0400 root file.
        if os.path.basename(path) == "energy_uj" and os.path.exists(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return open(path, *args, **kwargs)

    reader = RaplReader(str(tmp_path), opener=kernel_like_open)
    assert len(reader.zones) == 4  # discovery needs no counter
    ok, reason = reader.available()
    assert not ok
    assert reason.startswith(f"energy_uj of intel-rapl:0, intel-rapl:0:0, intel-rapl:0:1 under "
                             f"{tmp_path} is readable by root only (mode 0400)")
    assert "CVE-2020-8694" in reason
    assert "intel-rapl-mmio:0 has no energy_uj" in reason
    assert reader.read() == {}
    assert reader.read_sample().energy_j == {}


def test_rapl_other_read_failures(tmp_path):
    write(tmp_path, {"intel-rapl:0/name": "package-0",
                     "intel-rapl:0/max_energy_range_uj": INTEL_MAX})
    (tmp_path / "intel-rapl:0/energy_uj").mkdir()  # open() fails with EISDIR, for real
    ok, reason = RaplReader(str(tmp_path)).available()
    assert not ok and reason.startswith(f"cannot read {tmp_path}/intel-rapl:0/energy_uj")
    ok, reason = RaplReader(str(tmp_path / "none")).available()
    assert not ok and reason.startswith("no RAPL zones under")
