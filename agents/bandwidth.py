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
