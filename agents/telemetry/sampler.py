"""The live sampler: reads telemetry sources on one background thread during a job.

::

    sampler = Sampler(sources, interval=0.1)
    sampler.start()
    ...                                   # the benchmark runs
    joules = sampler.energy_j(t0, t1)     # t0, t1: time.monotonic() seconds
    sampler.stop()

Every ``interval`` seconds the thread reads all *polled* sources (NVML, RAPL,
Jetson sysfs, /proc) into one :class:`~agents.telemetry.sample.Sample` with
the monotonic ``t`` and unix ``wall`` of the reading. *Streaming* sources
(tegrastats, macmon, powermetrics: child processes) are read by the same
thread as soon as ``select`` says their pipe has data, each of their samples
stamped with the time it arrived. All samples go into one time-ordered list.

Energy over a window ``[t0, t1]`` (:meth:`Sampler.energy_j`):

* when every power source keeps a hardware energy counter (NVML total
  energy, RAPL ``energy_uj``, powermetrics' per-interval energies summed), the
  increase of the counters between ``t0`` and ``t1``, each counter read at
  ``t0`` and ``t1`` by linear interpolation between the samples around them.
  Counters that wrap (RAPL) are unwrapped as samples arrive, so one wrap
  between two samples is seen (read at least once per wrap period, which a
  sampler at 10 Hz does by far);
* otherwise the trapezoidal integral of ``total_w`` over exactly ``[t0, t1]``
  (:func:`~agents.telemetry.energy.integrate_trapezoid`).

:attr:`Sampler.energy_source` names which: ``"nvml-counter"``,
``"rapl-counter"``, ``"nvml-counter+rapl-counter"``, ``"integrated:VDD_IN"``...
With no power source it is None and :attr:`Sampler.unmeasured_reason` says why;
``energy_j`` then raises :class:`EnergyUnavailable`, never returns a guess.

The samples must cover the window: :meth:`Sampler.cover` takes a reading now
(polled sources) or waits for the next streamed one, so a caller asking about
a window that just ended gets it measured.

Cheap by design: one thread, one Sample per tick, /proc and sysfs files kept
open and re-read from offset 0, no subprocess per sample.
"""

import bisect
import select
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, cast

from agents.telemetry.energy import integrate_trapezoid, value_of
from agents.telemetry.sample import Sample
from agents.telemetry.sources.base import Source

if TYPE_CHECKING:  # for the type checker only: the sampler needs just the contract
    from agents.telemetry.sources.process import ProcessSource

__all__ = ["Sampler", "EnergyUnavailable"]

#: Called from the sampler's thread after each stored sample.
Listener = Callable[[Sample], None]


class EnergyUnavailable(ValueError):
    """Energy cannot be measured over the window asked for (the message says why)."""


