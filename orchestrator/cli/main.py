"""``edgefarm``: register devices, synthesize models, run sweeps, report.

Every command is a thin layer: it parses options, calls the importable core
(config, planner, scheduler, store, report) and renders with rich. Known
errors print one message and exit with status 2 (bad input) or 1; anything
unexpected prints a short line and leaves the traceback in a log file.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import secrets
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.errors import ConfigError, EdgefarmError, StoreError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(help="Benchmark MoE and dense LLMs across a farm of edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
inventory_app = typer.Typer(help="Check and list the devices of an inventory file.",
                            no_args_is_help=True)
models_app = typer.Typer(help="Synthetic GGUF models with real models' shapes.",
                         no_args_is_help=True)
sweep_app = typer.Typer(help="Plan, run, resume and inspect benchmark sweeps.",
                        no_args_is_help=True)
agent_app = typer.Typer(help="The device agent the controller ships.", no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")
app.add_typer(models_app, name="models")
app.add_typer(sweep_app, name="sweep")
app.add_typer(agent_app, name="agent")


def _register_subcommands() -> None:
    """Sub-apps that live in their own modules (one area each)."""
    from orchestrator.cli.dashboards_cmd import dashboards_app
    from orchestrator.cli.monitor_cmd import monitor_app, serve_cmd
    from orchestrator.cli.telemetry_cmd import telemetry_app
    from orchestrator.cli.watch_cmd import watch_cmd

    app.add_typer(dashboards_app, name="dashboards")
    app.add_typer(telemetry_app, name="telemetry")
    app.add_typer(monitor_app, name="monitor")
    app.command("serve")(serve_cmd)
    app.command("watch")(watch_cmd)


_register_subcommands()

console = Console()
err_console = Console(stderr=True)

DEFAULT_INVENTORY = "inventory/local.yaml"
DEFAULT_RESULTS = "edgefarm-results"

InventoryOpt = Annotated[Path, typer.Option(
    "--inventory", "-i", envvar="EDGEFARM_INVENTORY",
    help="Inventory file listing the devices.")]
KnownHostsOpt = Annotated[Path | None, typer.Option(
    "--known-hosts", envvar="EDGEFARM_KNOWN_HOSTS",
    help="edgefarm's known_hosts file for ssh devices [default: ~/.config/edgefarm/known_hosts]")]
UnreachableOpt = Annotated[float, typer.Option(
    "--unreachable-after", help="Seconds an ssh device may stay unreachable before it is "
    "quarantined.")]
MetricsAddrOpt = Annotated[str, typer.Option(
    "--metrics-addr", envvar="EDGEFARM_METRICS_ADDR",
    help="Serve live Prometheus metrics at HOST:PORT while the sweep runs "
    "(docs/monitoring.md); 'off' to serve none. A busy port is a warning, not an error.")]
MetricsLingerOpt = Annotated[float, typer.Option(
    "--metrics-linger", min=0,
    help="Keep serving metrics this many seconds after the sweep ends, so a last scrape "
    "sees the final values.")]
ResultsOpt = Annotated[Path, typer.Option(
    "--results-dir", "-r", envvar="EDGEFARM_RESULTS_DIR",
    help="Directory of the results store (SQLite).")]


def cli_errors(func: F) -> F:
    """Turn known errors into one message and an exit status; log unknown ones."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                err_console.print(f"[red]error:[/] {escape(str(problem))}", highlight=False,
                                  soft_wrap=True)
            raise typer.Exit(2) from None
        except StoreError as exc:
            err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except EdgefarmError as exc:
            err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            log_path = Path(os.environ.get("EDGEFARM_DEBUG_LOG", "edgefarm-debug.log"))
            with open(log_path, "a") as handle:
                handle.write(f"--- {dt.datetime.now().isoformat()} {' '.join(sys.argv)}\n")
                handle.write(traceback.format_exc())
            err_console.print(f"[red]unexpected error:[/] {type(exc).__name__}: "
                              f"{escape(str(exc))}\n"
                              f"The traceback is in {log_path}; please report it.",
                              highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# -- inventory -----------------------------------------------------------------
@inventory_app.command("validate")
@cli_errors
def inventory_validate(inventory: InventoryOpt = Path(DEFAULT_INVENTORY)) -> None:
    """Check an inventory file; print every problem with file:line."""
    inv = _load_inventory(inventory)
    console.print(f"{inventory}: ok, {len(inv.devices)} device(s)")


@inventory_app.command("list")
@cli_errors
def inventory_list(inventory: InventoryOpt = Path(DEFAULT_INVENTORY)) -> None:
    """List the devices of an inventory file."""
    inv = _load_inventory(inventory)
    table = Table(title=str(inventory), title_justify="left")
    for col in ("name", "transport", "address", "site", "platform", "labels", "backend"):
        table.add_column(col)
    for d in inv.devices:
        address = "this machine" if d.transport == "local" else f"{d.user}@{d.host}:{d.port}"
        labels = ", ".join(f"{k}={v}" for k, v in d.labels.items())
        backend = f"llama-bench {d.llama_bench}" if d.llama_bench else "xllamacpp"
        table.add_row(d.name, d.transport, address, d.site, d.platform, labels, backend)
    console.print(table)


def _select(inv: Any, names: list[str] | None) -> list[Any]:
    if not names:
        return list(inv.devices)
    return [inv.device(n) for n in names]  # an unknown name is a ConfigError (exit 2)


@inventory_app.command("probe")
@cli_errors
def inventory_probe(
    names: Annotated[list[str] | None, typer.Argument(
        help="Devices to probe; default: all.")] = None,
    inventory: InventoryOpt = Path(DEFAULT_INVENTORY),
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
    known_hosts: KnownHostsOpt = None,
    timeout: Annotated[float, typer.Option(
        help="Seconds an unreachable device gets before its row says so.")] = 10.0,
) -> None:
    """Connect to devices in parallel and show what each one is; store the facts."""
    from orchestrator.fleet_probe import probe_all
    from orchestrator.store import Store

    inv = _load_inventory(inventory)
    devices = _select(inv, names)
    store = Store(results_dir)
    with console.status(f"probing {len(devices)} device(s)"):
        results = probe_all(devices, store.dir / "agent",
                            _transport_settings(known_hosts, timeout))
    table = Table(title=f"{inventory}: {len(devices)} device(s)", title_justify="left")
    for col in ("device", "reachable", "OS", "chip / module", "RAM", "Python",
                "llama.cpp backends", "telemetry", "power mode", "agent"):
        table.add_column(col)
    for r in results:
        store.add_probe(r.device, r.reachable, r.facts or None, r.error)
        f = r.facts
        if r.error or not f:
            table.add_row(r.device, "yes" if r.reachable else "[red]no[/]",
                          escape(r.error or ""), "", "", "", "", "", "", "")
            continue
        backends = ", ".join(k for k, v in f.get("backends", {}).items() if v.get("present"))
        chip = (f.get("jetson", {}).get("module") or f.get("chip") or f.get("cpu_model")
                or f.get("machine", ""))
        ram = f.get("ram_total_bytes")
        os_name = f"{f.get('os', '')} {f.get('macos_version') or f.get('os_release', '')}"
        table.add_row(r.device, "yes", escape(os_name), escape(str(chip)),
                      f"{ram / 2**30:.1f} GiB" if ram else "", f.get("python", ""),
                      escape(backends or "none"), escape(", ".join(k for k in f.get("telemetry", {})
                                                         if k != "unavailable") or "none"),
                      escape(str(f.get("power_mode", ""))), f.get("agent_version", ""))
    console.print(table)
    down = [r.device for r in results if not r.reachable]
    if down:
        raise typer.Exit(1)


@inventory_app.command("trust")
@cli_errors
def inventory_trust(
    name: Annotated[str, typer.Argument(help="Device whose host key to trust.")],
    inventory: InventoryOpt = Path(DEFAULT_INVENTORY),
    known_hosts: KnownHostsOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y",
                                      help="Record the key without asking.")] = False,
) -> None:
    """Show a device's ssh host-key fingerprint and, once confirmed, trust it."""
    from orchestrator.transport.hostkeys import fetch_server_key, record
    from orchestrator.transport.ssh import known_hosts_path

    device = _load_inventory(inventory).device(name)
    if device.transport != "ssh":
        raise ConfigError(f"device {name} uses transport {device.transport!r}; only ssh "
                          "devices have host keys", path=str(inventory), key_path=name)
    path = known_hosts_path(str(known_hosts) if known_hosts else None)
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


