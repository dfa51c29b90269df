"""The ``ssh`` transport: a device reached with fabric (paramiko underneath).

Design points, each for a reason:

* **One connection per device**, opened once and reused by every job; an
  exec on a warm connection costs ~0.1 s of server-side session set-up, so
  per-job work opens as few channels as it can: starting a job and following
  it to the end is *one* exec (``agent start --follow``, spec on stdin). A
  device's first job takes the device lease in that same exec
  (``--lease-owner``: the answer is the first line it prints), and nothing
  checks for the agent beforehand: every agent command runs behind a shell
  test of the zipapp (``[ -f AGENT ] || exit 199``), and only a command that
  exits so uploads it (SFTP) and runs again. A cold device therefore costs
  the connection and one exec, no SFTP session, no second exec.
* **``~`` is the remote shell's.** A device path starting with ``~/`` is
  written ``"$HOME"/'rest'`` for the shell, and the agent expands its own
  path arguments, so no round trip asks the device where home is.
* **Detached jobs.** The agent double-forks and ``setsid``s, so a dropped link
  or a dead controller does not stop the benchmark. When the follow channel
  breaks, the transport reconnects with jittered back-off and re-opens it with
  ``agent follow --offset N`` from the byte it already has; the store ignores
  events it has seen, so nothing is lost or doubled.
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
import json
import os
import random
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

from orchestrator.errors import AuthError, HostKeyError, TransportError, UnreachableError
from orchestrator.transport.base import (
    CommandResult,
    JobStatus,
    LeaseRequest,
    Transport,
    check_connected,
    parse_event_lines,
)

DEFAULT_KNOWN_HOSTS = "~/.config/edgefarm/known_hosts"

#: Exit status of the presence test in front of every agent command: no zipapp there.
AGENT_MISSING = 199
#: Exit status of ``agent start --lease-owner`` when another controller holds the lease.
LEASE_REFUSED = 4


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


class _Follower:
    """One long-lived channel streaming a job's event log (``agent start|follow``).

    ``command`` and ``stdin`` are kept so the same command can run again (the
    agent was missing, or the link broke before a start was answered). With
    ``header`` the first line is the lease answer of ``start --lease-owner``,
    not log bytes.
    """

    def __init__(self, channel: paramiko.Channel, base: int, command: str,
                 stdin: bytes | None = None, header: bool = False) -> None:
        self.channel = channel
        self.base = base  # log offset of self.data[0]
        self.command = command
        self.stdin = stdin
        self.header = header
        self.lease_answer: dict[str, Any] | None = None
        self.data = bytearray()
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.arrived = threading.Event()  # set whenever bytes arrive or the channel ends
        self.exit_code: int | None = None
        self.stderr = b""  # what the command itself wrote there (the runner's goes to a file)
        self.broken = False
        self.thread = threading.Thread(target=self._pump, daemon=True, name="ssh-follow")
        self.thread.start()

    @property
    def answered(self) -> bool:
        """Has the command said what it did (no header expected, or the header came)?"""
        return not self.header or self.lease_answer is not None

    def _pump(self) -> None:
        head = bytearray()
        try:
            while True:
                chunk = self.channel.recv(65536)
                if not chunk:
                    break
                if self.header and self.lease_answer is None:
                    head.extend(chunk)
                    newline = head.find(b"\n")
                    if newline < 0:
                        continue
                    self.lease_answer = _lease_line(bytes(head[:newline]))
                    chunk = bytes(head[newline + 1:])
                with self.lock:
                    self.data.extend(chunk)
                self.arrived.set()
            # The exit status may trail the end of output by a moment; it, or
            # the channel's close, comes next. paramiko reports -1 when the
            # channel closed without one: the link died, not the follower.
            self.channel.status_event.wait(30)
            while self.channel.recv_stderr_ready():
                self.stderr += self.channel.recv_stderr(65536)
            if self.channel.exit_status_ready():
                code = self.channel.recv_exit_status()
                self.exit_code = code if code >= 0 else None
        except (OSError, EOFError, paramiko.SSHException):
            self.broken = True
        finally:
            # An EOF without an exit status means the link, not the job, ended.
            if self.exit_code is None:
                self.broken = True
            self.finished.set()
            self.arrived.set()

    def take(self, offset: int) -> tuple[bytes, int]:
        """Bytes from log ``offset`` on; drops what the caller has consumed."""
        with self.lock:
            skip = max(0, offset - self.base)
            del self.data[:skip]
            self.base += skip
            return bytes(self.data), self.base

    def end(self) -> int:
        with self.lock:
            return self.base + len(self.data)


def _lease_line(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)["lease"]
        if isinstance(answer, dict):
            return answer
    except (ValueError, KeyError, TypeError):
        pass
    return {"ok": False, "holder": None,
            "error": f"unexpected answer: {line[:200].decode(errors='replace')}"}


class SshTransport(Transport):
    """Reaches a device over SSH; see the module docstring."""

    name = "ssh"

    def __init__(self, device: Any, known_hosts: str | None = None,
                 connect_timeout: float = 10.0, unreachable_after_s: float = 120.0,
                 max_channels: int = 4) -> None:
        super().__init__(device.name)
        self.device = device
        self.python = device.python
        self.known_hosts = known_hosts_path(known_hosts)
        self.connect_timeout = connect_timeout
        self.unreachable_after_s = unreachable_after_s
        self.channels = threading.BoundedSemaphore(max_channels)
        self.conn: Any = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self._agents: set[str] = set()  # agent paths known to be on the device
        self._bundles: dict[str, tuple[str, str]] = {}  # agent path -> (bundle, sha256)
        self._followers: dict[str, _Follower] = {}
        self._agent_for: str | None = None
        self._down_since: float | None = None
        self._lock = threading.RLock()
        self._deploying = threading.Lock()

    # -- connection ------------------------------------------------------------
    def _connection(self, host: str, port: int, user: str | None, gateway: Any) -> Any:
        from fabric import Connection

        kwargs: dict[str, Any] = {"allow_agent": True, "banner_timeout": self.connect_timeout,
                                  "auth_timeout": self.connect_timeout}
        if self.device.identity_file:
            kwargs["key_filename"] = os.path.expanduser(self.device.identity_file)
            kwargs["look_for_keys"] = False
        if self.device.passphrase_env:
            value = os.environ.get(self.device.passphrase_env)
            if value is None:
                raise TransportError(
                    f"device {self.device_name}: environment variable "
                    f"{self.device.passphrase_env} (passphrase_env) is not set")
            kwargs["passphrase"] = value
        conn = Connection(host, user=user, port=port, gateway=gateway,
                          connect_timeout=self.connect_timeout, connect_kwargs=kwargs)
        # fabric trusts unknown hosts by default; edgefarm never does.
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client.load_system_host_keys()
        if self.known_hosts.exists():
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
        deadline = time.monotonic() + self.unreachable_after_s
        delay = 0.5
        with self._lock:
            while True:
                try:
                    self._open()
                    break
                except UnreachableError:
                    if time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 10.0)
            self.state = "connected"

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
                f"{shlex.quote(str(self.known_hosts))}, then run: edgefarm inventory trust "
                f"{self.device_name}") from None
        except paramiko.AuthenticationException as exc:
            raise AuthError(f"device {self.device_name}: authentication failed for "
                                 f"{where}: {exc}") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"device {self.device_name}: the host key of {where} is unknown. Check "
                    f"it, then trust it with: edgefarm inventory trust {self.device_name}"
                ) from None
            raise UnreachableError(f"device {self.device_name}: ssh to {where} failed: "
                                   f"{exc}") from None
        except (OSError, EOFError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UnreachableError(f"device {self.device_name}: cannot reach {where}: "
                                   f"{reason or type(exc).__name__}") from None
        conn.transport.set_keepalive(5)
        self.conn = conn
        self._sftp = None
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
            for follower in self._followers.values():
                follower.channel.close()
            self._followers.clear()
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            self.state = "closed"

    def _mark_down(self) -> None:
        with self._lock:
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

    def _remote_path(self, path: str) -> str:
        """Expand ``~`` with the remote home (found once over SFTP, no exec)."""
        if path == "~" or path.startswith("~/"):
            if self._home is None:
                self._home = self._sftp_client().normalize(".")
            return self._home + path[1:]
        return path

    # -- plain operations --------------------------------------------------------
    def _command(self, argv: list[str]) -> str:
        """The shell command for ``argv``; an agent command gets the presence test in front."""
        if len(argv) >= 2 and argv[0] == self.python and argv[1] in self._bundles:
            agent = shell_path(argv[1])
            return (f"[ -f {agent} ] || exit {AGENT_MISSING}; exec {shlex.quote(argv[0])} "
                    f"{agent} {shlex.join(argv[2:])}")
        return shlex.join(argv)

    def _exec(self, command: str, stdin: bytes | None = None) -> paramiko.Channel:
        with self.channels:
            channel = self.conn.transport.open_session(timeout=self.connect_timeout)
        channel.exec_command(command)
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        return channel

    @check_connected
    def run(self, argv: list[str], *, timeout: float, stdin: bytes | None = None
            ) -> CommandResult:
        self._ensure_link_blocking(timeout)
        result = self._run(argv, timeout, stdin)
        if result.exit_code == AGENT_MISSING and argv[1:2] and argv[1] in self._bundles:
            self._deploy(argv[1])
            result = self._run(argv, timeout, stdin)
        return result

    def _run(self, argv: list[str], timeout: float, stdin: bytes | None) -> CommandResult:
        start = time.monotonic()
        channel = self._exec(self._command(argv), stdin)
        channel.settimeout(timeout)
        out, err = bytearray(), bytearray()
        try:
            while not (channel.exit_status_ready() and not channel.recv_ready()
                       and not channel.recv_stderr_ready()):
                if channel.recv_ready():
                    out.extend(channel.recv(65536))
                elif channel.recv_stderr_ready():
                    err.extend(channel.recv_stderr(65536))
                elif channel.closed:
                    break
                else:
                    if time.monotonic() - start > timeout:
                        raise TransportError(f"device {self.device_name}: {argv[0]} timed out "
                                             f"after {timeout:g} s")
                    time.sleep(0.002)
            code = channel.recv_exit_status()
        except (TimeoutError, OSError, EOFError) as exc:
            raise TransportError(f"device {self.device_name}: command failed: {exc}") from None
        finally:
            channel.close()
        return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"),
                             time.monotonic() - start)

    def _ensure_link_blocking(self, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, self.unreachable_after_s)
        while True:
            try:
                self._ensure_link()
                return
            except _StillDown:
                if time.monotonic() > deadline:
                    raise UnreachableError(f"device {self.device_name}: unreachable") from None

    @check_connected
    def put(self, local: str, remote: str) -> None:
        self._ensure_link_blocking(self.connect_timeout)
        sftp = self._sftp_client()
        target = self._remote_path(remote)
        self._makedirs(os.path.dirname(target))
        tmp = f"{target}.tmp{os.getpid()}"
        sftp.put(local, tmp)
        sftp.posix_rename(tmp, target)

    @check_connected
    def get(self, remote: str, local: str) -> None:
        self._ensure_link_blocking(self.connect_timeout)
        self._sftp_client().get(self._remote_path(remote), local)

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

    # -- the job protocol --------------------------------------------------------
    def expand_path(self, path: str) -> str:
        return self._remote_path(path)

    def _agent_target(self, bundle_path: str, sha256: str) -> str:
        target = f"{self.device.work_dir.rstrip('/')}/agent/{Path(bundle_path).name}"
        self._bundles[target] = (bundle_path, sha256)
        self._agent_for = target
        return target

    @check_connected
    def lazy_agent(self, bundle_path: str, sha256: str) -> str:
        """The agent's path; it is uploaded when a command finds it missing (no round trip)."""
        return self._agent_target(bundle_path, sha256)

    @check_connected
    def ensure_agent(self, bundle_path: str, sha256: str) -> str:
        self._ensure_link_blocking(self.connect_timeout)
        target = self._agent_target(bundle_path, sha256)
        if target not in self._agents:
            self._deploy(target)
        return target

    def _deploy(self, target: str) -> None:
        """Upload the agent zipapp, verify its sha256 on the device, rename it into place.

        Then the agent unpacks and compiles itself once (``agent prepare``),
        so no job start compiles it.
        """
        with self._deploying:  # one upload at a time (a job and the lease refresher may race)
            remote = self._remote_path(target)
            if not self._exists(remote):
                self._upload(target, remote)
            self._agents.add(target)

    def _upload(self, target: str, remote: str) -> None:
        bundle_path, sha256 = self._bundles[target]
        self.log.info("uploading the agent to %s", self.device_name)
        sftp = self._sftp_client()
        self._makedirs(os.path.dirname(remote))
        tmp = f"{remote}.tmp{os.getpid()}"
        sftp.put(bundle_path, tmp)
        check = self._run([self.device.python, "-c",
                           "import hashlib,sys;print(hashlib.sha256("
                           "open(sys.argv[1],'rb').read()).hexdigest())", tmp], 60, None)
        if check.exit_code != 0 or check.stdout.strip() != sha256:
            sftp.remove(tmp)
            raise TransportError(
                f"device {self.device_name}: agent upload failed verification "
                f"(sha256 {check.stdout.strip() or check.stderr.strip()!r}, "
                f"expected {sha256})")
        sftp.posix_rename(tmp, remote)
        prepared = self._run(self.agent_argv(target, "prepare"), 120, None)
        if prepared.exit_code != 0:  # only slower starts: worth a note, not a failure
            self.log.warning("agent prepare failed on %s: %s", self.device_name,
                             prepared.stderr.strip()[-300:])

    def _exists(self, path: str) -> bool:
        try:
            self._sftp_client().stat(path)
        except FileNotFoundError:
            return False
        return True

    def job_dir(self, sweep_id: str, job_key: str, attempt: int) -> str:
        return f"{self.device.work_dir.rstrip('/')}/jobs/{sweep_id}/{job_key}-a{attempt}"

    @check_connected
    def start_job(self, job_dir: str, spec: dict[str, Any], agent_path: str,
                  lease: LeaseRequest | None = None) -> None:
        """One exec: (take the lease,) start the job detached, stream its log."""
        self._ensure_link_blocking(self.connect_timeout)
        args = ["start", job_dir, "--follow"]
        if lease is not None:
            args += ["--lease-owner", lease.owner, "--lease-work-dir", lease.work_dir,
                     "--lease-ttl", f"{lease.ttl:g}"]
        command = self._command(self.agent_argv(agent_path, *args))
        payload = json.dumps(spec, sort_keys=True).encode()
        channel = self._exec(command, payload)
        self._followers[job_dir] = _Follower(channel, 0, command, payload,
                                             header=lease is not None)

    def lease_answer(self, job_dir: str) -> dict[str, Any] | None:
        follower = self._followers.get(job_dir)
        if follower is not None and follower.lease_answer is not None:
            self._lease_answers[job_dir] = follower.lease_answer
        return self._lease_answers.get(job_dir)

    def _follower(self, job_dir: str, offset: int) -> _Follower | None:
        """The job's follow channel, re-opened from ``offset`` if the link broke.

        A start that found no agent uploads it and runs again; a start that
        broke before it answered runs again too (``start`` on a job that has
        its ``job.json`` starts nothing twice, it takes the lease and follows).
        """
        follower = self._followers.get(job_dir)
        if follower is not None and not follower.broken:
            if follower.exit_code != AGENT_MISSING:
                return follower
            self._deploy(self._agent_path_for(job_dir))
            return self._launch(job_dir, follower.command, follower.stdin, follower.header,
                                follower.base)
        if follower is not None and follower.broken and self._alive():
            # The follow channel died, so the link probably did too, even if
            # the transport has not noticed yet.
            self._mark_down()
        try:
            self._ensure_link()
        except _StillDown:
            return None
        if follower is not None and not follower.answered:
            return self._launch(job_dir, follower.command, follower.stdin, True, 0)
        agent = self._agent_path_for(job_dir)
        command = self._command(self.agent_argv(agent, "follow", job_dir, "--offset",
                                                str(offset)))
        return self._launch(job_dir, command, None, False, offset)

    def _launch(self, job_dir: str, command: str, stdin: bytes | None, header: bool,
                base: int) -> _Follower | None:
        """Run ``command`` as the job's follower, its output starting at log offset ``base``."""
        try:
            channel = self._exec(command, stdin)
        except (OSError, EOFError, paramiko.SSHException):
            # The transport looked alive but is not (keep-alives have not
            # noticed yet): drop it so the next call reconnects.
            self._mark_down()
            return None
        follower = _Follower(channel, base, command, stdin, header)
        self._followers[job_dir] = follower
        return follower

    def _agent_path_for(self, job_dir: str) -> str:
        agent = self._agent_for
        if agent is None:
            raise TransportError(f"device {self.device_name}: no agent deployed yet")
        return agent

    @check_connected
    def read_events(self, job_dir: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        follower = self._follower(job_dir, offset)
        if follower is None:
            return [], offset
        data, base = follower.take(offset)
        events, used = parse_event_lines(data)
        return events, base + used

    @check_connected
    def job_status(self, job_dir: str) -> JobStatus:
        follower = self._followers.get(job_dir)
        if follower is not None:
            if (not follower.finished.is_set() or follower.broken
                    or follower.exit_code == AGENT_MISSING):
                return JobStatus("running")  # read_events repairs the link, deploys the agent
            if follower.exit_code == 0:
                return JobStatus("exited", 0)
            if follower.exit_code == LEASE_REFUSED and follower.lease_answer is not None:
                return JobStatus("absent")  # nothing started; run_attempt reads the answer
        try:
            self._ensure_link()
        except _StillDown:
            return JobStatus("running")
        agent = self._agent_path_for(job_dir)
        result = self.run(self.agent_argv(agent, "status", job_dir), timeout=30)
        try:
            state = json.loads(result.stdout)
        except ValueError:
            raise TransportError(f"device {self.device_name}: agent status failed: "
                                 f"{result.stderr.strip()[-500:]}") from None
        return JobStatus(state.get("state", "absent"), state.get("exit_code"), state.get("pid"))

    @check_connected
    def fetch_log(self, job_dir: str) -> str:
        follower = self._followers.get(job_dir)
        own = follower.stderr.decode(errors="replace") if follower is not None else ""
        try:
            self._ensure_link_blocking(self.connect_timeout)
            with self._sftp_client().open(self._remote_path(job_dir) + "/agent.stderr") as fh:
                return fh.read().decode(errors="replace") + own
        except (OSError, TransportError):
            return own

    @check_connected
    def cancel(self, job_dir: str) -> None:
        agent = self._agent_path_for(job_dir)
        self.run(self.agent_argv(agent, "cancel", job_dir), timeout=30)
        follower = self._followers.pop(job_dir, None)
        if follower is not None:
            follower.channel.close()

    def wait_for_events(self, job_dir: str, timeout: float, stop: threading.Event) -> None:
        follower = self._followers.get(job_dir)
        if follower is None or follower.finished.is_set():
            stop.wait(timeout)
            return
        follower.arrived.wait(timeout)
        follower.arrived.clear()

    def forget(self, job_dir: str) -> None:
        """Drop a finished job's follow channel."""
        super().forget(job_dir)
        follower = self._followers.pop(job_dir, None)
        if follower is not None:
            follower.channel.close()


class _StillDown(Exception):
    """Internal: the link is down but within its grace period; try again later."""
