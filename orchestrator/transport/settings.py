"""What the controller tells every transport and gateway of a sweep, typed.

These travel to Ray gateways (pickled), so they are small frozen dataclasses
of plain values, not dictionaries whose keys each reader must guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TransportSettings:
    """How the controller reaches devices; the same for every device of a sweep."""

    #: edgefarm's known_hosts file for ssh devices (None: ``$EDGEFARM_KNOWN_HOSTS`` or the default).
    known_hosts: str | None = None
    #: Seconds an ssh device may stay unreachable before its job fails as ``unreachable``.
    unreachable_after_s: float = 120.0
    #: Seconds one TCP connect, banner or authentication step may take.
    connect_timeout_s: float = 10.0
    #: The inventory file the user named, for the ``inventory trust`` command
    #: that host-key errors advise (None: the command's default).
    inventory_path: str | None = None


@dataclass(frozen=True)
class GatewaySettings:
    """What a site's gateway needs besides its devices and the agent bundle."""

    transport: TransportSettings = field(default_factory=TransportSettings)
    #: Lease owner written on the devices (``host:pid:sweep``); None: this process.
    owner: str | None = None
    #: Seconds a lease stays valid without a refresh.
    lease_ttl_s: float = 120.0
