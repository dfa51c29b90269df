"""The controller's half of the job protocol, written once over any transport.

The agent (``agents/cli.py``, ``agents/jobctl.py``) defines the commands; this
client is the only code that speaks them, through a transport's ``exec``,
``put`` and ``get`` alone — so a ``local`` device runs exactly the commands an
``ssh`` device does, and a new transport gets the whole protocol for free.
File names, exit statuses and kinds come from ``agents/protocol.py``.

What one job costs: **one exec**. ``agent start JOB_DIR --follow`` reads the
spec on stdin, (takes the device lease first, when asked: its answer is the
first line), starts the runner detached and streams the event log on the same
channel until the ``result`` event. Every agent command runs behind a presence
test of the zipapp (``[ -f AGENT ] || exit 199``): only a command that exits
so uploads the agent and runs again, so a warm device pays no check. The
agent itself checks its zip's bytes against its name (and its unpacked copy
against the zip's manifest) before every command; a zip that fails exits
``EXIT_AGENT_CORRUPT``, and the client removes it and uploads it once more.

A follow stream that breaks (the link dropped) is re-opened from the byte
offset already read with ``agent follow JOB_DIR --offset N``; a start that
broke before it answered runs again (``start`` on a job that has its
``job.json`` starts nothing twice). Events are parsed only from complete
lines, so the store receives each event exactly once per read position.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.protocol import (
    AGENT_SUBDIR,
    EXIT_AGENT_CORRUPT,
    EXIT_AGENT_MISSING,
    EXIT_DONE,
    EXIT_LEASE_REFUSED,
    JOB_ABSENT,
    JOB_EXITED,
    JOB_RUNNING,
    JOBS_SUBDIR,
    STDERR_FILE,
    agent_filename,
)
from orchestrator.errors import LeaseError, TransportError
from orchestrator.transport.base import LinkDown, Stream, Transport

Event = dict[str, Any]

#: Exit statuses after which the agent is uploaded and the same command runs again.
_REDEPLOY = (EXIT_AGENT_MISSING, EXIT_AGENT_CORRUPT)

#: Run by the device's Python after an upload: check the sha256, then rename into place.
_VERIFY_AND_INSTALL = (
    "import hashlib,os,sys\n"
    "tmp,target,want=sys.argv[1:4]\n"
    "got=hashlib.sha256(open(tmp,'rb').read()).hexdigest()\n"
    "ok=got==want\n"
    "os.replace(tmp,target) if ok else os.remove(tmp)\n"
    "print(got)\n"
    "sys.exit(0 if ok else 1)\n")


@dataclass(frozen=True)
class JobStatus:
    """What a device says about one job directory."""

    state: str  # protocol JOB_ABSENT | JOB_RUNNING | JOB_EXITED
    exit_code: int | None = None
    pid: int | None = None


@dataclass(frozen=True)
class LeaseRequest:
    """Take the device lease (``agents/jobctl.py``) as part of starting a job."""

    work_dir: str
    owner: str
    ttl: float


class LeaseRefused(LeaseError):
    """The device's lease is held by another controller; ``answer`` is the agent's reply."""

    def __init__(self, device: str, answer: dict[str, Any]) -> None:
        super().__init__(f"device {device} is in use by another controller "
                         f"({answer.get('holder')}, heartbeat {answer.get('age_s')} s ago)")
        self.answer = answer


@dataclass
class _Follow:
    """One job's follower: the command that streams its log, and what was read so far."""

    args: list[str]
    stdin: bytes | None
    header: bool  # the first line is the lease answer, not log bytes
    offset: int  # log offset of pending[0]
    stream: Stream | None = None
    pending: bytearray = field(default_factory=bytearray)
    lease_answer: dict[str, Any] | None = None
    redeployed: bool = False  # replaced a corrupt agent once already: a second time fails

    @property
    def answered(self) -> bool:
        return not self.header or self.lease_answer is not None


def parse_event_lines(data: bytes) -> tuple[list[Event], int]:
    """Split complete JSON lines off ``data``; return events and bytes consumed.

    A partly written last line is not consumed, so it is read whole next time.
    """
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    events = []
    for raw in data[: end + 1].splitlines():
        if raw.strip():
            try:
                events.append(json.loads(raw))
            except ValueError:
                continue
    return events, end + 1


