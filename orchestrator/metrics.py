"""Every Prometheus metric edgefarm exports, and the two collectors that produce them.

The contract is docs/metrics.md; ``METRICS`` below is the single place in code
that names a metric, its type, help text, unit and label tuple, and a test
holds the two together. Nothing here touches the global registry: the caller
passes a ``CollectorRegistry`` in, so tests and the CLI each build their own.

Two collectors, because the data has two sources:

* ``LiveMetrics`` implements the scheduler's ``Progress`` protocol and keeps
  what only the running controller knows: which device is busy and in which
  phase, live power, memory and temperatures from ``sample`` events, attempt
  outcomes, samples received. Progress calls only update plain dicts under a
  lock (a sample costs microseconds, see bench/ingest.py); metric families
  are built when Prometheus scrapes.
* ``StoreCollector`` reads the results store at scrape time and exports what
  the store knows: sweeps, jobs by state and the per-configuration medians
  and MoE/dense ratios of ``orchestrator.report.build_report``, for the
  running sweep and the last finished one only, so label sets stay bounded.

Metrics that were not measured are absent, never zero: no telemetry, no power
series; no ``energy_j`` in the repetitions, no energy metrics.

Example::

    registry = CollectorRegistry()
    live = LiveMetrics(registry, platforms={"orin-nano": "jetson"})
    StoreCollector("edgefarm-results", registry=registry)
    run_sweep(store, sweep_id, progress=MultiProgress(rich_progress, live))
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from orchestrator.errors import StoreError
from orchestrator.states import ATTEMPT_STATES, JOB_STATES, AttemptState, SweepState
from orchestrator.store import DB_NAME, Store, sample_memory_bytes

__all__ = [
    "METRICS",
    "PHASES",
    "ATTEMPT_OUTCOMES",
    "MetricDef",
    "LiveMetrics",
    "StoreCollector",
    "MultiProgress",
    "config_label",
    "pair_label",
    "result_rows",
]

log = logging.getLogger("edgefarm.metrics")

MetricKind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class MetricDef:
    """One metric of the contract: exposition name, type, labels, help text, unit.

    ``name`` is the name Prometheus stores (counters end in ``_total``);
    ``unit`` is the base-unit suffix already in that name, or ``""``.
    """

    name: str
    kind: MetricKind
    labels: tuple[str, ...]
    help: str
    unit: str = ""

    @property
    def family_name(self) -> str:
        """The name a metric family is built with (client_python adds ``_total`` itself)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty family for this metric, ready for ``add_metric``."""
        if self.kind == "counter":
            return CounterMetricFamily(self.family_name, self.help, labels=self.labels,
                                       unit=self.unit)
        return GaugeMetricFamily(self.family_name, self.help, labels=self.labels, unit=self.unit)


def _defs(*defs: MetricDef) -> dict[str, MetricDef]:
    return {d.name: d for d in defs}


#: The contract of docs/metrics.md, in its order.
METRICS: dict[str, MetricDef] = _defs(
    MetricDef("edgefarm_sweep_info", "gauge", ("sweep", "name"),
              "Sweeps exported (the running one and the last finished one); always 1."),
    MetricDef("edgefarm_sweep_state", "gauge", ("sweep", "state"),
              "A sweep's state as a state set: the current state's series is 1, the others 0."),
    MetricDef("edgefarm_sweep_jobs", "gauge", ("sweep", "state"),
              "Jobs of a sweep by state (pending, running, done, failed, cancelled)."),
    MetricDef("edgefarm_job_attempts_total", "counter", ("device", "outcome"),
              "Finished job attempts by outcome (done, failed, cancelled) since the exporter "
              "started."),
    MetricDef("edgefarm_device_up", "gauge", ("device", "platform"),
              "1 while the device answers (its last attempt delivered events), 0 when an "
              "attempt got nothing from it."),
    MetricDef("edgefarm_device_busy", "gauge", ("device",),
              "1 while a job runs on the device, else 0."),
    MetricDef("edgefarm_device_phase", "gauge", ("device", "phase"),
              "Phase of the device's job as a state set: every phase is exported, the current "
              "one 1 and the others 0 ('idle' between jobs)."),
    MetricDef("edgefarm_device_power_watts", "gauge", ("device", "rail"),
              "Live power per rail in watts; rail 'total' is the designated total.", "watts"),
    MetricDef("edgefarm_device_memory_used_bytes", "gauge", ("device",),
              "Live system memory in use, in bytes.", "bytes"),
    MetricDef("edgefarm_device_memory_total_bytes", "gauge", ("device",),
              "System memory size, in bytes.", "bytes"),
    MetricDef("edgefarm_device_temperature_celsius", "gauge", ("device", "sensor"),
              "Live temperatures in degrees Celsius.", "celsius"),
    MetricDef("edgefarm_decode_tokens_per_second", "gauge",
              ("sweep", "device", "model", "arch", "config"),
              "Median decode tokens/s of the counted repetitions."),
    MetricDef("edgefarm_prefill_tokens_per_second", "gauge",
              ("sweep", "device", "model", "arch", "config"),
              "Median prefill tokens/s of the counted repetitions."),
    MetricDef("edgefarm_ttft_seconds", "gauge", ("sweep", "device", "model", "arch", "config"),
              "Median time to first token in seconds.", "seconds"),
    MetricDef("edgefarm_energy_per_token_joules", "gauge",
              ("sweep", "device", "model", "arch", "config"),
              "Median decode energy per generated token in joules (absent when not measured).",
              "joules"),
    MetricDef("edgefarm_peak_memory_bytes", "gauge", ("sweep", "device", "model", "arch", "config"),
              "Peak RSS of the inference process over the counted repetitions, in bytes.",
              "bytes"),
    MetricDef("edgefarm_routing_share_ratio", "gauge", ("sweep", "device", "model", "config"),
              "Share of MoE-block time spent routing (absent when not measured).", "ratio"),
    MetricDef("edgefarm_moe_dense_decode_ratio", "gauge", ("sweep", "device", "pair", "config"),
              "MoE decode tokens/s divided by dense decode tokens/s (< 1: MoE behind).", "ratio"),
    MetricDef("edgefarm_moe_dense_prefill_ratio", "gauge", ("sweep", "device", "pair", "config"),
              "MoE prefill tokens/s divided by dense prefill tokens/s.", "ratio"),
    MetricDef("edgefarm_moe_dense_energy_ratio", "gauge", ("sweep", "device", "pair", "config"),
              "MoE joules/token divided by dense joules/token (> 1: MoE costs more; absent when "
              "not measured).", "ratio"),
    MetricDef("edgefarm_telemetry_samples_total", "counter", ("device",),
              "Telemetry samples received."),
    MetricDef("edgefarm_device_throttled", "gauge", ("device",),
              "1 when the device's telemetry raised a throttle flag in its last health reading "
              "(farm service; absent until one)."),
    MetricDef("edgefarm_device_power_measurable", "gauge", ("device",),
              "1 when the device has a power or energy source edgefarm reads, 0 when not "
              "(farm service health reading)."),
    MetricDef("edgefarm_device_leased", "gauge", ("device",),
              "1 while a controller holds a fresh lease on the device (farm service)."),
    MetricDef("edgefarm_device_quarantined", "gauge", ("device",),
              "1 while the device is quarantined in the running or last finished sweep."),
    MetricDef("edgefarm_device_last_seen_timestamp_seconds", "gauge", ("device",),
              "Unix time the device last answered: a sweep event or a health reading.",
              "seconds"),
    MetricDef("edgefarm_sweep_last_event_timestamp_seconds", "gauge", ("sweep",),
              "Unix time the farm service last saw an event of the sweep (running sweeps).",
              "seconds"),
)

#: What LiveMetrics exports (the controller's live view) ...
LIVE_METRICS = ("edgefarm_job_attempts_total", "edgefarm_device_up", "edgefarm_device_busy",
                "edgefarm_device_phase", "edgefarm_device_power_watts",
                "edgefarm_device_memory_used_bytes", "edgefarm_device_memory_total_bytes",
                "edgefarm_device_temperature_celsius", "edgefarm_telemetry_samples_total")
#: ... what only the farm service's device view adds (``orchestrator/farm/collector.py``) ...
FARM_ONLY_METRICS = ("edgefarm_device_throttled", "edgefarm_device_power_measurable",
                     "edgefarm_device_leased", "edgefarm_device_quarantined",
                     "edgefarm_device_last_seen_timestamp_seconds",
                     "edgefarm_sweep_last_event_timestamp_seconds")
#: ... and what StoreCollector exports (read from the results store): together, all.
STORE_METRICS = tuple(name for name in METRICS
                      if name not in LIVE_METRICS and name not in FARM_ONLY_METRICS)
#: Phases ``edgefarm_device_phase`` reports; anything else an agent sends is
#: ignored so that the label set stays the one the contract lists.
PHASES = ("model", "synth", "load", "warmup", "prefill", "decode", "bench", "cooldown", "profile",
          "idle")
#: Outcomes ``edgefarm_job_attempts_total`` counts.
ATTEMPT_OUTCOMES = tuple(str(s) for s in ATTEMPT_STATES if s != AttemptState.RUNNING)
#: At most this many rails (and, separately, sensors) per device: a rail or
#: sensor set is fixed by the hardware, so more means a misbehaving agent,
#: and Prometheus must not pay for it.
MAX_SERIES_PER_DEVICE = 32
#: Sweep states that count as "finished" for the last-finished sweep.
ENDED_STATES = (SweepState.FINISHED, SweepState.INTERRUPTED)


def config_label(spec: Mapping[str, Any]) -> str:
    """The ``config`` label of a job or report config: ``p128-g64-t2-ngl0``.

    A backend torch job adds its variant (a job record's ``torch``, a report
    config's ``variant``): ``p128-g64-t2-ngl0-cpu-float32-experts-eager-decode-eager``.
    """
    from orchestrator.planner import variant_label

    torch = spec.get("torch")
    variant = spec.get("variant") or variant_label(torch if isinstance(torch, dict) else None)
    return (f"p{int(spec['prompt_tokens'])}-g{int(spec['gen_tokens'])}"
            f"-t{int(spec['threads'])}-ngl{int(spec['gpu_layers'])}"
            + ("-" + "-".join(str(variant).replace("·", " ").split()) if variant else ""))


def pair_label(moe_id: str, dense_id: str) -> str:
    """The ``pair`` label of a comparison: ``<moe id>_vs_<dense id>``."""
    return f"{moe_id}_vs_{dense_id}"


# -- live metrics ----------------------------------------------------------------
@dataclass
class DeviceTelemetry:
    """A device's newest telemetry, each value with the time it arrived.

    Stale values drop out by that time instead of showing a device's power
    after it went quiet; memory size (from hello facts or samples) does not
    expire. Shared by a sweep's exporter and the farm service.
    """

    power: dict[str, tuple[float, float]] = field(default_factory=dict)
    temps: dict[str, tuple[float, float]] = field(default_factory=dict)
    memory_used: tuple[float, float] | None = None
    memory_total: float | None = None

    def take_sample(self, ev: dict[str, Any], now: float) -> None:
        """Take one ``sample`` event: fields it lacks keep their last values.

        A value that is not a number is skipped, not raised on: a bad reading
        from one sensor must not stop a sweep. At most MAX_SERIES_PER_DEVICE
        rails and sensors are kept.
        """
        _keep(self.power, ev.get("rails_w"), now)
        if is_number(ev.get("total_w")):
            self.power["total"] = (float(ev["total_w"]), now)
        _keep(self.temps, ev.get("temps_c"), now)
        try:
            used = sample_memory_bytes(ev, "ram_used")
            total = sample_memory_bytes(ev, "ram_total")
        except (TypeError, ValueError):
            return
        if used is not None:
            self.memory_used = (float(used), now)
        if total is not None:
            self.memory_total = float(total)


def _keep(held: dict[str, tuple[float, float]], readings: Any, now: float) -> None:
    """Take a sample's rails or sensors: numbers only, at most MAX_SERIES_PER_DEVICE names."""
    if not isinstance(readings, dict):
        return
    for name, value in readings.items():
        if is_number(value) and (name in held or len(held) < MAX_SERIES_PER_DEVICE):
            held[str(name)] = (float(value), now)


@dataclass
class _DeviceState(DeviceTelemetry):
    """What the controller currently knows about one device (guarded by LiveMetrics._lock)."""

    busy: int = 0
    phase: str | None = "idle"
    up: int | None = None                 # None: not known yet (absent, not 0)
    answered: bool = False                # the current attempt delivered an event
    attempts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTEMPT_OUTCOMES, 0))
    samples: int = 0


