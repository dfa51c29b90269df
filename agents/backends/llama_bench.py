"""llama.cpp's own ``llama-bench`` binary, run as a child process.

Used where no xllamacpp wheel exists (Jetson boards): the inventory names the
path of a ``llama-bench`` built on the device, and this backend runs it once
per job and turns its JSON output into ``repetition`` events.

What is run::

    llama-bench -m MODEL -p PROMPT -n GEN -t THREADS -ngl GPU_LAYERS -r REPS -o json --progress

``-t`` is left out when the job's thread count is not positive (llama-bench
then picks its own default). ``-p 0`` / ``-n 0`` skip that test. Output goes to
stdout as one JSON array; ``-o jsonl`` also exists (since 2024-09) but ``json``
is older and works with every build, and the parser accepts both anyway.
``--progress`` makes llama-bench print a line to stderr before every run (see
"Energy" below); a build that rejects it is run again without it.

How llama-bench measures, and what that means for the events:

* ``-p P -n N`` runs two *separate* tests, each ``-r`` times: ``pp P``
  (prompt processing from an empty context) and ``tg N`` (N single-token
  decodes, also from an empty context, not after the prompt). Repetition ``i``
  pairs the i-th pp run with the i-th tg run: ``prefill_s`` is pp
  ``samples_ns[i]``, ``decode_s`` is tg ``samples_ns[i]``, and the rates are
  tokens / seconds (computed from ``samples_ns``; ``samples_ts`` is printed
  with about six significant digits only).
* Warm-up: before each test llama-bench runs one warm-up of its own (the full
  prompt for pp, a single token for tg) unless given ``--no-warmup``. Those
  runs are not in the output, so no warm-up repetition is emitted. A job with
  ``warmup == 0`` gets ``--no-warmup`` (builds from before that flag existed
  reject it: the error says so); a job with ``warmup >= 1`` gets llama-bench's
  single built-in warm-up, whatever the number asked for. The result records
  ``warmup_requested`` and ``warmup_runs_builtin``.
* ``ttft_s`` is never set: llama-bench does not measure time to first token,
  and it is not estimated here.
* ``peak_rss_bytes`` is the high-water mark of the whole llama-bench process
  (model load, warm-ups, every repetition of both tests), read from
  ``os.wait4``; every repetition carries the same number
  (``peak_rss_scope: "child-process"``). Memory the GPU driver maps outside
  the process's resident set is not in it.
* Builds whose JSON has no ``samples_ns`` arrays cannot be split into
  repetitions: one event with ``aggregate: True`` carries the averages
  (``avg_ns`` as seconds, ``avg_ts`` as the rate, which is llama-bench's mean
  of per-run rates, not tokens / mean seconds).
* Load time is not reported by llama-bench, so the result has no ``load_s``.
* Energy per phase, from per-run windows. With ``--progress`` llama-bench
  (checked in its source at b11312, ``tools/llama-bench/llama-bench.cpp``)
  writes, unbuffered to stderr, ``llama-bench: benchmark B/N: prompt run
  I/R`` (or ``generation run I/R``) right after it takes the run's start time
  and right before the run's work, which ends with ``llama_synchronize``;
  the run's ``samples_ns`` entry is the time from that start to the end of the
  work. The backend reads stderr line by line as it arrives and stamps each
  line with ``time.monotonic()``, so counted run ``I`` of a test is the window
  ``[stamp of its line, stamp + samples_ns[I]]``: the start from this clock,
  the length from llama-bench's own timer. ``prefill_window_mono`` is the pp
  run's window and ``decode_window_mono`` the tg run's, and the runner
  measures energy over exactly those windows (model load, warm-ups, context
  set-up and the gaps between runs are outside every window). Why not the
  time from one line to the next: the last run of a test has no next line
  (the test's result, context teardown and the next test's set-up come
  first), and a line-to-line window would include the gaps. A stamp can be
  late by the pipe's and this thread's latency (well under a millisecond on
  an idle CPU); the windows are checked against the next line, and a window
  reaching past the next run's line by more than a quarter of its length
  drops the per-phase windows for the job (``phase_window_reason`` says so).
* Without per-run windows (a build without ``--progress``, output without
  ``samples_ns``, lines that do not match the records) every repetition
  carries only ``process_window_mono`` (the whole llama-bench process) and
  ``phase_window_reason``: the runner then reports the process's energy
  (``energy_process_j``, ``energy_method: "process-average"``) and no energy
  per phase (``energy_unmeasured_reason``), because the process's average
  power split over its phases was 37-40 % below the measured decode energy on
  an H200 (model load at 80-130 W counted as the runs' power). With windows,
  ``process_window_mono`` is still sent, so the report can show what share of
  the process the counted runs were (``counted_fraction`` in the result).

The child runs in the agent's process group: whoever kills the agent's group
kills llama-bench too. A timeout (``timeout_s``, constructor or ``run``
keyword) kills it with SIGKILL.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from typing import IO, Dict, List, Optional, Sequence, Tuple, Union

from agents import peakmem
from agents.backends.base import (
    Backend,
    BackendError,
    Emit,
    JobParams,
    flash_attn_label,
    kv_type_label,
    make_provenance,
)
from agents.protocol import (
    ERR_BACKEND,
    ERR_BACKEND_MISSING,
    ERR_BAD_JOB,
    ERR_MODEL_MISSING,
    ERR_OUT_OF_MEMORY,
)

#: One parsed llama-bench test record (see ``parse_llama_bench``).
Record = Dict[str, object]

#: Lower-case stderr fragments that mean an allocation failed.
OOM_WORDS = ("out of memory", "failed to allocate", "cannot allocate", "insufficient memory",
             "bad_alloc", "cudamalloc failed", "erroroutofdevicememory")

#: Lines of stderr quoted in a ``backend-error`` message.
STDERR_TAIL_LINES = 20

_POLL_S = 0.05
_VERSION_TIMEOUT_S = 30.0

# Fields taken from each test record, by type. Anything else is ignored.
_COUNT_FIELDS = ("n_prompt", "n_gen", "n_depth", "n_threads", "n_gpu_layers", "build_number",
                 "model_size", "model_n_params")
_REAL_FIELDS = ("avg_ns", "stddev_ns", "avg_ts", "stddev_ts")
_TEXT_FIELDS = ("build_commit", "cpu_info", "gpu_info", "backends", "model_type",
                "model_filename", "test_time")
_SAMPLE_FIELDS = ("samples_ns", "samples_ts")

# Older builds had one boolean per backend (``cuda``, ``metal``, ...) instead
# of the ``backends`` string; the name is picked in the order their markdown
# "backend" column used.
_OLD_BACKEND_FLAGS = (("cuda", "CUDA"), ("vulkan", "Vulkan"), ("kompute", "Kompute"),
                      ("metal", "Metal"), ("sycl", "SYCL"), ("opencl", "OpenCL"),
                      ("gpu_blas", "GPU BLAS"), ("blas", "BLAS"))

# A JSON value that starts a line (after indentation).
_JSON_START = re.compile(r"^[ \t]*([\[{])", re.MULTILINE)
# C printf's non-finite numbers (nan, -nan, inf), which are not JSON.
_NON_FINITE = re.compile(r"(?<=[:\[,\s])-?(?:nan|inf(?:inity)?)(?=\s*[,\]}])", re.IGNORECASE)
_VERSION_LINE = re.compile(r"version:\s*(\d+)\s*\(([0-9A-Za-z]+)\)")
# ``--progress``'s line before each counted run (llama-bench.cpp, b11312):
# "llama-bench: benchmark 2/2: generation run 3/5". Warm-up and depth runs
# print other words ("warmup prompt run", "depth run") and never match.
_PROGRESS_RUN = re.compile(r"^llama-bench: benchmark (\d+)/(\d+): (prompt|generation) run "
                           r"(\d+)/(\d+)\s*$")
#: A window may reach past the next run's progress line by this share of its
#: length before the stamps are judged too late to place runs (see "Energy").
MAX_OVERLAP_SHARE = 0.25
#: Seconds to wait for stderr's end after the child exits (a grandchild that
#: kept the pipe open must not hang the job).
_READER_JOIN_S = 5.0

#: One stderr line with the ``time.monotonic()`` at which it arrived.
StampedLine = Tuple[float, str]
#: A monotonic ``(t0, t1)`` window.
Window = Tuple[float, float]
#: ``(run number, runs, stamp)`` of one progress line.
RunLine = Tuple[int, int, float]


# --------------------------------------------------------------------------- parsing

def _as_count(value: object) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf") \
            and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.match(r"^-?\d+$", value.strip()):
        return int(value.strip())
    return None


def _as_real(value: object) -> Optional[Union[int, float]]:
    """A finite number, kept as the int or float JSON gave (strings converted)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    return None


