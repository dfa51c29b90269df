"""Live telemetry sources: what the sampler reads while a job runs.

Every source has the same life cycle::

    ok, reason = source.available()   # cheap; (False, why) when it cannot work here
    source.start()                    # open handles, start a tool
    source.read(...)                  # many times, from the sampler's thread
    source.stop()                     # always, also after a failed start

Two kinds:

* **polled** (``streaming = False``): ``read(into)`` reads the hardware now
  and writes its values into the sample it is given (the sampler merges all
  polled sources of one tick into one :class:`Sample`); returns False when
  nothing could be read this time. NVML, RAPL, the Jetson sysfs monitors,
  system memory and thermal zones.
* **streaming** (``streaming = True``): a child process that prints samples at
  its own interval (``tegrastats``, ``macmon pipe``, ``powermetrics -f
  plist``). ``fileno()`` is its output pipe; when the sampler's ``select``
  says it is readable, ``read()`` consumes what is there and returns the
  samples completed by it, each stamped with the monotonic time it arrived.

A source that measures power or energy has ``power = True``. One that keeps a
hardware energy counter names the counters' keys in ``energy_j`` in
``counter_keys`` (cumulative joules; ``counter_ranges`` gives the value where
one wraps back to 0) and how energy from them is labelled in
``counter_label`` (``"nvml-counter"``...). The sampler prefers counters to
integrating power (DESIGN.md's measurement rules).

:func:`select_sources` picks the sources that work on this device and returns
the reasons for those that do not. :func:`make_test_source` builds the test-only
sources that a job spec may name in ``telemetry_test_source``.

Standard library only; ``pynvml`` (nvidia-ml-py) is imported inside
:class:`NvmlSource` only.
"""

import glob
import os
import plistlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple
from xml.parsers.expat import ExpatError

from agents.telemetry.hwmon import JetsonPowerReader
from agents.telemetry.macmon import parse_macmon_line
from agents.telemetry.powermetrics import parse_powermetrics_plist
from agents.telemetry.rapl import DEFAULT_ROOT as RAPL_ROOT
from agents.telemetry.rapl import RaplReader
from agents.telemetry.sample import Sample
from agents.telemetry.tegrastats import parse_tegrastats_line

__all__ = [
    "Source", "NvmlSource", "RaplSource", "JetsonSysfsSource", "TegrastatsSource",
    "MacmonSource", "PowermetricsSource", "SystemSource", "ConstantPowerSource",
    "CounterSource", "select_sources", "make_test_source", "POWERMETRICS_SAMPLERS",
    "SUDOERS_HINT",
]

#: The samplers the agent asks powermetrics for (a sudoers line must match exactly).
POWERMETRICS_SAMPLERS = "cpu_power,gpu_power,ane_power,thermal"

SUDOERS_HINT = ("let the agent's user run powermetrics without a password: a sudoers drop-in "
                "(sudo visudo -f /etc/sudoers.d/edgefarm-powermetrics) with the line "
                "'<user> ALL=(root) NOPASSWD: /usr/bin/powermetrics', see docs/telemetry.md")

_MIB = 1048576.0


class Source(object):
    """Base class; see the module docstring for the contract."""

    name = "source"
    streaming = False
    power = False
    counter_keys: Tuple[str, ...] = ()
    counter_ranges: Dict[str, float] = {}
    counter_label: Optional[str] = None
    #: Keys of ``extra`` holding throttle flags (non-zero / not "Nominal" = throttled).
    throttle_keys: Tuple[str, ...] = ()
    #: What ``available()`` said when :func:`select_sources` chose this source.
    detail = ""

    def available(self) -> Tuple[bool, str]:
        raise NotImplementedError

    def start(self) -> None:
        pass

    def read(self, into: Sample) -> bool:  # polled sources
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def describe(self) -> Dict[str, object]:
        """What this source reads, for the result's ``telemetry`` facts."""
        out: Dict[str, object] = {"name": self.name, "power": self.power}
        if self.counter_label:
            out["counter"] = self.counter_label
        if self.detail:
            out["detail"] = self.detail
        return out


# --------------------------------------------------------------------------- NVML

