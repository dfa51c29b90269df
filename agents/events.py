"""JSON-lines events: the only thing the agent says to the controller.

Every event is one JSON object on one line, written to the job's event log on
the device (``<job_dir>/events.jsonl``) and, when asked, to stdout as well.
The controller follows the log from a byte offset, so a dropped link or a
restarted controller loses nothing: it re-reads from where it stopped.

Every event carries::

    {"v": 1, "seq": 7, "kind": "repetition", "job": "<job key>",
     "attempt": 1, "t": <unix seconds>, "mono": <monotonic seconds>, ...}

``seq`` counts from 0 within one attempt of one job, so the controller can
store each event exactly once however often it re-reads the log.

Kinds: ``hello`` (agent version, device facts), ``phase`` (model, load,
warmup, prefill, decode, bench, cooldown), ``sample`` (telemetry),
``repetition``, ``result`` (always the last event of a finished attempt),
``error`` (kind + message + traceback frames), ``heartbeat``.
"""

import json
import os
import sys
import threading
import time
from typing import IO, Dict, List, Optional, Tuple

from agents.protocol import EVENT_KINDS as KINDS
from agents.protocol import PROTOCOL_VERSION


class EventWriter(object):
    """Writes numbered events to the job log (and optionally a stream), thread-safe."""

    def __init__(self, log_path: str, job_key: str, attempt: int,
                 echo: Optional[IO[str]] = None) -> None:
        self.job_key = job_key
        self.attempt = attempt
        self._echo = echo
        self._lock = threading.Lock()
        self._seq = 0
        # Line-buffered append: each event reaches the OS as soon as it is
        # written, so the controller can follow it and a crash of this
        # process loses nothing already emitted.
        self._log = open(log_path, "a", buffering=1, encoding="utf-8")

    def emit(self, kind: str, fields: Optional[Dict[str, object]] = None) -> Dict[str, object]:
        if kind not in KINDS:
            raise ValueError("unknown event kind %r (known: %s)" % (kind, ", ".join(KINDS)))
        with self._lock:
            event: Dict[str, object] = {
                "v": PROTOCOL_VERSION,
                "seq": self._seq,
                "kind": kind,
                "job": self.job_key,
                "attempt": self.attempt,
                "t": round(time.time(), 6),
                "mono": round(time.monotonic(), 6),
            }
            if fields:
                for key, value in fields.items():
                    if key not in event:
                        event[key] = value
            line = json.dumps(event, sort_keys=True, separators=(",", ":")) + "\n"
            self._log.write(line)
            if self._echo is not None:
                try:
                    self._echo.write(line)
                    self._echo.flush()
                except (OSError, ValueError):
                    # A closed stdout (the controller went away) must not stop
                    # the benchmark: the log file is the durable copy.
                    self._echo = None
            self._seq += 1
            return event

    def close(self) -> None:
        with self._lock:
            try:
                self._log.flush()
                os.fsync(self._log.fileno())
            except OSError:
                pass
            self._log.close()


class Heartbeat(object):
    """Emits a ``heartbeat`` event every ``interval`` seconds from a daemon thread."""

    def __init__(self, writer: EventWriter, interval: float = 5.0) -> None:
        self._writer = writer
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._writer.emit("heartbeat", {"pid": os.getpid()})
            except (OSError, ValueError):
                return


def read_events(path: str, offset: int = 0) -> Tuple[List[Dict[str, object]], int]:
    """Return ``(events, new_offset)`` for the complete lines after ``offset``.

    A partly written last line is left for the next call, so a reader racing
    the writer never sees half an event.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events: List[Dict[str, object]] = []
    for raw in data[: end + 1].splitlines():
        if raw.strip():
            try:
                events.append(json.loads(raw.decode("utf-8")))
            except ValueError:
                sys.stderr.write("edgefarm-agent: skipping malformed event line\n")
    return events, offset + end + 1