def _old_backends(flags: Dict[str, bool]) -> str:
    for key, label in _OLD_BACKEND_FLAGS:
        if flags.get(key):
            return label
    return "CPU"


def _normalize(item: object) -> Optional[Record]:
    """One test record with known fields only; ``None`` for non-test values."""
    if not isinstance(item, dict) or ("n_prompt" not in item and "n_gen" not in item):
        return None
    rec: Record = {}
    for key in _COUNT_FIELDS:
        count = _as_count(item.get(key))
        if count is not None:
            rec[key] = count
    for key in _REAL_FIELDS:
        real = _as_real(item.get(key))
        if real is not None:
            rec[key] = real
    for key in _TEXT_FIELDS:
        text = item.get(key)
        if isinstance(text, str):
            rec[key] = text
    for key in _SAMPLE_FIELDS:
        raw = item.get(key)
        if isinstance(raw, list) and raw:
            values = [_as_real(v) for v in raw]
            if all(v is not None for v in values):
                rec[key] = values
    if "backends" not in rec:
        flags: Dict[str, bool] = {}
        for key, _label in _OLD_BACKEND_FLAGS + (("rpc", "RPC"),):
            if isinstance(item.get(key), bool):
                flags[key] = bool(item[key])
        if flags:
            rec["backend_flags"] = flags
            rec["backends"] = _old_backends(flags) + (",RPC" if flags.get("rpc") else "")
    n_prompt = rec.get("n_prompt", 0)
    n_gen = rec.get("n_gen", 0)
    if isinstance(n_prompt, int) and isinstance(n_gen, int):
        if n_prompt > 0 and n_gen == 0:
            rec["test"] = "pp"
        elif n_prompt == 0 and n_gen > 0:
            rec["test"] = "tg"
        elif n_prompt > 0 and n_gen > 0:
            rec["test"] = "pg"
    return rec