#: NVML clock-event (throttle) reasons that slow a GPU down for power or heat:
#: SW power cap 0x4, HW slowdown 0x8, SW thermal 0x20, HW thermal 0x40,
#: HW power brake 0x80. (Idle 0x1, application clocks 0x2, sync boost 0x10 and
#: display clock 0x100 are not throttling.)
NVML_THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
NVML_THROTTLE_NAMES = ((0x4, "sw-power-cap"), (0x8, "hw-slowdown"), (0x20, "sw-thermal"),
                       (0x40, "hw-thermal"), (0x80, "hw-power-brake"))
_NVML_FI_DEV_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT (driver 530+), mW


class NvmlSource(Source):
    """NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py), every GPU NVML sees.

    Per GPU ``i`` (keys ``gpu0``, ``gpu1``...): power (mW -> ``rails_w``),
    the total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ ->
    ``energy_j``, Volta and newer), memory used (summed over GPUs ->
    ``gpu_mem_used_mb``), temperature, SM and memory clocks
    (``clocks_mhz["gpu0_sm"]``, ``["gpu0_mem"]``), utilisation (the highest ->
    ``gpu_util_pct``) and the throttle reasons (``extra["gpu0_throttle"]``,
    a bit mask of :data:`NVML_THROTTLE_MASK`). Power is the instantaneous
    reading (field ``NVML_FI_DEV_POWER_INSTANT``) where the driver has it,
    else ``nvmlDeviceGetPowerUsage`` (a one-second average on recent GPUs); which
    one is in ``extra["nvml_power"]``. ``total_w`` is the sum over GPUs.

    NVML sees every GPU of the machine, not only the ones the job uses, so an
    idle second GPU's power is in the total (and in the idle power).
    ``module`` replaces ``pynvml`` (tests).
    """

    name = "nvml"
    power = True

    def __init__(self, module: Any = None) -> None:
        self._module = module
        self._nv: Any = None
        self._handles: List[Any] = []
        self._caps: List[Dict[str, bool]] = []
        self._started = False
        self.counter_keys = ()
        self.counter_label = None
        self.throttle_keys = ()

    def _import(self) -> Any:
        if self._module is not None:
            return self._module
        import pynvml  # optional: only devices with NVIDIA GPUs have it

        return pynvml

    def available(self) -> Tuple[bool, str]:
        try:
            nv = self._import()
        except ImportError as exc:
            return False, "python package nvidia-ml-py (pynvml) is not installed: %s" % exc
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
            return False, "NVML did not initialise (no NVIDIA driver?): %s" % exc
        try:
            count = nv.nvmlDeviceGetCount()
            if count < 1:
                return False, "NVML sees no GPU"
            names = []
            counters = 0
            for index in range(count):
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                name = nv.nvmlDeviceGetName(handle)
                names.append(name.decode() if isinstance(name, bytes) else str(name))
                try:
                    nv.nvmlDeviceGetTotalEnergyConsumption(handle)
                    counters += 1
                except Exception:
                    pass
        except Exception as exc:
            return False, "NVML could not read the GPUs: %s" % exc
        finally:
            try:
                nv.nvmlShutdown()
            except Exception:
                pass
        what = "energy counter" if counters == count else "power only (no energy counter)"
        return True, "%d GPU(s) (%s), %s" % (count, ", ".join(names), what)

    def start(self) -> None:
        nv = self._nv = self._import()
        nv.nvmlInit()
        self._started = True
        self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        self._caps = []
        # Find out once what each GPU supports, so read() never raises on a
        # query the GPU does not have (exceptions are slow, and an unsupported
        # value must be absent, not zero).
        for handle in self._handles:
            caps = {"energy": _works(nv.nvmlDeviceGetTotalEnergyConsumption, handle),
                    "instant": _power_instant(nv, handle) is not None,
                    "power": _works(nv.nvmlDeviceGetPowerUsage, handle),
                    "memory": _works(nv.nvmlDeviceGetMemoryInfo, handle),
                    "temp": _works(nv.nvmlDeviceGetTemperature, handle,
                                   getattr(nv, "NVML_TEMPERATURE_GPU", 0)),
                    "sm": _works(nv.nvmlDeviceGetClockInfo, handle,
                                 getattr(nv, "NVML_CLOCK_SM", 1)),
                    "mem_clock": _works(nv.nvmlDeviceGetClockInfo, handle,
                                        getattr(nv, "NVML_CLOCK_MEM", 2)),
                    "util": _works(nv.nvmlDeviceGetUtilizationRates, handle)}
            caps["throttle"] = self._throttle_reasons(handle) is not None
            self._caps.append(caps)
        keys = ["gpu%d" % i for i, caps in enumerate(self._caps) if caps["energy"]]
        if keys and len(keys) == len(self._caps):
            self.counter_keys = tuple(keys)
            self.counter_label = "nvml-counter"
        self.throttle_keys = tuple("gpu%d_throttle" % i for i, caps in enumerate(self._caps)
                                   if caps["throttle"])

    def _throttle_reasons(self, handle: Any) -> Optional[int]:
        nv = self._nv
        for name in ("nvmlDeviceGetCurrentClocksEventReasons",
                     "nvmlDeviceGetCurrentClocksThrottleReasons"):
            func = getattr(nv, name, None)
            if func is not None:
                try:
                    return int(func(handle))
                except Exception:
                    continue
        return None

    def read(self, into: Sample) -> bool:
        nv = self._nv
        total = 0.0
        have_total = True
        mem_used = 0.0
        have_mem = False
        util = None
        instant = True
        for index, handle in enumerate(self._handles):
            caps = self._caps[index]
            key = "gpu%d" % index
            try:
                watts = None
                if caps["instant"]:
                    milli = _power_instant(nv, handle)
                    watts = milli / 1000.0 if milli is not None else None
                if watts is None and caps["power"]:
                    instant = False
                    watts = nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
                if watts is None:
                    have_total = False
                else:
                    into.rails_w[key] = watts
                    total += watts
                if caps["energy"]:
                    into.energy_j[key] = nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
                if caps["memory"]:
                    mem_used += nv.nvmlDeviceGetMemoryInfo(handle).used / _MIB
                    have_mem = True
                if caps["temp"]:
                    into.temps_c[key] = float(nv.nvmlDeviceGetTemperature(
                        handle, getattr(nv, "NVML_TEMPERATURE_GPU", 0)))
                if caps["sm"]:
                    into.clocks_mhz[key + "_sm"] = nv.nvmlDeviceGetClockInfo(
                        handle, getattr(nv, "NVML_CLOCK_SM", 1))
                if caps["mem_clock"]:
                    into.clocks_mhz[key + "_mem"] = nv.nvmlDeviceGetClockInfo(
                        handle, getattr(nv, "NVML_CLOCK_MEM", 2))
                if caps["util"]:
                    busy = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
                    util = busy if util is None else max(util, busy)
                if caps["throttle"]:
                    reasons = self._throttle_reasons(handle)
                    if reasons is not None:
                        into.extra[key + "_throttle"] = reasons & NVML_THROTTLE_MASK
            except Exception as exc:  # a GPU that fell off the bus: absent, not zero
                into.extra["nvml_error"] = str(exc)[:200]
                have_total = False
        if have_total and self._handles:
            into.total_w = total
            into.total_rail = "gpu0" if len(self._handles) == 1 else "nvml-sum"
            into.extra["nvml_power"] = "instant" if instant else "average"
        if have_mem:
            into.gpu_mem_used_mb = round(mem_used, 3)
        if util is not None:
            into.gpu_util_pct = util
        return bool(self._handles)

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass

    def describe(self) -> Dict[str, object]:
        out = Source.describe(self)
        out["gpus"] = len(self._handles)
        return out


