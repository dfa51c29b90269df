"""Rich progress bars for ``sweep run``: one overall bar and one per device."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.eta import EtaTracker, format_eta


class RichProgress:
    """Implements the scheduler's ``Progress`` protocol with rich bars."""

    def __init__(self, console: Console, jobs_per_device: dict[str, int], done: int = 0) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.fields[label]:<18}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
            transient=False, refresh_per_second=2)
        total = sum(jobs_per_device.values())
        self.overall = self.bars.add_task("", total=total, completed=done, label="all devices")
        self.device_tasks = {
            device: self.bars.add_task("waiting", total=n, label=device)
            for device, n in jobs_per_device.items()}
        self.current: dict[str, str] = {}
        # The estimated finish, from job times this run measures (orchestrator/eta.py).
        self.eta = EtaTracker()
        self.pending = dict(jobs_per_device)
        self.started_at: dict[str, float] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def job_started(self, job: dict[str, Any], attempt: int) -> None:
        label = f"{job['model_id']} p{job['prompt_tokens']}/g{job['gen_tokens']}"
        if attempt > 1:
            label += f" (attempt {attempt})"
        self.current[job["device"]] = label
        self.started_at[job["device"]] = time.monotonic()
        self.bars.update(self.device_tasks[job["device"]], description=f"{label}: starting")

    def job_event(self, job: dict[str, Any], event: dict[str, Any]) -> None:
        kind = event.get("kind")
        label = self.current.get(job["device"], job["model_id"])
        if kind == "phase":
            phase = event.get("phase")
            if phase == "synth" and event.get("total_bytes"):
                pct = 100 * event["done_bytes"] / event["total_bytes"]
                phase = f"synthesizing model {pct:.0f}%"
            self.bars.update(self.device_tasks[job["device"]], description=f"{label}: {phase}")
        elif kind == "repetition" and not event.get("warmup") and event.get("decode_tps"):
            self.bars.update(self.device_tasks[job["device"]],
                             description=f"{label}: rep {event.get('index', 0) + 1} "
                                         f"{event['decode_tps']:.1f} tok/s")

    def device_warning(self, device: str, message: str) -> None:
        self.console.print(f"[yellow]warning[/] {device}: {escape(message)}", highlight=False)

    def job_finished(self, job: dict[str, Any], state: str, error: str | None,
                     retrying: bool) -> None:
        task = self.device_tasks[job["device"]]
        began = self.started_at.pop(job["device"], None)
        if began is not None:
            self.eta.observe(job["device"], time.monotonic() - began)
        if retrying:
            self.console.print(f"[yellow]retrying[/] {job['device']} {job['model_id']}: "
                               f"{escape(str(error))}", highlight=False)
            return
        self.bars.advance(task)
        self.bars.advance(self.overall)
        self.pending[job["device"]] = max(0, self.pending.get(job["device"], 1) - 1)
        self._show_eta()
        if state != "done":
            self.console.print(f"[red]{state}[/] {job['device']} {job['model_id']}: "
                               f"{escape(str(error))}", highlight=False)
        self.bars.update(task, description="idle")

    def _show_eta(self) -> None:
        now = time.monotonic()
        running = {d: now - t for d, t in self.started_at.items()}
        waiting = {d: n - (1 if d in running else 0) for d, n in self.pending.items()}
        self.bars.update(self.overall, description=format_eta(
            self.eta.seconds_left(waiting, running)))