class Sampler(object):
    """Samples ``sources`` every ``interval`` seconds on a background thread.

    ``listener(sample)`` is called on that thread after every stored sample
    (the runner uses it to emit low-rate ``sample`` events). ``max_samples``
    bounds memory: the oldest samples are dropped beyond it (at 10 Hz the
    default keeps about 3 hours); :meth:`discard_before` drops what a caller
    no longer needs.
    """

    def __init__(self, sources: Sequence[Source], interval: float = 0.1,
                 listener: Optional[Listener] = None, max_samples: int = 100000,
                 unmeasured_reason: Optional[str] = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive, not %r" % (interval,))
        self.sources = list(sources)
        self.interval = float(interval)
        self.listener = listener
        self.max_samples = max(10, int(max_samples))
        self._polled = [s for s in self.sources if not s.streaming]
        self._streams = _streamed(self.sources)
        self._power = _power_sources(self.sources)
        self._data_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._arrived = threading.Condition(self._data_lock)
        self._samples: List[Sample] = []
        self._times: List[float] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started: List[Source] = []
        self._unwrap: Dict[str, Tuple[float, float]] = {}  # key -> (last raw, offset)
        self._ranges: Dict[str, float] = {}
        self._counters: Tuple[str, ...] = ()
        self._label: Optional[str] = None
        self._reason = unmeasured_reason
        self._latest: Dict[str, object] = {}
        #: ``{source name: message}`` for sources that failed to start or read.
        self.errors: Dict[str, str] = {}
        #: How many samples were taken in all (discarded ones included).
        self.count = 0
        #: CPU seconds the sampler's thread used (set when it stops).
        self.cpu_s: Optional[float] = None
        self._configure()

    # -- what energy is measured from ------------------------------------------------
    def _configure(self) -> None:
        power = self._power
        self._ranges = {}
        for source in power:
            self._ranges.update(source.counter_ranges)
        if not power:
            self._counters = ()
            self._label = None
            if self._reason is None:
                self._reason = "no power or energy source on this device"
        elif all(s.counter_keys and s.counter_label for s in power):
            self._counters = tuple(k for s in power for k in s.counter_keys)
            self._label = "+".join(str(s.counter_label) for s in power)
        else:
            self._counters = ()
            self._label = None  # "integrated:<rail>" once a sample names its rail

    @property
    def energy_source(self) -> Optional[str]:
        """``"nvml-counter"``, ``"integrated:VDD_IN"``...; None when no power is measured."""
        if not self._power:
            return None
        if self._label is not None:
            return self._label
        rail = self._latest.get("total_rail")
        return "integrated:%s" % (rail if rail else "+".join(s.name for s in self._power))

    @property
    def window_method(self) -> str:
        """How :meth:`energy_j` measures: ``"counter-window"`` or ``"trapezoid-window"``."""
        return "counter-window" if self._counters else "trapezoid-window"

    @property
    def unmeasured_reason(self) -> Optional[str]:
        """Why energy is not measured (None when it is)."""
        return None if self._power else self._reason

    @property
    def measures_power(self) -> bool:
        return bool(self._power)

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> "Sampler":
        """Start every source and the thread; a source that fails to start is dropped."""
        if self._thread is not None:
            return self
        for source in list(self.sources):
            try:
                source.start()
                self._started.append(source)
            except Exception as exc:  # a tool that vanished, a driver that went away
                self.errors[source.name] = "start failed: %s: %s" % (type(exc).__name__, exc)
                self.sources.remove(source)
        self._polled = [s for s in self.sources if not s.streaming]
        self._streams = _streamed(self.sources)
        dropped = [s for s in self._power if s not in self.sources]
        self._power = _power_sources(self.sources)
        if dropped and not self._power:
            self._reason = "energy not measured: the power source did not start: " + "; ".join(
                "%s: %s" % (s.name, self.errors.get(s.name, "failed")) for s in dropped)
        self._configure()  # counter keys are known only once NVML has started
        self._stop.clear()
        self.sample_now()
        self._thread = threading.Thread(target=self._loop, name="telemetry-sampler",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and every source (child processes are terminated)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.interval + 5.0)
            self._thread = None
        for source in self._started:
            try:
                source.stop()
            except Exception as exc:
                self.errors.setdefault(source.name, "stop failed: %s" % exc)
        self._started = []

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        cpu0 = time.thread_time()
        try:
            self._run()
        finally:
            self.cpu_s = time.thread_time() - cpu0

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self.sample_now()
                next_tick += self.interval
                if next_tick <= now:  # fell behind (a slow read): skip, do not burst
                    next_tick = now + self.interval
                continue
            wait = next_tick - now
            streams = [s for s in self._streams if s.running()]
            if not streams:
                # time.sleep, not Event.wait: a timed Event.wait costs this
                # thread about 90 us of CPU per wake-up on the 2-core VM,
                # time.sleep about 35. stop() waits at most one slice.
                time.sleep(min(wait, 0.25))
                continue
            try:
                ready, _, _ = select.select([s.fileno() for s in streams], [], [], wait)
            except (OSError, ValueError):
                self._stop.wait(wait)
                continue
            for source in streams:
                if source.fileno() in ready:
                    try:
                        got = source.read()
                    except Exception as exc:
                        self.errors.setdefault(source.name, "read failed: %s" % exc)
                        got = []
                    ended = getattr(source, "ended", None)
                    if ended:  # the tool exited: say how, once
                        self.errors.setdefault(source.name, ended)
                    for sample in got:
                        self.add(sample)

    # -- taking samples ----------------------------------------------------------------
    def sample_now(self) -> Optional[Sample]:
        """Read every polled source now and store the merged sample (thread-safe).

        With several polled power sources (NVML and RAPL) ``total_w`` is the
        sum of their totals, present only when each of them gave one.
        """
        if not self._polled:
            return None
        with self._poll_lock:
            sample = Sample()
            before = time.monotonic()
            got = False
            totals: List[Tuple[Optional[float], Optional[str]]] = []
            for source in self._polled:
                sample.total_w = None
                sample.total_rail = None
                try:
                    if source.read(sample):
                        got = True
                except Exception as exc:
                    self.errors.setdefault(source.name, "read failed: %s: %s"
                                           % (type(exc).__name__, exc))
                if source in self._power:
                    totals.append((sample.total_w, sample.total_rail))
            after = time.monotonic()
            if not got:
                return None
            sample.total_w = None
            sample.total_rail = None
            if totals and all(w is not None for w, _ in totals):
                if len(totals) == 1:
                    sample.total_w, sample.total_rail = totals[0]
                else:
                    sample.total_w = round(sum(w for w, _ in totals), 6)  # type: ignore[misc]
                    sample.total_rail = "+".join(str(r) for _, r in totals)
            sample.t = (before + after) / 2.0
            sample.wall = time.time() - (after - sample.t)
            self.add(sample)
            return sample

    def add(self, sample: Sample) -> None:
        """Store a sample (the thread does this; tests and callers may feed their own).

        Counters named in a source's ``counter_ranges`` are unwrapped here.
        """
        listener = None
        with self._data_lock:
            if self._ranges or self._counters:
                self._unwrap_counters(sample)
            t = sample.t if sample.t is not None else time.monotonic()
            sample.t = t
            if not self._times or t >= self._times[-1]:
                self._times.append(t)
                self._samples.append(sample)
            else:
                index = bisect.bisect_right(self._times, t)
                self._times.insert(index, t)
                self._samples.insert(index, sample)
            if len(self._times) > self.max_samples + self.max_samples // 10:
                extra = len(self._times) - self.max_samples
                del self._times[:extra]
                del self._samples[:extra]
            self.count += 1
            self._remember(sample)
            self._arrived.notify_all()
            listener = self.listener
        if listener is not None:
            try:
                listener(sample)
            except Exception as exc:  # a listener must not stop the sampling
                self.errors.setdefault("listener", "%s: %s" % (type(exc).__name__, exc))

    def _unwrap_counters(self, sample: Sample) -> None:
        for key, raw in sample.energy_j.items():
            rng = self._ranges.get(key)
            if rng is None:
                continue
            last, offset = self._unwrap.get(key, (raw, 0.0))
            if raw < last:
                offset += rng
            self._unwrap[key] = (raw, offset)
            sample.energy_j[key] = raw + offset

    def _remember(self, sample: Sample) -> None:
        latest = self._latest
        if sample.rails_w:
            latest["rails_w"] = sample.rails_w
        if sample.total_w is not None:
            latest["total_w"] = sample.total_w
            latest["total_rail"] = sample.total_rail
        if sample.ram_used_mb is not None:
            latest["ram_used_mb"] = sample.ram_used_mb
        if sample.ram_total_mb is not None:
            latest["ram_total_mb"] = sample.ram_total_mb
        if sample.gpu_mem_used_mb is not None:
            latest["gpu_mem_used_mb"] = sample.gpu_mem_used_mb
        if sample.temps_c:
            temps = latest.get("temps_c")
            if isinstance(temps, dict) and not set(sample.temps_c) >= set(temps):
                merged = dict(temps)
                merged.update(sample.temps_c)
                latest["temps_c"] = merged
            else:
                latest["temps_c"] = sample.temps_c

    def latest(self) -> Dict[str, object]:
        """The newest value of each live field across sources (what a ``sample`` event carries).

        Keys, each only when some source reported it: ``rails_w``, ``total_w``,
        ``total_rail``, ``ram_used_mb``, ``ram_total_mb``, ``gpu_mem_used_mb``,
        ``temps_c``.
        """
        with self._data_lock:
            out = dict(self._latest)
        for key in ("rails_w", "temps_c"):
            if key in out:
                out[key] = dict(out[key])  # type: ignore[call-overload]
        return out

    def cover(self, t: float, timeout: Optional[float] = None) -> bool:
        """Make sure a power sample at or after ``t`` exists; True when one does.

        Polled sources are read now; streamed ones are waited for (up to
        ``timeout``, default five intervals or 2 s, whichever is longer).
        """
        keys = ("total_w",) if not self._counters else tuple(
            "energy_j." + k for k in self._counters)
        if self._has_after(t, keys):
            return True
        if self._polled:
            self.sample_now()
            if self._has_after(t, keys) or not self._power:
                return True
        if not self._streams or self._thread is None:
            return self._has_after(t, keys)
        deadline = time.monotonic() + (timeout if timeout is not None
                                       else max(2.0, 5 * self.interval))
        with self._arrived:
            while True:
                if self._has_after_locked(t, keys):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)

    def _has_after(self, t: float, keys: Tuple[str, ...]) -> bool:
        with self._data_lock:
            return self._has_after_locked(t, keys)

    def _has_after_locked(self, t: float, keys: Tuple[str, ...]) -> bool:
        index = bisect.bisect_left(self._times, t)
        for sample in self._samples[index:]:
            if any(value_of(sample, key) is not None for key in keys):
                return True
        return False

    def discard_before(self, t: float) -> None:
        """Drop samples older than ``t``, keeping the last one before it (an edge)."""
        with self._data_lock:
            index = bisect.bisect_left(self._times, t) - 1
            if index > 0:
                del self._times[:index]
                del self._samples[:index]

    # -- windows -----------------------------------------------------------------------
    @property
    def samples(self) -> List[Sample]:
        """A copy of the stored samples, oldest first."""
        with self._data_lock:
            return list(self._samples)

    def window(self, t0: float, t1: float, key: Optional[str] = None) -> List[Sample]:
        """The samples covering ``[t0, t1]``: those inside it plus the nearest one on each side.

        With ``key`` (``"total_w"``, ``"energy_j.gpu0"``...) the edges are the
        nearest samples that carry that value, so an integration over the
        result sees the window's edges.
        """
        if t1 < t0:
            raise ValueError("window ends before it starts: t0=%r, t1=%r" % (t0, t1))
        with self._data_lock:
            lo = bisect.bisect_right(self._times, t0) - 1
            hi = bisect.bisect_left(self._times, t1)
            samples = self._samples
            if key is not None:
                while lo >= 0 and value_of(samples[lo], key) is None:
                    lo -= 1
                while hi < len(samples) and value_of(samples[hi], key) is None:
                    hi += 1
            return list(samples[max(lo, 0):hi + 1])

    def energy_j(self, t0: float, t1: float) -> float:
        """Joules consumed over ``[t0, t1]`` (monotonic seconds); see the module docstring.

        Raises :class:`EnergyUnavailable` when no power is measured or the
        samples do not cover the window.
        """
        if not self._power:
            raise EnergyUnavailable(self._reason or "no power source")
        if t1 < t0:
            raise EnergyUnavailable("window ends before it starts: t0=%r, t1=%r" % (t0, t1))
        if self._counters:
            total = 0.0
            counted = 0
            for key in self._counters:
                path = "energy_j." + key
                samples = self.window(t0, t1, path)
                if not any(key in s.energy_j for s in samples):
                    continue  # a counter this device never reports (powermetrics' ane)
                total += _value_at(samples, path, t1) - _value_at(samples, path, t0)
                counted += 1
            if not counted:
                raise EnergyUnavailable("no sample has any of the energy counters %s"
                                        % ", ".join(self._counters))
            if total <= 0.0 and t1 > t0:
                # A powered device never uses nothing: the counter did not tick
                # inside the window (NVML's updates every ~20-100 ms; a tiny
                # model decodes faster than that). Not 0 J, but unmeasured.
                raise EnergyUnavailable(
                    "the energy counter did not advance over the %.0f ms window: it updates "
                    "less often than that" % ((t1 - t0) * 1000))
            return total
        samples = self.window(t0, t1, "total_w")
        try:
            return integrate_trapezoid(samples, t0, t1, "total_w")
        except ValueError as exc:
            raise EnergyUnavailable(str(exc)) from None

    def average_and_peak_w(self, t0: float, t1: float) -> Tuple[float, Optional[float]]:
        """Average power over ``[t0, t1]`` (energy / duration) and the highest ``total_w`` in it.

        The average follows :meth:`energy_j` (a counter when there is one);
        the peak is None when no source reports power (only counters).
        """
        if t1 <= t0:
            raise EnergyUnavailable("an average needs a window of positive length")
        average = self.energy_j(t0, t1) / (t1 - t0)
        peak = self._peak(t0, t1, "total_w")
        return average, peak

    def _peak(self, t0: float, t1: float, key: str) -> Optional[float]:
        samples = self.window(t0, t1, key)
        values = [value_of(s, key) for s in samples]
        inside = [v for v in values if v is not None]
        return max(inside) if inside else None

    def peak_memory(self, t0: float, t1: float) -> Dict[str, int]:
        """Highest memory in use over ``[t0, t1]``, in bytes, by what was sampled.

        ``{"ram_used_bytes": ..., "gpu_mem_used_bytes": ..., "gpu_mem_job_bytes": ...}``
        (the last: GPU memory of the job's own processes, where NVML names
        them); a key is present only when some sample in or around the window
        had it.
        """
        out: Dict[str, int] = {}
        for key, name in (("ram_used_mb", "ram_used_bytes"),
                          ("gpu_mem_used_mb", "gpu_mem_used_bytes"),
                          ("extra.gpu_mem_job_mb", "gpu_mem_job_bytes")):
            peak = self._peak(t0, t1, key)
            if peak is not None:
                out[name] = int(round(peak * 1048576))
        return out

    def max_temp_c(self, t0: float, t1: float) -> Optional[Tuple[float, str]]:
        """``(degrees, sensor)`` of the hottest reading over ``[t0, t1]``, or None."""
        best: Optional[Tuple[float, str]] = None
        for sample in self.window(t0, t1):
            for sensor, value in sample.temps_c.items():
                if isinstance(value, (int, float)) and (best is None or value > best[0]):
                    best = (float(value), sensor)
        return best

    def current_max_temp_c(self) -> Optional[Tuple[float, str]]:
        """The hottest sensor in the newest temperatures, or None without sensors."""
        temps = self.latest().get("temps_c")
        if not isinstance(temps, dict) or not temps:
            return None
        sensor = max(temps, key=lambda k: temps[k])
        return float(temps[sensor]), str(sensor)

    def changes(self, t0: float, t1: float, clock_tolerance: float = 0.10) -> List[str]:
        """What changed over ``[t0, t1]`` that can skew a measurement, as readable lines.

        A clock that fell more than ``clock_tolerance`` below the highest
        value it had reached earlier in the window (a ramp up from idle at the
        start of a window is not a change that skews it; a drop under load
        is), and any throttle flag a source raised (NVML power/thermal throttle
        reasons, powermetrics' thermal pressure other than Nominal) except a
        GPU held at its own power limit alone (``limits``).
        """
        samples = self._in(t0, t1)
        notes: List[str] = []
        highest: Dict[str, float] = {}
        lowest_after: Dict[str, Tuple[float, float]] = {}  # name -> (high, lowest below it)
        for sample in samples:
            for name, value in sample.clocks_mhz.items():
                if not isinstance(value, (int, float)):
                    continue
                high = highest.get(name)
                if high is None or value > high:
                    highest[name] = float(value)
                elif high > 0 and (high - value) / high > clock_tolerance:
                    seen = lowest_after.get(name)
                    if seen is None or value < seen[1]:
                        lowest_after[name] = (high, float(value))
        for name in sorted(lowest_after):
            high, low = lowest_after[name]
            notes.append("clock %s fell from %g to %g MHz" % (name, high, low))
        return notes + self._flags(samples, limit=False)

    def limits(self, t0: float, t1: float) -> List[str]:
        """Throttle flags over ``[t0, t1]`` that say only "at its own power limit".

        An NVIDIA GPU running a compute-bound prefill at its power cap (NVML's
        SW power cap reason, alone) is the device working as built under this
        load, every repetition alike: recorded (``power_limited``), never a
        disturbance. Heat, a hardware slowdown or a power brake stay changes.
        """
        return self._flags(self._in(t0, t1), limit=True)

    def _in(self, t0: float, t1: float) -> List[Sample]:
        return [s for s in self.window(t0, t1) if s.t is not None and t0 <= s.t <= t1]

    def _flags(self, samples: List[Sample], limit: bool) -> List[str]:
        """``"<source> <key>: <flags>"`` per throttle key, of power-limit flags or the others."""
        notes: List[str] = []
        for source in self.sources:
            for key in source.throttle_keys:
                flags: List[str] = []
                for sample in samples:
                    flag = sample.extra.get(key)
                    if flag in (None, 0, "Nominal", "nominal") or _power_cap_only(flag) != limit:
                        continue
                    text = _throttle_text(flag)
                    if text not in flags:
                        flags.append(text)
                if flags:
                    notes.append("%s %s: %s" % (source.name, key, ", ".join(flags)))
        return notes


