"""Transports: how the controller reaches a device (``local``, ``ssh``); see base.py."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.transport.base import CommandResult, LinkDown, Stream, Transport

__all__ = ["CommandResult", "LinkDown", "Stream", "Transport", "make_transport", "KNOWN"]

KNOWN = ("local", "ssh")


def make_transport(device: Any, settings: dict[str, Any] | None = None) -> Transport:
    """Build the transport an inventory device names.

    ``settings`` are the controller's transport options (for ssh: the
    known_hosts file and how long a device may stay unreachable).
    """
    settings = settings or {}
    if device.transport == "local":
        from orchestrator.transport.local import LocalTransport

        return LocalTransport(device)
    if device.transport == "ssh":
        from orchestrator.transport.ssh import SshTransport

        return SshTransport(device, known_hosts=settings.get("known_hosts"),
                            unreachable_after_s=float(settings.get("unreachable_after_s", 120)))
    raise ConfigError(f"device {device.name}: unknown transport {device.transport!r} "
                             f"(known: {', '.join(KNOWN)})")
