"""``edgefarm sweep cancel``: stop a sweep whether or not its controller still runs.

A running controller polls its sweep's state once a loop; ``cancelling``
makes it cancel its jobs and end the sweep as ``cancelled``. When no live
controller holds the sweep's owner lock (it was killed, or the sweep was
already interrupted), this module stops the jobs on the devices itself: it
kills each running job's process group through the agent and releases the
device leases.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from agents.protocol import ERR_CANCELLED
from orchestrator.agent_client import AgentClient
from orchestrator.bundle import build
from orchestrator.config.inventory import Inventory
from orchestrator.deadline import Deadline
from orchestrator.errors import EdgefarmError, SweepBusyError
from orchestrator.states import JobState, SweepState
from orchestrator.store import IllegalTransitionError, Store
from orchestrator.sweeps import own_sweep
from orchestrator.transport import TransportSettings, make_transport


def cancel_sweep(store: Store, sweep_id: str, settings: TransportSettings, wait: float,
                 ray_address: str | None = None) -> str:
    """Ask a live controller to cancel the sweep; do it here only when none owns it.

    ``cancelling`` in the store is the request a live controller acts on. The
    owner lock (``sweeps.own_sweep``) says whether one is alive: while it is
    held, this never touches the devices or the job rows (the controller is
    stopping them and ends the sweep as ``cancelled``); once it is free (the
    controller died or already ended) this takes the lock itself, so a resume
    started meanwhile cannot run the jobs it is cancelling, and stops them.
    """
    state = store.sweep(sweep_id)["state"]
    if state in (SweepState.FINISHED, SweepState.CANCELLED):
        return f"nothing to cancel: the sweep is {state}"
    store.set_sweep_state(sweep_id, SweepState.CANCELLING)
    deadline = Deadline(wait)
    while True:
        try:
            with own_sweep(store.dir, sweep_id):
                return _cancel_unowned(store, sweep_id, settings, ray_address)
        except SweepBusyError as busy:
            if store.sweep(sweep_id)["state"] == SweepState.CANCELLED:
                return "cancelled by its controller"
            if deadline.expired:
                return (f"cancelling: its controller (pid {busy.pid} on {busy.host}) is "
                        "stopping the jobs and ends the sweep as cancelled")
            time.sleep(0.5)


def _cancel_unowned(store: Store, sweep_id: str, settings: TransportSettings,
                    ray_address: str | None = None) -> str:
    """Cancel a sweep no controller runs (the caller holds its owner lock)."""
    if store.sweep(sweep_id)["state"] == SweepState.CANCELLED:
        return "cancelled by its controller"  # it ended just before the lock was free
    stopped, problems = stop_on_devices(store, sweep_id, settings, ray_address)
    for row in store.jobs(sweep_id, states=(JobState.PENDING, JobState.RUNNING)):
        try:
            store.finish_job(sweep_id, row["key"], JobState.CANCELLED, error_kind=ERR_CANCELLED,
                             error="cancelled by edgefarm sweep cancel")
        except IllegalTransitionError:
            pass  # it ended (done or failed) since it was read: its own end stands
    store.set_sweep_state(sweep_id, SweepState.CANCELLED)
    text = f"cancelled; stopped {stopped} running job(s) on the devices"
    if problems:
        text += "; could not reach: " + "; ".join(problems)
    return text


def stop_on_devices(store: Store, sweep_id: str, settings: TransportSettings,
                    ray_address: str | None = None) -> tuple[int, list[str]]:
    """Kill the sweep's running jobs on their devices and release the leases.

    With ``ray_address`` each device is reached from its site's node
    (``site_ops``), as the sweep's own gateways reached it.
    """
    inventory = Inventory.model_validate(json.loads(store.sweep(sweep_id)["inventory_json"]))
    devices = {d.name: d for d in inventory.devices}
    running: dict[str, list[Any]] = {}
    for row in store.jobs(sweep_id, states=(JobState.RUNNING,)):
        running.setdefault(row["device"], []).append(row)
    owner = f"{socket.gethostname()}:{os.getpid()}:cancel-{sweep_id}"
    if ray_address and running:
        from orchestrator.agent_client import job_dir_of
        from orchestrator.site_ops import cancel_via_gateways

        dirs = {name: [job_dir_of(devices[name].work_dir, sweep_id, row["key"], row["attempts"])
                       for row in rows] for name, rows in running.items()}
        return cancel_via_gateways(devices, dirs, ray_address, settings, store.dir / "agent",
                                   owner)
    bundle = build(store.dir / "agent")
    stopped, problems = 0, []
    for name, rows in running.items():
        device = devices[name]
        try:
            transport = make_transport(device, settings)
            transport.connect()
            try:
                client = AgentClient(transport, device.work_dir, bundle.path, bundle.sha256)
                for row in rows:
                    client.cancel(client.job_dir(sweep_id, row["key"], row["attempts"]))
                    stopped += 1
                # The dead controller's lease: take it over, then give it back.
                client.lease("takeover", device.work_dir, owner, 60)
                client.lease("release", device.work_dir, owner, 60)
            finally:
                transport.close()
        except EdgefarmError as exc:
            problems.append(f"{name}: {exc}")
    return stopped, problems