class LiveMetrics:
    """The controller's live view: a scheduler ``Progress`` sink and a Prometheus collector.

    ``platforms`` maps device names to inventory platforms (the ``platform``
    label of ``edgefarm_device_up``); devices listed there are exported as
    idle from the start. Telemetry not refreshed for ``telemetry_ttl_s``
    seconds is dropped from the exposition, since an old reading is no
    longer a live one. Thread-safe: the driver thread calls the Progress
    methods while the HTTP server's threads scrape.
    """

    def __init__(self, registry: CollectorRegistry, *, platforms: Mapping[str, str] | None = None,
                 telemetry_ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._platforms = dict(platforms or {})
        self._devices: dict[str, _DeviceState] = {d: _DeviceState() for d in self._platforms}
        self._ttl = telemetry_ttl_s
        self._clock = clock
        self._ignored_phases: set[str] = set()
        registry.register(self)

    def _device(self, name: str) -> _DeviceState:
        state = self._devices.get(name)
        if state is None:
            state = self._devices[name] = _DeviceState()
        return state

    # -- Progress protocol ----------------------------------------------------
    def job_started(self, job: dict[str, Any], attempt: int) -> None:
        with self._lock:
            state = self._device(job["device"])
            state.busy = 1
            state.answered = False
            # The agent's first phase event names the real phase; until then
            # no phase is claimed.
            state.phase = None

    def job_event(self, job: dict[str, Any], event: dict[str, Any]) -> None:
        kind = event.get("kind")
        with self._lock:
            state = self._device(job["device"])
            state.answered = True
            state.up = 1
            if kind == "sample":
                self._sample(state, event)
            elif kind == "phase":
                phase = event.get("phase")
                if phase in PHASES:
                    state.phase = phase
                elif str(phase) not in self._ignored_phases:
                    self._ignored_phases.add(str(phase))
                    log.info("ignoring phase %r from %s: not one of %s", phase, job["device"],
                             ", ".join(PHASES))
            elif kind == "hello":
                facts = event.get("facts")
                if isinstance(facts, dict) and is_number(facts.get("ram_total_bytes")):
                    state.memory_total = float(facts["ram_total_bytes"])

    def job_finished(self, job: dict[str, Any], state: str, error: str | None,
                     retrying: bool) -> None:
        with self._lock:
            device = self._device(job["device"])
            device.busy = 0
            device.phase = "idle"
            if state in device.attempts:
                device.attempts[state] += 1
            # An attempt that failed without a single event never reached the
            # agent (connection, upload or start failed): the device did not answer.
            if state == AttemptState.FAILED and not device.answered:
                device.up = 0

    def _sample(self, state: _DeviceState, ev: dict[str, Any]) -> None:
        state.samples += 1
        state.take_sample(ev, self._clock())

    # -- Collector ------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        fams = {name: METRICS[name].family() for name in LIVE_METRICS}
        fresh_after = self._clock() - self._ttl
        with self._lock:
            for name in sorted(self._devices):
                s = self._devices[name]
                for outcome, n in s.attempts.items():
                    fams["edgefarm_job_attempts_total"].add_metric([name, outcome], n)
                if s.up is not None:
                    fams["edgefarm_device_up"].add_metric(
                        [name, self._platforms.get(name, "unknown")], s.up)
                fams["edgefarm_device_busy"].add_metric([name], s.busy)
                if s.phase is not None:  # a state set: every phase, the current one 1
                    for phase in PHASES:
                        fams["edgefarm_device_phase"].add_metric([name, phase],
                                                                 1 if phase == s.phase else 0)
                for rail, (watts, at) in sorted(s.power.items()):
                    if at >= fresh_after:
                        fams["edgefarm_device_power_watts"].add_metric([name, rail], watts)
                for sensor, (celsius, at) in sorted(s.temps.items()):
                    if at >= fresh_after:
                        fams["edgefarm_device_temperature_celsius"].add_metric(
                            [name, sensor], celsius)
                if s.memory_used is not None and s.memory_used[1] >= fresh_after:
                    fams["edgefarm_device_memory_used_bytes"].add_metric([name], s.memory_used[0])
                if s.memory_total is not None:
                    fams["edgefarm_device_memory_total_bytes"].add_metric([name], s.memory_total)
                fams["edgefarm_telemetry_samples_total"].add_metric([name], s.samples)
        for fam in fams.values():
            if fam.samples:
                yield fam

    def describe(self) -> list[Metric]:
        """The names this collector exports, so a registry refuses a second copy of it."""
        return [METRICS[name].family() for name in LIVE_METRICS]


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class MultiProgress:
    """Fan one scheduler's Progress calls out to several sinks (rich bars and LiveMetrics).

    A failing sink is logged and skipped: a display or metrics bug must not
    abort a benchmark sweep that may have run for hours.
    """

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def _each(self, method: str, *args: Any) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception:
                log.exception("progress sink %s failed in %s", type(sink).__name__, method)

    def job_started(self, job: dict[str, Any], attempt: int) -> None:
        self._each("job_started", job, attempt)

    def job_event(self, job: dict[str, Any], event: dict[str, Any]) -> None:
        self._each("job_event", job, event)

    def job_finished(self, job: dict[str, Any], state: str, error: str | None,
                     retrying: bool) -> None:
        self._each("job_finished", job, state, error, retrying)

    def device_warning(self, device: str, message: str) -> None:
        for sink in self.sinks:
            if hasattr(sink, "device_warning"):
                try:
                    sink.device_warning(device, message)
                except Exception:
                    log.exception("progress sink %s failed in device_warning",
                                  type(sink).__name__)


# -- store metrics ---------------------------------------------------------------
Row = tuple[str, tuple[str, ...], float]


@dataclass
class _SweepCache:
    fingerprint: tuple[Any, ...]
    built_at: float
    build_s: float
    rows: list[Row]


class StoreCollector:
    """Exports sweeps, jobs and comparison results from the results store at scrape time.

    Which sweeps: with ``sweep_id`` only that one; otherwise the newest
    running sweep (unless ``include_running`` is false) and the newest ended
    one (finished or interrupted). A fresh ``Store`` is opened per scrape
    (SQLite WAL lets it read while the driver writes). Aggregates come from
    ``build_report`` and are cached per sweep until its state, job counts or
    number of repetitions change; a running sweep is rebuilt at most every
    ``rebuild_s`` seconds
    (longer for a sweep whose report is slow to build), because a large
    sweep's report reads every repetition and a scrape should not keep a
    2-core controller busy.
    """

    def __init__(self, results_dir: str | Path, *, registry: CollectorRegistry | None = None,
                 sweep_id: str | None = None, include_running: bool = True,
                 rebuild_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.results_dir = Path(results_dir)
        self.sweep_id = sweep_id
        self.include_running = include_running
        self.rebuild_s = rebuild_s
        self._clock = clock
        self._cache: dict[str, _SweepCache] = {}
        self._lock = threading.Lock()  # scrapes may overlap; build once
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        """The names this collector exports, so a registry refuses a second copy of it."""
        return [METRICS[name].family() for name in STORE_METRICS]

    def _exported(self, store: Store) -> list[Any]:
        if self.sweep_id is not None:
            try:
                return [store.sweep(self.sweep_id)]
            except StoreError:
                return []  # not created yet
        chosen = []
        rows = store.sweeps(limit=1000)
        if self.include_running:
            chosen += [r for r in rows if r["state"] == SweepState.RUNNING][:1]
        chosen += [r for r in rows if r["state"] in ENDED_STATES][:1]
        return chosen

    def collect(self) -> Iterator[Metric]:
        if not (self.results_dir / DB_NAME).exists():
            return  # no store yet: nothing measured, nothing exported (and none created)
        with self._lock:
            try:
                rows = self._rows()
            except Exception:
                # A locked or broken store must not fail the whole scrape
                # (live metrics share it); the log says why the series went.
                log.exception("reading the results store %s failed", self.results_dir)
                return
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, labels, value in rows:
            fam = fams.get(name)
            if fam is None:
                fam = fams[name] = METRICS[name].family()
            fam.add_metric(list(labels), value)
        yield from fams.values()

    def _stale(self, cached: _SweepCache, fingerprint: tuple[Any, ...], now: float) -> bool:
        """Rebuild when the sweep changed: at once if its state did, else after a gap.

        The gap is ``rebuild_s`` or ten times the last build, whichever is
        longer, so building reports never takes more than a tenth of the
        controller's time however large the sweep (bench/ingest.py times one).
        """
        if cached.fingerprint == fingerprint:
            return False
        if cached.fingerprint[0] != fingerprint[0]:
            return True
        return now - cached.built_at >= max(self.rebuild_s, 10 * cached.build_s)

    def _rows(self) -> list[Row]:
        store = Store(self.results_dir, read_only=True)
        try:
            out: list[Row] = []
            exported = self._exported(store)
            for sweep in exported:
                sid = sweep["id"]
                counts = store.job_counts(sid)
                out.append(("edgefarm_sweep_info", (sid, sweep["name"]), 1.0))
                out += [("edgefarm_sweep_state", (sid, str(state)),
                         1.0 if sweep["state"] == state else 0.0) for state in SweepState]
                out += [("edgefarm_sweep_jobs", (sid, state), float(counts.get(state, 0)))
                        for state in map(str, JOB_STATES)]
                # Counted repetitions too, so a result shows up at the next
                # scrape after it arrives, not only when its job ends.
                reps = store.repetition_count(sid)
                fingerprint = (sweep["state"], tuple(sorted(counts.items())), reps)
                cached = self._cache.get(sid)
                now = self._clock()
                if cached is None or self._stale(cached, fingerprint, now):
                    started = time.perf_counter()
                    rows = result_rows(store, sid)
                    cached = self._cache[sid] = _SweepCache(
                        fingerprint, now, time.perf_counter() - started, rows)
                out += cached.rows
            for sid in set(self._cache) - {s["id"] for s in exported}:
                del self._cache[sid]
            return out
        finally:
            store.close()


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _joules_per_token(body: dict[str, Any]) -> float | None:
    """A repetition's decode energy per token: ``j_per_token``, else ``energy_j / gen_tokens``."""
    if body.get("j_per_token") is not None:
        return float(body["j_per_token"])
    if body.get("energy_j") is not None and body.get("gen_tokens"):
        return float(body["energy_j"]) / float(body["gen_tokens"])
    return None


def result_rows(store: Store, sweep_id: str) -> list[Row]:
    """Per-configuration medians and MoE/dense ratios of one sweep, as metric rows.

    Speeds, TTFT, peak memory and ratios are taken from ``build_report`` as
    they are, so dashboards and ``edgefarm report`` can never disagree: the
    decode and prefill ratios are the paired estimates behind the report's
    verdict, and a pair the report refuses (provenance differs) has none. Only
    energy and routing share (which the report does not compute yet) are
    read from the counted repetitions here, and only when they carry them.
    Models in no comparison pair are not in the report and not exported.
    """
    from orchestrator.report import build_report

    report = build_report(store, sweep_id)
    extra: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for rep in store.counted_repetitions(sweep_id):
        body = json.loads(rep["body"])
        key = (rep["device"], rep["model_id"], config_label(json.loads(rep["spec_json"])))
        jpt = _joules_per_token(body)
        if jpt is not None:
            extra[key]["j_per_token"].append(jpt)
        if body.get("routing_share") is not None:
            extra[key]["routing_share"].append(float(body["routing_share"]))

    rows: list[Row] = []
    seen: set[tuple[str, str, str]] = set()
    for comp in report["comparisons"]:
        device = comp["device"]
        config = config_label(comp["config"])
        energy: dict[str, float | None] = {}
        for side in ("moe", "dense"):
            stats = comp[side]
            key = (device, stats["model_id"], config)
            energy[side] = _median(extra.get(key, {}).get("j_per_token", []))
            if key in seen:
                continue
            seen.add(key)
            labels = (sweep_id, device, stats["model_id"], stats["arch"], config)
            for name, value in (
                    ("edgefarm_decode_tokens_per_second", stats["decode_tps_median"]),
                    ("edgefarm_prefill_tokens_per_second", stats["prefill_tps_median"]),
                    ("edgefarm_ttft_seconds", stats["ttft_s_median"]),
                    ("edgefarm_peak_memory_bytes", stats["peak_rss_bytes"]),
                    ("edgefarm_energy_per_token_joules", energy[side])):
                if value is not None:
                    rows.append((name, labels, float(value)))
            share = _median(extra.get(key, {}).get("routing_share", []))
            if share is not None:
                rows.append(("edgefarm_routing_share_ratio",
                             (sweep_id, device, stats["model_id"], config), share))
        pair = (sweep_id, device, pair_label(comp["moe"]["model_id"], comp["dense"]["model_id"]),
                config)
        energy_ratio = (energy["moe"] / energy["dense"]
                        if energy["moe"] is not None and energy["dense"] else None)
        for name, value in (("edgefarm_moe_dense_decode_ratio", comp["decode_ratio"]),
                            ("edgefarm_moe_dense_prefill_ratio", comp["prefill_ratio"]),
                            ("edgefarm_moe_dense_energy_ratio", energy_ratio)):
            if value is not None:
                rows.append((name, pair, float(value)))
    return rows
