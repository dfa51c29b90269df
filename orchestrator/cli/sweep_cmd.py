"""``edgefarm sweep``: plan, run, resume, cancel and inspect sweeps.

The steps themselves (validate and plan, record under a new id, what a resume
will do) are ``orchestrator.sweeps``; the run is ``orchestrator.scheduler``.
This module parses options, draws progress and decides the exit status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.app import console, err_console, new_app
from orchestrator.cli.options import (
    DEFAULT_INVENTORY,
    DEFAULT_RESULTS,
    InventoryOpt,
    KnownHostsOpt,
    MaxRunningOpt,
    MetricsAddrOpt,
    MetricsLingerOpt,
    RayAddressOpt,
    ResultsOpt,
    SweepIdArg,
    UnreachableOpt,
    transport_settings,
)
from orchestrator.transport.settings import DEFAULT_MAX_RUNNING, TransportSettings

__all__ = ["sweep_app"]

sweep_app = new_app(help="Plan, run, resume and inspect benchmark sweeps.")

SweepFileArg = Annotated[Path, typer.Argument(help="Sweep file (YAML).")]
ReportOpt = Annotated[bool, typer.Option(help="Print the comparison at the end.")]
SyntheticOpt = Annotated[bool, typer.Option(
    "--synthetic", help="Run every model's `synthetic` preset (same shapes, random weights) "
                        "instead of its GGUF file: a study written for real files, on any "
                        "machine.")]


@sweep_app.command("plan")
def sweep_plan(sweep_file: SweepFileArg, inventory: InventoryOpt = DEFAULT_INVENTORY,
               synthetic: SyntheticOpt = False) -> None:
    """Expand a sweep into its jobs and print them; runs nothing."""
    from orchestrator.cli.render import print_jobs
    from orchestrator.planner import repetitions_label, variant_label
    from orchestrator.sweeps import load_plan

    planned = load_plan(sweep_file, inventory, synthetic)
    jobs = planned.jobs
    rows = [{"device": j.device, "model": j.model_id, "arch": j.model_arch,
             "prompt": j.prompt_tokens, "gen": j.gen_tokens, "threads": j.threads,
             "ngl": j.gpu_layers,
             "rounds": f"{repetitions_label(j.repetitions)}, {j.warmup} warm-up",
             # backend torch: its variant too (one job per experts x decode)
             "backend": f"{j.backend} {variant_label(j.torch)}" if j.torch else j.backend,
             "key": j.key} for j in jobs]
    print_jobs(console, rows, f"sweep {planned.sweep.name}: {len(jobs)} job(s)")
    console.print(f"{len(jobs)} job(s) on {len({j.device for j in jobs})} device(s)")


@dataclass(frozen=True)
class RunOptions:
    """How `sweep run` and `sweep resume` execute a sweep."""

    ray_address: str | None
    report: bool
    settings: TransportSettings
    metrics_addr: str = "off"
    metrics_linger: float = 0.0
    max_running: int = DEFAULT_MAX_RUNNING


def _run_options(ray_address: str | None, report: bool, known_hosts: Path | None,
                 unreachable_after: float, metrics_addr: str,
                 metrics_linger: float, inventory: Path | str | None = None,
                 max_running: int = DEFAULT_MAX_RUNNING) -> RunOptions:
    """Check the options before anything is written (a malformed address exits 2)."""
    from orchestrator.exporter import parse_addr

    if metrics_addr != "off":
        parse_addr(metrics_addr)
    return RunOptions(ray_address, report,
                      transport_settings(known_hosts, unreachable_after, inventory),
                      metrics_addr, metrics_linger, max_running)


@sweep_app.command("run")
def sweep_run(
    sweep_file: SweepFileArg,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    ray_address: RayAddressOpt = None,
    report: ReportOpt = True,
    known_hosts: KnownHostsOpt = None,
    unreachable_after: UnreachableOpt = 120.0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1:9464",
    metrics_linger: MetricsLingerOpt = 0.0,
    max_running: MaxRunningOpt = DEFAULT_MAX_RUNNING,
    synthetic: SyntheticOpt = False,
) -> None:
    """Run a sweep across the selected devices, with live progress."""
    from orchestrator.store import Store
    from orchestrator.sweeps import create_sweep, load_plan, own_sweep

    options = _run_options(ray_address, report, known_hosts, unreachable_after, metrics_addr,
                           metrics_linger, inventory, max_running)
    planned = load_plan(sweep_file, inventory, synthetic)
    # A bad identity file is a config error (exit 2), checked before anything is written.
    planned.inventory.check_key_files(sorted({job.device for job in planned.jobs}))
    store = Store(results_dir)
    sweep_id = create_sweep(store, planned)
    # Owned from its creation: a `sweep resume` of the id printed below is refused.
    with own_sweep(store.dir, sweep_id):
        console.print(f"sweep {sweep_id}", highlight=False)
        console.print(f"{planned.sweep.name}: {len(planned.jobs)} job(s); results in "
                      f"{store.path}", highlight=False)
        _execute(store, sweep_id, options)


@sweep_app.command("resume")
def sweep_resume(
    sweep_id: SweepIdArg,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    ray_address: RayAddressOpt = None,
    report: ReportOpt = True,
    known_hosts: KnownHostsOpt = None,
    unreachable_after: UnreachableOpt = 120.0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1:9464",
    metrics_linger: MetricsLingerOpt = 0.0,
    max_running: MaxRunningOpt = DEFAULT_MAX_RUNNING,
) -> None:
    """Run the jobs of a sweep that are not done; re-attach to jobs still on devices.

    Devices an earlier run quarantined are tried again (a resume is a fresh
    try); their earlier quarantine is printed first.
    """
    from orchestrator.store import Store
    from orchestrator.sweeps import own_sweep, resume_info

    store = Store(results_dir)
    row = store.sweep(sweep_id)  # an unknown id exits 2 before a lock file is made
    options = _run_options(ray_address, report, known_hosts, unreachable_after, metrics_addr,
                           metrics_linger, row["inventory_path"], max_running)
    # One controller per sweep: refused (exit 2, naming pid and host) while another runs it.
    with own_sweep(store.dir, sweep_id):
        info = resume_info(store, sweep_id)
        console.print(f"sweep {sweep_id}", highlight=False)
        console.print(f"resuming: {info.done} done, {info.to_run} to run", highlight=False)
        if info.drift:
            err_console.print(f"[yellow]warning:[/] {escape(info.drift)}; resume runs the plan "
                              "stored with the sweep. To run the edited file, start a new sweep "
                              f"with: edgefarm sweep run {escape(row['sweep_path'])}",
                              highlight=False)
        for q in info.quarantines:
            console.print(f"[yellow]earlier quarantine[/] {escape(q['device'])}: "
                          f"{escape(q['reason'])}; trying it again", highlight=False)
        _execute(store, sweep_id, options)


def _execute(store: Any, sweep_id: str, options: RunOptions) -> None:
    """Run the sweep, serving live metrics when asked (they outlive the report by the linger)."""
    from orchestrator.exporter import ExporterError, start_sweep_exporter

    exporter = None
    if options.metrics_addr != "off":
        try:
            exporter = start_sweep_exporter(store.dir, options.metrics_addr,
                                            sweep_id=sweep_id, linger_s=options.metrics_linger)
            console.print(f"metrics at {exporter.url}", highlight=False)
        except ExporterError as exc:
            # Metrics are a view; the benchmark goes on without them.
            err_console.print(f"[yellow]warning:[/] no live metrics: {escape(str(exc))}")
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
    from orchestrator.states import JobState, SweepState

    logging.basicConfig(level=logging.WARNING)
    rows = store.jobs(sweep_id)
    per_device: dict[str, int] = {}
    for row in rows:
        per_device[row["device"]] = per_device.get(row["device"], 0) + 1
    done = sum(1 for r in rows if r["state"] == JobState.DONE)
    progress = RichProgress(console, per_device, done=done)
    for row in rows:
        if row["state"] == JobState.DONE:
            progress.bars.advance(progress.device_tasks[row["device"]])
    sink = MultiProgress(progress, live) if live is not None else progress
    with progress:
        summary = run_sweep(store, sweep_id, ray_address=options.ray_address, progress=sink,
                            transport_settings=options.settings,
                            max_running=options.max_running)
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
    if store.sweep(sweep_id)["state"] == SweepState.CANCELLED:
        raise typer.Exit(1)
    if summary.interrupted:
        console.print(f"resume with: edgefarm sweep resume {sweep_id}", highlight=False)
        raise typer.Exit(130)
    if summary.counts.get(JobState.FAILED) or summary.counts.get(JobState.CANCELLED):
        raise typer.Exit(1)


@sweep_app.command("cancel")
def sweep_cancel(
    sweep_id: SweepIdArg,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
    known_hosts: KnownHostsOpt = None,
    wait: Annotated[float, typer.Option(
        min=0, help="Seconds to let a running controller stop the sweep itself.")] = 15.0,
    ray_address: RayAddressOpt = None,
) -> None:
    """Stop a sweep: its running jobs' processes on the devices, and their leases.

    With --ray-address the devices are reached from their sites' Ray nodes, as the
    sweep reached them (docs/sites.md).
    """
    from orchestrator.cancel import cancel_sweep
    from orchestrator.store import Store

    store = Store(results_dir)
    outcome = cancel_sweep(store, sweep_id, transport_settings(
        known_hosts, 30.0, store.sweep(sweep_id)["inventory_path"]), wait,
        ray_address=ray_address)
    console.print(f"sweep {sweep_id}: {outcome}", highlight=False)


@sweep_app.command("status")
def sweep_status(
    sweep_id: Annotated[str | None, typer.Argument(
        help="Sweep id; default: list recent sweeps.")] = None,
    results_dir: ResultsOpt = DEFAULT_RESULTS,
) -> None:
    """Show recent sweeps, or the jobs and device quarantines of one sweep."""
    import datetime as dt

    from orchestrator.cli.render import print_jobs
    from orchestrator.store import open_to_read

    store = open_to_read(results_dir, sweep_id)
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
    quarantines = [{"device": q["device"],
                    "at": dt.datetime.fromtimestamp(q["at"]).isoformat(timespec="seconds"),
                    "reason": q["reason"],
                    "now": "lifted by a later run" if q["lifted_at"] else "quarantined"}
                   for q in store.quarantines(sweep_id)]
    if quarantines:
        print_jobs(console, quarantines, "device quarantines")
