"""The base of sources that run a tool as a child process and parse what it prints.

``tegrastats``, ``macmon pipe`` and ``powermetrics`` differ only in their
command line and record format; starting, reading the pipe without blocking,
time-stamping records that arrive together, and stopping the tool are the
same and live here once.
"""

import os
import subprocess
import time
from typing import Any, List, Optional

from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

__all__ = ["ProcessSource"]


class ProcessSource(Source):
    """A tool run as a child process whose output is parsed as it arrives."""

    streaming = True
    separator = b"\n"

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._proc: Optional[subprocess.Popen] = None
        self._buffer = b""
        self._last_t: Optional[float] = None
        self._stderr: Any = None
        #: How the tool ended when it exited by itself (exit status, last stderr lines).
        self.ended: Optional[str] = None
        self.bad_records = 0

    def argv(self) -> List[str]:
        raise NotImplementedError

    def interval_ms(self) -> int:
        return max(1, int(round(self.interval * 1000)))

    def start(self) -> None:
        import tempfile

        self._buffer = b""
        self._last_t = None
        self.ended = None
        # stderr to a file, not a pipe: a chatty tool must never block on it.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=self._stderr,
                                      bufsize=0)

    def fileno(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout.fileno()

    def running(self) -> bool:
        """Whether the pipe may still give something.

        The pipe, not the process: a tool that printed its last line and
        exited before the reader looked again still has that line and the
        end of file in the pipe, and only reading them says how it ended.
        """
        return (self._proc is not None and self._proc.stdout is not None
                and not self._proc.stdout.closed)

    def read(self, into: Optional[Sample] = None) -> List[Sample]:  # type: ignore[override]
        """The samples completed by what is in the pipe now (call when it is readable)."""
        if self._proc is None or self._proc.stdout is None:
            return []
        try:
            data = os.read(self._proc.stdout.fileno(), 65536)
        except OSError:
            data = b""
        if not data:  # the tool exited: nothing more will come
            self._close_pipe()
            self.ended = self._how_it_ended()
            return []
        now = time.monotonic()
        wall = time.time()
        self._buffer += data
        records = self._buffer.split(self.separator)
        self._buffer = records.pop()
        out = []
        for record in records:
            if not record.strip():
                continue
            sample = self.parse(record)
            if sample is None:
                self.bad_records += 1
                continue
            out.append(sample)
        # Records that arrive together (the reader was late) were printed one
        # interval apart: the last one now, the others back-dated by the
        # tool's interval, never before this source's previous sample.
        count = len(out)
        for index, sample in enumerate(out):
            back = (count - 1 - index) * self.interval
            t = now - back
            floor = self._last_t + 1e-6 * (index + 1) if self._last_t is not None else None
            if floor is not None and t < floor:
                t = floor
            sample.t = t
            sample.wall = wall - (now - t)
        if out:
            self._last_t = out[-1].t
        return out

    def parse(self, record: bytes) -> Optional[Sample]:
        raise NotImplementedError

    def _how_it_ended(self) -> str:
        status = None
        if self._proc is not None:
            try:
                status = self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        tail = ""
        if self._stderr is not None:
            try:
                self._stderr.seek(0)
                lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
                tail = " | ".join(lines[-3:])[-500:]
            except (OSError, ValueError):
                pass
        return "%s exited (status %s)%s" % (self.name, status, ": " + tail if tail else "")

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            try:
                self._proc.stdout.close()
            except OSError:
                pass

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except OSError:
                pass
        if proc.stdout is not None:
            try:
                proc.stdout.close()
            except OSError:
                pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
