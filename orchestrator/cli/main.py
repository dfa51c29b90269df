"""``edgefarm``: register devices, synthesize models, run sweeps, report.

This module only assembles the command modules, one per area, into one app;
the console script ``edgefarm = "orchestrator.cli.main:app"`` and
``python -m orchestrator.cli.main`` both run it. Every command is a thin
layer over the importable core (config, planner, sweeps, scheduler, store,
report) and every error leaves through the one boundary in
``orchestrator.cli.app``. Command modules import ``app`` and ``options``,
never this module, so the CLI has no import cycle.
"""

from __future__ import annotations

from orchestrator.cli.agent_cmd import agent_app
from orchestrator.cli.app import new_app
from orchestrator.cli.dashboards_cmd import dashboards_app
from orchestrator.cli.inventory_cmd import inventory_app
from orchestrator.cli.models_cmd import models_app
from orchestrator.cli.monitor_cmd import monitor_app, serve_cmd
from orchestrator.cli.report_cmd import report_cmd
from orchestrator.cli.sweep_cmd import sweep_app
from orchestrator.cli.telemetry_cmd import telemetry_app
from orchestrator.cli.watch_cmd import watch_cmd

__all__ = ["app"]

app = new_app(help="Benchmark MoE and dense LLMs across a farm of edge devices.")
app.add_typer(inventory_app, name="inventory")
app.add_typer(models_app, name="models")
app.add_typer(sweep_app, name="sweep")
app.command("report")(report_cmd)
app.add_typer(agent_app, name="agent")
app.add_typer(dashboards_app, name="dashboards")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(monitor_app, name="monitor")
app.command("serve")(serve_cmd)
app.command("watch")(watch_cmd)

if __name__ == "__main__":
    app()
