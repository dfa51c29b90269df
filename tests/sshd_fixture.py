"""Real OpenSSH servers on 127.0.0.1 as test devices.

Each ``SshdDevice`` is a Debian ``sshd`` started with its own generated host
key, random port and authorized_keys, so several run at once as several
devices. A missing sshd fails the test (CI installs openssh-server through
``make test``); it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "") -> str:
    """Write a key pair of type ``kind`` at ``path``; return the public key line."""
    path.unlink(missing_ok=True)
    (path.with_suffix(".pub") if path.suffix else Path(f"{path}.pub")).unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-f", str(path)],
                   check=True, capture_output=True)
    return (path.with_suffix(".pub") if path.suffix else Path(f"{path}.pub")).read_text().strip()


@dataclass
class SshdDevice:
    """One sshd 'device'; ``stop()``/``start()`` simulate a dropped and restored link."""

    name: str
    root: Path
    port: int
    client_key: Path
    host_pub: str = ""
    proc: subprocess.Popen[bytes] | None = None
    output: list[str] = field(default_factory=list)
    sftp: bool = True  # False: no ``Subsystem sftp`` line (minimal images, dropbear)
    netns: str | None = None  # run inside this network namespace (tests/netns_fixture.py)

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    def known_hosts_line(self) -> str:
        kind, blob = self.host_pub.split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}"

    def write_config(self) -> Path:
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.root / 'host_key'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            f"PidFile {self.root / 'sshd.pid'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            *(["Subsystem sftp internal-sftp"] if self.sftp else []),
            "LogLevel ERROR",
            "MaxSessions 64",
            "MaxStartups 100",
        ]) + "\n")
        return config

    def start(self, timeout: float = 20) -> None:
        if not Path(SSHD).exists():
            raise AssertionError("sshd not found: install openssh-server (make test does)")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen([*prefix, SSHD, "-D", "-e", "-f", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd {self.name} exited: {' '.join(self.output)}")
            if self.netns:  # its loopback is the namespace's: ask from in there
                probe = subprocess.run(
                    [*prefix, sys.executable, "-c",
                     "import socket,sys; s=socket.create_connection(('127.0.0.1', "
                     f"{self.port}), 0.5); sys.exit(0 if s.recv(4).startswith(b'SSH-') else 1)"],
                    capture_output=True)
                if probe.returncode == 0:
                    return
                time.sleep(0.1)
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"sshd {self.name} not ready: {' '.join(self.output)}")

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(f"[sshd {self.name}] {line.decode(errors='replace').rstrip()}")

    def kill(self) -> None:
        """Kill the listener and every session it serves: the link drops mid-job.

        The agent started through it is not killed: it double-forked into its
        own session, as on a real device.
        """
        if self.proc is None:
            return
        sessions = _children(self.proc.pid)
        for pid in [self.proc.pid, *sessions]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.kill()

    def rekey(self, kind: str) -> None:
        """Restart with a new host key of type ``kind`` only (a reinstalled device)."""
        self.kill()
        self.host_pub = keygen(self.root / "host_key", kind)
        self.start()


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` that are sshd processes (sessions), via /proc."""
    found: list[int] = []
    parents = {pid}
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            try:
                stat = (entry / "stat").read_text()
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in parents and comm.startswith("sshd"):
                found.append(int(entry.name))
                parents.add(int(entry.name))
                changed = True
    return found


def make_device(base: Path, name: str, client_key: Path, client_pub: str,
                sftp: bool = True, netns: str | None = None) -> SshdDevice:
    root = base / f"sshd-{name}"
    root.mkdir(parents=True)
    host_pub = keygen(root / "host_key")
    (root / "authorized_keys").write_text(client_pub + "\n")
    device = SshdDevice(name=name, root=root, port=free_port(), client_key=client_key,
                        host_pub=host_pub, sftp=sftp, netns=netns)
    device.start()
    return device
