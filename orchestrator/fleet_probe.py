"""``edgefarm inventory probe``: ask every device what it is, in parallel.

Each device gets its own thread: connect, make sure the agent is there, run
``agent probe``. An unreachable or misconfigured device becomes a row with
its reason; nothing here raises for one device's trouble.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.agent_client import AgentClient
from orchestrator.bundle import build
from orchestrator.errors import EdgefarmError
from orchestrator.transport import TransportSettings, make_transport


@dataclass
class ProbeResult:
    """What one device said (``facts``) or why it could not say it (``error``)."""

    device: str
    reachable: bool
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def ask_agent(device: Any, bundle_path: str, sha256: str, settings: TransportSettings,
              ask: Callable[[AgentClient], dict[str, Any]]
              ) -> tuple[bool, dict[str, Any], str | None]:
    """Connect, make sure the agent is there, ``ask`` it; close. Never raises for the device.

    Returns ``(reachable, answer, error)``: a failure becomes its reason, so
    one device's trouble cannot hide the others' answers.
    """
    transport = None
    try:
        transport = make_transport(device, settings)
        transport.connect()
        return True, ask(AgentClient(transport, device.work_dir, bundle_path, sha256)), None
    except Exception as exc:  # one device's surprise must not hide the others
        reachable = transport is not None and transport.state == "connected"
        error = str(exc) if isinstance(exc, EdgefarmError) else f"{type(exc).__name__}: {exc}"
        return reachable, {}, error
    finally:
        if transport is not None and transport.state == "connected":
            transport.close()


def probe_device(device: Any, bundle_path: str, sha256: str,
                 settings: TransportSettings) -> ProbeResult:
    reachable, facts, error = ask_agent(device, bundle_path, sha256, settings,
                                        lambda client: client.probe(device.llama_bench))
    return ProbeResult(device.name, reachable, facts=facts, error=error)


def probe_all(devices: Iterable[Any], cache_dir: Path, settings: TransportSettings,
              workers: int = 32) -> list[ProbeResult]:
    """Probe ``devices`` in parallel; results in inventory order."""
    devices = list(devices)
    bundle = build(cache_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(devices)))) as pool:
        futures = [pool.submit(probe_device, d, str(bundle.path), bundle.sha256, settings)
                   for d in devices]
        return [f.result() for f in futures]
