"""Transports: how the controller reaches a device (``local``, ``ssh``); see base.py."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.transport.base import CommandResult, LinkDown, Stream, Transport
from orchestrator.transport.settings import GatewaySettings, TransportSettings

__all__ = ["CommandResult", "GatewaySettings", "KNOWN", "LinkDown", "Stream", "Transport",
           "TransportSettings", "make_transport"]

KNOWN = ("local", "ssh")


def make_transport(device: Any, settings: TransportSettings | None = None) -> Transport:
    """Build the transport an inventory device names.

    ``settings`` are the controller's transport options (for ssh: the
    known_hosts file and how long a device may stay unreachable).
    """
    settings = settings or TransportSettings()
    if device.transport == "local":
        from orchestrator.transport.local import LocalTransport

        return LocalTransport(device)
    if device.transport == "ssh":
        from orchestrator.transport.ssh import SshTransport

        return SshTransport(device, known_hosts=settings.known_hosts,
                            connect_timeout=settings.connect_timeout_s,
                            unreachable_after_s=settings.unreachable_after_s,
                            inventory_path=settings.inventory_path,
                            known_hosts_lines=settings.known_hosts_lines)
    raise ConfigError(f"device {device.name}: unknown transport {device.transport!r} "
                             f"(known: {', '.join(KNOWN)})")