def _load_inventory(path: Path) -> Any:
    from orchestrator.config.inventory import Inventory

    return Inventory.load(path)


# -- models --------------------------------------------------------------------
@models_app.command("presets")
@cli_errors
def models_presets() -> None:
    """List the presets `models synth` knows, with their parameter counts."""
    from agents.models import presets

    table = Table(title="synthetic model presets", title_justify="left")
    for col in ("preset", "arch", "layers", "hidden", "experts", "params total", "params active"):
        table.add_column(col)
    for name in presets.PRESETS:
        shape = presets.PRESETS[name]
        total, active = presets.param_counts(shape)
        experts = f"{shape.n_expert} (top-{shape.n_expert_used})" if shape.n_expert else "-"
        table.add_row(name, shape.arch, str(shape.n_layer), str(shape.n_embd), experts,
                      f"{total:,}", f"{active:,}")
    console.print(table)


@models_app.command("synth")
@cli_errors
def models_synth(
    preset: Annotated[str, typer.Argument(help="Preset name (see `edgefarm models presets`).")],
    quant: Annotated[str, typer.Option(help="Weight type: F16, Q8_0 or Q4_0.")] = "Q4_0",
    out: Annotated[Path | None, typer.Option(
        help="Output GGUF file (default: ./<preset>-<quant>.gguf).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-weight GGUF with a real model's published shapes."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from agents.models.synth import KNOWN_PRESETS, QUANTS, synthesize

    if preset not in KNOWN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (known: {', '.join(KNOWN_PRESETS)})",
                          key_path="PRESET")
    if quant not in QUANTS:
        raise ConfigError(f"unknown quant {quant!r} (known: {', '.join(QUANTS)})",
                          key_path="--quant")
    target = out or Path(f"{preset}-{quant}.gguf")
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=err_console) as bars:
        task = bars.add_task(f"writing {target}", total=None)

        def progress(done: int, total: int) -> None:
            bars.update(task, completed=done, total=total)

        info = synthesize(preset, quant, str(target), seed=seed, progress=progress)
    verified = _verify_gguf(target)
    console.print(f"wrote {target}: {info['size_bytes'] / 2**20:,.1f} MiB, "
                  f"{info['params_total']:,} params ({info['params_active']:,} active), "
                  f"{verified} tensors checked with gguf-py, {info['seconds']:.1f} s")


def _verify_gguf(path: Path) -> int:
    """Read the file back with the reference reader (gguf-py); return its tensor count."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return len(reader.tensors)


# -- sweeps --------------------------------------------------------------------
def _load(sweep_file: Path, inventory: Path) -> tuple[Any, Any, list[Any]]:
    from orchestrator.config.sweep import load_sweep_with_inventory
    from orchestrator.planner import plan

    sweep, inv = load_sweep_with_inventory(sweep_file, inventory)
    return sweep, inv, plan(sweep, inv)


@sweep_app.command("plan")
@cli_errors
def sweep_plan(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep file (YAML).")],
    inventory: InventoryOpt = Path(DEFAULT_INVENTORY),
) -> None:
    """Expand a sweep into its jobs and print them; runs nothing."""
    from orchestrator.cli.render import print_jobs

    sweep, _inv, jobs = _load(sweep_file, inventory)
    rows = [{"device": j.device, "model": j.model_id, "arch": j.model_arch,
             "prompt": j.prompt_tokens, "gen": j.gen_tokens, "threads": j.threads,
             "ngl": j.gpu_layers, "reps": f"{j.repetitions}+{j.warmup} warm-up",
             "backend": j.backend, "key": j.key} for j in jobs]
    print_jobs(console, rows, f"sweep {sweep.name}: {len(jobs)} job(s)")
    console.print(f"{len(jobs)} job(s) on {len({j.device for j in jobs})} device(s)")


def new_sweep_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def job_record(job: Any) -> dict[str, Any]:
    """What the store keeps of a planned job (the scheduler reads it back)."""
    record = job.model_dump(mode="json")
    record.update(key=job.key, arch=job.model_arch, agent_spec=job.to_agent_spec())
    return record


@sweep_app.command("run")
@cli_errors
def sweep_run(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep file (YAML).")],
    inventory: InventoryOpt = Path(DEFAULT_INVENTORY),
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
    ray_address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster instead of starting Ray on this machine.")] = None,
    report: Annotated[bool, typer.Option(help="Print the comparison at the end.")] = True,
    known_hosts: KnownHostsOpt = None,
    unreachable_after: UnreachableOpt = 120.0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1:9464",
    metrics_linger: MetricsLingerOpt = 0.0,
) -> None:
    """Run a sweep across the selected devices, with live progress."""
    from orchestrator.store import Store

    sweep, inv, jobs = _load(sweep_file, inventory)
    sweep_id = new_sweep_id()
    store = Store(results_dir)
    store.create_sweep(sweep_id, sweep.name, sweep.model_dump(mode="json"),
                       inv.model_dump(mode="json", exclude_unset=True),
                       [job_record(j) for j in jobs], sweep_path=str(sweep_file),
                       inventory_path=str(inventory))
    console.print(f"sweep {sweep_id}", highlight=False)
    console.print(f"{sweep.name}: {len(jobs)} job(s); results in {store.path}",
                  highlight=False)
    _execute(store, sweep_id, RunOptions(ray_address, report,
                                         _transport_settings(known_hosts, unreachable_after),
                                         metrics_addr, metrics_linger))


@sweep_app.command("resume")
@cli_errors
def sweep_resume(
    sweep_id: Annotated[str, typer.Argument(help="Sweep id (see `sweep status`).")],
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
    ray_address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster instead of starting Ray on this machine.")] = None,
    report: Annotated[bool, typer.Option(help="Print the comparison at the end.")] = True,
    known_hosts: KnownHostsOpt = None,
    unreachable_after: UnreachableOpt = 120.0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1:9464",
    metrics_linger: MetricsLingerOpt = 0.0,
) -> None:
    """Run the jobs of a sweep that are not done; re-attach to jobs still on devices."""
    from orchestrator.store import Store

    store = Store(results_dir)
    store.sweep(sweep_id)
    counts = store.job_counts(sweep_id)
    console.print(f"sweep {sweep_id}", highlight=False)
    console.print(f"resuming: {counts['done']} done, "
                  f"{sum(counts.values()) - counts['done']} to run", highlight=False)
    _execute(store, sweep_id, RunOptions(ray_address, report,
                                         _transport_settings(known_hosts, unreachable_after),
                                         metrics_addr, metrics_linger))


def _transport_settings(known_hosts: Path | None, unreachable_after: float) -> dict[str, Any]:
    from orchestrator.transport.ssh import known_hosts_path

    return {"known_hosts": str(known_hosts_path(str(known_hosts) if known_hosts else None)),
            "unreachable_after_s": unreachable_after}


@dataclass(frozen=True)
class RunOptions:
    """How `sweep run` and `sweep resume` execute a sweep."""

    ray_address: str | None
    report: bool
    settings: dict[str, Any]
    metrics_addr: str | None = None
    metrics_linger: float = 0.0


def _execute(store: Any, sweep_id: str, options: RunOptions) -> None:
    """Run the sweep, serving live metrics when asked (they outlive the report by the linger)."""
    from orchestrator.exporter import ExporterError, start_sweep_exporter

    exporter = None
    if options.metrics_addr and options.metrics_addr != "off":
        try:
            exporter = start_sweep_exporter(store.dir, options.metrics_addr,
                                            sweep_id=sweep_id, linger_s=options.metrics_linger)
            console.print(f"metrics at {exporter.url}", highlight=False)
        except ExporterError as exc:
            # Metrics are a view; the benchmark goes on without them.
            err_console.print(f"[yellow]warning:[/] no live metrics: {escape(str(exc))}",
                              highlight=False)
    try:
        _run(store, sweep_id, options, exporter.live if exporter is not None else None)
    finally:
        if exporter is not None:
            if options.metrics_linger:
                console.print(f"metrics stay up {options.metrics_linger:g} s more "
                              "(Ctrl-C ends that)", highlight=False)
            exporter.stop()


def _run(store: Any, sweep_id: str, options: RunOptions, live: Any) -> None:
    from orchestrator.cli.progress import RichProgress
    from orchestrator.cli.render import print_report
    from orchestrator.metrics import MultiProgress
    from orchestrator.report import build_report
    from orchestrator.scheduler import run_sweep

    logging.basicConfig(level=logging.WARNING)
    rows = store.jobs(sweep_id)
    per_device: dict[str, int] = {}
    for row in rows:
        per_device[row["device"]] = per_device.get(row["device"], 0) + 1
    done = sum(1 for r in rows if r["state"] == "done")
    progress = RichProgress(console, per_device, done=done)
    for row in rows:
        if row["state"] == "done":
            progress.bars.advance(progress.device_tasks[row["device"]])
    sink = MultiProgress(progress, live) if live is not None else progress
    with progress:
        summary = run_sweep(store, sweep_id, ray_address=options.ray_address, progress=sink,
                            transport_settings=options.settings)
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v)
    console.print(f"sweep {sweep_id} {'interrupted' if summary.interrupted else 'finished'} "
                  f"in {summary.seconds:.1f} s: {counts}", highlight=False)
    for failure in summary.failed:
        console.print(f"[red]{failure['state']}[/] {failure['device']} {failure['model']} "
                      f"{escape('[' + str(failure['error_kind']) + ']')}: "
                      f"{escape(str(failure['error']))}",
                      highlight=False)
    for device, reason in summary.quarantined.items():
        console.print(f"[red]quarantined[/] {device}: {escape(reason)}", highlight=False)
    if options.report:
        print_report(console, build_report(store, sweep_id))
    if store.sweep(sweep_id)["state"] == "cancelled":
        raise typer.Exit(1)
    if summary.interrupted:
        console.print(f"resume with: edgefarm sweep resume {sweep_id}", highlight=False)
        raise typer.Exit(130)
    if summary.counts.get("failed") or summary.counts.get("cancelled"):
        raise typer.Exit(1)


@sweep_app.command("cancel")
@cli_errors
def sweep_cancel(
    sweep_id: Annotated[str, typer.Argument(help="Sweep id.")],
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
    known_hosts: KnownHostsOpt = None,
    wait: Annotated[float, typer.Option(
        help="Seconds to let a running controller stop the sweep itself.")] = 15.0,
) -> None:
    """Stop a sweep: its running jobs' processes on the devices, and their leases."""
    from orchestrator.cancel import cancel_sweep
    from orchestrator.store import Store

    store = Store(results_dir)
    outcome = cancel_sweep(store, sweep_id, _transport_settings(known_hosts, 30.0), wait)
    console.print(f"sweep {sweep_id}: {outcome}", highlight=False)


@sweep_app.command("status")
@cli_errors
def sweep_status(
    sweep_id: Annotated[str | None, typer.Argument(
        help="Sweep id; default: list recent sweeps.")] = None,
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
) -> None:
    """Show recent sweeps, or the jobs of one sweep."""
    from orchestrator.cli.render import print_jobs
    from orchestrator.store import Store

    store = Store(results_dir)
    if sweep_id is None:
        table = Table(title=f"sweeps in {store.path}", title_justify="left")
        for col in ("id", "name", "state", "jobs"):
            table.add_column(col)
        for row in store.sweeps():
            counts = ", ".join(f"{k} {v}" for k, v in store.job_counts(row["id"]).items() if v)
            table.add_row(row["id"], row["name"], row["state"], counts)
        console.print(table)
        return
    row = store.sweep(sweep_id)
    jobs = [{"key": r["key"], "device": r["device"], "model": r["model_id"],
             "state": r["state"], "attempts": r["attempts"],
             "error": f"[{r['error_kind']}] {r['error']}" if r["error"] else None}
            for r in store.jobs(sweep_id)]
    print_jobs(console, jobs, f"sweep {sweep_id} ({row['name']}): {row['state']}")


# -- report --------------------------------------------------------------------
@app.command("report")
@cli_errors
def report_cmd(
    sweep_id: Annotated[str | None, typer.Argument(
        help="Sweep id; default: the most recent sweep.")] = None,
    results_dir: ResultsOpt = Path(DEFAULT_RESULTS),
    fmt: Annotated[str, typer.Option("--format", "-f",
                                     help="table, md or json.")] = "table",
) -> None:
    """Print the MoE-vs-dense comparison of a sweep."""
    from orchestrator.cli.render import print_report
    from orchestrator.report import build_report, render_json, render_markdown
    from orchestrator.store import Store

    if fmt not in ("table", "md", "json"):
        raise ConfigError(f"unknown format {fmt!r} (known: table, md, json)", key_path="--format")
    store = Store(results_dir)
    sweep_id = sweep_id or store.latest_sweep_id()
    if sweep_id is None:
        raise StoreError(f"no sweeps in {store.path}")
    report = build_report(store, sweep_id)
    if fmt == "json":
        sys.stdout.write(render_json(report) + "\n")
    elif fmt == "md":
        sys.stdout.write(render_markdown(report))
    else:
        print_report(console, report)


# -- agent ---------------------------------------------------------------------
@agent_app.command("bundle")
@cli_errors
def agent_bundle(
    out_dir: Annotated[Path, typer.Option(help="Where to write the zipapp.")] = Path("."),
) -> None:
    """Build the agent zipapp (content-addressed by sha256)."""
    from orchestrator.bundle import build

    bundle = build(out_dir)
    console.print(f"{bundle.path} sha256={bundle.sha256}", highlight=False)


@agent_app.command("probe")
@cli_errors
def agent_probe() -> None:
    """Print this machine's device facts, as the agent reports them."""
    from agents.probe import facts

    console.print_json(json.dumps(facts()))


if __name__ == "__main__":
    app()
