"""Telemetry for one job: the sampler, idle power, cooldowns and per-repetition energy.

The runner (``agents/runner.py``) routes every event a backend emits through
:meth:`JobTelemetry.before` and :meth:`JobTelemetry.after`; that is all a
backend needs to get energy. What happens, in event order::

    hello, phase(model), phase(load)
    [phase(cooldown)]                     cooldown spec: wait until cool enough
    phase(idle), sample(idle_power_w)     idle_s of idle power, when power is measured
    phase(warmup|prefill|decode|bench)    the backend's first work phase, passed on
    repetition (+ energy fields)          for each repetition, then maybe phase(cooldown)
    sample ...                            at most one a second, from the sampler thread
    result (info.energy, info.telemetry)

Job spec keys (all optional; ``job.json`` top level):

``telemetry``            ``false`` turns all of this off (no sampler, no idle wait)
``telemetry_interval_s`` sampler interval, default 0.1 s
``idle_s``               idle-power window before the first repetition, default 2 s (0: none)
``cooldown``             ``{"max_temp_c": 60, "timeout_s": 120}``: before the idle window and
                         between repetitions, wait until the hottest sensor is below
                         ``max_temp_c`` or ``timeout_s`` has passed
``telemetry_test_source`` TEST-ONLY: ``"constant:12.5"`` etc., a fake power source
                         (:func:`agents.telemetry.sources.fake.make_test_source`)

Windows. A repetition's energy is measured over the monotonic windows the
backend reports in the event: ``prefill_window_mono`` and
``decode_window_mono`` (``[t0, t1]``, xllamacpp), or ``process_window_mono``
(the whole child process: llama-bench sends it beside its per-run windows,
and alone when it has none). Energy per phase comes only from the phases'
windows (``energy_method: "counter-window"`` or ``"trapezoid-window"``); a
repetition with only a process window gets that process's energy
(``energy_process_j``, ``energy_method: "process-average"``) and no energy per
phase, with ``energy_unmeasured_reason``. A backend that reports none (the
test-only sleep backend) gets the span from its last ``phase`` event to the
``repetition`` event as the decode window. Memory, temperatures and clock or
throttle warnings are taken over the phases' windows only.
"""

import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from agents.telemetry.sample import Sample
from agents.telemetry.sampler import EnergyUnavailable, Sampler
from agents.telemetry.sources.base import Source
from agents.telemetry.sources.fake import make_test_source
from agents.telemetry.sources.selection import select_sources
from agents.telemetry.sources.system import SystemSource

__all__ = ["JobTelemetry", "TelemetryConfigError", "unmeasured_reason"]

#: ``emit(kind, fields)``, as the runner's event writer takes it.
Emit = Callable[[str, Dict[str, object]], object]

#: Phases after which a backend measures; the first one triggers cooldown and idle.
WORK_PHASES = ("warmup", "prefill", "decode", "bench")

#: At most one ``sample`` event per this many seconds.
SAMPLE_EVENT_S = 1.0

DEFAULT_INTERVAL_S = 0.1
DEFAULT_IDLE_S = 2.0
DEFAULT_COOLDOWN_TIMEOUT_S = 120.0


class TelemetryConfigError(ValueError):
    """The job spec's telemetry settings are malformed (the runner reports ``bad-job``)."""


def unmeasured_reason(missing: Dict[str, str]) -> str:
    """``"energy not measured on this device: nvml: ...; rapl: ..."``."""
    if not missing:
        return "energy not measured on this device: no power or energy source was found"
    return "energy not measured on this device: " + "; ".join(
        "%s: %s" % (name, reason) for name, reason in missing.items())


def _number(spec: Dict[str, object], key: str, default: float, minimum: float = 0.0) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise TelemetryConfigError("%s must be a number >= %g, not %r" % (key, minimum, value))
    return float(value)


def _window(value: object) -> Optional[Tuple[float, float]]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        t0, t1 = float(value[0]), float(value[1])
        if t1 >= t0:
            return t0, t1
    return None


