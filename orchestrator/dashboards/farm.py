"""'edgefarm · Farm overview': is every device up, what is it doing, what does it draw."""

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

UID = "edgefarm-farm-overview"

_NO_SENSOR = ("absent when the device has no such sensor (a VM or container has no power "
              "rails and often no thermal zones); not measured means absent, never zero")

_UP_MAPPINGS = (("0", "down", "red"), ("1", "up", "green"))
_BUSY_MAPPINGS = (("0", "idle", "text"), ("1", "busy", "blue"))
_DEVICE = ("device",)


def dashboard() -> Dashboard:
    """The farm overview: device state, live power, memory, temperature, attempts."""
    up = sel("edgefarm_device_up", "device")
    busy = sel("edgefarm_device_busy", "device")
    phase = sel("edgefarm_device_phase", "device")
    power = sel("edgefarm_device_power_watts", "device")
    mem_used = sel("edgefarm_device_memory_used_bytes", "device")
    mem_total = sel("edgefarm_device_memory_total_bytes", "device")
    attempts = sel("edgefarm_job_attempts_total", "device")
    samples = sel("edgefarm_telemetry_samples_total", "device")
    return Dashboard(
        uid=UID,
        title="edgefarm · Farm overview",
        description="Devices of the farm: up, busy, phase, live power per rail, memory, "
                    "temperature and finished job attempts.",
        variables=(
            Variable("device", "Device", "edgefarm_device_up", "device",
                     description="Devices known to the controller's exporter."),
        ),
        layout=(
            (
                Panel("Devices up", "stat", (
                    Query(f"sum({up})", "up", instant=True),
                    Query(f"count({up})", "known", instant=True),
                ), w=4, h=5, decimals=0,
                    description="Devices answering now, out of all devices the controller knows."),
                Panel("Busy devices", "stat", (
                    Query(f"sum({busy})", "busy", instant=True),
                ), w=4, h=5, decimals=0, thresholds=(("text", None), ("blue", 1)),
                    description="Devices running a job now (at most one job per device)."),
                Panel("Attempts by outcome", "bargauge", (
                    Query(f"sum by (outcome) ({attempts})", "{{outcome}}", ("outcome",),
                          instant=True),
                ), w=8, h=5, decimals=0, colour_by_name=STATE_COLOURS,
                    description="Finished job attempts by outcome since the exporter started."),
                Panel("Telemetry samples/s", "stat", (
                    Query(f"sum by (device) (rate({samples}[$__rate_interval]))", "{{device}}",
                          _DEVICE, instant=True),
                ), w=8, h=5, unit="cps", decimals=1,
                    description="Telemetry samples received per second, per device."),
            ),
            Row("Devices"),
            (
                Panel("Up", "state-timeline", (
                    Query(up, "{{device}}", ("device", "platform")),
                ), w=8, h=7, mappings=_UP_MAPPINGS,
                    thresholds=(("red", None), ("green", 1)),
                    description="1 while the device answers, 0 when it does not."),
                Panel("Busy", "state-timeline", (
                    Query(busy, "{{device}}", _DEVICE),
                ), w=8, h=7, mappings=_BUSY_MAPPINGS,
                    thresholds=(("text", None), ("blue", 1)),
                    description="1 while a job runs on the device."),
                Panel("Current phase", "table", (
                    Query(f"{phase} == 1", "", ("device", "phase"), instant=True, table=True),
                ), w=8, h=7, hide_columns=SCRAPE_COLUMNS,
                    description="Phase of each device's job now (idle between jobs)."),
            ),
            (
                Panel("Phase over time", "state-timeline", (
                    Query(f"{phase} == 1", "{{device}} · {{phase}}", ("device", "phase")),
                ), w=24, h=7, mappings=(("1", "active", "blue"),),
                    thresholds=(("blue", None),),
                    description="When each device was in each phase (model, synth, load, "
                                "warmup, prefill, decode, bench, cooldown, profile, idle)."),
            ),
            Row("Power and thermals"),
            (
                Panel("Power per rail", "timeseries", (
                    Query(power, "{{device}} · {{rail}}", ("device", "rail"),
                          may_be_empty=_NO_SENSOR),
                ), unit="watt", min=0,
                    description="Live power of every rail the device reports; rail 'total' is "
                                "the device's designated total."),
                Panel("Total power", "timeseries", (
                    Query(sel("edgefarm_device_power_watts", "device", rail="total"),
                          "{{device}}", ("device", "rail"), may_be_empty=_NO_SENSOR),
                ), unit="watt", min=0,
                    description="The designated total rail of each device."),
            ),
            (
                Panel("Temperature", "timeseries", (
                    Query(sel("edgefarm_device_temperature_celsius", "device"),
                          "{{device}} · {{sensor}}", ("device", "sensor"),
                          may_be_empty=_NO_SENSOR),
                ), w=24, unit="celsius",
                    description="Live temperatures of every sensor the device reports."),
            ),
            Row("Memory"),
            (
                Panel("Memory used and total", "timeseries", (
                    Query(mem_used, "{{device}} used", _DEVICE),
                    Query(mem_total, "{{device}} total", _DEVICE),
                ), w=16, unit="bytes", min=0,
                    description="System memory in use, beside the device's memory size."),
                Panel("Memory used, % of total", "bargauge", (
                    Query(f"100 * {mem_used}\n  / on (device) {mem_total}", "{{device}}",
                          _DEVICE, instant=True),
                ), w=8, unit="percent", min=0, max=100,
                    thresholds=(("green", None), ("orange", 80), ("red", 95)),
                    description="Share of system memory in use now; MoE models need far more "
                                "memory than their active parameters suggest."),
            ),
        ),
    )
