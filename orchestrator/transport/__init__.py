"""Transports: how the controller reaches a device (``local`` now, ``ssh`` next)."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.transport.base import CommandResult, JobStatus, Transport

__all__ = ["CommandResult", "JobStatus", "Transport", "make_transport", "KNOWN"]

KNOWN = ("local", "ssh")


def make_transport(device: Any) -> Transport:
    """Build the transport an inventory device names."""
    if device.transport == "local":
        from orchestrator.transport.local import LocalTransport

        return LocalTransport(device)
    if device.transport == "ssh":
        raise NotImplementedError(
            f"device {device.name}: the ssh transport is not available in this version yet; "
            "use transport: local")
    raise ConfigError(f"device {device.name}: unknown transport {device.transport!r} "
                             f"(known: {', '.join(KNOWN)})")
