"""``edgefarm watch``: a live terminal view of a sweep, from any terminal.

It reads the results store (SQLite in WAL mode, so reading never blocks the
controller writing it) once a second and redraws with rich ``Live``: one row
per device with its current job, phase, last decode rate and power, and the
sweep's job counts. It needs nothing from the running controller but the
store, so it works from a second terminal, or after the sweep ended.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def snapshot(store: Any, sweep_id: str) -> dict[str, Any]:
    """What the view shows, read from the store (a plain dict, easy to test)."""
    sweep = store.sweep(sweep_id)
    devices: dict[str, dict[str, Any]] = {}
    for row in store.jobs(sweep_id):
        dev = devices.setdefault(row["device"], {"device": row["device"], "done": 0,
                                                 "total": 0, "job": "", "phase": "idle",
                                                 "decode_tps": None, "power_w": None,
                                                 "failed": 0})
        dev["total"] += 1
        dev["done"] += row["state"] == "done"
        dev["failed"] += row["state"] in ("failed", "cancelled")
        if row["state"] != "running":
            continue
        spec = json.loads(row["spec_json"])
        dev["job"] = f"{row['model_id']} p{spec['prompt_tokens']}/g{spec['gen_tokens']}"
        for body in store.db.execute(
                "SELECT body FROM events WHERE sweep_id = ? AND job_key = ? AND attempt = ?"
                " ORDER BY seq DESC LIMIT 200", (sweep_id, row["key"], row["attempts"])):
            ev = json.loads(body["body"])
            if ev["kind"] == "phase" and dev["phase"] == "idle":
                dev["phase"] = ev.get("phase", "?")
            elif ev["kind"] == "repetition" and dev["decode_tps"] is None \
                    and not ev.get("warmup"):
                dev["decode_tps"] = ev.get("decode_tps")
            elif ev["kind"] == "sample" and dev["power_w"] is None:
                dev["power_w"] = ev.get("total_w")
    return {"sweep_id": sweep_id, "name": sweep["name"], "state": sweep["state"],
            "counts": store.job_counts(sweep_id), "devices": list(devices.values())}


def render(snap: dict[str, Any]) -> Group:
    counts = ", ".join(f"{k} {v}" for k, v in snap["counts"].items() if v)
    title = Text.assemble((f"{snap['name']} ", "bold"), f"({snap['sweep_id']}) ",
                          (snap["state"], "cyan"), f"  jobs: {counts}")
    table = Table(expand=False)
    for col in ("device", "jobs done", "current job", "phase", "decode tok/s", "power"):
        table.add_column(col)
    for dev in snap["devices"]:
        done = f"{dev['done']}/{dev['total']}" + (f" ({dev['failed']} failed)"
                                                   if dev["failed"] else "")
        tps = f"{dev['decode_tps']:.1f}" if dev["decode_tps"] else ""
        power = f"{dev['power_w']:.1f} W" if dev["power_w"] is not None else "n/a"
        table.add_row(escape(dev["device"]), done, escape(dev["job"]),
                      escape(str(dev["phase"])), tps, power)
    return Group(title, table, Text("Ctrl-C to quit", style="dim"))


def watch_cmd(
    sweep_id: Annotated[str | None, typer.Argument(
        help="Sweep id; default: the most recent sweep.")] = None,
    results_dir: Annotated[Path, typer.Option(
        "--results-dir", "-r", envvar="EDGEFARM_RESULTS_DIR",
        help="Directory of the results store (SQLite).")] = Path("edgefarm-results"),
    interval: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Print one snapshot and exit.")] = False,
) -> None:
    """Watch a sweep live: devices, jobs, phase, power and tokens/s."""
    from orchestrator.errors import StoreError
    from orchestrator.store import Store

    console = Console()
    try:
        store = Store(results_dir)
        sweep_id = sweep_id or store.latest_sweep_id()
        if sweep_id is None:
            raise StoreError(f"no sweeps in {store.path}")
        store.sweep(sweep_id)
    except StoreError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if once:
        console.print(render(snapshot(store, sweep_id)))
        return
    try:
        with Live(render(snapshot(store, sweep_id)), console=console,
                  refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(snapshot(store, sweep_id)))
    except KeyboardInterrupt:
        console.print("stopped watching")
