"""Run one attempt of one job through a transport and follow it to the end.

This is the controller's half of the job protocol, kept free of Ray so tests
and the gateway call the same code. States of one attempt::

    start (or attach) -> following -> done | failed | cancelled

Events are handed to ``on_events`` as soon as they are read, never held until
the job ends. The attempt ends when the agent writes ``result``; if the agent
dies without one, or the timeout passes, the attempt fails with that reason.

With a ``lease`` request the device lease is taken as part of the start (one
exec over ssh); ``on_lease`` gets the agent's answer once it is known, and a
lease held by another controller raises ``LeaseRefused`` (nothing started).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.transport.base import LeaseRefused, LeaseRequest, Transport

Events = list[dict[str, Any]]


@dataclass
class Outcome:
    """How one attempt ended."""

    state: str  # done | failed | cancelled
    error_kind: str | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _settle_lease(transport: Transport, answer: dict[str, Any],
                  on_lease: Callable[[dict[str, Any]], None] | None) -> None:
    if not answer.get("ok"):
        raise LeaseRefused(transport.device_name, answer)
    if on_lease is not None:
        on_lease(answer)


def run_attempt(transport: Transport, job_dir: str, spec: dict[str, Any], agent_path: str,
                timeout_s: float, on_events: Callable[[Events], None],
                stop: threading.Event | None = None, attach: bool = False,
                poll_s: float = 0.25, lease: LeaseRequest | None = None,
                on_lease: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Start (or re-attach to) the attempt in ``job_dir`` and follow it to its end."""
    stop = stop or threading.Event()
    offset = 0
    if not attach or transport.job_status(job_dir).state == "absent":
        transport.start_job(job_dir, spec, agent_path, lease=lease)
    elif lease is not None:  # re-attaching: no start to take the lease with
        _settle_lease(transport, transport.lease(agent_path, "acquire", lease.work_dir,
                                                 lease.owner, lease.ttl), on_lease)
        lease = None
    started = time.monotonic()
    last_error: dict[str, Any] | None = None
    exited_polls = 0
    while True:
        events, offset = transport.read_events(job_dir, offset)
        if lease is not None:
            answer = transport.lease_answer(job_dir)
            if answer is not None:
                lease = None
                _settle_lease(transport, answer, on_lease)
        if events:
            on_events(events)
            for ev in events:
                if ev.get("kind") == "error":
                    last_error = ev
                elif ev.get("kind") == "result":
                    if ev.get("status") == "ok":
                        return Outcome("done", result=ev.get("info") or {})
                    err = last_error or {}
                    return Outcome("failed", ev.get("error_kind") or err.get("error_kind"),
                                   err.get("message") or "agent reported failure",
                                   result=ev.get("info") or {})
            continue  # drain everything already written before checking status
        status = transport.job_status(job_dir)
        if lease is not None and transport.lease_answer(job_dir) is not None:
            continue  # the start answered meanwhile: settle the lease first
        if status.state != "running":
            # One more read after the exit: the last lines may land just now.
            exited_polls += 1
            if exited_polls < 3:
                time.sleep(poll_s)
                continue
            stderr = _tail(transport.fetch_log(job_dir))
            how = "exited"
            if status.exit_code is not None and status.exit_code < 0:
                how = f"was killed by signal {-status.exit_code}"
            elif status.exit_code is not None:
                how = f"exited with status {status.exit_code}"
            return Outcome("failed", "agent-crashed",
                           f"agent {how} before reporting a result"
                           + (f"; stderr: {stderr}" if stderr else ""))
        if time.monotonic() - started > timeout_s:
            transport.cancel(job_dir)
            events, offset = transport.read_events(job_dir, offset)
            if events:
                on_events(events)
            return Outcome("failed", "timeout", f"job exceeded its timeout of {timeout_s:g} s")
        if stop.is_set():
            transport.cancel(job_dir)
            events, offset = transport.read_events(job_dir, offset)
            if events:
                on_events(events)
            return Outcome("cancelled", "cancelled", "cancelled by the controller")
        transport.wait_for_events(job_dir, poll_s, stop)