class JobTelemetry(object):
    """Sampler, idle power, cooldown and per-repetition energy for one job."""

    def __init__(self, emit: Emit, sources: Optional[List[Source]] = None,
                 missing: Optional[Dict[str, str]] = None, interval: float = DEFAULT_INTERVAL_S,
                 idle_s: float = DEFAULT_IDLE_S,
                 cooldown: Optional[Dict[str, float]] = None,
                 expected_repetitions: Optional[int] = None, gpu_layers: int = 0,
                 enabled: bool = True, disabled_reason: Optional[str] = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._emit = emit
        self.enabled = enabled
        self.interval = interval
        self.idle_s = idle_s
        self.cooldown = cooldown
        self.expected = expected_repetitions
        self.gpu_layers = gpu_layers
        self._sleep = sleep
        self.missing = dict(missing or {})
        self.reason: Optional[str] = disabled_reason
        self.sampler: Optional[Sampler] = None
        if enabled:
            chosen = list(sources or [])
            reason = unmeasured_reason(self.missing)
            self.sampler = Sampler(chosen, interval, listener=self._on_sample,
                                   unmeasured_reason=reason)
        self.idle_power_w: Optional[float] = None
        self.idle_reason: Optional[str] = None
        self._worked = False
        self._phase_t: Optional[float] = None
        self._seen = 0
        self._pending_cooldown: Optional[Dict[str, object]] = None
        self._cooldowns: List[Dict[str, object]] = []
        self._cooldown_reason: Optional[str] = None
        self._last_sample_event: Optional[float] = None
        self._sample_lock = threading.Lock()
        self.sample_events = 0
        self.measured_reps = 0
        self.unmeasured: List[str] = []

    # -- construction from a job spec ------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Dict[str, object], emit: Emit) -> "JobTelemetry":
        """Build from ``job.json`` (see the module docstring for the keys)."""
        flag = spec.get("telemetry", True)
        params = spec.get("params")
        expected = None
        gpu_layers = 0
        if isinstance(params, dict):
            try:
                expected = int(params.get("warmup", 0)) + int(params.get("repetitions", 0))
                gpu_layers = int(params.get("gpu_layers", 0))
            except (TypeError, ValueError):
                expected = None  # the runner reports malformed params itself
            torch = params.get("torch")
            if isinstance(torch, dict) and torch.get("device") == "cuda":
                # Backend torch on cuda: the whole model is on the GPU whatever
                # gpu_layers (a llama.cpp setting) says, so peak memory is the GPU's.
                gpu_layers = -1
        if flag is False:
            return cls(emit, enabled=False, expected_repetitions=expected,
                       disabled_reason="energy not measured: telemetry is turned off for this "
                                       "job (telemetry: false)")
        if flag is not True and not isinstance(flag, dict):
            raise TelemetryConfigError("telemetry must be true or false, not %r" % (flag,))
        interval = _number(spec, "telemetry_interval_s", DEFAULT_INTERVAL_S, 0.001)
        idle_s = _number(spec, "idle_s", DEFAULT_IDLE_S)
        cooldown = spec.get("cooldown")
        parsed: Optional[Dict[str, float]] = None
        if cooldown is not None:
            if not isinstance(cooldown, dict) or "max_temp_c" not in cooldown:
                raise TelemetryConfigError("cooldown must be {max_temp_c: N, timeout_s: N}, "
                                           "not %r" % (cooldown,))
            parsed = {"max_temp_c": _number(cooldown, "max_temp_c", 0.0, -273.0),
                      "timeout_s": _number(cooldown, "timeout_s", DEFAULT_COOLDOWN_TIMEOUT_S)}
        test = spec.get("telemetry_test_source")
        if test is not None:
            # TEST-ONLY: a fake power source, plus the real memory readings.
            try:
                sources: List[Source] = [make_test_source(str(test)), SystemSource()]
            except ValueError as exc:
                raise TelemetryConfigError(str(exc)) from None
            missing: Dict[str, str] = {}
        else:
            device = spec.get("device")
            hint = device.get("platform") if isinstance(device, dict) else None
            sources, missing = select_sources(str(hint) if hint else None, interval)
        return cls(emit, sources, missing, interval=interval, idle_s=idle_s, cooldown=parsed,
                   expected_repetitions=expected, gpu_layers=gpu_layers)

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        if self.sampler is not None:
            self.sampler.start()
            if not self.sampler.measures_power:
                self.reason = self.sampler.unmeasured_reason

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()

    def _on_sample(self, sample: Sample) -> None:
        """Sampler thread: a ``sample`` event at most once per SAMPLE_EVENT_S."""
        t = sample.t if sample.t is not None else time.monotonic()
        with self._sample_lock:  # the runner's thread takes samples too (cover)
            last = self._last_sample_event
            if last is not None and t - last < SAMPLE_EVENT_S:
                return
            self._last_sample_event = t
        assert self.sampler is not None
        fields = self.sampler.latest()
        if fields:
            self.sample_events += 1
            self._emit("sample", fields)

    # -- the event hooks ---------------------------------------------------------------
    def before(self, kind: str, fields: Dict[str, object]) -> Dict[str, object]:
        """Called before an event is written; returns the fields to write."""
        if kind == "phase" and fields.get("phase") in WORK_PHASES and not self._worked:
            self._worked = True
            self._do_cooldown()
            self._measure_idle()
        elif kind == "repetition" and "carried_from" not in fields:
            # (A repetition carried from an earlier attempt keeps the energy and
            # windows it was measured with; this process's sampler never saw it.)
            fields = dict(fields)
            fields.update(self._repetition(fields))
        return fields

    def after(self, kind: str, fields: Dict[str, object]) -> None:
        """Called after an event is written (cooldown between repetitions happens here)."""
        if kind == "phase":
            self._phase_t = time.monotonic()
        elif kind == "repetition" and "carried_from" not in fields:
            self._seen += 1
            self._phase_t = None
            last = self.expected is not None and self._seen >= self.expected
            posthoc = _window(fields.get("process_window_mono")) is not None
            if not last and not posthoc:
                self._do_cooldown()

    # -- idle and cooldown ---------------------------------------------------------------
    def _measure_idle(self) -> None:
        sampler = self.sampler
        if sampler is None or not sampler.measures_power:
            self.idle_reason = self.reason or "no power source"
            return
        if self.idle_s <= 0:
            self.idle_reason = "idle_s is 0: idle power not measured"
            return
        self._emit("phase", {"phase": "idle", "idle_s": self.idle_s})
        sampler.cover(time.monotonic())  # a power sample at the window's start
        t0 = time.monotonic()
        self._sleep(self.idle_s)
        t1 = time.monotonic()
        sampler.cover(t1)
        fields = sampler.latest()
        try:
            average, peak = sampler.average_and_peak_w(t0, t1)
        except EnergyUnavailable as exc:
            self.idle_reason = "idle power not measured: %s" % exc
            fields["idle_unmeasured_reason"] = self.idle_reason
        else:
            self.idle_power_w = average
            fields["idle_power_w"] = average
            if peak is not None:
                fields["idle_peak_power_w"] = peak
            fields["energy_source"] = sampler.energy_source
        fields["idle_s"] = t1 - t0
        fields["idle_window_mono"] = [round(t0, 6), round(t1, 6)]
        self.sample_events += 1
        self._emit("sample", fields)

    def _do_cooldown(self) -> None:
        if not self.cooldown or self.sampler is None:
            return
        limit = self.cooldown["max_temp_c"]
        timeout = self.cooldown["timeout_s"]
        current = self.sampler.current_max_temp_c()
        if current is None:
            self._cooldown_reason = "no temperature sensor: cooldown skipped"
            self._pending_cooldown = {"cooldown_skipped": self._cooldown_reason}
            return
        start = time.monotonic()
        timed_out = False
        waited = current[0] >= limit
        if waited:
            self._emit("phase", {"phase": "cooldown", "max_temp_c": limit,
                                 "timeout_s": timeout, "temp_c": current[0],
                                 "sensor": current[1]})
            step = max(0.05, min(1.0, 5 * self.interval))
            while True:
                left = timeout - (time.monotonic() - start)
                self._sleep(max(0.001, min(step, left)))
                reading = self.sampler.current_max_temp_c()
                if reading is not None:
                    current = reading
                if current[0] < limit:
                    break
                if time.monotonic() - start >= timeout:
                    timed_out = True
                    break
        record: Dict[str, object] = {
            "cooldown_s": time.monotonic() - start if waited else 0.0,
            "cooldown_temp_c": current[0], "cooldown_sensor": current[1]}
        if timed_out:
            record["cooldown_timed_out"] = True
        self._pending_cooldown = record
        self._cooldowns.append(record)

    # -- per repetition -----------------------------------------------------------------
    def _repetition(self, fields: Dict[str, object]) -> Dict[str, object]:
        out: Dict[str, object] = {}
        if self._pending_cooldown is not None:
            out.update(self._pending_cooldown)
            self._pending_cooldown = None
        sampler = self.sampler
        if sampler is None:
            out["energy_unmeasured_reason"] = self.reason or "telemetry is off"
            self.unmeasured.append(str(out["energy_unmeasured_reason"]))
            return out
        now = time.monotonic()
        prefill = _window(fields.get("prefill_window_mono"))
        decode = _window(fields.get("decode_window_mono"))
        process = _window(fields.get("process_window_mono"))
        if prefill is None and decode is None and process is None and \
                self._phase_t is not None and "prefill_s" not in fields:
            # A backend that reports no window (the test-only sleep backend):
            # from its phase event to this repetition event.
            decode = (round(self._phase_t, 6), round(now, 6))
            out["decode_window_mono"] = [decode[0], decode[1]]
        # The windows this repetition's work ran in: its phases' windows when
        # the backend has them (llama-bench's pp and tg runs are far apart, so
        # the span between them is other work), else the whole process.
        windows = [w for w in (prefill, decode) if w is not None]
        if not windows and process is not None:
            windows = [process]
        if windows:
            sampler.cover(max(w[1] for w in windows + ([process] if process else [])))
        if not sampler.measures_power:
            out["energy_unmeasured_reason"] = sampler.unmeasured_reason
        elif not windows:
            out["energy_unmeasured_reason"] = ("energy not measured: the backend reported no "
                                               "time window for this repetition")
        else:
            try:
                out.update(self._energy(fields, prefill, decode, process))
            except EnergyUnavailable as exc:
                problems = "; ".join("%s: %s" % kv for kv in sorted(sampler.errors.items()))
                out["energy_unmeasured_reason"] = "energy not measured: %s%s" % (
                    exc, " (%s)" % problems if problems else "")
        if "energy_unmeasured_reason" in out:
            self.unmeasured.append(str(out["energy_unmeasured_reason"]))
        elif sampler.measures_power:
            self.measured_reps += 1
        if windows:
            out.update(self._memory_and_heat(windows))
            # Keep what a later repetition can still ask for: its process
            # window (llama-bench sends the same one with every repetition).
            sampler.discard_before(min(w[0] for w in windows + ([process] if process else [])))
        return out

    def _energy(self, fields: Dict[str, object], prefill: Optional[Tuple[float, float]],
                decode: Optional[Tuple[float, float]],
                process: Optional[Tuple[float, float]]) -> Dict[str, object]:
        """Energy fields over the phases' windows; see docs/telemetry.md "Per repetition".

        Only windows that cover a phase's counted work carry energy per phase.
        A backend that knows only its process's window (llama-bench without
        ``--progress``) gets the process's energy and no energy per phase:
        the process's average power split over its phases counted model load
        as decode power (37-40 % off on an H200), so it is not reported as one.
        """
        sampler = self.sampler
        assert sampler is not None
        out: Dict[str, object] = {}
        process_j: Optional[float] = None
        if process is not None and process[1] > process[0]:
            process_j = sampler.energy_j(*process)
            out["energy_process_j"] = process_j
            out["process_s"] = process[1] - process[0]
        if prefill is None and decode is None:
            assert process is not None
            out["energy_method"] = "process-average"
            if process_j is not None:
                out["avg_power_w"] = process_j / (process[1] - process[0])
                peak = sampler.average_and_peak_w(*process)[1]
                if peak is not None:
                    out["peak_power_w"] = peak
            why = fields.get("phase_window_reason")
            out["energy_unmeasured_reason"] = (
                "energy per phase not measured: the backend reported only its whole process's "
                "window%s; that process's energy is energy_process_j"
                % (" (%s)" % why if why else ""))
            return out
        out["energy_method"] = sampler.window_method
        total_j = 0.0
        total_s = 0.0
        decode_s: Optional[float] = None
        for phase, window in (("prefill", prefill), ("decode", decode)):
            if window is None:
                continue
            energy = sampler.energy_j(*window)
            out["energy_%s_j" % phase] = energy
            total_j += energy
            total_s += window[1] - window[0]
            if phase == "decode":
                decode_s = window[1] - window[0]
        if total_s > 0:
            # Over the phases' windows only: the gap between them (llama-bench's
            # other runs, context set-up) is not this repetition's work.
            out["avg_power_w"] = total_j / total_s
        window_peaks = [sampler.average_and_peak_w(*w)[1] for w in (prefill, decode)
                        if w is not None and w[1] > w[0]]
        peaks = [v for v in window_peaks if v is not None]
        if peaks:
            out["peak_power_w"] = max(peaks)
        energy_decode = out.get("energy_decode_j")
        tokens = fields.get("decode_window_tokens", fields.get("gen_tokens"))
        if isinstance(energy_decode, float) and isinstance(tokens, int) and tokens > 0:
            out["j_per_token"] = energy_decode / tokens
        if self.idle_power_w is not None:
            out["idle_power_w"] = self.idle_power_w
            if isinstance(energy_decode, float) and decode_s is not None:
                # A separate field: nothing else has idle power taken out.
                out["energy_decode_net_j"] = energy_decode - self.idle_power_w * decode_s
        elif self.idle_reason:
            out["idle_unmeasured_reason"] = self.idle_reason
        out["energy_source"] = sampler.energy_source
        return out

    def _memory_and_heat(self, windows: List[Tuple[float, float]]) -> Dict[str, object]:
        """Peak memory, hottest sensor and warnings over the repetition's windows only.

        Clock drops and throttle flags outside the counted windows (model
        load, warm-ups, idle clocks between runs) do not disturb the
        measurement, so they raise no warning. A GPU at its own power cap
        inside them is ``power_limited``, not a warning (``Sampler.limits``).
        """
        sampler = self.sampler
        assert sampler is not None
        out: Dict[str, object] = {}
        memory: Dict[str, int] = {}
        hottest: Optional[Tuple[float, str]] = None
        changes: List[str] = []
        limits: List[str] = []
        for window in windows:
            for key, value in sampler.peak_memory(*window).items():
                memory[key] = max(value, memory.get(key, value))
            heat = sampler.max_temp_c(*window)
            if heat is not None and (hottest is None or heat[0] > hottest[0]):
                hottest = heat
            for note in sampler.changes(*window):
                if note not in changes:
                    changes.append(note)
            for note in sampler.limits(*window):
                if note not in limits:
                    limits.append(note)
        gpu = memory.get("gpu_mem_used_bytes")
        ram = memory.get("ram_used_bytes")
        if gpu is not None and self.gpu_layers != 0:
            out["peak_mem_bytes"] = gpu
            out["peak_mem_scope"] = "gpu"
            if ram is not None:
                out["peak_ram_used_bytes"] = ram
            job = memory.get("gpu_mem_job_bytes")
            if job is not None:
                out["peak_gpu_mem_job_bytes"] = job
        elif ram is not None:
            out["peak_mem_bytes"] = ram
            out["peak_mem_scope"] = "system"
        if hottest is not None:
            out["max_temp_c"] = hottest[0]
            out["max_temp_sensor"] = hottest[1]
        if changes:
            out["warning"] = "; ".join(changes)
        if limits:  # the device at its own power limit: recorded, not a disturbance
            out["power_limited"] = "; ".join(limits)
        return out

    # -- the result --------------------------------------------------------------------
    def result_info(self) -> Dict[str, object]:
        """``{"energy": {...}, "telemetry": {...}}`` for the result event's info."""
        energy: Dict[str, object]
        sampler = self.sampler
        if sampler is not None and sampler.measures_power and self.measured_reps:
            energy = {"measured": True, "source": sampler.energy_source}
            if self.idle_power_w is not None:
                energy["idle_power_w"] = self.idle_power_w
            if self.unmeasured:
                energy["unmeasured_repetitions"] = len(self.unmeasured)
        else:
            reason = self.reason or (sampler.unmeasured_reason if sampler else None)
            if reason is None and self.unmeasured:
                reason = self.unmeasured[-1]
            energy = {"measured": False,
                      "reason": reason or "energy not measured: no repetition was measured"}
        telemetry: Dict[str, object] = {"enabled": self.enabled}
        if sampler is not None:
            telemetry.update({
                "interval_s": self.interval,
                "sources": [s.describe() for s in sampler.sources],
                "unavailable": self.missing,
                "samples": sampler.count,
                "sample_events": self.sample_events,
            })
            if sampler.cpu_s is not None:
                telemetry["sampler_cpu_s"] = round(sampler.cpu_s, 6)
            if sampler.errors:
                telemetry["errors"] = dict(sampler.errors)
        if self.cooldown:
            cooldown: Dict[str, object] = dict(self.cooldown)
            cooldown["waits"] = len([c for c in self._cooldowns if c.get("cooldown_s")])
            if self._cooldown_reason:
                cooldown["skipped"] = self._cooldown_reason
            telemetry["cooldown"] = cooldown
        return {"energy": energy, "telemetry": telemetry}
