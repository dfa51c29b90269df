"""System memory and temperatures: the source every device has, which measures no power.

Linux reads ``/proc/meminfo`` and the thermal zones; macOS asks sysctl. Kept
cheap per read (files opened once, re-read from offset 0) because it runs on
every device at the sampler's interval.
"""

import glob
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

__all__ = ["SystemSource"]

_MIB = 1048576.0


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
