"""``edgefarm monitor up|down|status`` and ``edgefarm serve``: thin typer commands.

The work is in ``orchestrator.monitor`` and ``orchestrator.farm``; this
module only parses options and prints. Errors go through the CLI's one
boundary (``orchestrator.cli.app``): a missing Prometheus exits 2, other
monitor trouble 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli.app import console, err_console, new_app
from orchestrator.cli.options import DEFAULT_RESULTS, RayAddressOpt, ResultsOpt
from orchestrator.exporter import DEFAULT_ADDR, SERVE_ADDR
from orchestrator.farm.health import DEFAULT_INTERVAL_S
from orchestrator.monitor import (
    DEFAULT_LISTEN,
    MACMON_PORT,
    NODE_EXPORTER_PORT,
    MonitorSettings,
)

__all__ = ["monitor_app", "serve_cmd"]

monitor_app = new_app(help="A local Prometheus scraping the controller and the devices.")


def _print_status(info: dict[str, Any]) -> None:
    if not info["running"]:
        console.print("prometheus: not running (start it with `edgefarm monitor up`)")
    else:
        console.print(f"prometheus: running (pid {info['pid']}) at {info['url']}",
                      highlight=False)
    serve = info["serve"]
    if serve["running"]:
        console.print(f"edgefarm serve: running (pid {serve['pid']}) at "
                      f"http://{serve['addr']}/metrics", highlight=False)
    else:
        console.print("edgefarm serve: not running")
    if info.get("error"):
        err_console.print(f"[yellow]warning:[/] {info['error']}", highlight=False)
    if info["targets"]:
        table = Table(title="scrape targets", title_justify="left")
        for col in ("job", "target", "device", "health", "last error"):
            table.add_column(col)
        for t in info["targets"]:
            colour = {"up": "green", "down": "red"}.get(t["health"], "yellow")
            table.add_row(t["job"], t["url"], t["device"] or "",
                          f"[{colour}]{t['health']}[/]", t["last_error"] or "")
        console.print(table)


@monitor_app.command("up")
def monitor_up(
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", "-i", envvar="EDGEFARM_INVENTORY",
        help="Inventory of the farm: the farm service reads each device's health, and "
             "Prometheus scrapes the devices' own exporters (macmon on Macs, node_exporter "
             "elsewhere). Without it: the devices of the newest stored sweep, no device "
             "exporters.")] = None,
    listen: Annotated[str, typer.Option(
        help="Address Prometheus serves its UI and API on.")] = DEFAULT_LISTEN,
    scrape_interval: Annotated[float, typer.Option(
        help="Seconds between scrapes.", min=0.1)] = 5.0,
    sweep_exporter: Annotated[str | None, typer.Option(
        help="Also scrape a sweep's own exporter at this address (`sweep run "
             "--metrics-addr`). Not needed with the farm service, which exports running "
             "sweeps too; without the farm service (--no-serve) the default is "
             f"{DEFAULT_ADDR}.")] = None,
    serve: Annotated[bool, typer.Option(
        help="Also start the farm service, `edgefarm serve` (the only scrape target a "
             "farm needs: devices, running and finished sweeps).")] = True,
    serve_addr: Annotated[str, typer.Option(
        help="Address of `edgefarm serve`.")] = SERVE_ADDR,
    health_interval: Annotated[float, typer.Option(
        help="Seconds between two health readings of each device by the farm service "
             "(0: none).", min=0)] = DEFAULT_INTERVAL_S,
    macmon_port: Annotated[int, typer.Option(
        help="Port of `macmon serve` on Apple-silicon devices.")] = MACMON_PORT,
    node_exporter_port: Annotated[int, typer.Option(
        help="Port of node_exporter on other ssh devices.")] = NODE_EXPORTER_PORT,
    prometheus: Annotated[str | None, typer.Option(
        help="Path of the prometheus binary (default: found on PATH).")] = None,
) -> None:
    """Start a local Prometheus and the farm service (`edgefarm serve`); print their URLs."""
    from orchestrator.monitor import up

    # The farm service is the one target; a sweep's own exporter only when asked,
    # or as the stand-in when there is no farm service.
    exporter = sweep_exporter or (None if serve else DEFAULT_ADDR)
    targets = tuple(t for t in ((serve_addr if serve else None), exporter) if t)
    info = up(MonitorSettings(
        results_dir=results_dir, listen=listen, scrape_interval_s=scrape_interval,
        controller_targets=targets, inventory=inventory,
        macmon_port=macmon_port, node_exporter_port=node_exporter_port, serve=serve,
        serve_addr=serve_addr, prometheus=prometheus, health_interval_s=health_interval))
    console.print(f"prometheus: {info['url']}", highlight=False)
    console.print(f"data and config: {Path(results_dir).resolve() / 'prometheus'}",
                  highlight=False)
    if info["serve"]["running"]:
        console.print(f"farm service (edgefarm serve): http://{info['serve']['addr']}/metrics",
                      highlight=False)
    console.print("scrape targets: " + ", ".join(targets), highlight=False)


@monitor_app.command("down")
def monitor_down(results_dir: ResultsOpt = DEFAULT_RESULTS) -> None:
    """Stop the Prometheus (and `edgefarm serve`) that `monitor up` started."""
    from orchestrator.monitor import down

    stopped = down(results_dir)
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@monitor_app.command("status")
def monitor_status(results_dir: ResultsOpt = DEFAULT_RESULTS) -> None:
    """Say whether Prometheus runs, where, and how each scrape target is doing."""
    from orchestrator.monitor import status

    info = status(results_dir)
    _print_status(info)
    if not info["running"]:
        raise typer.Exit(1)


def serve_cmd(
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    addr: Annotated[str, typer.Option(
        help="Address to serve /metrics on (host:port; loopback unless you say otherwise).")]
        = SERVE_ADDR,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", "-i", envvar="EDGEFARM_INVENTORY",
        help="Devices to read health from (default: those of the newest stored sweep).")]
        = None,
    health_interval: Annotated[float, typer.Option(
        help="Seconds between two health readings of each device (0: none).", min=0)]
        = DEFAULT_INTERVAL_S,
    ray_address: RayAddressOpt = None,
) -> None:
    """Run the farm service: devices, running and finished sweeps on one /metrics, until Ctrl-C."""
    from orchestrator.farm.service import serve

    serve(results_dir, addr, inventory=inventory, health_interval_s=health_interval,
          ray_address=ray_address,
          on_ready=lambda url: console.print(f"serving {results_dir} at {url} (Ctrl-C stops)",
                                             highlight=False),
          on_warning=lambda text: err_console.print(f"[yellow]warning:[/] {text}"))
    console.print("stopped")
