"""The ``local`` transport: this machine as a device.

Commands run as child processes in their own session (as a remote command
would: the controller's Ctrl-C does not reach them), files are copied with a
rename. Everything else — the agent upload, ``agent start --follow``, the
lease — is the agent client's, exactly as over ssh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from io import BufferedReader
from pathlib import Path
from typing import Any

from orchestrator.transport.base import Stream, Transport, check_connected


class _ProcessStream(Stream):
    """A child process's stdout, stderr drained on the side so it never blocks."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__("local-exec")
        self.proc = proc
        self._err = bytearray()
        stderr = proc.stderr if isinstance(proc.stderr, BufferedReader) else None
        self._err_thread = threading.Thread(target=self._drain, args=(stderr,),
                                            daemon=True, name="local-stderr")
        self._err_thread.start()
        self._start()

    def _drain(self, pipe: BufferedReader | None) -> None:
        if pipe is not None:
            for chunk in iter(lambda: pipe.read1(65536), b""):
                self._err.extend(chunk)

    def _recv(self) -> bytes:
        stdout = self.proc.stdout
        assert isinstance(stdout, BufferedReader)
        return stdout.read1(65536)

    def _finish(self) -> tuple[int | None, bytes]:
        code = self.proc.wait()
        self._err_thread.join(5)
        if self.closed_by_us:
            return None, bytes(self._err)
        return code, bytes(self._err)

    def _close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


class LocalTransport(Transport):
    """Runs commands on this machine for a device whose ``transport`` is ``local``."""

    name = "local"

    def __init__(self, device: Any) -> None:
        super().__init__(device.name)
        self.device = device
        # A local device whose inventory entry names no interpreter uses the
        # controller's own: it has the xllamacpp wheel that edgefarm installs.
        self.python = device.python if "python" in device.model_fields_set else sys.executable

    @check_connected
    def exec(self, argv: list[str], stdin: bytes | None = None) -> Stream:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the agent runs from its zipapp alone
        proc = subprocess.Popen([os.path.expanduser(a) if a.startswith("~/") else a
                                 for a in argv],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=env)
        assert proc.stdin is not None
        try:
            if stdin:
                proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:  # it did not want its input; its status says why
            pass
        return _ProcessStream(proc)

    @check_connected
    def put(self, local: str, remote: str) -> None:
        target = Path(os.path.expanduser(remote))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)

    @check_connected
    def get(self, remote: str, local: str) -> None:
        shutil.copyfile(os.path.expanduser(remote), local)
