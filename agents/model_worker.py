"""One model per process: a worker that keeps a model loaded for paired rounds.

Why a process per model: two llama.cpp contexts in one process slow each
other down. Measured here with xllamacpp (2 threads, 2 cores): a tiny model
decoding at ~7,000 tok/s alone fell to 200-2,000 tok/s once a second model
was loaded in the same process, and recovered when it was unloaded; with the
second model loaded in *another* process it stayed within 3%. So a job whose
models stay loaded across rounds keeps each in its own worker, and the runner
drives them one repetition at a time.

The protocol is JSON lines on the worker's stdin/stdout::

    -> {"op": "open", "backend": NAME, "llama_bench": PATH|null, "model": PATH,
        "params": {...}}
    <- {"event": [KIND, FIELDS]}*  {"ok": true, "info": {...}}
    -> {"op": "repetition", "index": I, "warmup": BOOL}
    <- {"event": [KIND, FIELDS]}*  {"ok": true, "repetition": {...}}
    -> {"op": "close"}                  (or end of input)

A failure answers ``{"ok": false, "kind": ERROR_KIND, "message": TEXT}``. The
worker's events (``phase``) are written by the parent, which owns the job's
event log and telemetry; monotonic windows are valid across processes
(``time.monotonic`` is system-wide on Linux and macOS).
"""

import json
import os
import subprocess
import sys
from typing import IO, Any, Dict, List, Optional

from agents.backends.base import BackendError, Emit, JobParams, Session
from agents.protocol import ERR_AGENT, ERR_BACKEND, ERR_OUT_OF_MEMORY


def worker_argv() -> List[str]:
    """How to start a worker: the zipapp this agent runs from, else the package."""
    from agents.cli import _zipapp_path

    archive = _zipapp_path()
    if archive is not None:
        return [sys.executable, archive, "worker"]
    return [sys.executable, "-m", "agents", "worker"]


class WorkerSession(Session):
    """A ``Session`` whose model lives in a worker process (see the module docstring)."""

    def __init__(self, backend: str, llama_bench: Optional[str], model_path: str,
                 params: JobParams, emit: Emit) -> None:
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if worker_argv()[1] == "-m":  # from a source tree (tests): make the package importable
            env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(worker_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, universal_newlines=True, bufsize=1)
        self._info: Dict[str, object] = {}
        answer = self._ask({"op": "open", "backend": backend, "llama_bench": llama_bench,
                            "model": model_path, "params": params.as_dict()}, emit)
        info = answer.get("info")
        self._info = dict(info) if isinstance(info, dict) else {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ask(self, request: Dict[str, object], emit: Emit) -> Dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
        except OSError as exc:
            raise BackendError(ERR_AGENT, "the model worker is gone: %s" % exc) from exc
        while True:
            line = stdout.readline()
            if not line:
                code = self.proc.wait()
                raise BackendError(ERR_BACKEND, "the model worker exited (status %s) during %s"
                                   % (code, request["op"]))
            message = json.loads(line)
            if "event" in message:
                kind, fields = message["event"]
                emit(str(kind), dict(fields))
                continue
            if not message.get("ok"):
                raise BackendError(str(message.get("kind") or ERR_BACKEND),
                                   str(message.get("message")))
            return message

    def repetition(self, index: int, warmup: bool, emit: Emit) -> Dict[str, object]:
        answer = self._ask({"op": "repetition", "index": index, "warmup": warmup}, emit)
        return dict(answer["repetition"])

    def info(self) -> Dict[str, object]:
        return dict(self._info)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def main() -> int:
    """``agent worker``: the protocol on the real stdout, everything else to stderr.

    llama.cpp and the bindings may print to file descriptor 1; that must not
    corrupt the protocol, so the protocol gets its own copy of stdout and fd 1
    is pointed at stderr.
    """
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with os.fdopen(protocol_fd, "w", buffering=1) as out:
        return serve(sys.stdin, out)


def serve(stdin: IO[str], stdout: IO[str]) -> int:
    """The worker's loop (``agent worker``): open one model, run repetitions on request."""
    from agents.backends import get_backend

    session: Optional[Session] = None

    def send(message: Dict[str, object]) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    def emit(kind: str, fields: Dict[str, object]) -> Dict[str, object]:
        send({"event": [kind, fields]})
        return fields

    for line in stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "open":
                backend = get_backend(str(request["backend"]), request.get("llama_bench"))
                params = JobParams.from_dict(request["params"])
                session = backend.open(str(request["model"]), params, emit)
                send({"ok": True, "info": session.info()})
            elif op == "repetition" and session is not None:
                rep = session.repetition(int(request["index"]), bool(request["warmup"]), emit)
                send({"ok": True, "repetition": rep})
            elif op == "close":
                break
            else:
                send({"ok": False, "kind": ERR_AGENT, "message": "unexpected request %r" % op})
        except BackendError as exc:
            send({"ok": False, "kind": exc.kind, "message": exc.message})
        except MemoryError:
            send({"ok": False, "kind": ERR_OUT_OF_MEMORY,
                  "message": "the worker ran out of memory"})
        except Exception as exc:  # report, never die silently
            send({"ok": False, "kind": ERR_AGENT, "message": "%s: %s" % (type(exc).__name__, exc)})
    if session is not None:
        session.close()
    return 0
