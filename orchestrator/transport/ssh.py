"""The ``ssh`` transport: a device reached with fabric (paramiko underneath).

Design points, each for a reason:

* **One connection per device**, opened once and reused by every command;
  an exec on a warm connection costs ~0.1 s of server-side session set-up,
  which is why the agent client spends one exec per job (``agent start
  --follow``) and lets the agent's absence be discovered by that exec rather
  than checked beforehand.
* **``~`` is the remote shell's.** An argv element starting with ``~/`` is
  written ``"$HOME"/'rest'`` for the shell, so no round trip asks the device
  where home is (SFTP paths are expanded once, from the SFTP session).
* **A dropped link** ends every open stream without an exit status; the next
  ``exec`` re-dials with jittered back-off, raising ``LinkDown`` while the
  device is within its grace period and ``UnreachableError`` after it. The
  agent client re-opens its follower from the byte offset it has.
* **Nagle is off** (``TCP_NODELAY`` on the socket, set before the handshake):
  SSH is request/response, and a small packet held back until the previous
  one's delayed ACK cost ~40 ms per handshake step and per job (the job
  spec's end-of-file waited behind the spec).
* **Host keys are checked.** A ``RejectPolicy`` and edgefarm's own
  known_hosts (plus the user's): an unknown key stops with the command that
  trusts it, a changed key is refused.
* **Quoting.** Every remote command is an argv joined with ``shlex.quote``;
  job specs (model paths, ids) travel on stdin as JSON and never touch a shell.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import random
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

from orchestrator.deadline import Deadline
from orchestrator.errors import AuthError, HostKeyError, TransportError, UnreachableError
from orchestrator.transport.base import LinkDown, Stream, Transport, check_connected

DEFAULT_KNOWN_HOSTS = "~/.config/edgefarm/known_hosts"


def shell_path(path: str) -> str:
    """A device path as one word for the remote shell, which expands a leading ``~``."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def known_hosts_path(explicit: str | None = None) -> Path:
    """edgefarm's known_hosts: explicit, else ``$EDGEFARM_KNOWN_HOSTS``, else the default."""
    chosen = explicit or os.environ.get("EDGEFARM_KNOWN_HOSTS") or DEFAULT_KNOWN_HOSTS
    return Path(os.path.expanduser(chosen))