def _works(func: Any, *args: Any) -> bool:
    try:
        func(*args)
        return True
    except Exception:
        return False


def _power_instant(nv: Any, handle: Any) -> Optional[float]:
    """Instantaneous power in mW from NVML's field values, or None where unsupported."""
    func = getattr(nv, "nvmlDeviceGetFieldValues", None)
    if func is None:
        return None
    field = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", _NVML_FI_DEV_POWER_INSTANT)
    try:
        values = func(handle, [field])
        value = values[0]
        if int(getattr(value, "nvmlReturn", 0)) != 0:
            return None
        union = value.value
        kind = int(getattr(value, "valueType", 1))
        # NVML_VALUE_TYPE_: 0 double, 1 unsigned int, 2 unsigned long,
        # 3 unsigned long long, 4 signed long long, 5 signed int.
        attr = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal",
                5: "siVal"}.get(kind, "uiVal")
        reading = float(getattr(union, attr))
    except Exception:
        return None
    return reading if reading > 0 else None


# --------------------------------------------------------------------------- RAPL

class RaplSource(Source):
    """CPU package energy from RAPL (:class:`~agents.telemetry.rapl.RaplReader`).

    The counters are the top-level ``intel-rapl:N`` zones named ``package-N``
    (core, uncore and DRAM subzones and the ``intel-rapl-mmio`` duplicate are
    left out: they are parts or second views of a package). Power per package
    (``rails_w``) and ``total_w`` are derived from the counter's increase
    since the previous read, so the first read has no power.
    """

    name = "rapl"
    power = True
    counter_label = "rapl-counter"

    def __init__(self, root: str = RAPL_ROOT) -> None:
        self.reader = RaplReader(root)
        packages = [z for z in self.reader.zones
                    if z.zone.startswith("intel-rapl:") and z.zone.count(":") == 1]
        named = [z for z in packages if z.name.startswith("package")]
        self._zones = named or packages
        self.counter_keys = tuple(z.label for z in self._zones)
        self.counter_ranges = {z.label: z.max_range_uj / 1e6 for z in self._zones
                               if z.max_range_uj}
        self._previous: Optional[Tuple[float, Dict[str, int]]] = None

    def available(self) -> Tuple[bool, str]:
        ok, reason = self.reader.available()
        if ok and not self._zones:
            return False, "RAPL has no package zone (%s)" % reason
        return ok, reason

    def read(self, into: Sample) -> bool:
        now = time.monotonic()
        values: Dict[str, int] = {}
        for zone in self._zones:
            value = self.reader._read_int(zone.energy_path)
            if value is not None:
                values[zone.label] = value
                into.energy_j[zone.label] = value / 1e6
        if not values:
            return False
        previous = self._previous
        self._previous = (now, values)
        if previous is not None and now > previous[0] and len(values) == len(self._zones):
            from agents.telemetry.energy import counter_delta

            total = 0.0
            for label, value in values.items():
                before = previous[1].get(label)
                if before is None:
                    return True
                rng = self.counter_ranges.get(label)
                delta = counter_delta(before, value, rng * 1e6 if rng else None)
                watts = delta / 1e6 / (now - previous[0])
                into.rails_w[label] = round(watts, 6)
                total += watts
            into.total_w = round(total, 6)
            into.total_rail = "rapl-packages"
        return True