def _lease_line(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)["lease"]
        if isinstance(answer, dict):
            return answer
    except (ValueError, KeyError, TypeError):
        pass
    return {"ok": False, "holder": None,
            "error": f"unexpected answer: {line[:200].decode(errors='replace')}"}


def job_dir_of(work_dir: str, sweep_id: str, job_key: str, attempt: int) -> str:
    """Where on a device (its agent's ``work_dir``) one attempt of one job lives."""
    return f"{work_dir}/{JOBS_SUBDIR}/{sweep_id}/{job_key}-a{attempt}"


class AgentClient:
    """Speaks the agent's commands on one device through ``transport``."""

    def __init__(self, transport: Transport, work_dir: str, bundle_path: str | Path,
                 sha256: str) -> None:
        self.transport = transport
        self.device_name = transport.device_name
        self.work_dir = work_dir.rstrip("/") or "/"
        self.bundle_path = str(bundle_path)
        self.sha256 = sha256
        self.agent_path = f"{self.work_dir}/{AGENT_SUBDIR}/{agent_filename(sha256)}"
        self._follows: dict[str, _Follow] = {}
        self._deploying = threading.Lock()
        self.log = transport.log

    # -- commands ----------------------------------------------------------------
    def argv(self, *args: str) -> list[str]:
        """An agent command behind the presence test (exit 199: no zipapp at its path)."""
        return ["sh", "-c", f'[ -f "$1" ] || exit {EXIT_AGENT_MISSING}; exec "$0" "$@"',
                self.transport.python, self.agent_path, *args]

    def call(self, *args: str, timeout: float = 60, stdin: bytes | None = None) -> Any:
        """Run an agent command that prints one JSON object; return it (upload first if needed)."""
        result = self.transport.run(self.argv(*args), timeout=timeout, stdin=stdin)
        if result.exit_code in _REDEPLOY:
            self.deploy(corrupt=result.exit_code == EXIT_AGENT_CORRUPT)
            result = self.transport.run(self.argv(*args), timeout=timeout, stdin=stdin)
            if result.exit_code == EXIT_AGENT_CORRUPT:
                raise self._still_corrupt(result.stderr)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise TransportError(
                f"device {self.device_name}: agent {args[0]} failed (status "
                f"{result.exit_code}): {(result.stderr.strip() or result.stdout.strip())[-500:]}"
            ) from None

    def _still_corrupt(self, stderr: str) -> TransportError:
        return TransportError(
            f"device {self.device_name}: the agent {self.agent_path} is still refused as "
            f"corrupt after uploading it again: {stderr.strip()[-300:]}")

    def deploy(self, corrupt: bool = False) -> None:
        """Upload the agent zipapp, verify its sha256 on the device, rename it into place.

        Then the agent unpacks and compiles itself once (``agent prepare``),
        so no job start compiles it. ``corrupt``: the agent refused its own
        file (``EXIT_AGENT_CORRUPT``), which is removed first (with its
        unpacked copy) so the upload replaces it.
        """
        with self._deploying:  # one upload at a time (a job and the lease refresher may race)
            if corrupt:
                self.log.warning("the agent %s on %s is corrupt; replacing it",
                                 self.agent_path, self.device_name)
                self.transport.run(["rm", "-rf", self.agent_path, self.agent_path + ".d"],
                                   timeout=30)
            check = self.transport.run(["test", "-f", self.agent_path], timeout=30)
            if check.exit_code == 0:
                return  # another caller uploaded it meanwhile
            self.log.info("uploading the agent to %s", self.device_name)
            tmp = f"{self.agent_path}.tmp{os.getpid()}-{threading.get_ident()}"
            self.transport.put(self.bundle_path, tmp)
            verify = self.transport.run([self.transport.python, "-c", _VERIFY_AND_INSTALL, tmp,
                                         self.agent_path, self.sha256], timeout=60)
            if verify.exit_code != 0:
                raise TransportError(
                    f"device {self.device_name}: agent upload failed verification "
                    f"(sha256 {verify.stdout.strip() or verify.stderr.strip()[-300:]!r}, "
                    f"expected {self.sha256})")
            prepared = self.transport.run(self.argv("prepare"), timeout=120)
            if prepared.exit_code != 0:  # only slower starts: worth a note, not a failure
                self.log.warning("agent prepare failed on %s: %s", self.device_name,
                                 prepared.stderr.strip()[-300:])

    def ensure_agent(self) -> str:
        """Make sure the agent is on the device now (one exec when it is); return its path."""
        self.call("version")
        return self.agent_path

    def probe(self, llama_bench: str | None = None) -> dict[str, Any]:
        """The device's facts (``agent probe``)."""
        args = ["probe"] + (["--llama-bench", llama_bench] if llama_bench else [])
        return dict(self.call(*args))

    def health(self, platform: str | None = None, seconds: float = 2.0) -> dict[str, Any]:
        """One idle reading of the device's telemetry and lease (``agent health``)."""
        args = ["health", "--work-dir", self.work_dir, "--seconds", f"{seconds:g}"]
        return dict(self.call(*args + (["--platform", platform] if platform else []),
                              timeout=seconds + 60))

    def lease(self, action: str, work_dir: str, owner: str, ttl: float) -> dict[str, Any]:
        """Acquire, refresh, release or take over the device lease (``agents/jobctl.py``)."""
        return dict(self.call("lease", action, "--work-dir", work_dir, "--owner", owner,
                              "--ttl", f"{ttl:g}"))

    # -- jobs ----------------------------------------------------------------------
    def job_dir(self, sweep_id: str, job_key: str, attempt: int) -> str:
        """Where on the device one attempt of one job lives."""
        return job_dir_of(self.work_dir, sweep_id, job_key, attempt)

    def start(self, job_dir: str, spec: dict[str, Any], lease: LeaseRequest | None = None
              ) -> None:
        """Start the job detached and follow its log: one exec.

        With ``lease`` the device lease is taken in the same exec; if another
        controller holds it nothing starts, and ``lease_answer`` says so.
        """
        args = ["start", job_dir, "--follow"]
        if lease is not None:
            args += ["--lease-owner", lease.owner, "--lease-work-dir", lease.work_dir,
                     "--lease-ttl", f"{lease.ttl:g}"]
        follow = _Follow(args, json.dumps(spec, sort_keys=True).encode(), lease is not None, 0)
        self._follows[job_dir] = follow
        self._launch(follow)

    def attach(self, job_dir: str, offset: int = 0) -> None:
        """Follow a job started earlier (by this or a previous controller) from ``offset``."""
        follow = _Follow(["follow", job_dir, "--offset", str(offset)], None, False, offset)
        self._follows[job_dir] = follow
        self._launch(follow)

    def _launch(self, follow: _Follow) -> bool:
        """Run the follower's command; False while the link is down (try again later)."""
        try:
            follow.stream = self.transport.exec(self.argv(*follow.args), follow.stdin)
        except LinkDown:
            follow.stream = None
            return False
        return True

    def _repair(self, job_dir: str, follow: _Follow) -> bool:
        """Re-open a follower whose stream broke or found no agent; False if not yet."""
        stream = follow.stream
        follow.pending.clear()  # a partial line is read again, whole, from the offset
        if stream is not None and stream.finished.is_set() and stream.exit_code in _REDEPLOY:
            corrupt = stream.exit_code == EXIT_AGENT_CORRUPT
            if corrupt and follow.redeployed:
                raise self._still_corrupt(stream.stderr.decode(errors="replace"))
            follow.redeployed = follow.redeployed or corrupt
            self.deploy(corrupt=corrupt)  # then the same command again: nothing had started
        elif not follow.answered:
            follow.offset = 0  # a start that never answered runs again: it starts nothing twice
        else:
            follow.args = ["follow", job_dir, "--offset", str(follow.offset)]
            follow.stdin = None
        return self._launch(follow)

    def read_events(self, job_dir: str) -> list[Event]:
        """Complete events that arrived since the last call (repairing a broken follower)."""
        follow = self._follows[job_dir]
        stream = follow.stream
        events: list[Event] = []
        if stream is None or stream.broken or (
                stream.finished.is_set() and stream.exit_code in _REDEPLOY):
            if stream is not None:  # keep what arrived before the break
                follow.pending.extend(stream.take())
                events = self._consume(follow)
            if not self._repair(job_dir, follow):
                return events
            stream = follow.stream
            assert stream is not None
        follow.pending.extend(stream.take())
        return events + self._consume(follow)

    def _consume(self, follow: _Follow) -> list[Event]:
        if follow.header and follow.lease_answer is None:
            newline = follow.pending.find(b"\n")
            if newline < 0:
                return []
            follow.lease_answer = _lease_line(bytes(follow.pending[:newline]))
            del follow.pending[: newline + 1]
        events, used = parse_event_lines(bytes(follow.pending))
        del follow.pending[:used]
        follow.offset += used
        return events

    def offset(self, job_dir: str) -> int:
        """Bytes of the job's log read so far."""
        return self._follows[job_dir].offset

    def lease_answer(self, job_dir: str) -> dict[str, Any] | None:
        """The answer to ``start(..., lease=...)``; None while not known yet."""
        follow = self._follows.get(job_dir)
        return follow.lease_answer if follow is not None else None

    def status(self, job_dir: str) -> JobStatus:
        """Is the job running, exited, or was it never started?

        While the follower streams, it answers without a round trip; once it
        ended without the result (or the link is down), the agent is asked.
        """
        follow = self._follows.get(job_dir)
        if follow is not None:
            stream = follow.stream
            if stream is None or not stream.finished.is_set() or stream.broken \
                    or stream.exit_code in _REDEPLOY:
                return JobStatus(JOB_RUNNING)  # read_events repairs the link, deploys the agent
            if stream.exit_code == EXIT_DONE:
                return JobStatus(JOB_EXITED, 0)
            if stream.exit_code == EXIT_LEASE_REFUSED and follow.lease_answer is not None:
                return JobStatus(JOB_ABSENT)  # nothing started; the caller reads the answer
        try:
            state = self.call("status", job_dir, timeout=30)
        except LinkDown:
            return JobStatus(JOB_RUNNING)
        return JobStatus(state.get("state", JOB_ABSENT), state.get("exit_code"),
                         state.get("pid"))

    def wait(self, job_dir: str, timeout: float, stop: threading.Event) -> None:
        """Block until the job may have new events, ``timeout`` passes or ``stop`` is set."""
        follow = self._follows.get(job_dir)
        stream = follow.stream if follow is not None else None
        if stream is None or stream.finished.is_set():
            stop.wait(timeout)
            return
        stream.arrived.wait(timeout)
        stream.arrived.clear()

    def cancel(self, job_dir: str) -> dict[str, Any]:
        """Stop the job's process group on the device (SIGTERM, then SIGKILL)."""
        answer = dict(self.call("cancel", job_dir, timeout=30))
        follow = self._follows.get(job_dir)
        if follow is not None and follow.stream is not None:
            follow.stream.close()
            follow.stream = None
        return answer

    def fetch_log(self, job_dir: str) -> str:
        """What the runner (and the follower command) wrote to stderr, for error reports."""
        follow = self._follows.get(job_dir)
        own = ""
        if follow is not None and follow.stream is not None:
            own = follow.stream.stderr.decode(errors="replace")
        with tempfile.TemporaryDirectory(prefix="edgefarm-log-") as tmp:
            local = os.path.join(tmp, STDERR_FILE)
            try:
                self.transport.get(f"{job_dir}/{STDERR_FILE}", local)
                return Path(local).read_text(errors="replace") + own
            except (OSError, TransportError):
                return own

    def drain(self, job_dir: str, timeout: float = 60) -> list[Event]:
        """The rest of an ended job's log, past what was read: one ``follow`` to its end.

        For after a cancel, or for a job that finished while the link was down:
        ``follow`` stops at the result line or once the runner is gone, so this
        returns whatever the job wrote last, its result included. Raises
        ``LinkDown`` while the link is down.
        """
        old = self._follows.get(job_dir)
        offset = old.offset if old is not None else 0
        if old is not None and old.stream is not None:
            old.stream.close()  # a partial line it held is read again, whole, from offset
        follow = _Follow(["follow", job_dir, "--offset", str(offset)], None, False, offset)
        self._follows[job_dir] = follow
        follow.stream = self.transport.exec(self.argv(*follow.args))
        follow.stream.wait(timeout)
        follow.pending.extend(follow.stream.take())
        return self._consume(follow)

    def forget(self, job_dir: str) -> None:
        """Drop a finished job's follower."""
        follow = self._follows.pop(job_dir, None)
        if follow is not None and follow.stream is not None:
            follow.stream.close()
