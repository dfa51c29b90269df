"""A local Prometheus for the controller: config, start, stop, status.

``edgefarm monitor up`` runs the real ``prometheus`` binary (Debian package
``prometheus``, Homebrew ``prometheus``) detached, with a config generated
here and its data under ``<results-dir>/prometheus/``:

* job ``edgefarm`` scrapes the farm service (``edgefarm serve``,
  ``127.0.0.1:9465``, which ``up`` starts too unless told not to): devices,
  running and finished sweeps, one target; a sweep's own exporter
  (``--sweep-exporter``) only when asked or without the farm service;
* the alert rules of ``orchestrator/alerts.py`` are written beside the
  config and loaded (``rule_files``);
* job ``devices`` scrapes each ssh device's own exporter, listed in a
  file_sd targets file written from the inventory: ``macmon serve`` on Macs
  (its default port, 9090), node_exporter (9100) elsewhere. Each target
  carries ``device`` and ``platform`` labels.

Nothing here waits with a bare sleep: readiness is ``/-/ready`` polled under
a deadline, and a process that dies first is reported with its log tail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from agents.pids import pid_alive
from orchestrator.deadline import Deadline
from orchestrator.errors import EdgefarmError
from orchestrator.exporter import SERVE_ADDR, parse_addr

__all__ = [
    "DEFAULT_LISTEN",
    "MACMON_PORT",
    "NODE_EXPORTER_PORT",
    "PrometheusMissing",
    "MonitorError",
    "MonitorSettings",
    "MonitorPaths",
    "find_prometheus",
    "device_targets",
    "render_config",
    "up",
    "down",
    "status",
    "wait_ready",
]

DEFAULT_LISTEN = "127.0.0.1:9090"
#: ``macmon serve`` listens here unless given ``--port`` (macmon's README).
MACMON_PORT = 9090
#: node_exporter's default port.
NODE_EXPORTER_PORT = 9100
INSTALL_HINT = ("install it with `sudo apt-get install prometheus` (Debian/Ubuntu) or "
                "`brew install prometheus` (macOS), or pass --prometheus PATH")


class MonitorError(EdgefarmError, RuntimeError):
    """Prometheus (or the store exporter) could not be started, stopped or asked."""


class PrometheusMissing(MonitorError):
    """No ``prometheus`` binary; the message says how to install one.

    The CLI exits 2 for it, as for bad input: the user must supply something.
    """

    exit_code = 2


@dataclass(frozen=True)
class MonitorPaths:
    """Where ``monitor`` keeps its files: all under ``<results-dir>/prometheus/``."""

    root: Path

    @classmethod
    def under(cls, results_dir: str | Path) -> MonitorPaths:
        return cls(Path(results_dir).resolve() / "prometheus")

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def targets(self) -> Path:
        return self.root / "targets" / "devices.json"

    @property
    def rules(self) -> Path:
        return self.root / "edgefarm.rules.yml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pid(self) -> Path:
        return self.root / "prometheus.pid"

    @property
    def log(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def state(self) -> Path:
        return self.root / "monitor.json"

    @property
    def serve_pid(self) -> Path:
        return self.root / "serve.pid"

    @property
    def serve_log(self) -> Path:
        return self.root / "serve.log"


@dataclass(frozen=True)
class MonitorSettings:
    """What ``monitor up`` runs; every field has the default the CLI shows."""

    results_dir: Path
    listen: str = DEFAULT_LISTEN
    scrape_interval_s: float = 5.0
    controller_targets: tuple[str, ...] = (SERVE_ADDR,)
    inventory: Path | None = None
    macmon_port: int = MACMON_PORT
    node_exporter_port: int = NODE_EXPORTER_PORT
    serve: bool = True
    serve_addr: str = SERVE_ADDR
    health_interval_s: float = 60.0
    prometheus: str | None = None
    ready_timeout_s: float = 30.0
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def find_prometheus(explicit: str | None = None) -> str:
    """Path of the prometheus binary, or ``PrometheusMissing`` with the install command."""
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise PrometheusMissing(f"prometheus binary {explicit!r} not found; {INSTALL_HINT}")
    found = shutil.which("prometheus")
    if found:
        return found
    for candidate in ("/usr/bin/prometheus", "/opt/homebrew/bin/prometheus",
                      "/usr/local/bin/prometheus"):
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PrometheusMissing(f"prometheus is not installed; {INSTALL_HINT}")


def device_targets(devices: Sequence[Any], *, macmon_port: int = MACMON_PORT,
                   node_exporter_port: int = NODE_EXPORTER_PORT) -> list[dict[str, Any]]:
    """file_sd entries for the devices' own exporters: ssh devices with a host only.

    A device's ``exporters`` list names them (port, path); without one, the
    platform's usual exporter is assumed (macmon on Macs, node_exporter
    elsewhere).

    Local devices are the controller itself, and a device without a host has
    nowhere to be scraped.
    """
    entries = []
    for d in devices:
        if d.transport != "ssh" or not d.host:
            continue
        host = f"[{d.host}]" if ":" in d.host else d.host
        listed = getattr(d, "exporters", None)
        if listed is None:  # the platform's usual exporter
            mac = d.platform == "apple-silicon"
            listed = [SimpleNamespace(name="macmon" if mac else "node_exporter",
                                      port=macmon_port if mac else node_exporter_port,
                                      path="/metrics")]
        for exporter in listed:
            labels = {"device": d.name, "platform": d.platform, "exporter": exporter.name}
            if exporter.path != "/metrics":
                labels["__metrics_path__"] = exporter.path
            entries.append({"targets": [f"{host}:{exporter.port}"], "labels": labels})
    return entries


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms" if seconds < 1 or seconds % 1 else f"{int(seconds)}s"


def render_config(*, scrape_interval_s: float, controller_targets: Sequence[str],
                  targets_file: Path, rules_file: Path | None = None) -> str:
    """The prometheus.yml ``monitor up`` writes."""
    interval = _duration(scrape_interval_s)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        **({"rule_files": [str(rules_file)]} if rules_file is not None else {}),
        "scrape_configs": [
            {"job_name": "edgefarm",
             "static_configs": [{"targets": list(controller_targets)}]},
            {"job_name": "devices",
             "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "30s"}]},
        ],
    }
    return "# Written by `edgefarm monitor up`; rewritten on every start.\n" + \
        yaml.safe_dump(config, sort_keys=False)


def _pid_alive(pid: int, expect: str) -> bool:
    """Is ``pid`` running and (where /proc tells) still the program we started?

    A pid file can outlive its process and the pid be reused; the command
    line tells ours from a stranger's.
    """
    if not pid_alive(pid):
        return False
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except FileNotFoundError:
        return True  # no /proc here (macOS): the pid is all there is to go by
    except OSError:
        return False
    return expect in text.decode(errors="replace")


def _read_pid(path: Path, expect: str) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid, expect) else None


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(url: str, deadline_s: float, *, process: subprocess.Popen | None = None,
               log_path: Path | None = None, what: str = "prometheus") -> None:
    """Poll ``url`` until it answers 200, the process dies, or the deadline passes."""
    deadline = Deadline(deadline_s)
    last = "no answer yet"
    delay = 0.05
    while True:
        if process is not None and process.poll() is not None:
            raise MonitorError(f"{what} exited with status {process.returncode} before it was "
                               f"ready; log {log_path}:\n{_tail(log_path) if log_path else ''}")
        try:
            code, _ = _http_get(url, timeout=1.0)
            if code == 200:
                return
            last = f"HTTP {code}"
        except OSError as exc:
            last = str(exc)
        if deadline.expired:
            raise MonitorError(f"{what} not ready at {url} after {deadline_s:.0f} s ({last}); "
                               f"log {log_path}:\n{_tail(log_path) if log_path else ''}")
        time.sleep(delay)  # a poll interval under the deadline, not a wait for readiness
        delay = min(delay * 2, 0.5)


def _refuse_taken(addr: str, what: str) -> None:
    """Fail before starting when something already listens on ``addr``.

    Otherwise the readiness check could be answered by that other process
    (another results directory's Prometheus, say) while ours exits on
    "address already in use".
    """
    host, port = parse_addr(addr)
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return
    raise MonitorError(f"cannot start {what} on {addr}: address already in use "
                       "(another Prometheus or exporter listens there; choose another address)")


def _spawn(argv: list[str], log_path: Path, pid_path: Path) -> subprocess.Popen:
    """Start ``argv`` detached (own session, output to a log) and record its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    pid_path.write_text(f"{proc.pid}\n")
    return proc


def _load_devices(inventory: Path | None) -> list[Any]:
    if inventory is None:
        return []
    from orchestrator.config.inventory import Inventory

    return list(Inventory.load(inventory).devices)


def up(settings: MonitorSettings) -> dict[str, Any]:
    """Start Prometheus (and the store exporter) unless running; return ``status()``.

    Idempotent: a Prometheus already running from this results directory is
    left alone (its config and targets file are rewritten and picked up on
    its next reload or start).
    """
    paths = MonitorPaths.under(settings.results_dir)
    binary = find_prometheus(settings.prometheus)
    for addr in (settings.listen, *settings.controller_targets, settings.serve_addr):
        parse_addr(addr)  # refuse a bad address before starting anything
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.targets.parent.mkdir(parents=True, exist_ok=True)
    targets = device_targets(_load_devices(settings.inventory), macmon_port=settings.macmon_port,
                             node_exporter_port=settings.node_exporter_port)
    tmp = paths.targets.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(targets, indent=2) + "\n")
    tmp.replace(paths.targets)  # file_sd may read at any moment: never half a file
    from orchestrator.alerts import render_rules

    paths.rules.write_text(render_rules())
    paths.config.write_text(render_config(
        scrape_interval_s=settings.scrape_interval_s,
        controller_targets=settings.controller_targets, targets_file=paths.targets,
        rules_file=paths.rules))

    url = f"http://{settings.listen}"
    if _read_pid(paths.pid, "prometheus") is None:
        _refuse_taken(settings.listen, "prometheus (--listen)")
        argv = [binary, f"--config.file={paths.config}", f"--storage.tsdb.path={paths.data}",
                f"--web.listen-address={settings.listen}", *settings.extra_args]
        proc = _spawn(argv, paths.log, paths.pid)
        try:
            wait_ready(f"{url}/-/ready", settings.ready_timeout_s, process=proc,
                       log_path=paths.log)
        except MonitorError:
            _terminate(proc.pid, "prometheus")
            paths.pid.unlink(missing_ok=True)
            raise
        paths.state.write_text(json.dumps({"url": url, "listen": settings.listen}) + "\n")
    else:
        # Running already: keep its address, and make it read the new config.
        url = _state(paths).get("url", url)
        pid = _read_pid(paths.pid, "prometheus")
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    if settings.serve and _read_pid(paths.serve_pid, "orchestrator.serve") is None:
        start_serve(settings.results_dir, settings.serve_addr, settings.ready_timeout_s,
                    inventory=settings.inventory, health_interval_s=settings.health_interval_s)
    return status(settings.results_dir)