def _json_values(text: str) -> List[object]:
    """Every JSON value that starts at the beginning of a line, in order."""
    decoder = json.JSONDecoder()
    values: List[object] = []
    pos = 0
    while pos < len(text):
        match = _JSON_START.search(text, pos)
        if match is None:
            break
        try:
            value, end = decoder.raw_decode(text, match.start(1))
        except ValueError:
            pos = match.end()  # not JSON, or cut short: try the next line
            continue
        values.append(value)
        pos = end
    return values


def parse_llama_bench(text: object) -> List[Record]:
    """Test records from llama-bench output (``-o json`` or ``-o jsonl``).

    Accepts a JSON array, JSON lines, either one after log lines, and output
    cut short (the complete records before the cut are kept). Never raises;
    returns ``[]`` when nothing parses. Each record is a dict with only the
    fields present in the output (absent fields are left out, never zero):

    * counts (int): ``n_prompt``, ``n_gen``, ``n_depth``, ``n_threads``,
      ``n_gpu_layers``, ``build_number``, ``model_size`` (bytes of tensor
      data), ``model_n_params``
    * times and rates: ``avg_ns``, ``stddev_ns``, ``avg_ts``, ``stddev_ts``
      and the per-repetition lists ``samples_ns`` and ``samples_ts``
    * text: ``build_commit``, ``cpu_info``, ``gpu_info``, ``backends``,
      ``model_type``, ``model_filename``, ``test_time``
    * ``test``: ``"pp"`` (n_prompt > 0, n_gen == 0), ``"tg"`` (n_prompt == 0,
      n_gen > 0) or ``"pg"`` (both > 0)
    * older builds: ``backend_flags`` (their ``cuda``/``metal``/... booleans)
      and ``backends`` derived from them, e.g. ``"CUDA"``
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or not text.strip():
        return []
    # A record with nan/inf in it is not JSON; read those numbers as absent.
    return _records(_json_values(_NON_FINITE.sub("null", text)))


def _records(values: List[object]) -> List[Record]:
    records: List[Record] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            rec = _normalize(item)
            if rec is not None:
                records.append(rec)
    return records


# ----------------------------------------------------------------- mapping to events

def build_argv(binary: str, model_path: str, params: JobParams,
               progress: bool = True) -> List[str]:
    """The llama-bench command line for one job (a list, never a shell string).

    ``progress`` adds ``--progress``, whose stderr lines place each counted
    run in time (see "Energy" in the module docstring).
    """
    argv = [binary, "-m", model_path, "-p", str(params.prompt_tokens),
            "-n", str(params.gen_tokens)]
    if params.threads > 0:
        argv += ["-t", str(params.threads)]
    argv += ["-ngl", str(params.gpu_layers), "-r", str(params.repetitions), "-o", "json"]
    if progress:
        argv.append("--progress")
    if params.warmup <= 0:
        argv.append("--no-warmup")
    return argv


def select_tests(records: List[Record],
                 params: JobParams) -> Tuple[Optional[Record], Optional[Record]]:
    """The job's pp and tg records (``None`` where the job has no such test)."""
    pp = tg = None
    for rec in records:
        if rec.get("n_depth", 0) != 0:
            continue
        if rec.get("test") == "pp" and rec.get("n_prompt") == params.prompt_tokens and pp is None:
            pp = rec
        elif rec.get("test") == "tg" and rec.get("n_gen") == params.gen_tokens and tg is None:
            tg = rec
    return pp, tg


