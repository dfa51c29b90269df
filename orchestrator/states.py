"""The states of sweeps, jobs and attempts, and which changes between them are allowed.

The store writes these values and checks every sweep and job state change
against the tables below, so a bug that, say, reopens a finished job fails
loudly at the write instead of silently skewing a report. They are
``StrEnum`` members, so they compare equal to (and are stored as) the plain
strings that SQLite, the metrics and the JSON report carry.

Why each transition exists is noted next to it: every one of them is taken
somewhere (scheduler, resume, ``sweep cancel``), and a new one should be
added here with its reason, not worked around.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ATTEMPT_STATES",
    "AttemptState",
    "JOB_STATES",
    "JOB_TRANSITIONS",
    "JobState",
    "SWEEP_STATES",
    "SWEEP_TRANSITIONS",
    "SweepState",
    "job_transition_allowed",
    "sweep_transition_allowed",
]


class SweepState(StrEnum):
    """Where a whole sweep is."""

    RUNNING = "running"          # created, or a controller is driving it
    FINISHED = "finished"        # every job ended (done or failed)
    INTERRUPTED = "interrupted"  # stopped (Ctrl-C); resumable
    CANCELLING = "cancelling"    # `sweep cancel` asked the controller to stop
    CANCELLED = "cancelled"      # stopped for good by `sweep cancel`


class JobState(StrEnum):
    """Where one planned job is."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptState(StrEnum):
    """How one attempt at a job is doing or ended."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


SWEEP_STATES: tuple[SweepState, ...] = tuple(SweepState)
JOB_STATES: tuple[JobState, ...] = tuple(JobState)
ATTEMPT_STATES: tuple[AttemptState, ...] = tuple(AttemptState)

S, J = SweepState, JobState

SWEEP_TRANSITIONS: dict[SweepState, frozenset[SweepState]] = {
    # run_sweep marks its sweep running at every start (also right after
    # creation); the end state follows; `sweep cancel` may cut in.
    S.RUNNING: frozenset({S.RUNNING, S.FINISHED, S.INTERRUPTED, S.CANCELLING, S.CANCELLED}),
    # A resume is a fresh run; a finished sweep may still have failed jobs.
    S.FINISHED: frozenset({S.RUNNING}),
    S.INTERRUPTED: frozenset({S.RUNNING, S.CANCELLING, S.CANCELLED}),
    # Cancelling twice is harmless; a resume after a controller died while
    # cancelling is the user's explicit choice.
    S.CANCELLING: frozenset({S.CANCELLING, S.CANCELLED, S.RUNNING}),
    # A controller that ends after `sweep cancel` gave up waiting for it keeps
    # the sweep cancelled; a resume runs it again.
    S.CANCELLED: frozenset({S.CANCELLED, S.RUNNING}),
}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # Started; or failed unstarted because its device is quarantined; or cancelled.
    J.PENDING: frozenset({J.RUNNING, J.FAILED, J.CANCELLED}),
    # Re-attached (same attempt) after a controller died; requeued for a
    # retry; or ended.
    J.RUNNING: frozenset({J.RUNNING, J.PENDING, J.DONE, J.FAILED, J.CANCELLED}),
    # A resume runs failed jobs again; a quarantine on resume fails them anew.
    J.FAILED: frozenset({J.RUNNING, J.FAILED}),
    # Likewise for cancelled jobs; and a job that `sweep cancel` marked while
    # its controller was still running keeps the outcome that then arrives.
    J.CANCELLED: frozenset({J.RUNNING, J.FAILED, J.CANCELLED, J.DONE}),
    # Done is final: its repetitions are the ones the report counts.
    J.DONE: frozenset(),
}


def sweep_transition_allowed(old: str, new: str) -> bool:
    """Whether a sweep may go from ``old`` to ``new`` (unknown names never may)."""
    try:
        return SweepState(new) in SWEEP_TRANSITIONS[SweepState(old)]
    except ValueError:
        return False


def job_transition_allowed(old: str, new: str) -> bool:
    """Whether a job may go from ``old`` to ``new`` (unknown names never may)."""
    try:
        return JobState(new) in JOB_TRANSITIONS[JobState(old)]
    except ValueError:
        return False
