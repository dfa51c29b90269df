"""What does the ssh transport cost per job? Two ratios, measured side by side.

1. Per-job orchestration overhead on a warm connection: the wall time the
   controller needs for a no-op job (start it, follow it, see its result)
   minus the agent's own run time (hello -> result, as the agent timed it),
   divided by the time of one bare ``true`` exec on that same connection.
   Target <= 2.0: a job must cost about one exec, not a handful.
   Each job's bare exec is timed next to it, so that a change in the
   machine's load weighs on both sides of the ratio alike.
2. A no-op job on 32 loopback sshd devices through edgefarm's gateway code
   (cold connections, agent check, lease, start + follow) against fabric's
   ThreadingGroup running the same agent command on the same 32 (cold
   connections too). Target <= 1.0. Both sides run ``--rounds`` times,
   alternating which goes first; the medians are compared.

Needs OpenSSH's sshd (Debian openssh-server) and runs only on 127.0.0.1:

    .venv/bin/python bench/ssh_overhead.py [--jobs 20] [--devices 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import sleep_models, write_ssh_inventory  # noqa: E402
from sshd_fixture import keygen, make_device  # noqa: E402

from orchestrator.agent_client import AgentClient  # noqa: E402
from orchestrator.bundle import build  # noqa: E402
from orchestrator.config.inventory import Inventory  # noqa: E402
from orchestrator.gateway import Gateway  # noqa: E402
from orchestrator.jobrunner import run_attempt  # noqa: E402
from orchestrator.transport.settings import GatewaySettings, TransportSettings  # noqa: E402
from orchestrator.transport.ssh import SshTransport  # noqa: E402


def noop_spec(model: dict[str, Any], key: str) -> dict[str, Any]:
    return {"schema": 1, "job_key": key, "attempt": 1, "model": model, "backend": "sleep",
            "device": {}, "params": {"prompt_tokens": 1, "gen_tokens": 0, "threads": 1,
                                     "gpu_layers": 0, "repetitions": 1, "warmup": 0}}


def warm_overhead(tmp: Path, n_jobs: int) -> None:
    tmp.mkdir(parents=True)
    key_path = tmp / "id"
    device = make_device(tmp, "warm", key_path, keygen(key_path))
    try:
        inv, known = write_ssh_inventory(tmp, [device])
        t = SshTransport(Inventory.load(inv).devices[0], known_hosts=str(known))
        t.connect()
        bundle = build(tmp / "bundle")
        client = AgentClient(t, str(device.work_dir), bundle.path, bundle.sha256)
        client.ensure_agent()
        model = sleep_models(tmp, 1)[0]
        for _ in range(3):  # warm the connection and the page cache
            t.run(["true"], timeout=30)
        bare, overheads, walls = [], [], []
        for i in range(n_jobs + 2):
            # A bare exec next to each job, so that a change in the machine's
            # load during the run weighs on both sides of the ratio alike; a
            # pause first, so the previous job's runner has exited and does
            # not slow it.
            time.sleep(0.2)
            exec_s = t.run(["true"], timeout=30).duration_s
            events: list[dict[str, Any]] = []
            job_dir = client.job_dir("bench", f"k{i}", 1)
            started = time.monotonic()
            outcome = run_attempt(client, job_dir, noop_spec(model, f"k{i}"), 60, events.extend)
            wall = time.monotonic() - started
            assert outcome.state == "done", outcome
            client.forget(job_dir)
            hello = next(e for e in events if e["kind"] == "hello")
            result = next(e for e in events if e["kind"] == "result")
            if i >= 2:  # the first two jobs warm the agent's imports
                bare.append(exec_s)
                walls.append(wall)
                overheads.append(wall - (result["mono"] - hello["mono"]))
        t.close()
    finally:
        device.stop()
    b, o = statistics.median(bare), statistics.median(overheads)
    print(f"[1] warm connection, {n_jobs} jobs: bare `true` exec median {b * 1000:.0f} ms; "
          f"no-op job wall median {statistics.median(walls) * 1000:.0f} ms, of which "
          f"orchestration overhead {o * 1000:.0f} ms")
    print(f"    overhead / bare exec = {o / b:.2f}   (target <= 2.0)")


def gateway_fanout(inventory: Any, bundle: Any, known: Path, model: dict[str, Any],
                   sweep_id: str) -> float:
    """Seconds for a no-op job on every device through one Gateway, cold connections."""
    gateway = Gateway("bench", [d.model_dump(mode="json", exclude_unset=True)
                                for d in inventory.devices], str(bundle.path),
                      bundle.sha256, GatewaySettings(TransportSettings(str(known)),
                                                     owner="bench:1:x"))
    started = time.monotonic()
    for dev in inventory.devices:
        gateway.start({"device": dev.name, "sweep_id": sweep_id, "job": "noop",
                       "attempt": 1, "spec": noop_spec(model, "noop"),
                       "timeout_s": 120, "attach": False})
    ends = 0
    while ends < len(inventory.devices):
        for msg in gateway.poll(0.5):
            if msg["type"] == "end":
                assert msg["outcome"].state == "done", msg
                ends += 1
    took = time.monotonic() - started
    gateway.release_all()
    for client in gateway.clients.values():
        client.transport.close()
    return took


@dataclass
class Fleet:
    """Loopback sshd devices with the agent already in place, for the fan-out benches."""

    devices: list[Any]
    inventory: Inventory
    known: Path
    key_path: Path
    bundle: Any
    model: dict[str, Any]


@contextmanager
def deployed_fleet(tmp: Path, n_devices: int) -> Iterator[Fleet]:
    """``n_devices`` sshd devices under ``tmp``, the agent deployed on each; stopped on exit.

    Deployed once everywhere so every side of a comparison finds it in place.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    key_path = tmp / "id"
    pub = keygen(key_path)
    devices = []
    try:
        for i in range(n_devices):
            devices.append(make_device(tmp, f"d{i:02d}", key_path, pub))
        inv, known = write_ssh_inventory(tmp, devices)
        inventory = Inventory.load(inv)
        bundle = build(tmp / "bundle")
        for dev in inventory.devices:
            with SshTransport(dev, known_hosts=str(known)) as t:
                AgentClient(t, dev.work_dir, bundle.path, bundle.sha256).ensure_agent()
        yield Fleet(devices, inventory, known, key_path, bundle, sleep_models(tmp, 1)[0])
    finally:
        for dev in devices:
            dev.stop()