def _samples_ns(rec: Record) -> List[Union[int, float]]:
    value = rec.get("samples_ns")
    return [v for v in value if isinstance(v, (int, float))] if isinstance(value, list) else []


def repetition_events(pp: Optional[Record], tg: Optional[Record], params: JobParams,
                      peak_rss_bytes: Optional[int] = None) -> List[Record]:
    """``repetition`` event fields from the job's pp and tg records.

    One event per repetition when every record has ``samples_ns`` (the
    shorter list sets the count); otherwise one ``aggregate: True`` event with
    the averages. ``ttft_s`` is never set.
    """
    tests = [(rec, prefix, tokens) for rec, prefix, tokens in
             ((pp, "prefill", params.prompt_tokens), (tg, "decode", params.gen_tokens))
             if rec is not None]
    if not tests:
        return []
    base: Record = {"warmup": False, "prompt_tokens": params.prompt_tokens,
                    "gen_tokens": params.gen_tokens}
    if peak_rss_bytes is not None:
        base["peak_rss_bytes"] = peak_rss_bytes
        base["peak_rss_scope"] = "child-process"
    series = [_samples_ns(rec) for rec, _, _ in tests]
    if all(series):
        events = []
        for i in range(min(len(ns) for ns in series)):
            rep = dict(base, index=i)
            for k, (_rec, prefix, tokens) in enumerate(tests):
                seconds = series[k][i] / 1e9
                rep[prefix + "_s"] = seconds
                if seconds > 0:
                    rep[prefix + "_tps"] = tokens / seconds
            events.append(rep)
        return events
    rep = dict(base, index=0, aggregate=True)
    for rec, prefix, _tokens in tests:
        avg_ns, avg_ts = rec.get("avg_ns"), rec.get("avg_ts")
        if isinstance(avg_ns, (int, float)):
            rep[prefix + "_s"] = avg_ns / 1e9
        if isinstance(avg_ts, (int, float)):
            rep[prefix + "_tps"] = avg_ts
    return [rep]


def progress_starts(lines: Sequence[StampedLine]) -> Dict[Tuple[int, str], List[RunLine]]:
    """Counted-run progress lines by ``(benchmark number, "prompt"|"generation")``.

    Each value lists ``(run number, runs, stamp)`` in arrival order. Lines
    that are not a counted run's progress line are ignored.
    """
    found: Dict[Tuple[int, str], List[RunLine]] = {}
    for stamp, line in lines:
        match = _PROGRESS_RUN.match(line.strip())
        if match:
            bench, _count, kind, run, runs = match.groups()
            found.setdefault((int(bench), kind), []).append((int(run), int(runs), stamp))
    return found