def _streamed(sources: Sequence[Source]) -> List["ProcessSource"]:
    """The streaming sources, as the process sources they are.

    ``streaming = True`` is set by :class:`ProcessSource` alone (sources/base.py's
    contract: a streaming source is a child process read through ``fileno()``,
    ``running()`` and ``read() -> samples``), so every source kept here is one:
    the cast states that, it converts nothing.
    """
    return [cast("ProcessSource", s) for s in sources if s.streaming]


def _power_sources(sources: Sequence[Source]) -> List[Source]:
    """The sources whose power and energy count: every polled one, or one streamed one.

    A streamed source's samples arrive at their own times, so its power is
    never added to another source's: when there is one, it alone counts.
    """
    power = [s for s in sources if s.power]
    streamed = [s for s in power if s.streaming]
    return streamed[:1] if streamed else power


def _value_at(samples: List[Sample], key: str, t: float) -> float:
    """``key`` at time ``t``, interpolated linearly between the samples around it."""
    points: List[Tuple[float, float]] = []
    for s in samples:
        pv = value_of(s, key)
        if s.t is not None and pv is not None:
            points.append((s.t, pv))
    if not points or points[0][0] > t or points[-1][0] < t:
        span = "no samples" if not points else "[%r, %r]" % (points[0][0], points[-1][0])
        raise EnergyUnavailable("samples of %s cover %s; %r is outside" % (key, span, t))
    times = [p[0] for p in points]
    right = bisect.bisect_left(times, t)
    if times[right] == t:
        return float(points[right][1])
    (ta, va), (tb, vb) = points[right - 1], points[right]
    return float(va) + (float(vb) - float(va)) * (t - ta) / (tb - ta)


def _power_cap_only(value: object) -> bool:
    """An NVML throttle mask holding the SW power cap reason and nothing else."""
    from agents.telemetry.sources.nvml import NVML_POWER_CAP

    return isinstance(value, int) and not isinstance(value, bool) and value == NVML_POWER_CAP


def _throttle_text(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        from agents.telemetry.sources.nvml import NVML_THROTTLE_NAMES

        names = [name for bit, name in NVML_THROTTLE_NAMES if value & bit]
        return "+".join(names) if names else "0x%x" % value
    return str(value)
