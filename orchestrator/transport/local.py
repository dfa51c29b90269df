"""The ``local`` transport: this machine as a device.

It follows the same job protocol as ssh: the agent zipapp is copied into the
device's work directory, started detached in its own session, and followed
through its event log, so local runs exercise the code path real devices use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.transport.base import (
    CommandResult,
    JobStatus,
    LeaseRequest,
    Transport,
    check_connected,
    parse_event_lines,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


class LocalTransport(Transport):
    """Runs the agent on this machine, detached, in the device's work_dir."""

    name = "local"

    def __init__(self, device: Any) -> None:
        super().__init__(device.name)
        self.device = device
        self.work_dir = Path(os.path.expanduser(device.work_dir))
        # A local device whose inventory entry names no interpreter uses the
        # controller's own: it has the xllamacpp wheel that edgefarm installs.
        self.python = device.python if "python" in device.model_fields_set else sys.executable
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @check_connected
    def run(self, argv: list[str], *, timeout: float, stdin: bytes | None = None
            ) -> CommandResult:
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                              input=stdin)
        return CommandResult(proc.returncode, proc.stdout.decode(errors="replace"),
                             proc.stderr.decode(errors="replace"), time.monotonic() - start)

    @check_connected
    def put(self, local: str, remote: str) -> None:
        target = Path(os.path.expanduser(remote))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)

    @check_connected
    def get(self, remote: str, local: str) -> None:
        shutil.copyfile(os.path.expanduser(remote), local)

    @check_connected
    def ensure_agent(self, bundle_path: str, sha256: str) -> str:
        target = self.work_dir / "agent" / Path(bundle_path).name
        if not target.exists():
            self.put(bundle_path, str(target))
        return str(target)

    def job_dir(self, sweep_id: str, job_key: str, attempt: int) -> str:
        return str(self.work_dir / "jobs" / sweep_id / f"{job_key}-a{attempt}")

    @check_connected
    def start_job(self, job_dir: str, spec: dict[str, Any], agent_path: str,
                  lease: LeaseRequest | None = None) -> None:
        if lease is not None and not self._lease_before_start(job_dir, agent_path, lease):
            return  # held by another controller: run_attempt reads the answer
        path = Path(job_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "job.json").write_text(json.dumps(spec, sort_keys=True))
        with open(path / "agent.stderr", "ab") as err:
            child = subprocess.Popen(
                [self.python, agent_path, "run", "--quiet", str(path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True,  # survives the controller, like nohup/setsid
                cwd=str(path), env=self._agent_env())
        self._children[job_dir] = child

    def _agent_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the agent runs from its zipapp alone
        return env

    @check_connected
    def read_events(self, job_dir: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        log = Path(job_dir) / "events.jsonl"
        try:
            with open(log, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], offset
        events, used = parse_event_lines(data)
        return events, offset + used

    @check_connected
    def job_status(self, job_dir: str) -> JobStatus:
        child = self._children.get(job_dir)
        if child is not None:
            code = child.poll()
            return JobStatus("running" if code is None else "exited", code, child.pid)
        pid_file = Path(job_dir) / "agent.pid"
        if not pid_file.exists():
            return JobStatus("absent")
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            return JobStatus("exited")
        return JobStatus("running" if _pid_alive(pid) else "exited", None, pid)

    @check_connected
    def fetch_log(self, job_dir: str) -> str:
        try:
            return (Path(job_dir) / "agent.stderr").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @check_connected
    def cancel(self, job_dir: str) -> None:
        status = self.job_status(job_dir)
        if status.state != "running" or status.pid is None:
            return
        try:
            group = os.getpgid(status.pid)
        except ProcessLookupError:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.job_status(job_dir).state != "running":
                    return
                time.sleep(0.05)
