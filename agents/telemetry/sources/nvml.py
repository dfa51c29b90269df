"""NVIDIA GPU power, energy, memory, clocks and throttling through NVML.

Its own module because it is the one source with a third-party dependency:
``pynvml`` (nvidia-ml-py) is imported inside :class:`NvmlSource` only when it
is used, so the agent stays standard library only everywhere else and on
devices without NVIDIA GPUs.
"""

from typing import Any, Dict, List, Optional, Tuple

from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

__all__ = ["NVML_THROTTLE_MASK", "NVML_THROTTLE_NAMES", "NvmlSource"]

_MIB = 1048576.0

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