def start_serve(results_dir: Path, addr: str, deadline_s: float = 30.0, *,
                inventory: Path | None = None, health_interval_s: float = 60.0) -> int:
    """Start the farm service (``edgefarm serve``) detached, for ``monitor up``; return its pid."""
    paths = MonitorPaths.under(results_dir)
    _refuse_taken(addr, "edgefarm serve (--serve-addr)")
    argv = [sys.executable, "-m", "orchestrator.serve",
            "--results-dir", str(Path(results_dir).resolve()), "--addr", addr,
            "--health-interval", f"{health_interval_s:g}"]
    if inventory is not None:
        argv += ["--inventory", str(Path(inventory).resolve())]
    proc = _spawn(argv, paths.serve_log, paths.serve_pid)
    try:
        wait_ready(f"http://{addr}/metrics", deadline_s, process=proc, log_path=paths.serve_log,
                   what="edgefarm serve")
    except MonitorError:
        _terminate(proc.pid, "orchestrator.serve")
        paths.serve_pid.unlink(missing_ok=True)
        raise
    state = _state(paths)
    state["serve_addr"] = addr
    paths.state.write_text(json.dumps(state) + "\n")
    return proc.pid


def _state(paths: MonitorPaths) -> dict[str, Any]:
    try:
        return json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}


