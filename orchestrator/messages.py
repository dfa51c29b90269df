"""What crosses the Ray boundary between the driver and a site's gateway, typed.

The driver (``scheduler.py``) sends a ``StartJob`` to a gateway; the gateway
(``gateway.py``) answers through ``poll`` with ``GatewayMessage`` values, in
this order per attempt: any number of ``EventsMessage``, then one
``EndMessage``. ``WarningMessage`` may come at any time. All are plain
dictionaries (cheap to pickle) whose keys are declared here once.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from agents.protocol import JobSpec
from orchestrator.jobrunner import Outcome

#: One agent event (``agents/events.py``): the envelope ``v, seq, kind, job,
#: attempt, t, mono`` plus the kind's own fields.
Event = dict[str, Any]


class StartJob(TypedDict):
    """Run one attempt of one job on one device."""

    device: str
    sweep_id: str
    job: str  # the job's key
    attempt: int
    spec: JobSpec  # the job.json the agent receives
    timeout_s: float
    attach: bool  # re-attach to an attempt a previous controller started


class EventsMessage(TypedDict):
    """Events the agent wrote, forwarded as soon as they were read."""

    type: Literal["events"]
    device: str
    job: str
    attempt: int
    events: list[Event]


class EndMessage(TypedDict):
    """How an attempt ended; the last message about it."""

    type: Literal["end"]
    device: str
    job: str
    attempt: int
    outcome: Outcome


class WarningMessage(TypedDict):
    """Something the user should see that is not a job's failure (a lease taken over)."""

    type: Literal["warning"]
    device: str
    message: str


GatewayMessage = EventsMessage | EndMessage | WarningMessage