# ------------------------------------------------------------------------- Jetson

class JetsonSysfsSource(Source):
    """Jetson rails read straight from the INA3221/INA238 monitors in sysfs."""

    name = "jetson-sysfs"
    power = True

    def __init__(self, root: str = "/") -> None:
        self.reader = JetsonPowerReader(root)

    def available(self) -> Tuple[bool, str]:
        return self.reader.available()

    def read(self, into: Sample) -> bool:
        got = self.reader.read()
        if not got.rails_w:
            return False
        into.rails_w.update(got.rails_w)
        into.total_w = got.total_w
        into.total_rail = got.total_rail
        if "unreadable" in got.extra:
            into.extra["unreadable"] = got.extra["unreadable"]
        return True


# ---------------------------------------------------------------- child processes

class _ProcessSource(Source):
    """A tool run as a child process whose output is parsed as it arrives."""

    streaming = True
    separator = b"\n"

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self._buffer = b""
        self._last_t: Optional[float] = None
        self._stderr: Any = None
        #: How the tool ended when it exited by itself (exit status, last stderr lines).
        self.ended: Optional[str] = None
        self.bad_records = 0

    def argv(self) -> List[str]:
        raise NotImplementedError

    def interval_ms(self) -> int:
        return max(1, int(round(self.interval * 1000)))

    def start(self) -> None:
        import tempfile

        self._buffer = b""
        self._last_t = None
        self.ended = None
        # stderr to a file, not a pipe: a chatty tool must never block on it.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=self._stderr,
                                      bufsize=0)

    def fileno(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout.fileno()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def read(self, into: Optional[Sample] = None) -> List[Sample]:  # type: ignore[override]
        """The samples completed by what is in the pipe now (call when it is readable)."""
        if self._proc is None or self._proc.stdout is None:
            return []
        try:
            data = os.read(self._proc.stdout.fileno(), 65536)
        except OSError:
            data = b""
        if not data:  # the tool exited: nothing more will come
            self._close_pipe()
            self.ended = self._how_it_ended()
            return []
        now = time.monotonic()
        wall = time.time()
        self._buffer += data
        records = self._buffer.split(self.separator)
        self._buffer = records.pop()
        out = []
        for record in records:
            if not record.strip():
                continue
            sample = self.parse(record)
            if sample is None:
                self.bad_records += 1
                continue
            out.append(sample)
        # Records that arrive together (the reader was late) were printed one
        # interval apart: the last one now, the others back-dated by the
        # tool's interval, never before this source's previous sample.
        count = len(out)
        for index, sample in enumerate(out):
            back = (count - 1 - index) * self.interval
            t = now - back
            floor = self._last_t + 1e-6 * (index + 1) if self._last_t is not None else None
            if floor is not None and t < floor:
                t = floor
            sample.t = t
            sample.wall = wall - (now - t)
        if out:
            self._last_t = out[-1].t
        return out

    def parse(self, record: bytes) -> Optional[Sample]:
        raise NotImplementedError

    def _how_it_ended(self) -> str:
        status = None
        if self._proc is not None:
            try:
                status = self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        tail = ""
        if self._stderr is not None:
            try:
                self._stderr.seek(0)
                lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
                tail = " | ".join(lines[-3:])[-500:]
            except (OSError, ValueError):
                pass
        return "%s exited (status %s)%s" % (self.name, status, ": " + tail if tail else "")

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            try:
                self._proc.stdout.close()
            except OSError:
                pass

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except OSError:
                pass
        if proc.stdout is not None:
            try:
                proc.stdout.close()
            except OSError:
                pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T release file, or a Jetson device-tree model)."""
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    try:
        with open("/proc/device-tree/model", "rb") as handle:
            return b"jetson" in handle.read().lower()
    except OSError:
        return False


class TegrastatsSource(_ProcessSource):
    """``tegrastats --interval N`` (N ms), one line per sample (Jetson)."""

    name = "tegrastats"
    power = True

    def __init__(self, interval: float = 0.1, binary: Optional[str] = None) -> None:
        _ProcessSource.__init__(self, interval)
        self.binary = binary

    def available(self) -> Tuple[bool, str]:
        path = self.binary or shutil.which("tegrastats")
        if not path:
            return False, "tegrastats not found on PATH"
        self.binary = path
        return True, path

    def argv(self) -> List[str]:
        return [self.binary or "tegrastats", "--interval", str(self.interval_ms())]

    def parse(self, record: bytes) -> Optional[Sample]:
        return parse_tegrastats_line(record.decode("utf-8", "replace"))


class MacmonSource(_ProcessSource):
    """``macmon pipe -i N`` (N ms), one JSON object per line (Apple Silicon, no root)."""

    name = "macmon"
    power = True

    def __init__(self, interval: float = 0.1, binary: Optional[str] = None) -> None:
        _ProcessSource.__init__(self, interval)
        self.binary = binary

    def available(self) -> Tuple[bool, str]:
        path = self.binary or shutil.which("macmon")
        if not path:
            return False, "macmon not found on PATH (brew install macmon)"
        self.binary = path
        return True, path

    def argv(self) -> List[str]:
        return [self.binary or "macmon", "pipe", "-i", str(self.interval_ms())]

    def parse(self, record: bytes) -> Optional[Sample]:
        try:
            return parse_macmon_line(record.decode("utf-8", "replace"))
        except ValueError:
            return None


class PowermetricsSource(_ProcessSource):
    """``powermetrics -f plist -i N`` under ``sudo -n`` (Apple Silicon; root needed).

    Each plist's ``cpu_energy``/``gpu_energy``/``ane_energy`` (mJ in its
    interval) are accumulated into counters ``energy_j["cpu"]``...
    (``counter_label = "powermetrics-counter"``).
    """

    name = "powermetrics"
    power = True
    separator = b"\0"
    counter_keys = ("cpu", "gpu", "ane")
    counter_label = "powermetrics-counter"
    throttle_keys = ("thermal_pressure",)

    def __init__(self, interval: float = 0.1, binary: Optional[str] = None,
                 sudo: Optional[str] = None) -> None:
        _ProcessSource.__init__(self, interval)
        self.binary = binary
        self.sudo = sudo
        self._totals: Dict[str, float] = {}

    def command(self) -> List[str]:
        """The powermetrics command line (what a pinned sudoers line must name)."""
        return [self.binary or "/usr/bin/powermetrics", "--samplers", POWERMETRICS_SAMPLERS,
                "-f", "plist", "-i", str(self.interval_ms())]

    def argv(self) -> List[str]:
        if _euid() == 0:
            return self.command()
        return [self.sudo or "sudo", "-n"] + self.command()

    def available(self) -> Tuple[bool, str]:
        path = self.binary or shutil.which("powermetrics") or (
            "/usr/bin/powermetrics" if os.path.exists("/usr/bin/powermetrics") else None)
        if not path:
            return False, "powermetrics not found (not macOS?)"
        self.binary = path
        if _euid() == 0:
            return True, "%s (as root)" % path
        sudo = self.sudo or shutil.which("sudo")
        if not sudo:
            return False, "powermetrics needs root and sudo is not installed: " + SUDOERS_HINT
        self.sudo = sudo
        # "sudo -n true" would answer for *any* command; with a drop-in that
        # allows powermetrics only (the safe setup) it fails although
        # powermetrics would run. "sudo -n -l CMD" asks about exactly the
        # command the agent runs, without running it and without a prompt.
        try:
            done = subprocess.run([sudo, "-n", "-l"] + self.command(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=5, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, "cannot ask sudo about powermetrics: %s" % exc
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return False, ("powermetrics needs root and passwordless sudo is not set up for it "
                           "(sudo -n -l said: %s): %s"
                           % (said[-1] if said else "exit status %d" % done.returncode,
                              SUDOERS_HINT))
        return True, "%s via sudo -n" % path

    def start(self) -> None:
        self._totals = {}
        _ProcessSource.start(self)

    def parse(self, record: bytes) -> Optional[Sample]:
        try:
            obj = plistlib.loads(record.strip(b" \t\r\n"))
        except (ValueError, ExpatError):
            return None
        if not isinstance(obj, dict):
            return None
        return parse_powermetrics_plist(obj, self._totals)


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


# ------------------------------------------------------------------------- system

class SystemSource(Source):
    """System memory and temperatures, from ``/proc`` and sysfs (Linux) or sysctl (macOS).

    Linux: ``/proc/meminfo`` (used = MemTotal - MemAvailable, swap) and every
    ``/sys/class/thermal/thermal_zone*`` that reads (``temps_c`` by the zone's
    ``type``, lower-cased). The files are opened once and re-read from offset 0,
    so a read allocates nothing but the sample's values. macOS: ``hw.memsize``
    and the free page count through ``sysctlbyname`` (memory not free, file cache
    included, counts as used); no temperatures without root.
    """

    name = "system"

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys",
                 temps: bool = True) -> None:
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.temps = temps
        self._meminfo: Optional[int] = None
        self._zones: List[Tuple[str, int]] = []
        self._darwin: Any = None

    def available(self) -> Tuple[bool, str]:
        if os.path.exists(os.path.join(self.proc_root, "meminfo")):
            return True, "/proc/meminfo"
        if sys.platform == "darwin":
            return True, "sysctl"
        return False, "no /proc/meminfo and not macOS"

    def start(self) -> None:
        try:
            self._meminfo = os.open(os.path.join(self.proc_root, "meminfo"), os.O_RDONLY)
        except OSError:
            self._meminfo = None
        self._zones = []
        if self.temps:
            taken = set()
            pattern = os.path.join(self.sys_root, "class/thermal/thermal_zone*")
            for zone in sorted(glob.glob(pattern), key=_natural):
                try:
                    with open(os.path.join(zone, "type")) as handle:
                        label = handle.read().strip().lower() or os.path.basename(zone)
                    fd = os.open(os.path.join(zone, "temp"), os.O_RDONLY)
                except OSError:
                    continue
                if _read_int_fd(fd) is None:  # a zone that does not read now never will
                    os.close(fd)
                    continue
                name = label
                index = 2
                while name in taken:
                    name = "%s_%d" % (label, index)
                    index += 1
                taken.add(name)
                self._zones.append((name, fd))
        if self._meminfo is None and sys.platform == "darwin":
            self._darwin = _DarwinMemory()

    def read(self, into: Sample) -> bool:
        got = False
        if self._meminfo is not None:
            try:
                os.lseek(self._meminfo, 0, os.SEEK_SET)
                data = os.read(self._meminfo, 8192)
            except OSError:
                data = b""
            fields = _meminfo_kb(data)
            total = fields.get(b"MemTotal")
            available = fields.get(b"MemAvailable")
            if total is not None:
                into.ram_total_mb = round(total / 1024.0, 3)
                got = True
                if available is not None:
                    into.ram_used_mb = round((total - available) / 1024.0, 3)
            swap_total = fields.get(b"SwapTotal")
            swap_free = fields.get(b"SwapFree")
            if swap_total is not None and swap_free is not None:
                into.swap_total_mb = round(swap_total / 1024.0, 3)
                into.swap_used_mb = round((swap_total - swap_free) / 1024.0, 3)
        elif self._darwin is not None:
            total_b, used_b = self._darwin.read()
            if total_b is not None:
                into.ram_total_mb = round(total_b / _MIB, 3)
                got = True
            if used_b is not None:
                into.ram_used_mb = round(used_b / _MIB, 3)
        for name, fd in self._zones:
            milli = _read_int_fd(fd)
            if milli is not None:
                into.temps_c[name] = milli / 1000.0
                got = True
        return got

    def stop(self) -> None:
        for _name, fd in self._zones:
            try:
                os.close(fd)
            except OSError:
                pass
        self._zones = []
        if self._meminfo is not None:
            try:
                os.close(self._meminfo)
            except OSError:
                pass
            self._meminfo = None

    def describe(self) -> Dict[str, object]:
        out = Source.describe(self)
        out["thermal_zones"] = [name for name, _fd in self._zones]
        return out


def _natural(path: str) -> Tuple[str, int]:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    digits = "".join(c for c in base if c.isdigit())
    return base.rstrip("0123456789"), int(digits) if digits else -1


def _read_int_fd(fd: int) -> Optional[int]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 64).strip())
    except (OSError, ValueError):
        return None


_MEMINFO = re.compile(rb"^(MemTotal|MemAvailable|SwapTotal|SwapFree):[ \t]+(\d+)", re.M)


def _meminfo_kb(data: bytes) -> Dict[bytes, int]:
    """``{b"MemTotal": kB, ...}`` for the four lines the sampler uses (one regex scan)."""
    return {key: int(value) for key, value in _MEMINFO.findall(data)}


class _DarwinMemory(object):
    """``hw.memsize`` and ``vm.page_free_count`` through libc's sysctlbyname (macOS)."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self._ctypes = ctypes
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._total = self._sysctl(b"hw.memsize", ctypes.c_uint64)
        self._page = self._sysctl(b"hw.pagesize", ctypes.c_uint64) or 16384

    def _sysctl(self, name: bytes, kind: Any) -> Optional[int]:
        ctypes = self._ctypes
        value = kind(0)
        size = ctypes.c_size_t(ctypes.sizeof(value))
        try:
            if self._libc.sysctlbyname(name, ctypes.byref(value), ctypes.byref(size),
                                       None, ctypes.c_size_t(0)) != 0:
                return None
        except (AttributeError, OSError):
            return None
        return int(value.value)

    def read(self) -> Tuple[Optional[int], Optional[int]]:
        free = self._sysctl(b"vm.page_free_count", self._ctypes.c_uint32)
        if self._total is None or free is None:
            return self._total, None
        return self._total, self._total - free * self._page


