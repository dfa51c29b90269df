"""Measure a device's memory bandwidth with large copies (standard library only).

The decode roofline divides a bandwidth by the bytes a token reads
(``agents/decode_traffic.py``). The vendor's figure is a peak the CPU cores
alone rarely reach, so the agent also measures what a copy achieves here:
``ctypes.memmove`` (the C library's memmove, no compiler or extra package
on the device) between two buffers far larger than any cache, several
sizes, best of N, reported as traffic (bytes read + bytes written per
second, the STREAM "copy" convention) and as copy rate (bytes copied per
second, half of it).

One thread: llama.cpp's decode on CPU uses several, so a multi-core device
can exceed this figure; the result says ``threads: 1`` so no one mistakes it
for the machine's peak.
"""

import ctypes
import json
import os
import time
from typing import Dict, List, Sequence

#: Buffer sizes copied (bytes): all far past the last-level cache of the
#: boards edgefarm targets (Jetson Orin: 4 MiB L3; Apple M-series: up to 96 MiB SLC).
DEFAULT_SIZES = (128 * 2**20, 256 * 2**20)


def copy_seconds(size: int, repeats: int) -> List[float]:
    """Seconds each of ``repeats`` copies of ``size`` bytes took (after one untimed copy)."""
    src = (ctypes.c_char * size)()
    dst = (ctypes.c_char * size)()
    ctypes.memset(src, 1, size)  # touch every page of both before timing
    ctypes.memmove(dst, src, size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ctypes.memmove(dst, src, size)
        times.append(time.perf_counter() - start)
    return times


def measure(sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 5) -> Dict[str, object]:
    """Best copy traffic over ``sizes`` x ``repeats`` copies, with each size's best."""
    per_size = []
    best = 0.0
    for size in sizes:
        fastest = min(copy_seconds(size, repeats))
        traffic = 2 * size / fastest
        per_size.append({"bytes": size, "best_s": fastest, "traffic_bytes_per_s": traffic})
        best = max(best, traffic)
    return {"method": "ctypes.memmove copy, best of %d per size, one thread" % repeats,
            "threads": 1, "traffic_bytes_per_s": best, "copy_bytes_per_s": best / 2,
            "sizes": per_size}


def _boot_id() -> str:
    """This boot's identity on Linux (empty elsewhere): a cached figure lives as long as it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


#: Without a boot id (macOS), a cached figure is reused for this long.
CACHE_MAX_AGE_S = 24 * 3600.0


def cached_measure(cache_path: str = "~/.cache/edgefarm/bandwidth.json") -> Dict[str, object]:
    """``measure()`` once per boot of the device, then the cached figure.

    Every job's ``hello`` carries the device's measured bandwidth for the
    report's roofline; measuring costs about a second of copies, so it is done
    once per boot (Linux ``boot_id``), or once a day where there is none, and
    the result says ``cached`` and when it was measured.
    """
    path = os.path.expanduser(cache_path)
    boot = _boot_id()
    try:
        with open(path) as handle:
            stored = json.load(handle)
        fresh = (stored.get("boot_id") == boot) if boot else \
            (time.time() - float(stored.get("measured_at", 0)) < CACHE_MAX_AGE_S)
        if fresh and isinstance(stored.get("result"), dict):
            result = dict(stored["result"])
            result.update(cached=True, measured_at=stored.get("measured_at"))
            return result
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    result = measure()
    now = time.time()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as handle:
            json.dump({"boot_id": boot, "measured_at": now, "result": result}, handle)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets this job's figure
    result = dict(result)
    result.update(cached=False, measured_at=now)
    return result
