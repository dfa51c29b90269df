"""Prometheus alert rules for the farm, written from Python like the dashboards.

``render_rules()`` is the one source: ``python -m orchestrator.alerts --write``
renders ``dashboards/prometheus/edgefarm.rules.yml`` (what a hand-run
Prometheus or the compose stack loads), ``edgefarm monitor up`` writes the
same text beside its config, and a test fails when the committed file and
the code differ. ``promtool check rules`` and ``promtool test rules``
(tests/data/alerts/edgefarm.rules.test.yml) run in ``make test``.

The rules, and why each threshold:

* **EdgefarmDeviceDown** — the farm service's health reading (or the last
  attempt) says the device does not answer, for 5 minutes: longer than one
  missed reading at the default 60 s interval, so one dropped packet does
  not page anyone.
* **EdgefarmDeviceThrottling** — a throttle flag in the device's telemetry
  for 2 minutes: a throttled device measures its cooling, not the model.
* **EdgefarmSweepStalled** — a running sweep delivered no event for 10
  minutes. Agents send a heartbeat every 5 s while a job runs, so silence
  that long means a dead controller, a hung link or a hung agent.
* **EdgefarmJobFailureRate** — more than a quarter of a device's finished
  attempts in the last 30 minutes failed (with at least 4 attempts, so one
  failure of two is not a "rate").
* **EdgefarmEnergyUnmeasured** — a finished configuration has decode speed
  but no energy per token on a device whose health reading says it has a
  power source: energy should have been measured and was not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RULES", "RULES_FILE", "check", "render_rules", "write"]

#: Where the rendered rules live, relative to the repository root.
RULES_FILE = Path("dashboards/prometheus/edgefarm.rules.yml")

RULES: list[dict[str, Any]] = [
    {
        "alert": "EdgefarmDeviceDown",
        "expr": "edgefarm_device_up == 0",
        "for": "5m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "Device {{ $labels.device }} does not answer",
            "description": "The farm service could not reach the agent on {{ $labels.device }} "
                           "({{ $labels.platform }}) for 5 minutes. `edgefarm inventory probe` "
                           "says why.",
        },
    },
    {
        "alert": "EdgefarmDeviceThrottling",
        "expr": "edgefarm_device_throttled == 1",
        "for": "2m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "Device {{ $labels.device }} is throttling",
            "description": "A throttle flag has been raised on {{ $labels.device }} for 2 "
                           "minutes; measurements there describe its cooling, not the model.",
        },
    },
    {
        "alert": "EdgefarmSweepStalled",
        "expr": ("time() - edgefarm_sweep_last_event_timestamp_seconds > 600\n"
                 "and on (sweep) edgefarm_sweep_state{state=\"running\"} == 1"),
        "for": "1m",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "Sweep {{ $labels.sweep }} has stalled",
            "description": "No event of the running sweep {{ $labels.sweep }} for over 10 "
                           "minutes (agents send a heartbeat every 5 s). Is its controller "
                           "alive? `edgefarm sweep status` and `sweep resume` help.",
        },
    },
    {
        "alert": "EdgefarmJobFailureRate",
        "expr": ("sum by (device) (increase(edgefarm_job_attempts_total{outcome=\"failed\"}[30m]))"
                 "\n  / sum by (device) (increase(edgefarm_job_attempts_total[30m])) > 0.25\n"
                 "and sum by (device) (increase(edgefarm_job_attempts_total[30m])) >= 4"),
        "for": "0m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "Many failed job attempts on {{ $labels.device }}",
            "description": "{{ $value | humanizePercentage }} of the finished attempts on "
                           "{{ $labels.device }} in the last 30 minutes failed.",
        },
    },
    {
        "alert": "EdgefarmEnergyUnmeasured",
        "expr": ("count by (sweep, device, model, config) (edgefarm_decode_tokens_per_second)\n"
                 "  unless on (sweep, device, model, config) edgefarm_energy_per_token_joules\n"
                 "and on (device) edgefarm_device_power_measurable == 1"),
        "for": "5m",
        "labels": {"severity": "info"},
        "annotations": {
            "summary": "No energy for {{ $labels.model }} on {{ $labels.device }}",
            "description": "Sweep {{ $labels.sweep }} measured {{ $labels.model }} "
                           "({{ $labels.config }}) on {{ $labels.device }} without energy per "
                           "token, although the device has a power source. Was telemetry off "
                           "for the job?",
        },
    },
]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the longer PromQL) as literal blocks, as people write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_rules() -> str:
    """The rules file's exact text."""
    doc = {"groups": [{"name": "edgefarm", "rules": RULES}]}
    return ("# Written by `python -m orchestrator.alerts --write` from orchestrator/alerts.py;"
            " edit that, not this.\n"
            + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000))


def write(path: Path = RULES_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_rules(), encoding="utf-8")
    return path


def check(path: Path = RULES_FILE) -> list[str]:
    """Problems that make ``path`` differ from the code (empty when in sync)."""
    if not path.exists():
        return [f"{path}: missing"]
    if path.read_text(encoding="utf-8") != render_rules():
        return [f"{path}: differs from orchestrator/alerts.py"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.alerts",
                                     description="Render or check the Prometheus alert rules.")
    parser.add_argument("--write", action="store_true", help=f"write {RULES_FILE}")
    parser.add_argument("--check", action="store_true", help=f"check {RULES_FILE} is current")
    args = parser.parse_args(argv)
    if args.write:
        print(write())
        return 0
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.check:
        return 1 if problems else 0
    sys.stdout.write(render_rules())
    return 0


if __name__ == "__main__":
    sys.exit(main())
