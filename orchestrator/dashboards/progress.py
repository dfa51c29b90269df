"""'edgefarm · Sweep progress': how far the sweep is, how attempts end, how busy the farm is."""

from __future__ import annotations

from orchestrator.dashboards.model import (
    SCRAPE_COLUMNS,
    STATE_COLOURS,
    Dashboard,
    Panel,
    Query,
    Row,
    Variable,
)
from orchestrator.dashboards.promql import sel

__all__ = ["UID", "dashboard"]

UID = "edgefarm-sweep-progress"

_NO_FAILURES = "empty while no attempt has failed since the exporter started"


def dashboard() -> Dashboard:
    """Sweep state, jobs by state, attempt rates and device occupancy."""
    jobs = sel("edgefarm_sweep_jobs", "sweep")
    finished = sel("edgefarm_sweep_jobs", "sweep", state="done")
    info = sel("edgefarm_sweep_info", "sweep")
    attempts = "edgefarm_job_attempts_total"
    return Dashboard(
        uid=UID,
        title="edgefarm · Sweep progress",
        description="The running sweep and the last finished one: jobs by state, attempt "
                    "outcomes over time, and how many devices are busy.",
        variables=(
            Variable("sweep", "Sweep", "edgefarm_sweep_info", "sweep", sort=2,
                     description="Only the running sweep and the last finished one are "
                                 "exported."),
        ),
        layout=(
            (
                Panel("Sweeps", "table", (
                    Query(f"{info}\n  * on (sweep) group_left (state)\n  "
                          f"({sel('edgefarm_sweep_state', 'sweep')} == 1)", "",
                          ("sweep", "name", "state"), instant=True, table=True),
                ), w=10, h=6, hide_columns=SCRAPE_COLUMNS,
                    description="Exported sweeps with their name and state (running, "
                                "finished, interrupted)."),
                Panel("Done, % of jobs", "gauge", (
                    Query(f"100 * sum by (sweep) ({finished})\n  / sum by (sweep) ({jobs})",
                          "{{sweep}}", ("sweep",), instant=True),
                ), w=6, h=6, unit="percent", decimals=0, min=0, max=100,
                    thresholds=(("blue", None), ("green", 100)),
                    description="Jobs done out of all jobs of the sweep."),
                Panel("Jobs by state", "bargauge", (
                    Query(f"sum by (state) ({jobs})", "{{state}}", ("state",), instant=True),
                ), w=8, h=6, decimals=0, min=0, colour_by_name=STATE_COLOURS,
                    description="Jobs of the selected sweeps by state."),
            ),
            Row("Over time"),
            (
                Panel("Jobs by state over time", "timeseries", (
                    Query(f"sum by (state) ({jobs})", "{{state}}", ("state",)),
                ), decimals=0, min=0, stack=True, step=True, colour_by_name=STATE_COLOURS,
                    description="How the sweep's jobs move from pending through running to "
                                "done, failed or cancelled."),
                Panel("Attempts finished per second", "timeseries", (
                    Query(f"sum by (outcome) (rate({attempts}[$__rate_interval]))",
                          "{{outcome}}", ("outcome",)),
                ), unit="cps", min=0, stack=True, colour_by_name=STATE_COLOURS,
                    description="Finished job attempts per second by outcome, over all "
                                "devices (the counter has no sweep label)."),
            ),
            (
                Panel("Busy devices", "timeseries", (
                    Query(sel("edgefarm_device_busy"), "{{device}}", ("device",)),
                ), decimals=0, min=0, stack=True, step=True,
                    description="Devices running a job, stacked: the height is the number "
                                "of busy devices."),
                Panel("Failed attempts by device", "bargauge", (
                    Query(f'sum by (device) ({attempts}{{outcome="failed"}})', "{{device}}",
                          ("device",), instant=True, may_be_empty=_NO_FAILURES),
                ), decimals=0, min=0, thresholds=(("green", None), ("red", 1)),
                    description="Failed attempts since the exporter started, per device. "
                                "`edgefarm sweep status` shows the errors."),
            ),
        ),
    )
