"""Host-key trust for ssh devices: fetch a device's key, show it, record it.

``edgefarm inventory trust NAME`` is the only way a key enters edgefarm's
known_hosts: the user sees the fingerprint (compare it with
``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`` on the device) before it
is written. A key that differs from a recorded one, or a key of another type
for a host that already has one, is never recorded here.
"""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from orchestrator.errors import HostKeyError, UnreachableError
from orchestrator.transport.ssh import SshTransport, fingerprint, host_key_name


@dataclass(frozen=True)
class ServerKey:
    """A device's host key as the server presented it."""

    name: str  # known_hosts host field: host or [host]:port
    key: paramiko.PKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    def known_hosts_line(self) -> str:
        return f"{self.name} {self.key.get_name()} {self.key.get_base64()}"


def fetch_server_key(device: Any, known_hosts: str | None, timeout: float = 10.0,
                     known_hosts_lines: tuple[str, ...] | None = None) -> ServerKey:
    """Ask the device's sshd for its host key (no login; through proxy_jump if set).

    The jump hosts, if any, must be trusted already: by ``known_hosts``, or by
    ``known_hosts_lines`` where the file is on another machine (a site gateway).
    """
    sock: Any
    where = f"{device.host}:{device.port}"
    try:
        if device.proxy_jump:
            jump = SshTransport(device, known_hosts=known_hosts,
                                known_hosts_lines=known_hosts_lines)._jump_chain()
            jump.open()
            sock = jump.transport.open_channel("direct-tcpip", (device.host, device.port),
                                               ("127.0.0.1", 0))
        else:
            sock = socket.create_connection((device.host, device.port), timeout=timeout)
        transport = paramiko.Transport(sock)
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        transport.close()
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise UnreachableError(f"device {device.name}: cannot reach {where}: {exc}") from None
    return ServerKey(host_key_name(device.host, device.port), key)


def server_key_from_line(line: str) -> ServerKey:
    """A ``ServerKey`` back from its known_hosts line (what a site gateway sends)."""
    entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
    if entry is None or not entry.hostnames:
        raise ValueError(f"not a known_hosts line: {line!r}")
    return ServerKey(entry.hostnames[0], entry.key)


def recorded_keys(path: Path, name: str) -> list[paramiko.PKey]:
    """Keys known_hosts already holds for ``name``."""
    if not path.exists():
        return []
    keys = paramiko.HostKeys(str(path)).lookup(name)
    return list(keys.values()) if keys else []


def record(path: Path, server: ServerKey) -> str:
    """Write the key to known_hosts; return 'added' or 'already trusted'.

    Refuses (``HostKeyError``) when any other key is recorded for the host: a
    different key of the same type, or a key of another type. The second is
    refused too because a host that stops offering the type it was trusted
    with looks exactly like an impostor that holds only a key of another type;
    OpenSSH refuses it as well. Either way the user removes the old key first.
    """
    known_keys = recorded_keys(path, server.name)
    for known in known_keys:
        if known.get_name() == server.key.get_name() and known.asbytes() == server.key.asbytes():
            return "already trusted"
    remove = (f"If the device was reinstalled or its keys regenerated, remove the old key "
              f"first: ssh-keygen -R {shlex.quote(server.name)} -f {shlex.quote(str(path))}")
    for known in known_keys:
        if known.get_name() == server.key.get_name():
            raise HostKeyError(
                f"{server.name} presents {server.fingerprint}, but known_hosts records "
                f"{fingerprint(known)} for it; refusing to replace it. {remove}")
    if known_keys:
        known = known_keys[0]
        raise HostKeyError(
            f"{server.name} presents a {server.key.get_name()} key ({server.fingerprint}), "
            f"but known_hosts already trusts a {known.get_name()} key for it "
            f"({fingerprint(known)}); refusing to add a key of another type. {remove}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(server.known_hosts_line() + "\n")
    return "added"
