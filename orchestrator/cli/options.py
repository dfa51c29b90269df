"""Options shared by several commands, declared once so their names, defaults and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.transport.settings import TransportSettings

__all__ = ["DEFAULT_INVENTORY", "DEFAULT_RESULTS", "InventoryOpt", "KnownHostsOpt",
           "MaxRunningOpt", "MetricsAddrOpt", "MetricsLingerOpt", "RayAddressOpt", "ResultsOpt",
           "SweepIdArg", "UnreachableOpt", "transport_settings"]

DEFAULT_INVENTORY = Path("inventory/local.yaml")
DEFAULT_RESULTS = Path("edgefarm-results")

InventoryOpt = Annotated[Path, typer.Option(
    "--inventory", "-i", envvar="EDGEFARM_INVENTORY",
    help="Inventory file listing the devices.")]
# A file where the directory should be is refused at parsing (exit 2), before
# anything tries to create a store inside it.
ResultsOpt = Annotated[Path, typer.Option(
    "--results-dir", "-r", envvar="EDGEFARM_RESULTS_DIR", file_okay=False,
    help="Directory of the results store (SQLite); `monitor` keeps Prometheus's data "
         "under it.")]
KnownHostsOpt = Annotated[Path | None, typer.Option(
    "--known-hosts", envvar="EDGEFARM_KNOWN_HOSTS", dir_okay=False,
    help="edgefarm's known_hosts file for ssh devices [default: ~/.config/edgefarm/known_hosts]")]
UnreachableOpt = Annotated[float, typer.Option(
    "--unreachable-after", min=0,
    help="Seconds an ssh device may stay unreachable before it is quarantined.")]
MetricsAddrOpt = Annotated[str, typer.Option(
    "--metrics-addr", envvar="EDGEFARM_METRICS_ADDR",
    help="Serve live Prometheus metrics at HOST:PORT while the sweep runs "
    "(docs/monitoring.md); 'off' to serve none. A busy port is a warning, not an error.")]
MetricsLingerOpt = Annotated[float, typer.Option(
    "--metrics-linger", min=0,
    help="Keep serving metrics this many seconds after the sweep ends, so a last scrape "
    "sees the final values.")]
MaxRunningOpt = Annotated[int, typer.Option(
    "--max-running", min=1,
    help="At most this many jobs at once over the whole farm (each holds an SSH session); "
    "under the cap the device that waited longest goes first.")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="Join this Ray cluster instead of starting Ray on this machine.")]
SweepIdArg = Annotated[str, typer.Argument(help="Sweep id (see `edgefarm sweep status`).")]


def transport_settings(known_hosts: Path | None, unreachable_after: float,
                       inventory: Path | str | None = None) -> TransportSettings:
    """The transport settings the scheduler and ``sweep cancel`` pass to every transport.

    ``inventory``: the file the devices came from, named in host-key advice.
    """
    from orchestrator.transport.ssh import known_hosts_path

    return TransportSettings(known_hosts_path(str(known_hosts) if known_hosts else None)
                             .as_posix(), unreachable_after_s=unreachable_after,
                             inventory_path=str(inventory) if inventory else None)
