"""Job control on the device: start detached, follow, status, cancel, lease.

These are what a transport calls, so one remote exec does one whole thing:

* ``start JOB_DIR [--follow]`` reads the job spec from stdin, writes
  ``job.json``, starts the runner *detached* (forks + ``setsid``, under a small
  supervisor that records how it ended: it survives the SSH session and the
  controller) and, with ``--follow``, streams
  the job's event log to stdout until the job ends. A job therefore costs one
  exec, however long it runs.
* ``follow JOB_DIR --offset N`` resumes streaming after a dropped link, from
  the byte the controller already has. The bytes written are exactly the log's,
  so the controller's offset stays exact.
* ``status JOB_DIR`` and ``cancel JOB_DIR`` print one JSON object.
* ``lease acquire|refresh|release`` keeps two controllers off one device.
  ``start --lease-owner O --lease-work-dir W --lease-ttl T`` takes the lease
  in the same exec before it starts anything, so a device's first job costs
  one exec, not two: with ``--follow`` the first stdout line is then the lease
  answer (``{"lease": {...}}``) and the log bytes follow it.

Exit status of ``start --follow`` / ``follow``: 0 when the job's ``result``
event was streamed, 3 when the runner died without one, 4 when ``start``
found the lease held by another controller (nothing was started).
"""

import fcntl
import json
import os
import signal
import socket
import sys
import time
from typing import Callable, Dict, Optional, Tuple

from agents.pids import pid_alive as _pid_alive
from agents.protocol import (
    EVENTS_FILE,
    EXIT_DONE,
    EXIT_FILE,
    EXIT_LEASE_REFUSED,
    EXIT_RUNNER_DIED,
    JOB_ABSENT,
    JOB_EXITED,
    JOB_FILE,
    JOB_RUNNING,
    LEASE_FILE,
    PID_FILE,
    RESULT_MARKER,
    STDERR_FILE,
)

__all__ = ["start", "follow", "status", "cancel", "lease", "EXIT_LEASE_REFUSED"]


def _read_pid(job_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(job_dir, PID_FILE)) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def status(job_dir: str) -> Dict[str, object]:
    """``{"state": "absent"|"running"|"exited", "pid", "exit_code", "log_bytes"}``."""
    if not os.path.exists(os.path.join(job_dir, JOB_FILE)):
        return {"state": JOB_ABSENT}
    pid = _read_pid(job_dir)
    result: Dict[str, object] = {"pid": pid}
    try:
        result["log_bytes"] = os.path.getsize(os.path.join(job_dir, EVENTS_FILE))
    except OSError:
        result["log_bytes"] = 0
    try:
        with open(os.path.join(job_dir, EXIT_FILE)) as handle:
            result["exit_code"] = int(handle.read().strip())
    except (OSError, ValueError):
        pass
    if "exit_code" in result:
        result["state"] = JOB_EXITED
    elif pid is None:
        # job.json is written before the fork; the pid follows within
        # milliseconds. Treat the gap as running.
        result["state"] = JOB_RUNNING
    else:
        result["state"] = JOB_RUNNING if _pid_alive(pid) else JOB_EXITED
    return result