# -------------------------------------------------------------------- test-only

class ConstantPowerSource(Source):
    """TEST-ONLY: a power source that always reads ``watts`` (rail ``test``).

    Built by :func:`make_test_source` from ``"constant:W"``; never chosen by
    :func:`select_sources`. Energy from it is labelled ``integrated:test``.
    """

    name = "test-constant"
    power = True

    def __init__(self, watts: float, temp_c: Optional[float] = None) -> None:
        self.watts = float(watts)
        self.temp_c = temp_c

    def available(self) -> Tuple[bool, str]:
        return True, "test-only constant %g W" % self.watts

    def read(self, into: Sample) -> bool:
        into.rails_w["test"] = self.watts
        into.total_w = self.watts
        into.total_rail = "test"
        if self.temp_c is not None:
            into.temps_c["test"] = self.temp_c
        return True


class CounterSource(Source):
    """TEST-ONLY: a hardware-style energy counter at a constant ``watts``.

    Its counter (``energy_j["test"]``) starts at ``start_j`` and wraps to 0 at
    ``range_j`` like RAPL's; it reports no power, only the counter.
    Built by :func:`make_test_source` from ``"counter:W[:RANGE_J[:START_J]]"``.
    """

    name = "test-counter"
    power = True
    counter_keys = ("test",)
    counter_label = "test-counter"

    def __init__(self, watts: float, range_j: Optional[float] = None,
                 start_j: float = 0.0, clock: Any = time.monotonic) -> None:
        self.watts = float(watts)
        self.counter_ranges = {"test": float(range_j)} if range_j else {}
        self.start_j = float(start_j)
        self._clock = clock
        self._t0: Optional[float] = None

    def available(self) -> Tuple[bool, str]:
        return True, "test-only counter at %g W" % self.watts

    def start(self) -> None:
        self._t0 = self._clock()

    def read(self, into: Sample) -> bool:
        if self._t0 is None:
            self._t0 = self._clock()
        value = self.start_j + self.watts * (self._clock() - self._t0)
        rng = self.counter_ranges.get("test")
        into.energy_j["test"] = value % rng if rng else value
        return True


