"""How the controller reaches a device: the Transport contract.

A transport moves bytes and nothing else. It knows five verbs::

    connect()                 open the link (retrying an unreachable device
                              until its deadline, if the transport has links)
    exec(argv, stdin) -> Stream   start a command, feed it stdin, stream its stdout
    put(local, remote)        copy a file to the device, atomically
    get(remote, local)        copy a file from the device
    close()                   drop the link

``run`` (exec and wait) is built on ``exec`` here, once. The job protocol —
upload the agent, start a job, follow its log from a byte offset, status,
cancel, the device lease — is *not* a transport's business: it is
``orchestrator/agent_client.py``, written once over any transport, so that
``local`` runs exactly the commands ``ssh`` does. A new transport (a
container, adb, a serial console) is one module that implements the verbs
(see ``local.py`` for how small that is).

Conventions every transport keeps:

* ``argv`` is a list, never a shell string; an element or path that starts
  with ``~/`` means the device user's home (the transport expands it the way
  the device would).
* A link that drops while a command runs ends its stream with
  ``exit_code is None`` (``broken``); the next ``exec`` reconnects. While the
  device stays down, ``exec`` raises ``LinkDown`` (try again later) until the
  transport's own deadline passes, then ``UnreachableError``.

Life cycle (checked: a call in the wrong state raises ``TransportError``
naming the device, the call and the state)::

    created --connect()--> connected --close()--> closed
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agents.protocol import ERR_UNREACHABLE
from orchestrator.errors import TransportError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command run on a device."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


class LinkDown(TransportError):
    """The link to the device is down but within its grace period: try again later."""

    kind = ERR_UNREACHABLE


class Stream(ABC):
    """A command running on a device, its stdout pumped into memory by a thread.

    Subclasses supply three primitives (``_recv``, ``_finish``, ``_close``);
    everything a caller needs is here: ``take()`` what has arrived, wait on
    ``arrived`` for more, and read ``exit_code`` once ``finished`` is set.
    ``exit_code`` stays ``None`` when the link died before the command ended
    (``broken``), which is how a follower knows to re-open from its offset.
    """

    def __init__(self, name: str) -> None:
        self._data = bytearray()
        self._lock = threading.Lock()
        self.arrived = threading.Event()  # set when bytes arrive or the stream ends
        self.finished = threading.Event()
        self.exit_code: int | None = None
        self.stderr = b""
        self.closed_by_us = False
        self._thread = threading.Thread(target=self._pump, daemon=True, name=name)

    def _start(self) -> None:
        self._thread.start()

    @abstractmethod
    def _recv(self) -> bytes:
        """Block for the next chunk of stdout; ``b""`` at its end."""

    @abstractmethod
    def _finish(self) -> tuple[int | None, bytes]:
        """After stdout ended: the exit status (None if the link died) and stderr."""

    @abstractmethod
    def _close(self) -> None:
        """Stop following the command (the command itself may run on)."""

    def _pump(self) -> None:
        try:
            while True:
                chunk = self._recv()
                if not chunk:
                    break
                with self._lock:
                    self._data.extend(chunk)
                self.arrived.set()
            self.exit_code, self.stderr = self._finish()
        except (OSError, EOFError, ValueError, TransportError):
            self.exit_code = None
        except Exception:  # paramiko's SSHException and kin: the link, not the command
            self.exit_code = None
        finally:
            self.finished.set()
            self.arrived.set()

    @property
    def broken(self) -> bool:
        """Ended without an exit status: the link (not the command) went away."""
        return self.finished.is_set() and self.exit_code is None

    def take(self) -> bytes:
        """Everything that arrived since the last ``take``."""
        with self._lock:
            data = bytes(self._data)
            self._data.clear()
            return data

    def wait(self, timeout: float) -> bool:
        """Wait until the command ends; True if it did within ``timeout``."""
        return self.finished.wait(timeout)

    def close(self) -> None:
        self.closed_by_us = True
        try:
            self._close()
        except Exception:  # closing a dead channel may fail; it is gone either way
            pass


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

    @abstractmethod
    def exec(self, argv: list[str], stdin: bytes | None = None) -> Stream:
        """Start ``argv`` on the device, feed it ``stdin`` (then EOF), stream its stdout."""

    @abstractmethod
    def put(self, local: str, remote: str) -> None:
        """Copy a file to the device, atomically (temporary name, then rename)."""

    @abstractmethod
    def get(self, remote: str, local: str) -> None:
        """Copy a file from the device (``FileNotFoundError`` if it is not there)."""

    @check_connected
    def run(self, argv: list[str], *, timeout: float, stdin: bytes | None = None
            ) -> CommandResult:
        """Run ``argv`` and wait for it; while the link is down, wait for it to come back.

        ``LinkDown`` is retried here until the transport gives up with
        ``UnreachableError``; a command that outlives ``timeout`` is abandoned
        with a ``TransportError``.
        """
        start = time.monotonic()
        while True:
            try:
                stream = self.exec(argv, stdin)
                break
            except LinkDown:
                continue  # the transport slept its back-off and keeps its own deadline
        if not stream.wait(timeout):
            stream.close()
            raise TransportError(f"device {self.device_name}: {argv[0]} timed out after "
                                 f"{timeout:g} s")
        if stream.exit_code is None:
            raise TransportError(f"device {self.device_name}: the link dropped while "
                                 f"running {argv[0]}")
        return CommandResult(stream.exit_code, stream.take().decode(errors="replace"),
                             stream.stderr.decode(errors="replace"), time.monotonic() - start)
