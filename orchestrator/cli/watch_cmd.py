"""``edgefarm watch``: a live terminal view of a sweep, from any terminal.

It reads the results store (SQLite in WAL mode, so reading never blocks the
controller writing it) once a second and redraws with rich ``Live``: one row
per device with its current job, phase, last decode rate and power, and the
sweep's job counts. It needs nothing from the running controller but the
store, so it works from a second terminal, or after the sweep ended. What it
shows is read by ``orchestrator.sweeps.snapshot``; this module only draws it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator.cli.app import console
from orchestrator.cli.options import DEFAULT_RESULTS, ResultsOpt
from orchestrator.eta import format_eta

__all__ = ["render", "watch_cmd"]


def render(snap: dict[str, Any]) -> Group:
    """The view of one snapshot: a title line, a row per device, then any quarantines."""
    counts = ", ".join(f"{k} {v}" for k, v in snap["counts"].items() if v)
    eta = format_eta(snap.get("eta_s"))
    title = Text.assemble((f"{snap['name']} ", "bold"), f"({snap['sweep_id']}) ",
                          (snap["state"], "cyan"), f"  jobs: {counts}",
                          (f"  {eta}" if eta else "", "magenta"))
    table = Table(expand=False)
    for col in ("device", "jobs done", "current job", "phase", "decode tok/s", "power"):
        table.add_column(col)
    for dev in snap["devices"]:
        done = f"{dev['done']}/{dev['total']}" + (f" ({dev['failed']} failed)"
                                                   if dev["failed"] else "")
        tps = f"{dev['decode_tps']:.1f}" if dev["decode_tps"] else ""
        power = f"{dev['power_w']:.1f} W" if dev["power_w"] is not None else "n/a"
        phase = "[red]quarantined[/]" if dev.get("quarantined") else escape(str(dev["phase"]))
        table.add_row(escape(dev["device"]), done, escape(dev["job"]), phase, tps, power)
    notes = [Text.assemble(("quarantined ", "red"), f"{dev['device']}: {dev['quarantined']}")
             for dev in snap["devices"] if dev.get("quarantined")]
    return Group(title, table, *notes, Text("Ctrl-C to quit", style="dim"))


def watch_cmd(
    sweep_id: Annotated[str | None, typer.Argument(
        help="Sweep id; default: the most recent sweep.")] = None,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between redraws.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Print one snapshot and exit.")] = False,
) -> None:
    """Watch a sweep live: devices, jobs, phase, power and tokens/s."""
    from orchestrator.store import UnknownSweepError, open_to_read
    from orchestrator.sweeps import snapshot

    store = open_to_read(results_dir, sweep_id)
    sweep_id = sweep_id or store.latest_sweep_id()
    if sweep_id is None:
        raise UnknownSweepError(f"no sweeps in {store.path}")
    if once:
        console.print(render(snapshot(store, sweep_id)))
        return
    view = render(snapshot(store, sweep_id))
    try:
        with Live(view, console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(snapshot(store, sweep_id)))
    except KeyboardInterrupt:
        console.print("stopped watching")