def start(job_dir: str, spec_text: str) -> int:
    """Write job.json and start the runner detached; return its pid.

    A job directory that already holds ``job.json`` was started before (the
    controller sends a start again when the link broke before it answered):
    nothing starts twice, the caller just follows it.
    """
    if os.path.exists(os.path.join(job_dir, JOB_FILE)):
        return _read_pid(job_dir) or 0
    from agents.runner import run_job

    spec = json.loads(spec_text)
    if not os.path.isdir(job_dir):
        os.makedirs(job_dir)
    tmp = os.path.join(job_dir, JOB_FILE + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(spec, handle, sort_keys=True)
    os.replace(tmp, os.path.join(job_dir, JOB_FILE))
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # intermediate child: new session, then the supervisor, then exit
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        _supervise(job_dir, write_end, run_job)
    os.close(write_end)
    os.waitpid(first, 0)
    pid = int(os.read(read_end, 32).decode() or "0")
    os.close(read_end)
    return pid


def _supervise(job_dir: str, write_end: int, run_job: Callable[..., int]) -> None:
    """Fork the runner, tell ``start`` its pid, and record how it ended; never returns.

    The supervisor is the runner's parent, so it learns what no pid file can
    tell: the signal that killed a runner (the OOM killer's SIGKILL, say).
    It writes ``agent.exit`` only if the runner could not (negative: the
    signal), so ``status`` reports "killed by signal 9" instead of a bare
    "exited". It holds no stdio of the command that started it, so the
    exec that carried ``start`` ends when ``start`` does.
    """
    runner = os.fork()
    if runner == 0:
        os.close(write_end)
        _detach_stdio(job_dir)
        code = 1
        try:
            code = run_job(job_dir, echo=False)
        finally:
            _write_exit(job_dir, code)
            os._exit(code)
    os.write(write_end, str(runner).encode())
    os.close(write_end)
    _detach_stdio(job_dir)
    code = 1
    try:
        _, wait_status = os.waitpid(runner, 0)
        if os.WIFSIGNALED(wait_status):
            code = -os.WTERMSIG(wait_status)
        else:
            code = os.WEXITSTATUS(wait_status)
        if not os.path.exists(os.path.join(job_dir, EXIT_FILE)):
            _write_exit(job_dir, code)
    finally:
        os._exit(0)


def _detach_stdio(job_dir: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    err = os.open(os.path.join(job_dir, STDERR_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                  0o644)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err, 2)
    os.close(null)
    os.close(err)


def _write_exit(job_dir: str, code: int) -> None:
    try:
        with open(os.path.join(job_dir, EXIT_FILE), "w") as handle:
            handle.write(str(code))
    except OSError:
        pass


#: Poll interval of ``follow`` while it is eager (its first 2 s, and after each write).
EAGER_POLL_S = 0.002
#: How often an idle ``follow`` asks whether the runner still lives, at most.
STATUS_EVERY_S = 0.05


def follow(job_dir: str, offset: int, out=None, max_idle: float = 0.5) -> int:
    """Copy the event log from ``offset`` to ``out`` until the job ends.

    The log stays open and is read where the last read stopped (one read per
    poll; a partial last line waits in memory for its end), so polling is
    cheap enough to be quick: every 2 ms for the first 2 s (short jobs end
    within it, and the controller's per-job overhead is what it waits here),
    later backing off from 2 ms after each write to ``max_idle``, so that a
    long benchmark is not disturbed by its own follower. Whether the runner
    still lives (several files) is asked only every 50 ms or so.
    """
    out = out or sys.stdout.buffer
    path = os.path.join(job_dir, EVENTS_FILE)
    handle = None
    pending = b""
    wait = EAGER_POLL_S
    dead_checks = 0
    eager_until = time.monotonic() + 2.0
    next_status = 0.0
    try:
        while True:
            if handle is None:
                try:
                    handle = open(path, "rb")
                    handle.seek(offset)
                except OSError:
                    handle = None
            data = handle.read() if handle is not None else b""
            if data:
                pending += data
                end = pending.rfind(b"\n")
                if end >= 0:
                    chunk, pending = pending[: end + 1], pending[end + 1:]
                    out.write(chunk)
                    out.flush()
                    offset += len(chunk)
                    if RESULT_MARKER in chunk:
                        return EXIT_DONE
                    wait = EAGER_POLL_S
                    continue
            now = time.monotonic()
            if now >= next_status:
                next_status = now + max(wait, STATUS_EVERY_S)
                if status(job_dir).get("state") == JOB_EXITED:
                    dead_checks += 1
                    if dead_checks >= 3:  # read once more after the exit, then stop
                        return EXIT_RUNNER_DIED
            time.sleep(wait)
            if now > eager_until:
                wait = min(max_idle, wait * 2)
    finally:
        if handle is not None:
            handle.close()


def cancel(job_dir: str, grace: float = 5.0) -> Dict[str, object]:
    """Stop the runner's process group: SIGTERM, then SIGKILL after ``grace``."""
    pid = _read_pid(job_dir)
    if pid is None or not _pid_alive(pid):
        return {"cancelled": False, "reason": "not running"}
    try:
        # The runner shares the session's process group with anything it
        # started (llama-bench), so the whole group goes.
        group = os.getpgid(pid)
    except OSError:
        return {"cancelled": False, "reason": "not running"}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except OSError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return {"cancelled": True, "signal": int(sig)}
            time.sleep(0.05)
    return {"cancelled": not _pid_alive(pid)}


def lease(action: str, work_dir: str, owner: str, ttl: float) -> Tuple[int, Dict[str, object]]:
    """Acquire, refresh, release or take over the device lease in ``work_dir``.

    The lease file names its owner and a heartbeat time; an owner whose
    heartbeat is older than its ttl is stale and ``acquire`` takes it over.
    ``takeover`` also takes a fresh lease: the controller uses it only when it
    has proved the holder dead (same host, pid gone). Updates happen under
    ``flock`` so two controllers racing for it cannot both win.
    """
    if not os.path.isdir(work_dir):
        os.makedirs(work_dir)
    path = os.path.join(work_dir, LEASE_FILE)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current: Dict[str, object] = {}
        try:
            with open(path) as handle:
                current = json.load(handle)
        except (OSError, ValueError):
            current = {}
        now = time.time()
        holder = current.get("owner")
        fresh = bool(holder) and now - float(current.get("heartbeat", 0)) <= float(  # type: ignore[arg-type]
            current.get("ttl", ttl))  # type: ignore[arg-type]
        if action == "release":
            if holder == owner:
                os.remove(path)
                return 0, {"ok": True, "released": True}
            return 0, {"ok": True, "released": False, "holder": holder}
        if holder and holder != owner and fresh and action != "takeover":
            return 1, {"ok": False, "holder": holder,
                       "age_s": round(now - float(current.get("heartbeat", 0)), 1)}  # type: ignore[arg-type]
        if action == "refresh" and holder != owner:
            return 1, {"ok": False, "holder": holder, "reason": "lease lost"}
        record = {"owner": owner, "heartbeat": now, "ttl": ttl, "host": socket.gethostname(),
                  "since": current.get("since", now) if holder == owner else now}
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(record, handle)
        os.replace(tmp, path)
        answer: Dict[str, object] = {"ok": True}
        if holder and holder != owner:
            answer["took_over"] = current
        return 0, answer
