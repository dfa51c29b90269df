"""One-off device operations through each site's gateway, for commands outside a sweep.

``inventory probe``, ``inventory trust`` and ``sweep cancel`` (for a sweep no
controller runs) must reach devices that only their site's Ray node can
reach. With ``--ray-address`` they start one gateway actor per site on the
cluster, exactly as a sweep does (``scheduler.check_site_nodes``, the bundle
and known_hosts as content), ask it, and stop it. Without a cluster address
everything runs on this machine and the commands connect directly, as
before: a single-node Ray would place every gateway here anyway.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.fleet_probe import ProbeResult
from orchestrator.transport import GatewaySettings, TransportSettings

__all__ = ["cancel_via_gateways", "host_key_via_gateway", "probe_via_gateways",
           "site_gateways"]


@contextmanager
def site_gateways(devices: Sequence[Any], ray_address: str, settings: TransportSettings,
                  cache_dir: Path, purpose: str) -> Iterator[dict[str, Any]]:
    """A gateway actor for every site of ``devices`` on the cluster; killed on exit."""
    import ray

    from orchestrator.scheduler import start_site_gateways

    owner = f"{socket.gethostname()}:{os.getpid()}:{purpose}"
    actors = start_site_gateways(list(devices), ray_address,
                                 GatewaySettings(settings, owner=owner), cache_dir)
    try:
        yield actors
    finally:
        for actor in actors.values():
            ray.kill(actor)


def probe_via_gateways(devices: Sequence[Any], ray_address: str, settings: TransportSettings,
                       cache_dir: Path) -> list[ProbeResult]:
    """``agent probe`` on every device, from its site's node; results in the given order."""
    import ray

    with site_gateways(devices, ray_address, settings, cache_dir, "probe") as actors:
        return list(ray.get([actors[d.site].probe.remote(d.name) for d in devices]))


def host_key_via_gateway(device: Any, ray_address: str, settings: TransportSettings,
                         cache_dir: Path) -> Any:
    """The device's host key as its site's node sees it (a ``hostkeys.ServerKey``)."""
    import ray

    from orchestrator.transport.hostkeys import server_key_from_line

    with site_gateways([device], ray_address, settings, cache_dir, "trust") as actors:
        return server_key_from_line(ray.get(actors[device.site].host_key.remote(device.name)))


def cancel_via_gateways(devices: dict[str, Any], job_dirs: dict[str, list[str]],
                        ray_address: str, settings: TransportSettings, cache_dir: Path,
                        owner: str) -> tuple[int, list[str]]:
    """Stop ``job_dirs`` (by device) from each device's site node; (stopped, problems)."""
    import ray

    chosen = [devices[name] for name in job_dirs]
    stopped, problems = 0, []
    with site_gateways(chosen, ray_address, settings, cache_dir, "cancel") as actors:
        refs = {name: actors[devices[name].site].cancel_jobs.remote(name, dirs, owner)
                for name, dirs in job_dirs.items()}
        for name, ref in refs.items():
            try:
                stopped += int(ray.get(ref))
            except Exception as exc:  # ray wraps the device's error; its text says why
                cause = getattr(exc, "cause", None) or exc
                problems.append(f"{name}: {cause}")
    return stopped, problems