def make_test_source(spec: str) -> Source:
    """TEST-ONLY: build a fake power source from a job spec's ``telemetry_test_source``.

    ``"constant:12.5"`` -> :class:`ConstantPowerSource` (12.5 W, integrated);
    ``"constant:12.5:45"`` adds a constant 45 °C sensor;
    ``"counter:12.5[:RANGE_J[:START_J]]"`` -> :class:`CounterSource`. Real
    devices never get these: :func:`select_sources` does not know them, and
    the runner only builds one when a job spec names it.
    """
    kind, _, rest = str(spec).partition(":")
    try:
        numbers = [float(v) for v in rest.split(":") if v != ""]
    except ValueError:
        numbers = []
    if kind == "constant" and 1 <= len(numbers) <= 2:
        return ConstantPowerSource(numbers[0], numbers[1] if len(numbers) > 1 else None)
    if kind == "counter" and 1 <= len(numbers) <= 3:
        return CounterSource(numbers[0], numbers[1] if len(numbers) > 1 else None,
                             numbers[2] if len(numbers) > 2 else 0.0)
    raise ValueError("telemetry_test_source must be 'constant:W[:TEMP_C]' or "
                     "'counter:W[:RANGE_J[:START_J]]', not %r" % (spec,))


# ---------------------------------------------------------------------- selection