def run_windows(lines: Sequence[StampedLine], kind: str, samples_ns: Sequence[float],
                max_overlap_share: float = MAX_OVERLAP_SHARE
                ) -> Tuple[Optional[List[Window]], str, Optional[float]]:
    """The windows of one test's counted runs: ``(windows, why, least_slack_s)``.

    ``kind`` is ``"prompt"`` (the pp test) or ``"generation"`` (the tg test).
    Run ``i``'s window starts at the stamp of its progress line and lasts
    ``samples_ns[i]``. ``windows`` is None when the lines cannot place the
    runs, and ``why`` says why (else it is ``"progress-lines"``).
    ``least_slack_s`` is the smallest gap between a window's end and the
    next run's line (negative: the window reaches past it).

    Exactly one benchmark may have ``kind`` lines and no lines of the other
    kind (a pg test prints both; the job never asks for one), its runs must
    be numbered 1..R in order, and R must equal ``len(samples_ns)``.
    """
    other = "generation" if kind == "prompt" else "prompt"
    found = progress_starts(lines)
    benches = [b for (b, k) in found if k == kind and (b, other) not in found]
    if not benches:
        return None, "llama-bench printed no '%s run' progress line" % kind, None
    if len(benches) > 1:
        return None, "'%s run' progress lines of several benchmarks (%s)" % (
            kind, ", ".join(str(b) for b in sorted(benches))), None
    runs = found[(benches[0], kind)]
    numbers = [run for run, _, _ in runs]
    if numbers != list(range(1, len(runs) + 1)) or len(runs) != len(samples_ns) or \
            any(total != len(runs) for _, total, _ in runs):
        return None, "%d '%s run' progress lines (%s) for %d timed runs" % (
            len(runs), kind, ",".join(str(n) for n in numbers[:12]), len(samples_ns)), None
    windows: List[Window] = []
    least: Optional[float] = None
    for i, (_run, _total, stamp) in enumerate(runs):
        seconds = float(samples_ns[i]) / 1e9
        if seconds < 0:
            return None, "a negative run time in samples_ns", None
        end = stamp + seconds
        windows.append((round(stamp, 6), round(end, 6)))
        if i + 1 < len(runs):
            slack = runs[i + 1][2] - end
            least = slack if least is None else min(least, slack)
            if -slack > max_overlap_share * seconds and -slack > 0.001:
                return None, ("the progress line of %s run %d arrived %.4f s before run %d's "
                              "measured end: stamps too late to place the runs"
                              % (kind, i + 2, -slack, i + 1)), least
    return windows, "progress-lines", least


def phase_windows(lines: Sequence[StampedLine], pp: Optional[Record], tg: Optional[Record],
                  events: List[Record], no_progress: Optional[str] = None
                  ) -> Tuple[Optional[Dict[str, List[Window]]], str, Optional[float]]:
    """Per-repetition windows for the job: ``({event key: windows}, why, least slack)``.

    Keys are ``prefill_window_mono`` (from the pp test's runs) and
    ``decode_window_mono`` (the tg test's), one window per repetition event.
    None, with the reason, when any test's runs cannot be placed: then no
    repetition gets a per-phase window, so no energy is split by guesswork.
    """
    if no_progress is not None:
        return None, no_progress, None
    if not events or events[0].get("aggregate"):
        return None, "llama-bench's output has no per-run times (samples_ns)", None
    out: Dict[str, List[Window]] = {}
    least: Optional[float] = None
    for rec, kind, key in ((pp, "prompt", "prefill_window_mono"),
                           (tg, "generation", "decode_window_mono")):
        if rec is None:
            continue
        windows, why, slack = run_windows(lines, kind, _samples_ns(rec))
        if windows is None:
            return None, why, slack
        if slack is not None:
            least = slack if least is None else min(least, slack)
        out[key] = windows[:len(events)]
    return out, "progress-lines", least


def _rejects_progress(stderr: str) -> bool:
    """llama-bench's answer to an unknown flag, naming ``--progress``."""
    return any("invalid parameter for argument" in line and "--progress" in line
               for line in stderr.splitlines())


# ------------------------------------------------------------------ failure handling

