"""Device operations through site gateways (``orchestrator/site_ops.py``), on a real Ray.

These run on the session's single-node Ray (sites ``local`` and ``lab``
declared on this machine) against real sshd devices on 127.0.0.1: the
gateway actors are real, the bundle and known_hosts reach them as content,
and the controller's known_hosts *file* is removed before they start, so a
gateway that read it instead of the lines it was sent fails. A multi-node
cluster with devices reachable only from their site's node (network
namespaces) is the next step of issue 13 (docs/sites.md, "Not there yet").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import write_ssh_inventory

from orchestrator.config.inventory import Inventory
from orchestrator.transport import TransportSettings


def test_probe_and_trust_go_through_the_site_gateway(tmp_path: Path, sshd_devices: Any,
                                                     ray_cluster: Any) -> None:
    from orchestrator.site_ops import host_key_via_gateway, probe_via_gateways

    first, second = sshd_devices("lab-a", "lab-b")
    inv, known = write_ssh_inventory(tmp_path, [first, second], site="lab")
    devices = list(Inventory.load(inv).devices)
    settings = TransportSettings(known_hosts=str(known)).with_known_hosts_content()
    known.rename(tmp_path / "moved-away")  # the gateways must use the lines they were sent
    results = probe_via_gateways(devices, "cluster", settings, tmp_path / "agent")
    assert [r.device for r in results] == ["lab-a", "lab-b"]
    assert all(r.reachable and r.error is None for r in results), results
    assert all(r.facts.get("agent_version") for r in results)
    # The bundle was written to the gateway's node cache, checked by hash.
    assert list((Path("~/.cache/edgefarm/bundles").expanduser()).glob("agent-*.pyz"))

    server = host_key_via_gateway(devices[0], "cluster", settings, tmp_path / "agent")
    assert server.known_hosts_line() == first.known_hosts_line()
