"""The state tables of orchestrator/states.py, enforced by the real store (SQLite)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers import sleep_models, write_inventory, write_sweep

from orchestrator.states import (
    JOB_TRANSITIONS,
    SWEEP_TRANSITIONS,
    AttemptState,
    JobState,
    SweepState,
    job_transition_allowed,
    sweep_transition_allowed,
)
from orchestrator.store import IllegalTransitionError, Store, UnknownSweepError
from orchestrator.sweeps import create_sweep, load_plan

J, S = JobState, SweepState

#: The table, written out again by hand: changing states.py must change this too.
ALLOWED_JOB = {
    (J.PENDING, J.RUNNING), (J.PENDING, J.FAILED), (J.PENDING, J.CANCELLED),
    (J.RUNNING, J.RUNNING), (J.RUNNING, J.PENDING), (J.RUNNING, J.DONE),
    (J.RUNNING, J.FAILED), (J.RUNNING, J.CANCELLED),
    (J.FAILED, J.RUNNING), (J.FAILED, J.FAILED),
    (J.CANCELLED, J.RUNNING), (J.CANCELLED, J.FAILED), (J.CANCELLED, J.CANCELLED),
    (J.CANCELLED, J.DONE),
}
ALLOWED_SWEEP = {
    (S.RUNNING, S.RUNNING), (S.RUNNING, S.FINISHED), (S.RUNNING, S.INTERRUPTED),
    (S.RUNNING, S.CANCELLING), (S.RUNNING, S.CANCELLED),
    (S.FINISHED, S.RUNNING),
    (S.INTERRUPTED, S.RUNNING), (S.INTERRUPTED, S.CANCELLING), (S.INTERRUPTED, S.CANCELLED),
    (S.CANCELLING, S.CANCELLING), (S.CANCELLING, S.CANCELLED), (S.CANCELLING, S.RUNNING),
    (S.CANCELLED, S.CANCELLED), (S.CANCELLED, S.RUNNING),
}
JOB_PAIRS = list(itertools.product(JobState, JobState))
SWEEP_PAIRS = list(itertools.product(SweepState, SweepState))


def test_tables_match_the_hand_written_lists() -> None:
    assert {(a, b) for a, bs in JOB_TRANSITIONS.items() for b in bs} == ALLOWED_JOB
    assert {(a, b) for a, bs in SWEEP_TRANSITIONS.items() for b in bs} == ALLOWED_SWEEP
    assert set(JOB_TRANSITIONS) == set(JobState) and set(SWEEP_TRANSITIONS) == set(SweepState)
    assert not JOB_TRANSITIONS[J.DONE], "done is final"
    assert not job_transition_allowed("done", "bogus") and not sweep_transition_allowed("x", "y")


def test_states_are_the_plain_strings_the_store_and_metrics_carry() -> None:
    assert [str(s) for s in JobState] == ["pending", "running", "done", "failed", "cancelled"]
    assert [str(s) for s in AttemptState] == ["running", "done", "failed", "cancelled"]
    assert [str(s) for s in SweepState] == ["running", "finished", "interrupted", "cancelling",
                                            "cancelled"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str, str]:
    tmp = tmp_path_factory.mktemp("states")
    planned = load_plan(write_sweep(tmp, devices=["dev-a"], models=sleep_models(tmp, 2),
                                    backend="sleep"), write_inventory(tmp, ["dev-a"]))
    store = Store(tmp / "results")
    sweep_id = create_sweep(store, planned, "s1")
    return store, sweep_id, planned.jobs[0].key


def _force_job(store: Store, sweep_id: str, key: str, state: str) -> None:
    """Put a job in ``state`` behind the store's back: the test's starting point."""
    store.db.execute("UPDATE jobs SET state = ? WHERE sweep_id = ? AND key = ?",
                     (state, sweep_id, key))


def _move_job(store: Store, sweep_id: str, key: str, new: JobState) -> None:
    """Change the job's state through the store method that makes that change."""
    if new is J.RUNNING:
        store.start_attempt(sweep_id, key, 1)
    elif new is J.PENDING:
        store.requeue(sweep_id, key, "backend-error", "retry")
    else:
        store.finish_job(sweep_id, key, new, 1, error_kind=None, error=None)


@pytest.mark.parametrize(("old", "new"), JOB_PAIRS, ids=[f"{a}->{b}" for a, b in JOB_PAIRS])
def test_store_checks_each_job_state_change(store: tuple[Store, str, str], old: JobState,
                                            new: JobState) -> None:
    db, sweep_id, key = store
    _force_job(db, sweep_id, key, old)
    if (old, new) in ALLOWED_JOB:
        _move_job(db, sweep_id, key, new)
        assert db.jobs(sweep_id)[0]["state"] == new
    else:
        with pytest.raises(IllegalTransitionError) as info:
            _move_job(db, sweep_id, key, new)
        message = str(info.value)
        assert key in message and f"{old} -> {new}" in message and "dev-a" in message
        assert db.jobs(sweep_id)[0]["state"] == old, "a refused change writes nothing"


@pytest.mark.parametrize(("old", "new"), SWEEP_PAIRS, ids=[f"{a}->{b}" for a, b in SWEEP_PAIRS])
def test_store_checks_each_sweep_state_change(store: tuple[Store, str, str], old: SweepState,
                                              new: SweepState) -> None:
    db, sweep_id, _ = store
    db.db.execute("UPDATE sweeps SET state = ? WHERE id = ?", (old, sweep_id))
    if (old, new) in ALLOWED_SWEEP:
        db.set_sweep_state(sweep_id, new)
        assert db.sweep(sweep_id)["state"] == new
    else:
        with pytest.raises(IllegalTransitionError, match=f"sweep {sweep_id}: .*{old} -> {new}"):
            db.set_sweep_state(sweep_id, new)
        assert db.sweep(sweep_id)["state"] == old


def test_unknown_states_and_sweeps_are_refused(store: tuple[Store, str, str]) -> None:
    db, sweep_id, key = store
    with pytest.raises(ValueError):
        db.set_sweep_state(sweep_id, "exploded")
    with pytest.raises(UnknownSweepError):
        db.set_sweep_state("no-such-sweep", SweepState.RUNNING)
    with pytest.raises(Exception, match="not a final state"):
        db.finish_job(sweep_id, key, "pending")
    with pytest.raises(Exception, match="unknown attempt state"):
        db.end_attempt(sweep_id, key, 1, "exploded")


def test_a_fresh_store_file_has_the_quarantines_table(tmp_path: Path) -> None:
    assert Store(tmp_path).quarantines("none") == []