def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    kept = [line for line in text.rstrip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-4000:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


def classify_failure(returncode: int, stderr: str, timed_out: bool = False,
                     timeout_s: Optional[float] = None,
                     peak_rss_bytes: Optional[int] = None) -> BackendError:
    """The ``BackendError`` for a llama-bench run that did not succeed.

    ``returncode`` is Popen-style: negative for death by a signal.
    """
    tail = _tail(stderr)
    quoted = ("\nstderr (last lines):\n" + tail) if tail else "\n(stderr was empty)"
    peak = " (peak RSS %d bytes)" % peak_rss_bytes if peak_rss_bytes else ""
    if timed_out:
        return BackendError("timeout", "llama-bench ran past its %ss timeout and was killed%s%s"
                            % (timeout_s, peak, quoted))
    if returncode == -signal.SIGKILL:
        return BackendError(ERR_OUT_OF_MEMORY, "llama-bench was killed by SIGKILL, most likely by "
                            "the kernel's out-of-memory killer%s%s" % (peak, quoted))
    lowered = stderr.lower()
    if any(word in lowered for word in OOM_WORDS):
        return BackendError(ERR_OUT_OF_MEMORY, "llama-bench ran out of memory (exit status %d)%s%s"
                            % (returncode, peak, quoted))
    if returncode < 0:
        return BackendError(ERR_BACKEND, "llama-bench was killed by %s%s"
                            % (_signal_name(-returncode), quoted))
    if "invalid parameter for argument" in lowered:
        return BackendError(ERR_BACKEND, "llama-bench rejected its command line (a build "
                            "older than the flags edgefarm passes?)%s" % quoted)
    if "failed to load model" in lowered:
        return BackendError(ERR_BACKEND, "llama-bench could not load the model (exit status "
                            "%d)%s" % (returncode, quoted))
    return BackendError(ERR_BACKEND, "llama-bench exited with status %d%s"
                        % (returncode, quoted))


# -------------------------------------------------------------------- child process

def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return status


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _read_stamped(stream: IO[bytes], into: List[StampedLine]) -> None:
    """Append each line of ``stream`` with the ``time.monotonic()`` it arrived at, until EOF."""
    for raw in iter(stream.readline, b""):
        into.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\r\n")))


def run_child(argv: List[str], timeout_s: Optional[float] = None
              ) -> Tuple[int, str, str, bool, Optional[int], List[StampedLine]]:
    """Run ``argv``; return ``(returncode, stdout, stderr, timed_out, peak_rss_bytes, lines)``.

    ``returncode`` is negative for death by a signal (as with Popen).
    ``lines`` is stderr line by line, each with the ``time.monotonic()`` at
    which a thread read it from the pipe (the progress lines' stamps: see
    "Energy" in the module docstring); ``stderr`` is the same text joined.
    Stdout goes to a temporary file, so a chatty child cannot block on it.
    ``peak_rss_bytes`` is ``None`` where ``os.wait4`` does not exist.
    """
    lines: List[StampedLine] = []
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.PIPE)
        except (FileNotFoundError, PermissionError) as exc:
            raise BackendError(ERR_BACKEND_MISSING, "cannot start %s: %s" % (argv[0], exc)) from exc
        except OSError as exc:
            raise BackendError(ERR_BACKEND, "cannot start %s: %s" % (argv[0], exc)) from exc
        assert proc.stderr is not None
        reader = threading.Thread(target=_read_stamped, args=(proc.stderr, lines),
                                  name="llama-bench-stderr", daemon=True)
        reader.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        timed_out = False
        peak: Optional[int] = None
        try:
            if hasattr(os, "wait4"):
                status: Optional[int] = None
                try:
                    while status is None:
                        pid, raw_status, usage = os.wait4(proc.pid, os.WNOHANG)
                        if pid == proc.pid:
                            status = raw_status
                            peak = peakmem.rusage_maxrss_bytes(usage)
                        elif deadline is not None and time.monotonic() >= deadline:
                            timed_out = True
                            _kill(proc.pid)
                            pid, raw_status, usage = os.wait4(proc.pid, 0)
                            status = raw_status
                            peak = peakmem.rusage_maxrss_bytes(usage)
                        else:
                            time.sleep(_POLL_S)
                except BaseException:
                    if status is None:  # not reaped yet: never leave it running
                        _kill(proc.pid)
                        proc.wait()
                    raise
                proc.returncode = _exit_code(status)
            else:  # pragma: no cover - platforms without wait4 (not a farm target)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    proc.kill()
                    proc.wait()
        finally:
            reader.join(_READER_JOIN_S)
            if not reader.is_alive():
                proc.stderr.close()
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    stderr = "\n".join(line for _, line in lines)
    return int(proc.returncode), stdout, stderr, timed_out, peak, list(lines)


# --------------------------------------------------------------------------- backend

