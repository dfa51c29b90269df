"""NVIDIA GPU power, energy, memory, clocks and throttling through NVML.

Its own module because it is the one source with a third-party dependency:
``pynvml`` (nvidia-ml-py) is imported inside :class:`NvmlSource` only when it
is used, so the agent stays standard library only everywhere else and on
devices without NVIDIA GPUs.
"""

import os
from typing import Any, Dict, List, Optional, Tuple

from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

__all__ = ["NVML_POWER_CAP", "NVML_THROTTLE_MASK", "NVML_THROTTLE_NAMES", "NvmlSource"]

_MIB = 1048576.0

#: NVML clock-event (throttle) reasons that slow a GPU down for power or heat:
#: SW power cap 0x4, HW slowdown 0x8, SW thermal 0x20, HW thermal 0x40,
#: HW power brake 0x80. (Idle 0x1, application clocks 0x2, sync boost 0x10 and
#: display clock 0x100 are not throttling.)
NVML_THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
#: The SW power cap reason: the GPU holds its clocks to its power limit.
NVML_POWER_CAP = 0x4
NVML_THROTTLE_NAMES = ((0x4, "sw-power-cap"), (0x8, "hw-slowdown"), (0x20, "sw-thermal"),
                       (0x40, "hw-thermal"), (0x80, "hw-power-brake"))
_NVML_FI_DEV_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT (driver 530+), mW


class NvmlSource(Source):
    """NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py), every GPU NVML sees.

    Per GPU ``i`` (keys ``gpu0``, ``gpu1``...): power (mW -> ``rails_w``),
    the total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ ->
    ``energy_j``, Volta and newer), memory used (summed over GPUs ->
    ``gpu_mem_used_mb``; see "Memory" below), temperature, SM and memory clocks
    (``clocks_mhz["gpu0_sm"]``, ``["gpu0_mem"]``), utilisation (the highest ->
    ``gpu_util_pct``) and the throttle reasons (``extra["gpu0_throttle"]``,
    a bit mask of :data:`NVML_THROTTLE_MASK`). Power is the instantaneous
    reading (field ``NVML_FI_DEV_POWER_INSTANT``) where the driver has it,
    else ``nvmlDeviceGetPowerUsage`` (a one-second average on recent GPUs); which
    one is in ``extra["nvml_power"]``. ``total_w`` is the sum over GPUs.

    NVML sees every GPU of the machine, not only the ones the job uses, so an
    idle second GPU's power is in the total (and in the idle power).

    Memory. ``nvmlDeviceGetMemoryInfo`` (version 1) counts the memory the
    driver and firmware reserve as used (about 0.6 GiB on an H200 with
    nothing running); version 2 (``nvmlDeviceGetMemoryInfo_v2``, pynvml's
    ``version=nvmlMemory_v2``) reports it apart, and its ``used`` is what
    ``nvidia-smi`` prints. Version 2 is used wherever the driver and pynvml
    have it (``extra["nvml_memory"]`` says ``"v2"`` or ``"v1"``). Per process,
    ``nvmlDeviceGetComputeRunningProcesses`` gives each process's GPU memory;
    the sum over this process and its descendants (the llama-bench child) is
    ``extra["gpu_mem_job_mb"]``, present only when NVML lists at least one of
    them with a known amount (in a container NVML may name processes by
    host PIDs that match none here: then it is absent, never zero).

    ``module`` replaces ``pynvml``, ``proc_root`` ``/proc`` and ``root_pid``
    this process's id (tests).
    """

    name = "nvml"
    power = True

    def __init__(self, module: Any = None, proc_root: str = "/proc",
                 root_pid: Optional[int] = None) -> None:
        self._module = module
        self._proc_root = proc_root
        self._root_pid = root_pid if root_pid is not None else os.getpid()
        self._ours: Dict[int, bool] = {}
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
                    "memory_v2": _memory_v2(nv, handle) is not None,
                    "procs": _works(getattr(nv, "nvmlDeviceGetComputeRunningProcesses", None),
                                    handle),
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
        job_mem: Optional[float] = None
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
                if caps["memory_v2"]:
                    info = _memory_v2(nv, handle)
                    if info is not None:
                        mem_used += info.used / _MIB
                        have_mem = True
                        into.extra["nvml_memory"] = "v2"
                elif caps["memory"]:
                    mem_used += nv.nvmlDeviceGetMemoryInfo(handle).used / _MIB
                    have_mem = True
                    into.extra["nvml_memory"] = "v1"
                if caps["procs"]:
                    mine = self._job_memory(nv.nvmlDeviceGetComputeRunningProcesses(handle))
                    if mine is not None:
                        job_mem = (job_mem or 0.0) + mine
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
        if job_mem is not None:
            into.extra["gpu_mem_job_mb"] = round(job_mem, 3)
        if util is not None:
            into.gpu_util_pct = util
        return bool(self._handles)

    def _job_memory(self, processes: Any) -> Optional[float]:
        """MiB of GPU memory held by this process and its descendants, or None if none is listed."""
        total: Optional[float] = None
        for proc in processes or ():
            used = getattr(proc, "usedGpuMemory", None)
            pid = getattr(proc, "pid", None)
            if not isinstance(used, int) or not isinstance(pid, int) or not self._is_ours(pid):
                continue  # None: NVML_VALUE_NOT_AVAILABLE (no per-process accounting)
            total = (total or 0.0) + used / _MIB
        return total

    def _is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is ``root_pid`` or descends from it (parent links in /proc)."""
        known = self._ours.get(pid)
        if known is not None:
            return known
        current = pid
        verdict = False
        for _ in range(64):  # a parent chain longer than this is not ours
            if current == self._root_pid:
                verdict = True
                break
            if current <= 1:
                break
            parent = _parent_pid(self._proc_root, current)
            if parent is None:
                break
            current = parent
        self._ours[pid] = verdict
        return verdict

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


def _parent_pid(proc_root: str, pid: int) -> Optional[int]:
    """The parent of ``pid`` from ``/proc/PID/stat`` (field 4, after the name in parentheses)."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
        return int(text[text.rindex(")") + 1:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _memory_v2(nv: Any, handle: Any) -> Any:
    """``nvmlDeviceGetMemoryInfo_v2`` through pynvml, or None where it or the driver lacks it.

    Version 2 reports the driver's reserved memory apart from ``used``.
    """
    version = getattr(nv, "nvmlMemory_v2", None)
    if version is None:
        return None
    try:
        info = nv.nvmlDeviceGetMemoryInfo(handle, version=version)
        return info if isinstance(getattr(info, "used", None), int) else None
    except Exception:
        return None


def _works(func: Any, *args: Any) -> bool:
    if func is None:
        return False
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