def _terminate(pid: int, expect: str, timeout_s: float = 15.0) -> None:
    """SIGTERM, wait (polling under a deadline) for the process to go, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = Deadline(timeout_s)
    while not deadline.expired:
        _reap(pid)
        if not _pid_alive(pid, expect):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status when we are the parent (tests, same process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(results_dir: str | Path) -> list[str]:
    """Stop the store exporter and Prometheus started from ``results_dir``; say what stopped."""
    paths = MonitorPaths.under(results_dir)
    stopped = []
    for pid_path, expect, name in ((paths.serve_pid, "orchestrator.serve",
                                    "edgefarm serve"),
                                   (paths.pid, "prometheus", "prometheus")):
        pid = _read_pid(pid_path, expect)
        if pid is not None:
            _terminate(pid, expect)
            stopped.append(f"{name} (pid {pid})")
        pid_path.unlink(missing_ok=True)
    return stopped


def status(results_dir: str | Path) -> dict[str, Any]:
    """Whether Prometheus runs, its URL, and the health of every scrape target."""
    paths = MonitorPaths.under(results_dir)
    pid = _read_pid(paths.pid, "prometheus")
    state = _state(paths)
    serve_pid = _read_pid(paths.serve_pid, "orchestrator.serve")
    out: dict[str, Any] = {"running": pid is not None, "pid": pid, "url": state.get("url"),
                           "serve": {"running": serve_pid is not None, "pid": serve_pid,
                                     "addr": state.get("serve_addr")},
                           "targets": [], "error": None}
    if pid is None or not state.get("url"):
        return out
    try:
        code, body = _http_get(f"{state['url']}/api/v1/targets?state=active", timeout=5.0)
        if code != 200:
            raise MonitorError(f"HTTP {code}")
        active = json.loads(body)["data"]["activeTargets"]
    except (OSError, ValueError, KeyError, MonitorError) as exc:
        out["error"] = f"could not read targets from {state['url']}: {exc}"
        return out
    out["targets"] = [{"job": t["labels"].get("job"), "url": t.get("scrapeUrl"),
                       "device": t["labels"].get("device"), "health": t.get("health"),
                       "last_error": t.get("lastError") or None}
                      for t in sorted(active, key=lambda t: (t["labels"].get("job", ""),
                                                             t.get("scrapeUrl", "")))]
    return out
