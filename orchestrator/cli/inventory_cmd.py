"""``edgefarm inventory``: check, list, probe and trust the devices of an inventory file.

Core modules are imported inside the commands, as in every command module:
the CLI starts for ``--help`` without loading pydantic, Ray or SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.app import console, new_app
from orchestrator.cli.options import (
    DEFAULT_INVENTORY,
    DEFAULT_RESULTS,
    InventoryOpt,
    KnownHostsOpt,
    RayAddressOpt,
    ResultsOpt,
    transport_settings,
)
from orchestrator.errors import ConfigError

__all__ = ["inventory_app"]

inventory_app = new_app(help="Check and list the devices of an inventory file.")


@inventory_app.command("validate")
def inventory_validate(inventory: InventoryOpt = DEFAULT_INVENTORY) -> None:
    """Check an inventory file and its local identity files; print every problem with file:line."""
    inv = _load(inventory)
    inv.check_key_files()
    console.print(f"{inventory}: ok, {len(inv.devices)} device(s)")


@inventory_app.command("list")
def inventory_list(inventory: InventoryOpt = DEFAULT_INVENTORY) -> None:
    """List the devices of an inventory file."""
    inv = _load(inventory)
    table = Table(title=str(inventory), title_justify="left")
    for col in ("name", "transport", "address", "site", "platform", "labels", "backend"):
        table.add_column(col)
    for d in inv.devices:
        address = "this machine" if d.transport == "local" else f"{d.user}@{d.host}:{d.port}"
        labels = ", ".join(f"{k}={v}" for k, v in d.labels.items())
        backend = f"llama-bench {d.llama_bench}" if d.llama_bench else "xllamacpp"
        table.add_row(d.name, d.transport, address, d.site, d.platform, labels, backend)
    console.print(table)


def _load(path: Any) -> Any:
    from orchestrator.config.inventory import Inventory

    return Inventory.load(path)


def _select(inv: Any, names: list[str] | None) -> list[Any]:
    if not names:
        return list(inv.devices)
    return [inv.device(n) for n in names]  # an unknown name is a ConfigError (exit 2)


def _facts_row(facts: dict[str, Any]) -> list[str]:
    backends = ", ".join(k for k, v in facts.get("backends", {}).items() if v.get("present"))
    chip = (facts.get("jetson", {}).get("module") or facts.get("chip")
            or facts.get("cpu_model") or facts.get("machine", ""))
    ram = facts.get("ram_total_bytes")
    os_name = f"{facts.get('os', '')} {facts.get('macos_version') or facts.get('os_release', '')}"
    telemetry = ", ".join(k for k in facts.get("telemetry", {}) if k != "unavailable")
    return ["yes", escape(os_name), escape(str(chip)), f"{ram / 2**30:.1f} GiB" if ram else "",
            facts.get("python", ""), escape(backends or "none"), escape(telemetry or "none"),
            escape(str(facts.get("power_mode", ""))), facts.get("agent_version", "")]


@inventory_app.command("probe")
def inventory_probe(
    names: Annotated[list[str] | None, typer.Argument(
        help="Devices to probe; default: all.")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    known_hosts: KnownHostsOpt = None,
    timeout: Annotated[float, typer.Option(
        min=0, help="Seconds an unreachable device gets before its row says so.")] = 10.0,
    ray_address: RayAddressOpt = None,
) -> None:
    """Connect to devices in parallel and show what each one is; store the facts.

    With --ray-address each device is probed from its site's Ray node (docs/sites.md).
    """
    from orchestrator.fleet_probe import probe_all
    from orchestrator.store import Store

    inv = _load(inventory)
    devices = _select(inv, names)
    inv.check_key_files([d.name for d in devices])  # a bad key is a config error, not a dead host
    store = Store(results_dir)
    settings = transport_settings(known_hosts, timeout, inventory)
    with console.status(f"probing {len(devices)} device(s)"):
        if ray_address:
            from orchestrator.site_ops import probe_via_gateways

            results = probe_via_gateways(devices, ray_address, settings, store.dir / "agent")
        else:
            results = probe_all(devices, store.dir / "agent", settings)
    table = Table(title=f"{inventory}: {len(devices)} device(s)", title_justify="left")
    for col in ("device", "reachable", "OS", "chip / module", "RAM", "Python",
                "llama.cpp backends", "telemetry", "power mode", "agent"):
        table.add_column(col)
    for r in results:
        store.add_probe(r.device, r.reachable, r.facts or None, r.error)
        if r.error or not r.facts:
            table.add_row(r.device, "yes" if r.reachable else "[red]no[/]",
                          escape(r.error or ""), "", "", "", "", "", "", "")
        else:
            table.add_row(r.device, *_facts_row(r.facts))
    console.print(table)
    if any(not r.reachable for r in results):
        raise typer.Exit(1)


@inventory_app.command("trust")
def inventory_trust(
    name: Annotated[str, typer.Argument(help="Device whose host key to trust.")],
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    known_hosts: KnownHostsOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y",
                                      help="Record the key without asking.")] = False,
    ray_address: RayAddressOpt = None,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
) -> None:
    """Show a device's ssh host-key fingerprint and, once confirmed, trust it.

    With --ray-address the key is fetched from the device's site node (docs/sites.md)
    and recorded in this machine's known_hosts, which sweeps hand to the gateways.
    """
    from orchestrator.transport.hostkeys import fetch_server_key, record
    from orchestrator.transport.ssh import known_hosts_path

    device = _load(inventory).device(name)
    if device.transport != "ssh":
        raise ConfigError(f"device {name} uses transport {device.transport!r}; only ssh "
                          "devices have host keys", path=str(inventory), key_path=name)
    path = known_hosts_path(str(known_hosts) if known_hosts else None)
    if ray_address:
        from orchestrator.site_ops import host_key_via_gateway

        server = host_key_via_gateway(device, ray_address,
                                      transport_settings(path, 10.0, inventory),
                                      Path(results_dir) / "agent")
    else:
        server = fetch_server_key(device, str(path))
    console.print(f"{name} ({server.name}) presents a {server.key.get_name()} key\n"
                  f"  fingerprint {server.fingerprint}\n"
                  "Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on "
                  "the device itself.", highlight=False)
    if not yes and not typer.confirm(f"Trust this key for {name}?", default=False):
        console.print("not trusted")
        raise typer.Exit(1)
    outcome = record(path, server)
    console.print(f"{name}: {outcome} in {path}", highlight=False)
