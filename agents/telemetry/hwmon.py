"""Read Jetson power rails straight from the power-monitor drivers in sysfs.

tegrastats prints at most once per interval and averages; the monitors
themselves can be read as often as needed. Three layouts exist (paths below
are relative to ``root``, ``/`` on a device):

**INA3221 through hwmon** (JetPack 5, 6, 7: Orin, Thor; kernel driver
``ina3221``, Documentation/hwmon/ina3221.rst)::

    sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/
        in1_label      "VDD_GPU_SOC"   channel 1..3 rail name (in7_label is the
                                       shunt-voltage sum: not a rail, skipped)
        in1_input      bus voltage, mV
        curr1_input    current, mA
        in1_enable     "0" for a disabled channel (optional)

    power W = in{N}_input (mV) x curr{N}_input (mA) / 1e6

AGX Orin has two chips (1-0040: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0;
1-0041: NC, VDDQ_VDD2_1V8AO, NC); Orin NX/Nano one (VDD_IN, VDD_CPU_GPU_CV,
VDD_SOC). The ``hwmonN`` number changes between boots: it is globbed.

**INA3221 through IIO** (JetPack 4: Nano, TX1, TX2, Xavier; NVIDIA's
``ina3221x`` driver)::

    sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/
        rail_name_0        "POM_5V_IN"
        in_power0_input    power, mW   (in_current0_input mA, in_voltage0_input mV)

**INA238 through hwmon** (Jetson Thor's module input ``VIN``, measured in front
of everything else; kernel driver ``ina238``, Documentation/hwmon/ina238.rst)::

    sys/bus/i2c/drivers/ina238/<bus>-<addr>/hwmon/hwmonN/
        name               "ina238"
        power1_input       power, uW

The INA238 driver exports no label; the rail is called ``VIN``, as tegrastats
calls it on Thor (``VIN_2``... if a board had more than one). This layout is
taken from the kernel driver's documentation and NVIDIA's description of Thor's
power monitors; it has not been checked on a Thor here.

The total is chosen by the same rule as for tegrastats
(:func:`agents.telemetry.sample.pick_total`): ``VIN``, ``POM_5V_IN``,
``VDD_IN``, else the sum of the rails (AGX Orin: its ``VIN_SYS_5V0`` is one
rail among others, not the module input).
"""

import glob
import os
import time
from typing import Any, Callable, List, Optional, Tuple

from agents.telemetry.sample import Sample, unique_name

__all__ = ["JetsonPowerReader", "PowerChannel"]

_INA3221 = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
_INA3221X = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"
_INA238 = "sys/bus/i2c/drivers/ina238/*/hwmon/hwmon*"


class PowerChannel(object):
    """One rail: its name, the driver kind and the files that give its power."""

    __slots__ = ("rail", "kind", "files")

    def __init__(self, rail: str, kind: str, files: Tuple[str, ...]) -> None:
        self.rail = rail
        self.kind = kind  # "ina3221" (mV, mA), "ina3221x" (mW) or "ina238" (uW)
        self.files = files

    def __repr__(self) -> str:
        return "PowerChannel(%r, %r, %r)" % (self.rail, self.kind, self.files)


