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

from agents.protocol import (
    ERR_AGENT_CRASHED,
    ERR_CANCELLED,
    ERR_TIMEOUT,
    EV_ERROR,
    EV_RESULT,
    JOB_ABSENT,
    JOB_RUNNING,
)
from orchestrator.agent_client import AgentClient, LeaseRefused, LeaseRequest
from orchestrator.deadline import Deadline
from orchestrator.transport.base import LinkDown

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


def _settle_lease(client: AgentClient, answer: dict[str, Any],
                  on_lease: Callable[[dict[str, Any]], None] | None) -> None:
    if not answer.get("ok"):
        raise LeaseRefused(client.device_name, answer)
    if on_lease is not None:
        on_lease(answer)


def _ended(events: Events, last_error: dict[str, Any] | None
           ) -> tuple[Outcome | None, dict[str, Any] | None]:
    """The outcome if ``events`` hold the ``result``; else None and the latest ``error``."""
    for ev in events:
        if ev.get("kind") == EV_ERROR:
            last_error = ev
        elif ev.get("kind") == EV_RESULT:
            if ev.get("status") == "ok":
                return Outcome("done", result=ev.get("info") or {}), last_error
            err = last_error or {}
            return Outcome("failed", ev.get("error_kind") or err.get("error_kind"),
                           err.get("message") or "agent reported failure",
                           result=ev.get("info") or {}), last_error
    return None, last_error


def _stop_and_collect(client: AgentClient, job_dir: str, on_events: Callable[[Events], None],
                      last_error: dict[str, Any] | None, poll_s: float) -> Outcome | None:
    """Stop the job, then read its log to the end; the outcome if the log holds the result.

    A job may have finished while the link was down: past its deadline the
    controller still collects it rather than throw it away. While the link is
    down (within the device's grace period) the stop is retried; after the
    grace the transport raises ``UnreachableError``, the attempt fails, and a
    later ``resume`` collects the result from the job directory instead.
    """
    while True:
        try:
            client.cancel(job_dir)
            events = client.drain(job_dir)
            break
        except LinkDown:
            time.sleep(poll_s)
    if not events:
        return None
    on_events(events)
    return _ended(events, last_error)[0]


def run_attempt(client: AgentClient, job_dir: str, spec: dict[str, Any],
                timeout_s: float, on_events: Callable[[Events], None],
                stop: threading.Event | None = None, attach: bool = False,
                poll_s: float = 0.25, lease: LeaseRequest | None = None,
                on_lease: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Start (or re-attach to) the attempt in ``job_dir`` and follow it to its end."""
    stop = stop or threading.Event()
    if not attach or client.status(job_dir).state == JOB_ABSENT:
        client.start(job_dir, spec, lease=lease)
    else:
        if lease is not None:  # re-attaching: no start to take the lease with
            _settle_lease(client, client.lease("acquire", lease.work_dir, lease.owner,
                                               lease.ttl), on_lease)
            lease = None
        client.attach(job_dir, 0)  # from the start: the store ignores events it has
    deadline = Deadline(timeout_s)
    last_error: dict[str, Any] | None = None
    exited_polls = 0
    while True:
        events = client.read_events(job_dir)
        if lease is not None:
            answer = client.lease_answer(job_dir)
            if answer is not None:
                lease = None
                _settle_lease(client, answer, on_lease)
        if events:
            on_events(events)
            outcome, last_error = _ended(events, last_error)
            if outcome is not None:
                return outcome
            continue  # drain everything already written before checking status
        status = client.status(job_dir)
        if lease is not None and client.lease_answer(job_dir) is not None:
            continue  # the start answered meanwhile: settle the lease first
        if status.state != JOB_RUNNING:
            # One more read after the exit: the last lines may land just now.
            exited_polls += 1
            if exited_polls < 3:
                time.sleep(poll_s)
                continue
            stderr = _tail(client.fetch_log(job_dir))
            how = "exited"
            if status.exit_code is not None and status.exit_code < 0:
                how = f"was killed by signal {-status.exit_code}"
            elif status.exit_code is not None:
                how = f"exited with status {status.exit_code}"
            return Outcome("failed", ERR_AGENT_CRASHED,
                           f"agent {how} before reporting a result"
                           + (f"; stderr: {stderr}" if stderr else ""))
        if deadline.expired or stop.is_set():
            outcome = _stop_and_collect(client, job_dir, on_events, last_error, poll_s)
            if outcome is not None and outcome.state == "done":
                return outcome  # it finished before the stop reached it: kept, not re-run
            if stop.is_set():
                return Outcome("cancelled", ERR_CANCELLED, "cancelled by the controller")
            return Outcome("failed", ERR_TIMEOUT, f"job exceeded its timeout of {timeout_s:g} s")
        client.wait(job_dir, poll_s, stop)
