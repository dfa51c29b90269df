"""Does the controller scale to a large farm? Plan, schedule, memory, fan-out, efficiency.

Parts, each printed with its target (issue 13):

1. **Plan + schedule** of a sweep of ``--jobs`` jobs (default 10,000) on
   ``--devices`` devices (1,000) spread over 4 sites: validate the inventory
   and sweep, plan, record the sweep in a fresh store, build the driver's
   queues and one gateway per site (the gateways' own objects, no Ray). Target:
   under 5 s. Controller memory per device: tracemalloc's peak over that work
   divided by the device count. Target: under 1 MB.
2. **Fan-out**: a no-op job on ``--fanout`` (64) loopback sshd devices
   through edgefarm's gateway code, against fabric's ``ThreadingGroup`` and
   against a plain thread pool of paramiko clients running the same agent
   command (all cold connections), rounds alternating which goes first.
   Target: edgefarm / fabric <= 1.0.
3. **Sweep efficiency** of a stored sweep (``--efficiency SWEEP_ID``, with
   ``--results``): time inside counted repetitions / wall time of the
   sweep. Target for sweeps/seed-shapes-local.yaml on ``local``: >= 0.7.

    .venv/bin/python bench/scale.py --parts plan
    .venv/bin/python bench/scale.py --parts fanout --fanout 64 --rounds 3
    .venv/bin/python bench/scale.py --parts efficiency --results R --efficiency ID
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))


def _plan_and_schedule(root: Path, devices: int, jobs: int) -> tuple[list[float], int, int]:
    """One pass: (cumulative seconds after plan, store, queues + gateways), jobs, queued."""
    from orchestrator.config.sweep import load_sweep_with_inventory
    from orchestrator.gateway import Gateway
    from orchestrator.planner import plan
    from orchestrator.scheduler import NullProgress, SweepRun
    from orchestrator.store import Store
    from orchestrator.sweeps import job_record
    from orchestrator.transport.settings import GatewaySettings, TransportSettings

    per_device = max(1, jobs // devices)
    names = [f"dev-{i:04d}" for i in range(devices)]
    (root / "farm.yaml").write_text(yaml.safe_dump({"devices": [
        {"name": n, "transport": "ssh", "site": f"site-{i % 4}", "platform": "jetson",
         "host": f"10.{i // 250}.{i % 250}.10", "user": "bench"}
        for i, n in enumerate(names)]}))
    stand_in = root / "m.gguf"
    stand_in.write_text("stand-in")
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "scale", "models": [{"id": "m", "arch": "dense",
                                     "source": {"path": str(stand_in)}}],
        "pairs": [],
        "matrix": {"prompt_tokens": [2 ** (4 + k) for k in range(per_device)],
                   "gen_tokens": [32], "threads": [4], "gpu_layers": [0]},
        "repetitions": 3, "devices": {"names": names}, "backend": "auto"}))
    started = time.perf_counter()
    sweep, inventory = load_sweep_with_inventory(root / "sweep.yaml", root / "farm.yaml")
    planned = plan(sweep, inventory)
    marks = [time.perf_counter() - started]
    store = Store(root / "results")
    store.create_sweep("scale", sweep.name, sweep.model_dump(mode="json"),
                       inventory.model_dump(mode="json", exclude_unset=True),
                       [job_record(j) for j in planned])
    marks.append(time.perf_counter() - started)
    run = SweepRun(store, "scale", NullProgress(), TransportSettings(), 1.0, 3)
    for site in sorted({d.site for d in inventory.devices}):
        members = [d.model_dump(mode="json", exclude_unset=True) for d in inventory.devices
                   if d.site == site]
        Gateway(site, members, str(stand_in), "0" * 64, GatewaySettings(TransportSettings()))
    marks.append(time.perf_counter() - started)
    queued = sum(len(q) for q in run.queues.values())
    store.close()
    return marks, len(planned), queued


def plan_and_schedule(devices: int, jobs: int) -> None:
    """Timed without tracemalloc (it slows Python ~2x), then once more under it for memory."""
    with tempfile.TemporaryDirectory(prefix="edgefarm-scale-") as tmp:
        (Path(tmp) / "timed").mkdir()
        marks, n_jobs, queued = _plan_and_schedule(Path(tmp) / "timed", devices, jobs)
    with tempfile.TemporaryDirectory(prefix="edgefarm-scale-") as tmp:
        tracemalloc.start()
        _plan_and_schedule(Path(tmp), devices, jobs)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    t_plan, t_store, t_all = marks
    print(f"[1] {devices} devices, {n_jobs} jobs ({queued} queued): validate + plan "
          f"{t_plan:.2f} s, + store {t_store:.2f} s, + driver queues and 4 gateways "
          f"{t_all:.2f} s")
    print(f"    plan + schedule {t_all:.2f} s (target < 5 s): "
          f"{'met' if t_all < 5 else 'NOT met'}")
    print(f"    controller memory: tracemalloc peak {peak / 2 ** 20:.1f} MiB = "
          f"{peak / devices / 2 ** 10:.0f} KiB per device (target < 1 MB): "
          f"{'met' if peak / devices < 2 ** 20 else 'NOT met'}")


def fanout(n_devices: int, rounds: int) -> None:
    import paramiko
    from fabric import ThreadingGroup
    from ssh_overhead import deployed_fleet, gateway_fanout, noop_spec

    with tempfile.TemporaryDirectory(prefix="edgefarm-scale-fanout-") as tmp_dir, \
            deployed_fleet(Path(tmp_dir), n_devices) as farm:
        devices, inventory, known = farm.devices, farm.inventory, farm.known
        key_path, bundle, model = farm.key_path, farm.bundle, farm.model
        agent_name = bundle.path.name

        def command(tag: str, work: Path) -> str:
            spec = shlex.quote(json.dumps(noop_spec(model, f"noop-{tag}")))
            return (f"printf %s {spec} | {shlex.quote(sys.executable)} "
                    f"{shlex.quote(str(work / 'agent' / agent_name))} start --follow "
                    f"{shlex.quote(str(work / ('jobs-' + tag)))}")

        def edgefarm(tag: str) -> float:
            return gateway_fanout(inventory, bundle, known, model, f"fan-{tag}")

        def fabric(tag: str) -> float:
            group = ThreadingGroup(*[f"root@127.0.0.1:{d.port}" for d in devices],
                                   connect_kwargs={"key_filename": str(key_path)})
            for conn in group:
                conn.client.load_host_keys(str(known))
            started = time.monotonic()
            # One command per host (each its own work dir): run them host by host
            # through the group's connections, in the group's threads.
            with ThreadPoolExecutor(max_workers=n_devices) as pool:
                results = list(pool.map(
                    lambda pair: pair[0].run(command(f"fab-{tag}", pair[1].work_dir),
                                             hide=True, warn=True),
                    zip(group, devices, strict=True)))
            took = time.monotonic() - started
            assert all(r.exited == 0 for r in results), results[:1]
            group.close()
            return took

        def plain(tag: str) -> float:
            def one(dev: Any) -> int:
                client = paramiko.SSHClient()
                client.load_host_keys(str(known))
                client.connect("127.0.0.1", port=dev.port, username="root",
                               key_filename=str(key_path), look_for_keys=False,
                               allow_agent=False)
                try:
                    _, stdout, _ = client.exec_command(command(f"pm-{tag}", dev.work_dir))
                    stdout.read()
                    return stdout.channel.recv_exit_status()
                finally:
                    client.close()
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=n_devices) as pool:
                codes = list(pool.map(one, devices))
            took = time.monotonic() - started
            assert all(c == 0 for c in codes), codes
            return took

        sides = {"edgefarm": edgefarm, "fabric": fabric, "paramiko pool": plain}
        times: dict[str, list[float]] = {k: [] for k in sides}
        order = list(sides)
        for r in range(rounds):
            for name in order[r % 3:] + order[:r % 3]:  # rotate who goes first
                times[name].append(sides[name](str(r)))
    med = {k: statistics.median(v) for k, v in times.items()}
    each = "; ".join(f"{k} " + "/".join(f"{x:.2f}" for x in v) for k, v in times.items())
    print(f"[2] no-op job on {n_devices} loopback sshd devices, {rounds} rounds ({each} s)")
    print(f"    medians: edgefarm {med['edgefarm']:.2f} s, fabric ThreadingGroup "
          f"{med['fabric']:.2f} s, paramiko thread pool {med['paramiko pool']:.2f} s")
    ratio = med["edgefarm"] / med["fabric"]
    verdict = "met" if ratio <= 1 else "NOT met"
    print(f"    edgefarm / fabric = {ratio:.2f} (target <= 1.0: {verdict}); "
          f"edgefarm / paramiko pool = {med['edgefarm'] / med['paramiko pool']:.2f}")


def efficiency(results: Path, sweep_id: str) -> None:
    """Counted repetitions' time / the sweep's wall time, from the store."""
    from orchestrator.store import Store

    store = Store(results, read_only=True)
    try:
        row = store.sweep(sweep_id)
        jobs = store.jobs(sweep_id)
        began = min(j["started_at"] for j in jobs if j["started_at"])
        ended = max(j["finished_at"] for j in jobs if j["finished_at"])
        inside = 0.0
        for rep in store.counted_repetitions(sweep_id):
            body = json.loads(rep["body"])
            inside += float(body.get("wall_s") or (rep["prefill_s"] or 0) + (rep["decode_s"] or 0))
    finally:
        store.close()
    wall = ended - began
    print(f"[3] sweep {sweep_id} ({row['name']}): {inside:.0f} s inside counted repetitions of "
          f"{wall:.0f} s wall = efficiency {inside / wall:.2f} (target >= 0.7: "
          f"{'met' if inside / wall >= 0.7 else 'NOT met'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["plan", "fanout"],
                    choices=["plan", "fanout", "efficiency"])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--fanout", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", type=Path, default=Path("edgefarm-results"))
    ap.add_argument("--efficiency", default=None, help="sweep id for part 3")
    args = ap.parse_args()
    if "plan" in args.parts:
        plan_and_schedule(args.devices, args.jobs)
    if "fanout" in args.parts:
        fanout(args.fanout, args.rounds)
    if "efficiency" in args.parts:
        if not args.efficiency:
            print("--efficiency SWEEP_ID is needed for part 3", file=sys.stderr)
            return 2
        efficiency(args.results, args.efficiency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
