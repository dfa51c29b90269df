"""``edgefarm monitor up|down|status`` and ``edgefarm serve``: thin typer commands.

The work is in ``orchestrator.monitor`` and ``orchestrator.exporter``; this
module only parses options and prints. Register it in ``cli/main.py`` with::

    from orchestrator.cli.monitor_cmd import monitor_app, serve_cmd
    app.add_typer(monitor_app, name="monitor")
    app.command("serve")(serve_cmd)

It is also runnable on its own (``python -m orchestrator.cli.monitor_cmd
--results-dir DIR``), which is how ``monitor up`` starts the store exporter
detached without depending on how the main CLI is installed.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.exporter import DEFAULT_ADDR, SERVE_ADDR
from orchestrator.monitor import (
    DEFAULT_LISTEN,
    MACMON_PORT,
    NODE_EXPORTER_PORT,
    MonitorSettings,
    PrometheusMissing,
)

__all__ = ["monitor_app", "serve_app", "serve_cmd"]

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)

# The same option as cli/main.py's ResultsOpt (repeated here so this module
# never imports main, which imports it).
DEFAULT_RESULTS = "edgefarm-results"
ResultsOpt = Annotated[Path, typer.Option(
    "--results-dir", "-r", envvar="EDGEFARM_RESULTS_DIR",
    help="Directory of the results store (SQLite); Prometheus keeps its data under it.")]

monitor_app = typer.Typer(help="A local Prometheus scraping the controller and the devices.",
                          no_args_is_help=True)


def _reraise_missing(func: F) -> F:
    """Let ``PrometheusMissing`` pass cli_errors untouched, so ``_errors`` can exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PrometheusMissing as exc:
            raise _Missing(exc) from None

    return wrapper  # type: ignore[return-value]


class _Missing(BaseException):
    """Carries PrometheusMissing past cli_errors (which handles every Exception)."""

    def __init__(self, exc: PrometheusMissing) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _guarded(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from orchestrator.cli.main import cli_errors

        try:
            return cli_errors(_reraise_missing(func))(*args, **kwargs)
        except _Missing as missing:
            err_console.print(f"[red]error:[/] {missing.exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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
@_guarded
def monitor_up(
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", "-i", envvar="EDGEFARM_INVENTORY",
        help="Inventory whose ssh devices Prometheus scrapes (macmon on Macs, node_exporter "
             "elsewhere).")] = None,
    listen: Annotated[str, typer.Option(
        help="Address Prometheus serves its UI and API on.")] = DEFAULT_LISTEN,
    scrape_interval: Annotated[float, typer.Option(
        help="Seconds between scrapes.", min=0.1)] = 5.0,
    sweep_exporter: Annotated[str, typer.Option(
        help="Address of the exporter `sweep run --metrics-addr` serves.")] = DEFAULT_ADDR,
    serve: Annotated[bool, typer.Option(
        help="Also start `edgefarm serve` (the last finished sweep, between sweeps).")] = True,
    serve_addr: Annotated[str, typer.Option(
        help="Address of `edgefarm serve`.")] = SERVE_ADDR,
    macmon_port: Annotated[int, typer.Option(
        help="Port of `macmon serve` on Apple-silicon devices.")] = MACMON_PORT,
    node_exporter_port: Annotated[int, typer.Option(
        help="Port of node_exporter on other ssh devices.")] = NODE_EXPORTER_PORT,
    prometheus: Annotated[str | None, typer.Option(
        help="Path of the prometheus binary (default: found on PATH).")] = None,
) -> None:
    """Start a local Prometheus (and `edgefarm serve`) and print its URL."""
    from orchestrator.monitor import up

    info = up(MonitorSettings(
        results_dir=results_dir, listen=listen, scrape_interval_s=scrape_interval,
        controller_targets=(sweep_exporter, serve_addr), inventory=inventory,
        macmon_port=macmon_port, node_exporter_port=node_exporter_port, serve=serve,
        serve_addr=serve_addr, prometheus=prometheus))
    console.print(f"prometheus: {info['url']}", highlight=False)
    console.print(f"data and config: {Path(results_dir).resolve() / 'prometheus'}",
                  highlight=False)
    if info["serve"]["running"]:
        console.print(f"edgefarm serve: http://{info['serve']['addr']}/metrics",
                      highlight=False)
    console.print(f"sweeps serve live metrics on {sweep_exporter} while they run "
                  "(their --metrics-addr default)", highlight=False)


@monitor_app.command("down")
@_guarded
def monitor_down(results_dir: ResultsOpt = Path(DEFAULT_RESULTS)) -> None:
    """Stop the Prometheus (and `edgefarm serve`) that `monitor up` started."""
    from orchestrator.monitor import down

    stopped = down(results_dir)
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@monitor_app.command("status")
@_guarded
def monitor_status(results_dir: ResultsOpt = Path(DEFAULT_RESULTS)) -> None:
    """Say whether Prometheus runs, where, and how each scrape target is doing."""
    from orchestrator.monitor import status

    info = status(results_dir)
    _print_status(info)
    if not info["running"]:
        raise typer.Exit(1)


@_guarded
def serve_cmd(
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
    addr: Annotated[str, typer.Option(
        help="Address to serve /metrics on (host:port; loopback unless you say otherwise).")]
        = SERVE_ADDR,
) -> None:
    """Serve the last finished sweep's metrics from the results store until Ctrl-C."""
    from orchestrator.exporter import exporter_url, serve_registry, start_exporter, stop_exporter
    from orchestrator.store import DB_NAME

    if not (Path(results_dir) / DB_NAME).exists():
        # Not an error: `monitor up` may start this before the first sweep.
        # The collector reads the store at each scrape and finds it once written.
        err_console.print(f"[yellow]warning:[/] no results store in {results_dir} yet; "
                          "metrics appear once a sweep has finished there", highlight=False)
    server, thread = start_exporter(addr, registry=serve_registry(results_dir))
    console.print(f"serving {Path(results_dir) / DB_NAME} at {exporter_url(server)} "
                  "(Ctrl-C stops)", highlight=False)
    done = threading.Event()
    # ``monitor down`` sends SIGTERM: stop as cleanly as on Ctrl-C.
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_exporter(server, thread)
    console.print("stopped")


serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
serve_app.command()(serve_cmd)

if __name__ == "__main__":
    serve_app()