class LlamaBenchBackend(Backend):
    """Runs the ``llama-bench`` binary at ``binary`` (see the module docstring)."""

    name = "llama-bench"

    def __init__(self, binary: str, timeout_s: Optional[float] = None) -> None:
        self.binary = os.path.expanduser(binary)
        self.timeout_s = timeout_s

    def _missing(self) -> Optional[str]:
        if not os.path.isfile(self.binary):
            return "llama-bench not found at %s" % self.binary
        if not os.access(self.binary, os.X_OK):
            return "llama-bench at %s is not executable" % self.binary
        return None

    def available(self) -> Tuple[bool, str]:
        """``(True, version)``; the version is ``"unknown"`` unless ``--version`` works.

        Current llama-bench builds reject ``--version`` (exit status 1); the
        build number and commit of a run come from its JSON output instead.
        """
        reason = self._missing()
        if reason:
            return False, reason
        try:
            done = subprocess.run([self.binary, "--version"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=_VERSION_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return True, "unknown"
        except OSError as exc:
            return False, "cannot run %s: %s" % (self.binary, exc)
        if done.returncode != 0:
            return True, "unknown"
        text = (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace")
        match = _VERSION_LINE.search(text)
        return True, ("%s (%s)" % match.groups()) if match else "unknown"

    def run(self, model_path: str, params: JobParams, emit: Emit,
            timeout_s: Optional[float] = None) -> Record:
        timeout = timeout_s if timeout_s is not None else self.timeout_s
        reason = self._missing()
        if reason:
            raise BackendError(ERR_BACKEND_MISSING, reason)
        if not os.path.isfile(model_path):
            raise BackendError(ERR_MODEL_MISSING, "model file not found: %s" % model_path)
        if params.repetitions < 1 or params.prompt_tokens < 0 or params.gen_tokens < 0 \
                or params.prompt_tokens + params.gen_tokens == 0:
            raise BackendError(ERR_BAD_JOB, "llama-bench needs repetitions >= 1 and a prompt or "
                               "generation length > 0")
        if not params.cpu_repack:
            raise BackendError(ERR_BAD_JOB, "cpu_repack: false is supported with the xllamacpp "
                               "backend only; edgefarm does not pass it to llama-bench")
        emit("phase", {"phase": "bench"})
        argv = build_argv(self.binary, model_path, params, progress=True)
        started = time.monotonic()
        returncode, stdout, stderr, timed_out, peak, lines = run_child(argv, timeout)
        ended = time.monotonic()
        no_progress: Optional[str] = None
        if returncode != 0 and not timed_out and _rejects_progress(stderr):
            # A build from before --progress: run again without it, and say
            # that its repetitions have no per-phase windows.
            no_progress = "this llama-bench rejects --progress: %s" % _tail(stderr, 2)
            argv = build_argv(self.binary, model_path, params, progress=False)
            started = time.monotonic()
            returncode, stdout, stderr, timed_out, peak, lines = run_child(argv, timeout)
            ended = time.monotonic()
        if timed_out or returncode != 0:
            raise classify_failure(returncode, stderr, timed_out, timeout, peak)

        records = parse_llama_bench(stdout)
        pp, tg = select_tests(records, params)
        wanted = [("pp %d" % params.prompt_tokens, pp, params.prompt_tokens),
                  ("tg %d" % params.gen_tokens, tg, params.gen_tokens)]
        missing = [label for label, rec, tokens in wanted if tokens > 0 and rec is None]
        if missing:
            start = stdout.strip()[:300] or "(stdout was empty)"
            raise BackendError(ERR_BACKEND, "llama-bench exited 0 but its output has no "
                               "result for %s (%d records parsed); stdout starts:\n%s"
                               % (" and ".join(missing), len(records), start))

        events = repetition_events(pp, tg, params, peak)
        process = [round(started, 6), round(ended, 6)]
        windows, why, slack = phase_windows(lines, pp, tg, events, no_progress)
        for i, rep in enumerate(events):
            fields = dict(rep, process_window_mono=process)
            if windows is None:
                fields["phase_window_reason"] = why
            else:
                for key, series in windows.items():
                    fields[key] = [series[i][0], series[i][1]]
            emit("repetition", fields)
        first = pp if pp is not None else tg
        assert first is not None  # a job has a prompt or a generation test
        info = self._result(first, argv, params, events, peak, stderr, stdout)
        info["phase_windows"] = why
        if slack is not None:
            info["progress_least_slack_s"] = round(slack, 6)
        counted = sum(float(ns) for rec in (pp, tg) if rec is not None for ns in _samples_ns(rec))
        if ended > started and not events[0].get("aggregate"):
            # What share of the process the counted runs were (the rest is
            # model load, warm-ups, context set-up: outside every window).
            info["process_s"] = round(ended - started, 6)
            info["counted_fraction"] = round(counted / 1e9 / (ended - started), 6)
        return info


    def _result(self, first: Record, argv: List[str], params: JobParams, events: List[Record],
                peak: Optional[int], stderr: str, stdout: str = "") -> Record:
        info: Record = {
            "backend": "llama-bench",
            "binary": self.binary,
            "argv": argv[1:],
            "warmup_requested": params.warmup,
            "warmup_runs_builtin": 1 if params.warmup > 0 else 0,
            "repetitions_reported": 0 if events and events[0].get("aggregate") else len(events),
            "aggregate": bool(events and events[0].get("aggregate")),
        }
        for src, dst in (("build_commit", "build_commit"), ("build_number", "build_number"),
                         ("cpu_info", "cpu_info"), ("gpu_info", "gpu_info"),
                         ("backends", "backends"), ("model_size", "model_size_bytes"),
                         ("model_n_params", "model_n_params"), ("model_type", "model_type"),
                         ("n_threads", "n_threads"), ("n_gpu_layers", "n_gpu_layers")):
            if src in first:
                info[dst] = first[src]
        if "build_number" in first and "build_commit" in first:
            info["backend_version"] = "%s (%s)" % (first["build_number"], first["build_commit"])
        if peak is not None:
            info["peak_rss_bytes"] = peak
        warnings = [line.strip() for line in stderr.splitlines()
                    if line.strip().lower().startswith("warning:")][:10]
        if warnings:
            info["warnings"] = warnings  # e.g. "warning: debug build, performance may be affected"
        info["provenance"] = bench_provenance(_raw_record(stdout, first), first)
        return info


# ------------------------------------------------------------------------ provenance

def _raw_record(stdout: str, first: Record) -> Optional[Dict[str, object]]:
    """The unparsed JSON object ``first`` was parsed from, for its settings fields.

    ``parse_llama_bench`` keeps only measurement fields; the settings that
    decide speed (batch sizes, flash attention, KV types, mmap) are read here
    from the same output instead.
    """
    for value in _json_values(_NON_FINITE.sub("null", stdout)):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and _normalize(item) == first:
                return item
    return None


def bench_provenance(raw: Optional[Dict[str, object]], first: Record) -> Dict[str, object]:
    """The job's ``provenance`` (see ``base.PROVENANCE_KEYS``) from llama-bench's own record.

    Every value is what llama-bench printed for the run; a field this build
    does not print (older builds lack ``n_ubatch``, ``flash_attn``,
    ``use_mmap``...) is None with that reason, not filled with a default.
    """
    item = raw or {}
    build = "build %s" % first.get("build_number", "?")
    absent = "this llama-bench (%s) does not print %%s" % build
    values: Dict[str, object] = {"backend": "llama-bench"}
    unknown: Dict[str, str] = {}
    if "build_number" in first and "build_commit" in first:
        values["backend_version"] = "%s (%s)" % (first["build_number"], first["build_commit"])
    else:
        unknown["backend_version"] = absent % "build_number and build_commit"
    for key, src in (("build_number", "build_number"), ("build_commit", "build_commit"),
                     ("threads", "n_threads"), ("gpu_layers", "n_gpu_layers")):
        if src in first:
            values[key] = first[src]
        else:
            unknown[key] = absent % src
    if raw is None:
        reason = "llama-bench's record for the run was not found in its output"
        for key in ("n_batch", "n_ubatch", "flash_attn", "type_k", "type_v", "use_mmap",
                    "cpu_repack"):
            unknown[key] = reason
        return make_provenance("llama-bench", values, unknown)
    for key in ("n_batch", "n_ubatch"):
        values[key] = _as_count(item.get(key))
        if values[key] is None:
            unknown[key] = absent % key
    values["flash_attn"] = flash_attn_label(item.get("flash_attn"))
    for key in ("type_k", "type_v"):
        values[key] = kv_type_label(item.get(key))
    mmap = item.get("use_mmap")
    values["use_mmap"] = mmap if isinstance(mmap, bool) else None
    no_repack = item.get("no_repack")
    if isinstance(no_repack, bool):
        values["cpu_repack"] = not no_repack
    else:
        unknown["cpu_repack"] = (absent % "no_repack" + "; llama.cpp repacks CPU weights "
                                 "by default")
    for key in ("flash_attn", "type_k", "type_v", "use_mmap"):
        if values[key] is None:
            unknown[key] = (absent % key if key not in item
                            else "unrecognised %s %r" % (key, item.get(key)))
    return make_provenance("llama-bench", values, unknown)