def _platform(hint: Optional[str]) -> str:
    """``mac``, ``jetson`` or ``linux`` from an inventory platform hint or this machine."""
    text = (hint or "").lower()
    if text.startswith(("mac", "darwin", "apple")):
        return "mac"
    if "jetson" in text:
        return "jetson"
    if text:
        return "linux"
    if sys.platform == "darwin":
        return "mac"
    if is_jetson():
        return "jetson"
    return "linux"


def select_sources(platform_hint: Optional[str] = None, interval: float = 0.1,
                   check: bool = True) -> Tuple[List[Source], Dict[str, str]]:
    """The sources that work on this device, and ``{name: reason}`` for those that do not.

    ``platform_hint``: an inventory platform (``mac-*``, ``jetson-*``,
    ``linux-*``) or None to look at this machine. Per platform, in order:

    * mac: ``macmon`` (no root) else ``powermetrics`` under ``sudo -n``;
    * jetson: ``tegrastats`` else the INA3221/INA238 monitors in sysfs;
    * linux (and jetson): NVML, RAPL;
    * always: system memory and thermal zones (``system``), which measures no power.

    ``check=False`` returns every candidate without calling ``available()``.
    Nothing here takes seconds: at most NVML's initialisation and one
    ``sudo -n -l``.
    """
    kind = _platform(platform_hint)
    chosen: List[Source] = []
    missing: Dict[str, str] = {}

    def first_of(*candidates: Source) -> None:
        reasons = []
        for source in candidates:
            ok, reason = source.available() if check else (True, "")
            if ok:
                source.detail = reason
                chosen.append(source)
                return
            reasons.append((source.name, reason))
        for name, reason in reasons:
            missing[name] = reason

    if kind == "mac":
        first_of(MacmonSource(interval), PowermetricsSource(interval))
    else:
        if kind == "jetson" or is_jetson():
            first_of(TegrastatsSource(interval), JetsonSysfsSource())
            # The board monitors already include the GPU: NVML's GPU power
            # added to them would count it twice.
            missing["nvml"] = "not used on a Jetson: the board's power monitors include the GPU"
        else:
            missing["jetson"] = "not a Jetson (no /etc/nv_tegra_release)"
            first_of(NvmlSource())
        first_of(RaplSource())
    # tegrastats and macmon report temperatures and RAM themselves.
    system = SystemSource(temps=not any(s.name == "tegrastats" for s in chosen))
    first_of(system)
    return chosen, missing