def host_key_name(host: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint, as ``ssh-keygen -l`` prints it."""
    import base64

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class KeyFileError(ValueError):
    """An identity file that cannot be used: missing, unreadable, not a key, wrong passphrase.

    A configuration problem, never a network one: retrying cannot fix it, so
    it must not look like (or be retried as) an unreachable device.
    """


def load_private_key(path: str, passphrase_env: str | None) -> paramiko.PKey:
    """Load the private key at ``path`` (``~`` expanded), decrypting it with ``$passphrase_env``.

    Shared by inventory validation (which reports the problem at the file's
    line) and by ``connect`` (for what only shows later: a key changed after
    validation, a variable unset in the gateway's environment). Raises
    ``KeyFileError`` naming the file and what is wrong with it.
    """
    full = os.path.expanduser(path)
    if not os.path.exists(full):
        raise KeyFileError(f"identity file {full} does not exist")
    if os.path.isdir(full):
        raise KeyFileError(f"identity file {full} is a directory, not a private key")
    try:
        with open(full, "rb"):
            pass
    except OSError as exc:
        raise KeyFileError(f"identity file {full} cannot be read: {exc.strerror}") from None
    try:
        return paramiko.PKey.from_path(full)
    except TypeError:
        pass  # password-protected: cryptography wants the passphrase
    except (ValueError, paramiko.SSHException) as exc:
        raise KeyFileError(f"identity file {full} is not a private key paramiko can read "
                           f"({exc})") from None
    if passphrase_env is None:
        raise KeyFileError(f"identity file {full} is encrypted; name the environment "
                           "variable that holds its passphrase with passphrase_env")
    value = os.environ.get(passphrase_env)
    if value is None:
        raise KeyFileError(f"identity file {full} needs the passphrase in environment "
                           f"variable {passphrase_env} (passphrase_env), which is not set")
    try:
        # paramiko 5 passes the password straight to cryptography, which wants bytes.
        return paramiko.PKey.from_path(full, value.encode())  # type: ignore[arg-type]
    except (TypeError, ValueError, paramiko.SSHException):
        raise KeyFileError(f"identity file {full}: the passphrase in {passphrase_env} "
                           "does not decrypt it") from None


class _ChannelStream(Stream):
    """One exec channel's stdout; a channel that closes without an exit status is a dead link."""

    def __init__(self, channel: paramiko.Channel, transport: SshTransport) -> None:
        super().__init__("ssh-exec")
        self.channel = channel
        self.transport = transport
        self._start()

    def _recv(self) -> bytes:
        return bytes(self.channel.recv(65536))

    def _finish(self) -> tuple[int | None, bytes]:
        # The exit status may trail the end of output by a moment; it, or the
        # channel's close, comes next. paramiko reports -1 when the channel
        # closed without one: the link died, not the command.
        self.channel.status_event.wait(30)
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(65536)
        code = self.channel.recv_exit_status() if self.channel.exit_status_ready() else -1
        if code < 0 and not self.closed_by_us:
            # The next exec reconnects; a stream of an older connection
            # ending late must not drop the new one.
            self.transport._mark_down(only=self.channel.get_transport())
        return (code if code >= 0 else None), err

    def _close(self) -> None:
        self.channel.close()


class SshTransport(Transport):
    """Reaches a device over SSH; see the module docstring."""

    name = "ssh"

    def __init__(self, device: Any, known_hosts: str | None = None,
                 connect_timeout: float = 10.0, unreachable_after_s: float = 120.0,
                 max_channels: int = 4, inventory_path: str | None = None,
                 known_hosts_lines: tuple[str, ...] | None = None) -> None:
        super().__init__(device.name)
        self.device = device
        self.python = device.python
        # The controller's file: read here, or named in messages when its lines
        # came along instead (a gateway on a site's node).
        self.known_hosts = known_hosts_path(known_hosts)
        self.known_hosts_lines = known_hosts_lines
        self.inventory_path = inventory_path
        self.connect_timeout = connect_timeout
        self.unreachable_after_s = unreachable_after_s
        self.channels = threading.BoundedSemaphore(max_channels)
        self.conn: Any = None
        self._sftp: paramiko.SFTPClient | None = None
        self._no_sftp = False  # this connection's server has no SFTP subsystem: copy over exec
        self._home: str | None = None
        self._down_since: float | None = None
        self._lock = threading.RLock()

    # -- connection ------------------------------------------------------------
    def _connection(self, host: str, port: int, user: str | None, gateway: Any) -> Any:
        from fabric import Connection

        kwargs: dict[str, Any] = {"allow_agent": True, "banner_timeout": self.connect_timeout,
                                  "auth_timeout": self.connect_timeout}
        if self.device.identity_file:
            # Loaded here rather than handed to paramiko as key_filename: paramiko
            # reports a missing file or a wrong passphrase as an OSError or
            # SSHException, which read (and were retried) as an unreachable device.
            try:
                kwargs["pkey"] = load_private_key(self.device.identity_file,
                                                  self.device.passphrase_env)
            except KeyFileError as exc:
                raise AuthError(f"device {self.device_name}: {exc}") from None
            kwargs["look_for_keys"] = False
        conn = Connection(host, user=user, port=port, gateway=gateway,
                          connect_timeout=self.connect_timeout, connect_kwargs=kwargs)
        # fabric trusts unknown hosts by default; edgefarm never does.
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client.load_system_host_keys()
        if self.known_hosts_lines is not None:
            keys = conn.client.get_host_keys()
            for line in self.known_hosts_lines:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
                if entry is not None:
                    for name in entry.hostnames:
                        keys.add(name, entry.key.get_name(), entry.key)
        elif self.known_hosts.exists():
            conn.client.get_host_keys().load(str(self.known_hosts))
        return conn

    def _jump_chain(self) -> Any:
        gateway = None
        if self.device.proxy_jump:
            for hop in self.device.proxy_jump.split(","):
                user, _, rest = hop.rpartition("@")
                host, _, port = rest.partition(":")
                gateway = self._connection(host, int(port or 22), user or self.device.user,
                                           gateway)
        return gateway

    def connect(self) -> None:
        """Open the connection, retrying an unreachable device until its deadline.

        A device that is rebooting or whose link flaps gets
        ``unreachable_after_s`` to answer; host-key and login failures are
        final at once.
        """
        deadline = Deadline(self.unreachable_after_s)
        delay = 0.5
        with self._lock:
            while True:
                try:
                    self._open()
                    break
                except UnreachableError:
                    if deadline.expired:
                        raise
                    # jittered back-off, the last try at the deadline itself
                    time.sleep(deadline.clamp(delay * (0.5 + random.random())))
                    delay = min(delay * 2, 10.0)
            self.state = "connected"

    def _trust_command(self) -> str:
        """``edgefarm inventory trust`` for this device, with the files this run used."""
        words = ["edgefarm", "inventory", "trust", self.device_name]
        if self.inventory_path:
            words += ["-i", self.inventory_path]
        if self.known_hosts != known_hosts_path(None):
            words += ["--known-hosts", str(self.known_hosts)]
        return shlex.join(words)

    def _open(self) -> None:
        where = f"{self.device.user}@{self.device.host}:{self.device.port}"
        conn = self._connection(self.device.host, self.device.port, self.device.user,
                                self._jump_chain())
        try:
            self._dial(conn)
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"device {self.device_name}: the host key of {where} has CHANGED "
                f"(now {fingerprint(exc.key)}); refusing to connect. If the device was "
                f"reinstalled, remove the old key with: ssh-keygen -R "
                f"{shlex.quote(host_key_name(self.device.host, self.device.port))} -f "
                f"{shlex.quote(str(self.known_hosts))}, then run: {self._trust_command()}"
                ) from None
        except paramiko.AuthenticationException as exc:
            raise AuthError(f"device {self.device_name}: authentication failed for "
                                 f"{where}: {exc}") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"device {self.device_name}: the host key of {where} is unknown. Check "
                    f"it, then trust it with: {self._trust_command()}") from None
            raise UnreachableError(f"device {self.device_name}: ssh to {where} failed: "
                                   f"{exc}") from None
        except (OSError, EOFError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UnreachableError(f"device {self.device_name}: cannot reach {where}: "
                                   f"{reason or type(exc).__name__}") from None
        conn.transport.set_keepalive(5)
        self.conn = conn
        self._sftp = None
        self._no_sftp = False
        self._down_since = None

    def _dial(self, conn: Any) -> None:
        """Open ``conn`` over a TCP socket with Nagle's algorithm off.

        SSH is request/response: with Nagle on, a small packet sent while the
        previous one waits for its (delayed, ~40 ms) ACK is held back, which
        made every channel open cost ~42 ms and a handshake ~45 ms more on
        loopback. Through a jump host the first hop's socket is the real one.
        """
        sock = None
        if not self.device.proxy_jump:
            sock = socket.create_connection((self.device.host, self.device.port),
                                            timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.connect_kwargs["sock"] = sock
        try:
            conn.open()
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        hop = conn
        while sock is None and hop is not None:
            raw = getattr(hop.transport, "sock", None)
            if isinstance(raw, socket.socket):
                try:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
                break
            hop = hop.gateway if hasattr(hop.gateway, "transport") else None

    def close(self) -> None:
        with self._lock:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            self.state = "closed"

    def _mark_down(self, only: Any = None) -> None:
        """Drop the connection (if ``only`` is given, only while it is still that one)."""
        with self._lock:
            if self.conn is not None and only is not None and self.conn.transport is not only:
                return
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:  # closing a dead link may fail; it is gone either way
                    pass
            self.conn = None

    def _alive(self) -> bool:
        return bool(self.conn is not None and self.conn.transport is not None
                    and self.conn.transport.is_active())

    def _ensure_link(self) -> None:
        """Reconnect if the link dropped; raise once it stayed down too long."""
        with self._lock:
            if self._alive():
                return
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                self.log.warning("link to %s dropped; reconnecting", self.device_name)
            try:
                self._open()
                self.log.warning("link to %s is back", self.device_name)
            except UnreachableError as exc:
                if now - self._down_since > self.unreachable_after_s:
                    raise UnreachableError(
                        f"{exc} (unreachable for {now - self._down_since:.0f} s)") from None
                # jittered back-off, short enough to keep the caller responsive
                time.sleep(min(2.0, 0.2 + random.random() * (now - self._down_since) / 10))
                raise _StillDown() from None

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.conn.sftp()
        return self._sftp

    def _has_sftp(self) -> bool:
        """Open SFTP once; False (remembered, logged once) if the server has no subsystem.

        Minimal images and dropbear often ship without ``sftp-server``: the
        server then just closes the channel ("Channel closed."), which read
        as a transport error and quarantined a healthy device. A channel
        refused on a live connection means the subsystem is missing; then
        ``put`` and ``get`` go over a plain exec (``cat``) instead.
        """
        if self._no_sftp:
            return False
        try:
            self._sftp_client()
            return True
        except (paramiko.SSHException, EOFError) as exc:
            if not self.conn.transport.is_active():
                self._mark_down()
                raise LinkDown(f"device {self.device_name}: the link dropped; retrying") from None
            self._no_sftp = True
            self.log.warning("device %s has no SFTP subsystem (%s); copying files over a "
                             "plain exec instead", self.device_name, exc or type(exc).__name__)
            return False

    def _remote_path(self, path: str) -> str:
        """Expand ``~`` with the remote home (found once over SFTP, no exec)."""
        if path == "~" or path.startswith("~/"):
            if self._home is None:
                self._home = self._sftp_client().normalize(".")
            return self._home + path[1:]
        return path

    # -- the transport verbs -----------------------------------------------------
    def _command(self, argv: list[str]) -> str:
        """``argv`` as one command line for the remote shell, ``~/`` left to it to expand."""
        return " ".join(shell_path(a) if a == "~" or a.startswith("~/") else shlex.quote(a)
                        for a in argv)

    @check_connected
    def exec(self, argv: list[str], stdin: bytes | None = None) -> Stream:
        """One channel per command; a dead link is re-dialled here (``LinkDown`` meanwhile)."""
        try:
            self._ensure_link()
        except _StillDown:
            raise LinkDown(f"device {self.device_name}: the link is down; retrying") from None
        try:
            with self.channels:
                channel = self.conn.transport.open_session(timeout=self.connect_timeout)
            channel.exec_command(self._command(argv))
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            # The transport looked alive but is not (keep-alives have not
            # noticed yet): drop it so the next call reconnects.
            self._mark_down()
            raise LinkDown(f"device {self.device_name}: the link dropped; retrying") from None
        return _ChannelStream(channel, self)

    def _ensure_link_blocking(self) -> None:
        """Wait for the link to be up (until the device's deadline, then ``UnreachableError``)."""
        while True:
            try:
                self._ensure_link()
                return
            except _StillDown:
                continue

    @check_connected
    def put(self, local: str, remote: str) -> None:
        self._ensure_link_blocking()
        if not self._has_sftp():
            self._put_over_exec(local, remote)
            return
        sftp = self._sftp_client()
        target = self._remote_path(remote)
        self._makedirs(os.path.dirname(target))
        tmp = f"{target}.tmp{os.getpid()}"
        sftp.put(local, tmp)
        sftp.posix_rename(tmp, target)

    @check_connected
    def get(self, remote: str, local: str) -> None:
        self._ensure_link_blocking()
        if not self._has_sftp():
            self._get_over_exec(remote, local)
            return
        self._sftp_client().get(self._remote_path(remote), local)

    def _put_over_exec(self, local: str, remote: str) -> None:
        """``put`` without SFTP: the file on the stdin of ``cat``, renamed into place whole.

        Paths travel as arguments (``~/`` expanded by the remote shell, as for
        every command); the caller's sha256 check covers the bytes as before.
        """
        target = remote.rstrip("/")
        script = 'mkdir -p "$1" && cat > "$2" && mv -f "$2" "$3"'
        result = self.run(["sh", "-c", script, "sh", posixpath.dirname(target) or "/",
                           f"{target}.tmp{os.getpid()}", target],
                          timeout=300, stdin=Path(local).read_bytes())
        if result.exit_code != 0:
            raise TransportError(f"device {self.device_name}: copying {local} to {remote} "
                                 f"over exec failed (status {result.exit_code}): "
                                 f"{result.stderr.strip()[-300:]}")

    def _get_over_exec(self, remote: str, local: str) -> None:
        """``get`` without SFTP: the remote file's bytes from ``cat``."""
        stream = self.exec(["cat", remote])
        if not stream.wait(300) or stream.exit_code != 0:
            stream.close()
            raise FileNotFoundError(f"device {self.device_name}: cannot read {remote}: "
                                    f"{stream.stderr.decode(errors='replace').strip()[-300:]}")
        Path(local).write_bytes(stream.take())

    def _makedirs(self, path: str) -> None:
        sftp = self._sftp_client()
        missing = []
        while path and path != "/":
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = os.path.dirname(path)
        for directory in reversed(missing):
            sftp.mkdir(directory)


class _StillDown(Exception):
    """Internal: the link is down but within its grace period; try again later."""
