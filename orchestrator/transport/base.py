"""How the controller reaches a device: the Transport contract.

Life cycle (checked: calling a method in the wrong state raises
``TransportError`` naming the device, the call and the state)::

    created --connect()--> connected --close()--> closed

A transport does two kinds of work:

* plain remote operations: ``run`` a command, ``put``/``get`` a file;
* the job protocol the agent defines: ``start_job`` launches
  ``python agent.pyz run JOB_DIR`` *detached* (it outlives the controller and
  the link), ``read_events`` follows the job's ``events.jsonl`` from a byte
  offset, ``job_status`` says whether the agent still runs, ``fetch_log``
  returns what the agent wrote to stderr, and ``cancel`` stops its process
  group.

``local`` implements it for this machine; ``ssh`` (fabric/paramiko) plugs in
next with the same methods. A capability a transport lacks raises
``NotImplementedError`` with a sentence saying so.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.errors import LeaseError, TransportError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command run on a device."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


@dataclass(frozen=True)
class JobStatus:
    """What a device says about one job directory."""

    state: str  # "running" | "exited" | "absent"
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


def check_connected(method: F) -> F:
    """Refuse a call unless the transport is connected, naming device, call and state."""

    @functools.wraps(method)
    def wrapper(self: Transport, *args: Any, **kwargs: Any) -> Any:
        if self.state != "connected":
            raise TransportError(
                f"{type(self).__name__}({self.device_name}).{method.__name__}() needs a "
                f"connected transport; state is {self.state!r}")
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Transport(ABC):
    """Base class of all transports; see the module docstring for the contract."""

    name = "base"
    #: The interpreter that runs the agent on the device.
    python = "python3"

    def __init__(self, device_name: str) -> None:
        self.device_name = device_name
        self.state = "created"
        self._lease_answers: dict[str, dict[str, Any]] = {}
        self.log = logging.getLogger(f"edgefarm.transport.{self.name}[{device_name}]")

    def connect(self) -> None:
        self.state = "connected"

    def close(self) -> None:
        self.state = "closed"

    def __enter__(self) -> Transport:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plain remote operations ---------------------------------------------
    @abstractmethod
    def run(self, argv: list[str], *, timeout: float, stdin: bytes | None = None
            ) -> CommandResult:
        """Run ``argv`` (never a shell string), feeding ``stdin``, and wait for it."""

    @abstractmethod
    def put(self, local: str, remote: str) -> None:
        """Copy a file to the device, atomically (temporary name, then rename)."""

    @abstractmethod
    def get(self, remote: str, local: str) -> None:
        """Copy a file from the device."""

    # -- the job protocol ----------------------------------------------------
    @abstractmethod
    def ensure_agent(self, bundle_path: str, sha256: str) -> str:
        """Make the agent zipapp present on the device; return its path there."""

    def lazy_agent(self, bundle_path: str, sha256: str) -> str:
        """The agent's path on the device, for the job protocol's commands.

        A transport may defer the upload until a command finds the agent
        missing (ssh: that saves a round trip per device and connection); the
        default makes sure of it at once, like ``ensure_agent``.
        """
        return self.ensure_agent(bundle_path, sha256)

    @abstractmethod
    def start_job(self, job_dir: str, spec: dict[str, Any], agent_path: str,
                  lease: LeaseRequest | None = None) -> None:
        """Write ``job.json`` into ``job_dir`` and start the agent on it, detached.

        With ``lease``, take the device lease first, in the same step where
        the transport can; if another controller holds it, nothing starts.
        Either way the agent's answer is then available from ``lease_answer``.
        """

    def lease_answer(self, job_dir: str) -> dict[str, Any] | None:
        """The lease answer of ``start_job(..., lease=...)``; None while not known yet."""
        return self._lease_answers.get(job_dir)

    def _lease_before_start(self, job_dir: str, agent_path: str, lease: LeaseRequest) -> bool:
        """Take the lease with its own command (transports that cannot fold it); True if held."""
        answer = self.lease(agent_path, "acquire", lease.work_dir, lease.owner, lease.ttl)
        self._lease_answers[job_dir] = answer
        return bool(answer.get("ok"))

    @abstractmethod
    def read_events(self, job_dir: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Return complete events after byte ``offset`` of the job's log, and the new offset."""

    @abstractmethod
    def job_status(self, job_dir: str) -> JobStatus:
        """Is the agent for ``job_dir`` running, exited, or was it never started?"""

    @abstractmethod
    def fetch_log(self, job_dir: str) -> str:
        """Return the agent's stderr for the job (for error reports)."""

    @abstractmethod
    def cancel(self, job_dir: str) -> None:
        """Stop the job's process group (SIGTERM, then SIGKILL)."""

    @abstractmethod
    def job_dir(self, sweep_id: str, job_key: str, attempt: int) -> str:
        """Where on the device one attempt of one job lives."""

    def wait_for_events(self, job_dir: str, timeout: float, stop: threading.Event) -> None:
        """Block until the job may have new events, ``timeout`` passes or ``stop`` is set.

        The default just waits; a transport that streams events (ssh) wakes up
        as soon as bytes arrive, so a job's end is seen without polling delay.
        """
        stop.wait(timeout)

    def forget(self, job_dir: str) -> None:
        """Drop whatever the transport keeps for a finished job (channels, handles)."""
        self._lease_answers.pop(job_dir, None)

    def expand_path(self, path: str) -> str:
        """A device path with ``~`` expanded as the device sees it."""
        return os.path.expanduser(path)

    def agent_argv(self, agent_path: str, *args: str) -> list[str]:
        return [self.python, agent_path, *args]

    def lease(self, agent_path: str, action: str, work_dir: str, owner: str,
              ttl: float) -> dict[str, Any]:
        """Acquire, refresh or release the device lease (see ``agents/jobctl.py``).

        ``work_dir`` goes as it is: the agent expands ``~`` itself.
        """
        result = self.run(self.agent_argv(agent_path, "lease", action, "--work-dir", work_dir,
                                          "--owner", owner, "--ttl", str(ttl)), timeout=60)
        try:
            return dict(json.loads(result.stdout))
        except ValueError:
            raise TransportError(f"device {self.device_name}: agent lease {action} failed: "
                                 f"{result.stderr.strip()[-500:]}") from None


def parse_event_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
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
