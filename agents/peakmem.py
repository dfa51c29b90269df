"""Peak resident memory of this process, per repetition where the OS allows.

On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the high-water
mark (``VmHWM``), so each repetition reports its own peak. Elsewhere
``getrusage`` gives the peak since the process started; the result says which
kind of number it is.
"""

import resource
import sys
from typing import Optional, Tuple


def reset_peak() -> bool:
    """Reset the peak-RSS mark; return False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _vm_hwm_bytes() -> Optional[int]:
    return _status_bytes("VmHWM")


def current_rss_bytes() -> Tuple[Optional[int], str]:
    """This process's resident set now (``VmRSS``); None where /proc is missing."""
    rss = _status_bytes("VmRSS")
    return rss, "current" if rss is not None else "unavailable"


def rusage_maxrss_bytes(usage: "resource.struct_rusage") -> int:
    """``ru_maxrss`` in bytes: macOS reports bytes, Linux KiB."""
    if sys.platform == "darwin":
        return int(usage.ru_maxrss)
    return int(usage.ru_maxrss) * 1024


def peak_rss_bytes() -> Tuple[int, str]:
    """Return ``(bytes, scope)``; scope is ``since-reset`` or ``since-start``."""
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm, "since-reset"
    return rusage_maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF)), "since-start"