def fleet(tmp: Path, n_devices: int, rounds: int) -> None:
    from fabric import ThreadingGroup

    with deployed_fleet(tmp, n_devices) as farm:
        devices, inventory, known = farm.devices, farm.inventory, farm.known
        key_path, bundle, model = farm.key_path, farm.bundle, farm.model
        agent_name = bundle.path.name
        hosts = [f"root@127.0.0.1:{d.port}" for d in devices]

        def edgefarm(tag: str) -> float:
            """The gateway's own code path, cold connections."""
            return gateway_fanout(inventory, bundle, known, model, f"fleet-{tag}")

        def fabric(tag: str) -> float:
            """The same agent command on the same devices, cold connections."""
            spec = shlex.quote(json.dumps(noop_spec(model, "noop-fabric")))
            cmd = (f"W=$(echo $SSH_CONNECTION | cut -d' ' -f4); "
                   f"printf %s {spec} | {shlex.quote(sys.executable)} "
                   f"$(ls -d {shlex.quote(str(tmp))}/sshd-d*/work/agent/{agent_name} | head -1) "
                   f"start --follow {shlex.quote(str(tmp))}/fabric-jobs-{tag}/$W")
            group = ThreadingGroup(*hosts, connect_kwargs={"key_filename": str(key_path)})
            for conn in group:
                conn.client.load_host_keys(str(known))
            started = time.monotonic()
            results = group.run(cmd, hide=True, warn=True)
            took = time.monotonic() - started
            failed = [c for c, r in results.items() if getattr(r, "exited", 1) != 0]
            assert not failed, [results[c] for c in failed][:1]
            group.close()
            return took

        # Rounds alternate which side goes first, so neither always meets a
        # machine the other has just warmed (or loaded); the medians decide.
        ours, theirs = [], []
        for r in range(rounds):
            if r % 2 == 0:
                ours.append(edgefarm(str(r)))
                theirs.append(fabric(str(r)))
            else:
                theirs.append(fabric(str(r)))
                ours.append(edgefarm(str(r)))
    each = ", ".join(f"{o:.2f}/{t:.2f}" for o, t in zip(ours, theirs, strict=True))
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"[2] no-op job on {n_devices} loopback devices, {rounds} rounds (edgefarm/fabric s: "
          f"{each}): median edgefarm gateway {o:.2f} s, fabric ThreadingGroup {t:.2f} s")
    print(f"    edgefarm / fabric = {o / t:.2f}   (target <= 1.0)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3,
                    help="[2]: rounds of both sides, alternating which goes first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefarm-ssh-bench-") as tmp:
        warm_overhead(Path(tmp) / "warm", args.jobs)
    with tempfile.TemporaryDirectory(prefix="edgefarm-ssh-bench-") as tmp:
        fleet(Path(tmp) / "fleet", args.devices, args.rounds)


if __name__ == "__main__":
    threading.excepthook = lambda a: None  # quiet follower threads at shutdown
    main()
