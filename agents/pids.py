"""Is a process alive? One answer for the agent and the controller.

Used where a pid file or a lease names a process: the agent's ``status`` and
``cancel``, the controller's check whether a lease holder on the same host
died. A zombie (exited, not yet reaped) counts as dead, since it will never
write another event.
"""

import errno
import os


def pid_alive(pid: int) -> bool:
    """True while ``pid`` names a live process (one we may not signal counts as live)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:
        with open("/proc/%d/stat" % pid) as handle:  # Linux: a zombie is dead
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
