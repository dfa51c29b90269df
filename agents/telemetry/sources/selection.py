"""Which live sources work on this device, and why the others do not.

The one place that knows the platforms' preferences (macmon before
powermetrics, tegrastats before the sysfs monitors, no NVML on a Jetson).
The probe and the job's sampler both call :func:`select_sources`, so what a
probe reports is what a job measures.
"""

import os
import sys
from typing import Dict, List, Optional, Tuple

from agents.telemetry.sources.base import Source
from agents.telemetry.sources.jetson import JetsonSysfsSource
from agents.telemetry.sources.macmon import MacmonSource
from agents.telemetry.sources.nvml import NvmlSource
from agents.telemetry.sources.powermetrics import PowermetricsSource
from agents.telemetry.sources.rapl import RaplSource
from agents.telemetry.sources.system import SystemSource
from agents.telemetry.sources.tegrastats import TegrastatsSource

__all__ = ["is_jetson", "select_sources"]


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T release file, or a Jetson device-tree model)."""
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    try:
        with open("/proc/device-tree/model", "rb") as handle:
            return b"jetson" in handle.read().lower()
    except OSError:
        return False


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
