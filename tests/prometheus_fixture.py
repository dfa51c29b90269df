"""A real Prometheus for tests: loopback, a free port, a 1 s scrape, stopped with SIGTERM.

A missing binary fails the test with the install command (CI installs the
Debian package through ``make test``); it is never a skip.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

INSTALL_HINT = ("the prometheus binary is missing: `sudo apt-get install prometheus` "
                "(Debian/Ubuntu) or `brew install prometheus` (macOS); `make test` installs it")


def free_port() -> int:
    """A port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


class Prometheus:
    """A running Prometheus: ``url``, ``query``, ``query_range``, ``wait_for``, ``stop``."""

    def __init__(self, proc: subprocess.Popen, url: str, output: list[str]) -> None:
        self.proc = proc
        self.url = url
        self.output = output

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("/api/v1/query", **params)
        return data["result"] if data["resultType"] == "vector" else [data]

    def query_range(self, expr: str, start: float, end: float,
                    step: float = 1.0) -> list[dict[str, Any]]:
        return self.api("/api/v1/query_range", query=expr, start=start, end=end,
                        step=step)["result"]

    def wait_for(self, expr: str, deadline_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a series (scrapes are 1 s apart)."""
        deadline = time.monotonic() + deadline_s
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"no series for {expr!r} after {deadline_s} s; "
                                     f"prometheus said:\n" + "\n".join(self.output[-20:]))
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _drain(stream: Any, output: list[str]) -> None:
    """Keep reading the child's output so its pipe never fills; keep lines for errors."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        output.append(f"prometheus| {line}")
    stream.close()


def _start(tmp: Path, targets: Sequence[str], scrape_interval: str) -> Prometheus:
    binary = prometheus_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": scrape_interval,
                         "evaluation_interval": scrape_interval},
              "scrape_configs": [{"job_name": "edgefarm",
                                  "static_configs": [{"targets": list(targets)}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    output: list[str] = []
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threading.Thread(target=_drain, args=(proc.stdout, output), daemon=True).start()
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", output)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode} before ready:\n"
                               + "\n".join(output[-20:]))
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return prom
        except OSError:
            pass
        if time.monotonic() >= deadline:
            prom.stop()
            raise RuntimeError("prometheus not ready after 30 s:\n" + "\n".join(output[-20:]))
        time.sleep(0.1)


@contextmanager
def running_prometheus(tmp: Path, targets: Sequence[str],
                       scrape_interval: str = "1s") -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (job ``edgefarm``) every ``scrape_interval``."""
    # The free port may be taken between probing and binding; try a few.
    last: Exception | None = None
    for attempt in range(3):
        try:
            prom = _start(tmp / f"prom{attempt}", targets, scrape_interval)
            break
        except RuntimeError as exc:
            if "address already in use" not in str(exc):
                raise
            last = exc
    else:
        raise RuntimeError(f"no free port for prometheus: {last}")
    try:
        yield prom
    finally:
        prom.stop()
