"""What the controller tells every transport and gateway of a sweep, typed.

These travel to Ray gateways (pickled), so they are small frozen dataclasses
of plain values, not dictionaries whose keys each reader must guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Jobs running at once over the whole farm, unless told otherwise (``sweep run
#: --max-running``): each holds an SSH session and a thread in its site's
#: gateway, and connection set-up (key exchange) is CPU work.
DEFAULT_MAX_RUNNING = 256


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
    #: The content of the controller's known_hosts, for a gateway on another Ray
    #: node: there ``known_hosts`` names a file on the controller that does not
    #: exist, so the keys travel as lines (``with_known_hosts_content``). None:
    #: read the ``known_hosts`` file where the transport runs.
    known_hosts_lines: tuple[str, ...] | None = None

    def with_known_hosts_content(self) -> TransportSettings:
        """These settings with the controller's known_hosts read into ``known_hosts_lines``.

        Called on the controller before settings cross to a site's node. A
        missing file gives no lines (every ssh host then is unknown); settings
        that carry lines already are returned as they are.
        """
        from orchestrator.transport.ssh import known_hosts_path

        if self.known_hosts_lines is not None:
            return self

        path = known_hosts_path(self.known_hosts)
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        lines = tuple(line for line in text.splitlines()
                      if line.strip() and not line.lstrip().startswith("#"))
        return replace(self, known_hosts_lines=lines)


@dataclass(frozen=True)
class GatewaySettings:
    """What a site's gateway needs besides its devices and the agent bundle."""

    transport: TransportSettings = field(default_factory=TransportSettings)
    #: Lease owner written on the devices (``host:pid:sweep``); None: this process.
    owner: str | None = None
    #: Seconds a lease stays valid without a refresh.
    lease_ttl_s: float = 120.0
    #: SSH connections one gateway sets up at once (key exchange and login are
    #: CPU work on the gateway's node; a site of hundreds of cold devices
    #: would otherwise start them all in the same second).
    max_connects: int = 16
