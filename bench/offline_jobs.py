"""Run a sweep's jobs on a machine the controller cannot reach, then report them as a sweep.

The lent H200 machine has the agent's needs (Python, torch, a CUDA
llama-bench built there) but not the controller's (Ray, pydantic), and no
network. So the controller's own planner writes every job's ``job.json``
here (``jobs``), the directory travels with the working tree, the agent runs
each one there exactly as a gateway would start it (``python3 -m agents run
DIR``), the events logs come back, and ``import`` records them in a results
store as one sweep: the same ``Store.add_agent_events`` / ``finish_job`` calls the
scheduler makes, so ``edgefarm report`` reads them like any other sweep.

    python bench/offline_jobs.py jobs SWEEP INVENTORY OUTDIR
    python bench/offline_jobs.py import SWEEP INVENTORY EVENTS_DIR RESULTS

A job whose events log is missing or has no ``result`` is recorded as failed
with that reason, never dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.scheduler import agent_spec
from orchestrator.states import JobState, SweepState
from orchestrator.store import Store
from orchestrator.sweeps import create_sweep, job_record, load_plan


def write_jobs(sweep: Path, inventory: Path, out: Path) -> int:
    planned = load_plan(sweep, inventory)
    devices = {d.name: d for d in planned.inventory.devices}
    out.mkdir(parents=True, exist_ok=True)
    order = []
    for job in planned.jobs:
        record = job_record(job)
        spec = dict(agent_spec(record, devices[job.device]))
        spec["attempt"] = 1
        folder = out / job.key
        folder.mkdir(exist_ok=True)
        (folder / "job.json").write_text(json.dumps(spec, indent=1))
        order.append(job.key)
    (out / "order.txt").write_text("\n".join(order) + "\n")
    print(f"{len(order)} job(s) written under {out} (run order in order.txt)")
    return 0


def import_events(sweep: Path, inventory: Path, events_dir: Path, results: Path) -> int:
    planned = load_plan(sweep, inventory)
    store = Store(results)
    try:
        sweep_id = create_sweep(store, planned)
        done = failed = 0
        for job in planned.jobs:
            log = events_dir / job.key / "events.jsonl"
            store.start_attempt(sweep_id, job.key, 1)
            events = []
            if log.exists():
                for line in log.read_text().splitlines():
                    try:
                        events.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill: the agent's own rule
            store.add_agent_events(sweep_id, job.device, events)
            result = next((e for e in reversed(events) if e.get("kind") == "result"), None)
            if result is not None and result.get("status") == "ok":
                store.end_attempt(sweep_id, job.key, 1, JobState.DONE, None, None)
                store.finish_job(sweep_id, job.key, JobState.DONE, 1,
                                 result=result.get("info") or {})
                done += 1
                continue
            error = next((e for e in reversed(events) if e.get("kind") == "error"), None)
            kind = (error or {}).get("error_kind") or "agent-error"
            reason = ((error or {}).get("message") or
                      ("no events log came back" if not log.exists() else
                       "the events log has no result (the run was cut)"))
            store.end_attempt(sweep_id, job.key, 1, JobState.FAILED, kind, reason)
            store.finish_job(sweep_id, job.key, JobState.FAILED, 1, error_kind=kind,
                             error=reason)
            failed += 1
        store.set_sweep_state(sweep_id, SweepState.FINISHED)
    finally:
        store.close()
    print(f"sweep {sweep_id}: {done} done, {failed} failed; results in {results}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    jobs = sub.add_parser("jobs", help="write every job's job.json")
    jobs.add_argument("sweep", type=Path)
    jobs.add_argument("inventory", type=Path)
    jobs.add_argument("out", type=Path)
    imp = sub.add_parser("import", help="record the events logs as a sweep")
    imp.add_argument("sweep", type=Path)
    imp.add_argument("inventory", type=Path)
    imp.add_argument("events", type=Path)
    imp.add_argument("results", type=Path)
    args = ap.parse_args()
    if args.cmd == "jobs":
        return write_jobs(args.sweep, args.inventory, args.out)
    return import_events(args.sweep, args.inventory, args.events, args.results)


if __name__ == "__main__":
    sys.exit(main())
