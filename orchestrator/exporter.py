"""The controller's ``/metrics`` endpoint: an HTTP server over an injected registry.

Two exporters exist, on two addresses, so they can run side by side without
ever exporting the same series twice:

* the **sweep exporter** (``sweep run --metrics-addr``, default
  ``127.0.0.1:9464``): ``LiveMetrics`` plus ``StoreCollector`` restricted to
  the sweep being run; it lives as long as the sweep, plus an optional grace
  period (``--metrics-linger``) so a last scrape sees the final values;
* the **store exporter** (``edgefarm serve``, default ``127.0.0.1:9465``):
  ``StoreCollector`` over the last *finished* sweep, long-lived, for
  dashboards between sweeps. ``edgefarm monitor up`` starts it by default.

Both bind loopback unless told otherwise: a controller on a laptop should not
open ports to the lab by accident.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, start_http_server
from prometheus_client.registry import CollectorRegistry

from orchestrator.deadline import Deadline
from orchestrator.errors import EdgefarmError, StoreError
from orchestrator.metrics import LiveMetrics, MultiProgress, StoreCollector
from orchestrator.store import DB_NAME, Store

__all__ = [
    "AddressError",
    "DEFAULT_ADDR",
    "SERVE_ADDR",
    "ExporterError",
    "MultiProgress",
    "SweepExporter",
    "parse_addr",
    "start_exporter",
    "start_text_exporter",
    "stop_exporter",
    "exporter_url",
    "start_sweep_exporter",
    "serve_registry",
]

log = logging.getLogger("edgefarm.exporter")

#: Where ``sweep run --metrics-addr`` serves by default (the port
#: Prometheus' exporter registry lists as free for custom exporters).
DEFAULT_ADDR = "127.0.0.1:9464"
#: Where ``edgefarm serve`` serves by default.
SERVE_ADDR = "127.0.0.1:9465"


class ExporterError(EdgefarmError, OSError):
    """The metrics endpoint could not be started (bad address, port in use)."""


class AddressError(ExporterError, ValueError):
    """A metrics address that is not ``host:port`` (bad input, unlike a busy port)."""

    exit_code = 2


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` -> ``(host, port)``; ``[::1]:9464`` for IPv6; ``:9464`` means loopback."""
    text = addr.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise AddressError(f"metrics address {addr!r}: expected host:port, e.g. {DEFAULT_ADDR}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise AddressError(f"metrics address {addr!r}: port {port_text!r} is not a number")\
            from None
    if not 0 <= port <= 65535:
        raise AddressError(f"metrics address {addr!r}: port {port} is out of range")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked(addr: str) -> tuple[str, int]:
    """``addr`` parsed; a warning when it is not loopback."""
    host, port = parse_addr(addr)
    if not _is_loopback(host):
        log.warning("metrics exporter listens on %s: reachable from other machines", host)
    return host, port


def _cannot_serve(addr: str, exc: OSError) -> ExporterError:
    return ExporterError(f"cannot serve metrics on {addr}: {exc.strerror or exc}"
                         " (another sweep or `edgefarm serve` may hold that address;"
                         " choose another with --metrics-addr)")


def start_exporter(addr: str = DEFAULT_ADDR, *,
                   registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` at ``http://addr/metrics`` from a daemon thread.

    Port 0 picks a free port (read it back with ``exporter_url``). Returns
    client_python's ``(server, thread)``; stop with ``stop_exporter``.
    """
    host, port = _checked(addr)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise _cannot_serve(addr, exc) from exc
    thread.name = f"edgefarm-exporter-{port or server.server_address[1]}"
    return server, thread


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape (as client_python's own server), daemon threads."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def start_text_exporter(addr: str, render: Callable[[], bytes]
                        ) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``render()`` (Prometheus text format 0.0.4) at ``http://addr/metrics``.

    For a service that writes its exposition itself (the farm service,
    ``farm/collector.py``); ``start_exporter`` serves a registry through
    client_python. Same address rules and errors as ``start_exporter``.
    """
    host, port = _checked(addr)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics is here\n"]
        body = render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                  ("Content-Length", str(len(body)))])
        return [body]

    try:
        server = make_server(host, port, app, server_class=_ThreadingWSGIServer,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise _cannot_serve(addr, exc) from exc
    thread = threading.Thread(target=server.serve_forever, daemon=True,
                              name=f"edgefarm-exporter-{server.server_address[1]}")
    thread.start()
    return server, thread


def stop_exporter(server: WSGIServer, thread: threading.Thread, timeout_s: float = 5.0) -> None:
    """Stop serving and release the port."""
    server.shutdown()
    server.server_close()
    thread.join(timeout_s)


def exporter_url(server: WSGIServer) -> str:
    """``http://host:port/metrics`` of a running exporter (with the port it really got)."""
    address, port = server.server_address[:2]
    host = address.decode() if isinstance(address, bytes) else str(address)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/metrics"


class SweepExporter(NamedTuple):
    """A running sweep exporter: ``live`` goes to run_sweep (in a MultiProgress); then stop()."""

    live: LiveMetrics
    stop: Callable[[], None]
    url: str


def _platforms(results_dir: Path, sweep_id: str | None) -> dict[str, str]:
    """Device -> platform from the sweep's stored inventory (the ``device_up`` label)."""
    if sweep_id is None or not (results_dir / DB_NAME).exists():
        return {}
    store = Store(results_dir, read_only=True)
    try:
        inventory = json.loads(store.sweep(sweep_id)["inventory_json"])
        planned = {r["device"] for r in store.jobs(sweep_id)}
    except StoreError:
        return {}  # not created yet: platforms show as "unknown"
    finally:
        store.close()
    return {d["name"]: d.get("platform", "unknown") for d in inventory.get("devices", [])
            if d["name"] in planned}


def start_sweep_exporter(results_dir: str | Path, addr: str = DEFAULT_ADDR, *,
                         sweep_id: str | None = None, linger_s: float = 0.0) -> SweepExporter:
    """Start the exporter a sweep run serves: live metrics plus that sweep's store metrics.

    ``stop()`` keeps serving for ``linger_s`` seconds first, so a Prometheus
    scraping every few seconds sees the sweep's final values; Ctrl-C ends
    the wait early. Without ``sweep_id`` the store part exports the running
    and last finished sweeps.
    """
    results_dir = Path(results_dir)
    registry = CollectorRegistry()
    live = LiveMetrics(registry, platforms=_platforms(results_dir, sweep_id))
    StoreCollector(results_dir, registry=registry, sweep_id=sweep_id)
    server, thread = start_exporter(addr, registry=registry)
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        try:
            if linger_s > 0:
                log.info("metrics stay up %.0f s more at %s", linger_s, exporter_url(server))
                deadline = Deadline(linger_s)
                while not deadline.expired:
                    stopped.wait(deadline.clamp(0.5))  # short waits: Ctrl-C lands promptly
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the grace period, not the (finished) sweep
        finally:
            stopped.set()
            stop_exporter(server, thread)

    return SweepExporter(live, stop, exporter_url(server))


def serve_registry(results_dir: str | Path) -> CollectorRegistry:
    """The registry ``edgefarm serve`` exports: the last finished sweep, from the store."""
    registry = CollectorRegistry()
    StoreCollector(results_dir, registry=registry, include_running=False)
    return registry