class JetsonPowerReader(object):
    """Rails of every INA3221/INA238 monitor under ``root``; see the module docstring.

    >>> JetsonPowerReader("/nonexistent").available()[0]
    False
    """

    def __init__(self, root: str = "/", opener: Callable[..., Any] = open) -> None:
        self.root = root
        self._open = opener
        self.channels: List[PowerChannel] = self._discover()

    def _text(self, path: str) -> Optional[str]:
        try:
            with self._open(path, "r") as handle:
                return handle.read().strip()
        except OSError:
            return None

    def _glob(self, pattern: str) -> List[str]:
        return sorted(glob.glob(os.path.join(self.root, pattern)))

    def _discover(self) -> List[PowerChannel]:
        channels: List[PowerChannel] = []
        taken: List[str] = []

        def add(rail: str, kind: str, files: Tuple[str, ...]) -> None:
            name = unique_name(rail, taken)
            taken.append(name)
            channels.append(PowerChannel(name, kind, files))

        for directory in self._glob(_INA3221):
            for number in (1, 2, 3):
                volts = os.path.join(directory, "in%d_input" % number)
                amps = os.path.join(directory, "curr%d_input" % number)
                if not (os.path.exists(volts) and os.path.exists(amps)):
                    continue
                if self._text(os.path.join(directory, "in%d_enable" % number)) == "0":
                    continue
                label = self._text(os.path.join(directory, "in%d_label" % number))
                add(label or "%s:in%d" % (_device(directory), number), "ina3221",
                    (volts, amps))
        for directory in self._glob(_INA3221X):
            for name_file in sorted(glob.glob(os.path.join(directory, "rail_name_*"))):
                suffix = name_file.rsplit("_", 1)[1]
                power = os.path.join(directory, "in_power%s_input" % suffix)
                if not suffix.isdigit() or not os.path.exists(power):
                    continue
                label = self._text(name_file)
                add(label or "%s:%s" % (_device(directory), suffix), "ina3221x", (power,))
        for directory in self._glob(_INA238):
            power = os.path.join(directory, "power1_input")
            name = self._text(os.path.join(directory, "name"))
            if not os.path.exists(power) or name not in (None, "ina238"):
                continue
            label = self._text(os.path.join(directory, "power1_label")) or "VIN"
            add(label, "ina238", (power,))
        return channels

    def _watts(self, channel: PowerChannel) -> Optional[float]:
        values: List[int] = []
        missing = False  # a file that could not be read: no reading this time
        for path in channel.files:
            text = self._text(path)
            if text is None:
                missing = True
                continue
            try:
                values.append(int(text))
            except ValueError:
                return None
        if missing:
            return None
        if channel.kind == "ina3221":
            return round(values[0] * values[1] / 1e6, 6)  # mV x mA = uW
        if channel.kind == "ina3221x":
            return round(values[0] / 1e3, 6)  # mW
        return round(values[0] / 1e6, 6)  # uW

    def available(self) -> Tuple[bool, str]:
        """``(True, rails read)`` or ``(False, why not)``, by reading every rail once."""
        if not self.channels:
            return False, ("no INA3221 (hwmon or iio) or INA238 power monitor under %s: "
                           "not a Jetson, or its power-monitor drivers are not bound"
                           % os.path.join(self.root, "sys/bus/i2c/drivers"))
        good = [c.rail for c in self.channels if self._watts(c) is not None]
        if not good:
            return False, "no rail could be read: %s" % ", ".join(
                " + ".join(c.files) for c in self.channels)
        return True, "rails: " + ", ".join(good)

    def read(self) -> Sample:
        """One sample: ``rails_w`` (W), ``total_w``/``total_rail``, ``t`` and ``wall``.

        Rails that cannot be read this time are left out and named in
        ``extra["unreadable"]``.
        """
        sample = Sample(t=time.monotonic(), wall=time.time())
        failed = []
        for channel in self.channels:
            watts = self._watts(channel)
            if watts is None:
                failed.append(channel.rail)
            else:
                sample.rails_w[channel.rail] = watts
        if failed:
            sample.extra["unreadable"] = ",".join(failed)
        sample.set_total()
        return sample


def _device(hwmon_dir: str) -> str:
    """``1-0040`` from ``.../ina3221/1-0040/hwmon/hwmon3`` (or ``.../6-0040/iio:device0``)."""
    parts = hwmon_dir.rstrip("/").split("/")
    for index, part in enumerate(parts):
        if part in ("ina3221", "ina3221x", "ina238") and index + 1 < len(parts):
            return parts[index + 1]
    return parts[-1]
