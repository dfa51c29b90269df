"""The exception hierarchy of the controller.

Every error the controller raises on purpose derives from ``EdgefarmError`` so
the CLI can catch that one class, print a clean one-line (or one-line-per-
problem) message and exit non-zero, while anything else is a bug and keeps its
traceback. Each subclass also derives from the closest built-in exception so
callers that only know the standard library (``except ValueError``,
``except OSError``) still do the right thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# DEVICE_FAILURE_KINDS is re-exported: the scheduler reads it from here.
from agents.protocol import DEVICE_FAILURE_KINDS as DEVICE_FAILURE_KINDS
from agents.protocol import (
    ERR_AUTH,
    ERR_DEVICE_LEASED,
    ERR_HOST_KEY,
    ERR_TRANSPORT,
    ERR_UNREACHABLE,
)


class EdgefarmError(Exception):
    """Root of every error edgefarm raises deliberately."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a configuration file, located as precisely as possible.

    ``line`` and ``column`` are 1-based, like an editor shows them, and are
    ``None`` when the problem has no place in a file (for example a sweep built
    in code, or a file that could not be read at all). ``key_path`` names the
    offending value the way a user would write it (``devices[2].port``); it is
    empty when the problem concerns the whole file.
    """

    path: str | None
    line: int | None
    column: int | None
    key_path: str
    message: str

    def location(self) -> str:
        """``file:line:col`` (or as much of it as is known), the prefix editors can jump to."""
        parts: list[str] = []
        if self.path is not None:
            parts.append(self.path)
            if self.line is not None:
                parts.append(str(self.line))
                if self.column is not None:
                    parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        prefix = [p for p in (self.location(), self.key_path) if p]
        return ": ".join([*prefix, self.message])


class ConfigError(EdgefarmError, ValueError):
    """An inventory or sweep file (or a value built in code) is invalid.

    It may bundle several problems so that a user fixes a file in one pass
    rather than one error per run; ``str()`` shows one problem per line, each
    prefixed with ``file:line:col``. The single-problem fields (``path``,
    ``line``, ``column``, ``key_path``, ``message``) describe the first
    problem, which is the earliest in the file.
    """

    def __init__(
        self,
        message: str = "",
        *,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
        key_path: str = "",
        problems: Sequence[ConfigProblem] | None = None,
    ) -> None:
        if problems:
            self.problems: list[ConfigProblem] = list(problems)
        else:
            self.problems = [
                ConfigProblem(
                    path=None if path is None else str(path),
                    line=line,
                    column=column,
                    key_path=key_path,
                    message=message,
                )
            ]
        first = self.problems[0]
        self.path: str | None = first.path
        self.line: int | None = first.line
        self.column: int | None = first.column
        self.key_path: str = first.key_path
        self.message: str = first.message
        super().__init__(str(self))

    @classmethod
    def from_problems(cls, problems: Sequence[ConfigProblem]) -> ConfigError:
        """Bundle problems, ordered by file then line, so the output reads top to bottom."""
        if not problems:
            raise ValueError("ConfigError.from_problems needs at least one problem")
        ordered = sorted(
            problems,
            key=lambda p: (p.path or "", p.line or 0, p.column or 0),
        )
        return cls(problems=ordered)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructor arguments defeat the default exception
        # pickling; Ray ships exceptions between processes, so rebuild from
        # the problem list instead.
        return (_rebuild_config_error, (type(self), tuple(self.problems)))


def _rebuild_config_error(
    cls: type[ConfigError], problems: tuple[ConfigProblem, ...]
) -> ConfigError:
    """Unpickling helper for ``ConfigError`` (module level so pickle can find it)."""
    return cls(problems=problems)


class TransportError(EdgefarmError, OSError):
    """Reaching a device failed (connection, authentication, file copy, remote exec).

    ``kind`` is what the job store records; the scheduler quarantines a device
    at once for the device-level kinds (unreachable, host-key, auth,
    device-leased), since its other jobs would fail the same way.
    """

    kind = ERR_TRANSPORT


class UnreachableError(TransportError):
    """The device did not answer (refused, timed out, no route) for too long."""

    kind = ERR_UNREACHABLE


class HostKeyError(TransportError):
    """The device's host key is unknown or has changed: edgefarm will not connect."""

    kind = ERR_HOST_KEY


class AuthError(TransportError):
    """The device refused the controller's key."""

    kind = ERR_AUTH


class LeaseError(TransportError):
    """Another controller holds the device's lease."""

    kind = ERR_DEVICE_LEASED




class AgentError(EdgefarmError, RuntimeError):
    """The device agent misbehaved or reported a protocol-level failure."""


class JobError(EdgefarmError, RuntimeError):
    """A benchmark job failed in a way the scheduler must record or retry."""


class StoreError(EdgefarmError, RuntimeError):
    """Reading or writing the results store failed."""


class StoreFullError(StoreError):
    """The disk holding the results store is full: free space, then resume (exit 1)."""

    exit_code = 1


class StoreCorruptError(StoreError):
    """The results store is not a readable SQLite database (exit 2: the input is bad)."""

    exit_code = 2


class StoreReadOnlyError(StoreError):
    """A command that writes was given a results store it may only read (exit 2)."""

    exit_code = 2


class SweepBusyError(EdgefarmError, RuntimeError):
    """Another live controller is running this sweep (``sweeps.own_sweep`` holds its lock).

    Exit status 2, like ``StoreError``'s "unknown sweep id": the command was
    refused before it wrote or started anything, whereas 1 from ``sweep run``
    or ``resume`` means the sweep ran and some jobs failed or were cancelled;
    a script must be able to tell "nothing happened, try later" from that.
    """

    exit_code = 2

    def __init__(self, sweep_id: str, host: str, pid: int | None) -> None:
        self.sweep_id, self.host, self.pid = sweep_id, host, pid
        who = f"pid {pid} on {host}" if pid is not None else "another controller"
        super().__init__(f"sweep {sweep_id} is being run by {who}; "
                         "wait for it to end, or stop it with: edgefarm sweep cancel "
                         f"{sweep_id}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.sweep_id, self.host, self.pid))
