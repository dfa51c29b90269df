"""Run a job's models in paired rounds and say what was done.

A job holds one model, or a MoE with its dense baselines (``spec["models"]``).
After each model's warm-ups, every round runs one counted repetition of every
model in an order drawn for that round (``agents/rounds.py``), so drift in
the machine lands on all models alike and each round gives one paired ratio
per MoE/dense pair. Each repetition event carries ``model``, ``round`` and
``position`` and the disturbance record of ``agents/disturbance.py``; a round
with a disturbed repetition stays in the log but is left out of the ratios,
and an adaptive job runs another in its place (within ``max``).

Where the models stay loaded:

* session backends (xllamacpp, sleep) keep every model of the job loaded when
  the device's available memory allows (file sizes × ``RESIDENT_FACTOR``
  against ``MemAvailable``), so no round reloads a model; otherwise each
  repetition loads its model afresh, after its own warm-ups. The result
  records which (``resident``). By default, though, a job of several models
  loads each afresh for every repetition (``keep_loaded`` false): the
  verdict-stability bench found the same pair's ratio differing by ~7% from
  one load of the models to the next, a variation an interval over one load
  cannot see. A backend whose models must not share a
  process (``isolate_models``: llama.cpp contexts slow each other down) gets
  a worker process per model (``agents/model_worker.py``), whose CPU time
  counts as the benchmark's own in the disturbance record.
* batch backends (llama-bench, one process per invocation) run one invocation
  per model per round (``repetitions_per_round`` counted repetitions each,
  after llama-bench's own warm-up); a single-model job is one invocation of all
  its repetitions, as before.

``repetitions_per_round: "auto"`` sizes the rounds from what a fresh load
costs on this device: round 0 runs one counted repetition of each model and
times, per model, the load and warm-ups (or, for a batch backend, the
invocation around its counted repetitions); every later round then runs
``k`` counted repetitions per load, the smallest ``k`` (at most
``AUTO_MAX_PER_ROUND``) for which counted repetitions fill
``AUTO_TARGET_EFFICIENCY`` of each round and of the whole job, capped so the
rounds end within ``AUTO_TIMEOUT_SHARE`` of the job's limit. Each round still loads every
model afresh, so load-to-load variation stays inside the interval; the extra
repetitions only make each round's rate (their median) steadier. What was
measured and chosen is in the summary (``repetitions_per_round_auto``).

Retries and resume keep the rounds already measured: a new attempt of a job
whose earlier attempt completed some rounds receives them in its spec
(``carried``, gathered by the controller from its store) and replays them
first, re-emitting each repetition with ``carried_from`` (the attempt and the
time it was measured), then runs only the rounds still missing. At most
``max - 1`` rounds are carried, so every attempt measures at least one round
and reports its own backend's provenance.
"""

import itertools
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from agents.backends.base import Backend, Emit, JobParams, Session
from agents.disturbance import Snapshot, assess
from agents.protocol import EV_PHASE, EV_REPETITION
from agents.rounds import RoundPlan

#: ``open(model_path, params, emit) -> Session``: the backend's own, or a worker's.
OpenSession = Callable[[str, JobParams, Emit], Session]

#: Resident memory of a loaded GGUF per byte of file, used only to decide
#: whether all models of a job fit at once (CPU weight repacking measured
#: 7.5-7.8 GB for OLMoE-1B-7B's 3.9 GB file on x86; GPU offload needs less).
RESIDENT_FACTOR = 2.2


def mem_available_bytes() -> Optional[int]:
    """``MemAvailable`` from /proc/meminfo; None elsewhere."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: ``repetitions_per_round: "auto"``: the share of a round that counted
#: repetitions should fill, and the most repetitions per load it may take.
AUTO_TARGET_EFFICIENCY = 0.8
AUTO_MAX_PER_ROUND = 12
#: Share of the job's time limit the rounds may fill (the rest: the profiling
#: pass, the result); ``auto`` caps repetitions per round to stay inside it.
AUTO_TIMEOUT_SHARE = 0.8


def auto_per_round(overhead_s: float, repetition_s: float,
                   target: float = AUTO_TARGET_EFFICIENCY,
                   most: int = AUTO_MAX_PER_ROUND) -> int:
    """Counted repetitions per load so that ``k*rep / (overhead + k*rep) >= target``.

    ``overhead_s`` and ``repetition_s`` are a round's totals over its models
    (loads and warm-ups; one counted repetition of each). At least 1, at most
    ``most``; 1 when nothing was timed. One round seen as a whole job.
    """
    return job_per_round(0.0, 0.0, 1, overhead_s, repetition_s, 0.0, target, most)


def job_per_round(elapsed_s: float, counted_so_far_s: float, rounds_left: int,
                  overhead_s: float, repetition_s: float, after_s: float = 0.0,
                  target: float = AUTO_TARGET_EFFICIENCY, most: int = AUTO_MAX_PER_ROUND
                  ) -> int:
    """Repetitions per round so that the whole job's counted share reaches ``target``.

    With ``T0`` seconds spent so far (``C0`` of them counted), ``L`` rounds
    left of ``O`` s of loads and warm-ups and ``k x C`` s of counting each,
    and ``P`` s after the rounds (the profiling pass), the job's share is
    ``(C0 + L k C) / (T0 + L (O + k C) + P)``; solved for the smallest ``k``.
    At least 1, at most ``most``.
    """
    if rounds_left <= 0 or repetition_s <= 0:
        return 1
    # - 1e-9: 0.8 / 0.2 is 4.000..01 in floating point, and an exact 4 must give 4.
    need = (target * (elapsed_s + rounds_left * overhead_s + after_s) - counted_so_far_s) / (
        rounds_left * repetition_s * (1.0 - target)) - 1e-9
    k = int(need)
    if k < need:
        k += 1
    return max(1, min(most, k))


#: Why a paired job loads each model afresh for every repetition by default.
FRESH_LOAD_REASON = ("a fresh load per repetition, so load-to-load variation (measured up to "
                     "~7% on a 2-core VM) is inside the interval; keep_models_loaded: true "
                     "trades that for speed")


def resident_plan(paths: Sequence[str], keep_loaded: bool = True,
                  estimate: Optional[Tuple[int, Optional[int], str]] = None
                  ) -> Tuple[str, str]:
    """``("all" | "one-at-a-time", why)`` for a session backend's models.

    ``estimate`` is the backend's own ``(bytes needed, bytes available,
    where)`` (``Backend.resident_need``); None: GGUF file sizes x
    ``RESIDENT_FACTOR`` against the host's ``MemAvailable``.
    """
    if len(paths) == 1:
        return "all", "one model"
    if not keep_loaded:
        return "one-at-a-time", FRESH_LOAD_REASON
    if estimate is not None:
        need, available, where = estimate
    else:
        need = int(sum(os.path.getsize(p) for p in paths) * RESIDENT_FACTOR)
        available, where = mem_available_bytes(), "available"
    if available is None:
        return "one-at-a-time", "available memory unknown on this system"
    if need <= available * 0.8:
        return "all", "%d MiB estimated for all models <= 80%% of %d MiB %s" % (
            need >> 20, available >> 20, where)
    return "one-at-a-time", "%d MiB estimated for all models > 80%% of %d MiB %s" % (
        need >> 20, available >> 20, where)


class RoundRunner(object):
    """Runs one job's models in rounds through ``backend``; see the module docstring."""

    def __init__(self, backend: Backend, models: List[Dict[str, object]], paths: List[str],
                 params: JobParams, plan: RoundPlan, emit: Emit,
                 repetitions_per_round: int = 1,
                 open_session: Optional[OpenSession] = None, keep_loaded: bool = True,
                 carried: Optional[Dict[str, object]] = None, auto_per_round: bool = False,
                 timeout_s: Optional[float] = None, profile_after: bool = False) -> None:
        self.backend = backend
        self.open_session: OpenSession = open_session or backend.open
        self.keep_loaded = keep_loaded
        self.ids = [str(m.get("id") or "model-%d" % n) for n, m in enumerate(models)]
        self.archs = [str(m.get("arch", "")) for m in models]
        self.paths = paths
        self.params = params
        self.plan = plan
        self.emit = emit
        self.per_round = max(1, repetitions_per_round)
        #: ``repetitions_per_round: "auto"``: per_round is 1 until round 0 was timed.
        self.auto = auto_per_round
        self.auto_record: Dict[str, object] = {}
        self._overhead_s: Dict[int, float] = {}
        self._counted_s: Dict[int, float] = {}
        #: The job's time limit, from the start of the rounds: ``auto`` never
        #: sizes rounds that would run into it.
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        #: A profiling pass follows the rounds (it loads each MoE once more).
        self.profile_after = profile_after
        self.pairs = [(a, b) for a in range(len(models)) if self.archs[a] == "moe"
                      for b in range(len(models)) if self.archs[b] == "dense"]
        self.kept: Dict[Tuple[int, int], List[float]] = {pair: [] for pair in self.pairs}
        self.excluded: Dict[str, int] = {}
        # Warm-ups and counted repetitions are numbered apart, each from 0 and
        # unique within the job (the store keys repetitions by both).
        self.indices = {True: itertools.count(), False: itertools.count()}
        self.cpu_inference = backend.cpu_in_process and params.gpu_layers == 0
        self.infos: Dict[str, Dict[str, object]] = {}
        self.workers: Tuple[int, ...] = ()  # pids of model workers (their CPU is ours)
        self.carried = carried or {}
        self.carried_rounds = 0

    # -- events ---------------------------------------------------------------------
    def _repetition(self, i: int, round_index: Optional[int], position: Optional[int],
                    fields: Dict[str, object], before: Optional[Snapshot]) -> Dict[str, object]:
        """Emit one repetition with its model, round and (counted ones) disturbance record."""
        body = dict(fields)
        body["model"] = self.ids[i]
        body["model_arch"] = self.archs[i]
        warmup = bool(body.get("warmup"))
        body["index"] = next(self.indices[warmup])
        if not warmup:
            body["round"] = round_index
            body["position"] = position
            if before is not None and not body.get("synthetic"):
                body.update(assess(before, Snapshot(self.workers), self.params.threads,
                                   self.cpu_inference))
        written = self.emit(EV_REPETITION, body)
        return written if written is not None else body

    def _begin_round(self, round_index: int) -> List[int]:
        """Draw the round's order and announce it (a ``round`` phase event)."""
        order = self.plan.order(round_index, len(self.ids))
        self.emit(EV_PHASE, {"phase": "round", "round": round_index,
                             "order": [self.ids[i] for i in order]})
        return order

    def _end_round(self, round_index: int, bodies: Dict[int, List[Dict[str, object]]]
                   ) -> Tuple[bool, str]:
        """Keep the round's ratios, or count it excluded; then: stop, and why?"""
        self._keep_or_exclude(bodies)
        return self.plan.decide(round_index + 1, self.kept)

    def _keep_or_exclude(self, bodies: Dict[int, List[Dict[str, object]]]) -> None:
        """Keep the round's ratios, or count it excluded with its reasons."""
        reasons = sorted({str(b["disturbed"]).split(":")[0] for group in bodies.values()
                          for b in group if b.get("disturbed")})
        if reasons:
            for reason in reasons:
                self.excluded[reason] = self.excluded.get(reason, 0) + 1
            return
        rates = {}
        for i, group in bodies.items():
            values = sorted(float(b["decode_tps"]) for b in group  # type: ignore[arg-type]
                            if isinstance(b.get("decode_tps"), (int, float)))
            if values:
                rates[i] = values[len(values) // 2] if len(values) % 2 else \
                    (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
        for a, b in self.pairs:
            if rates.get(a, 0) > 0 and rates.get(b, 0) > 0:
                self.kept[(a, b)].append(rates[a] / rates[b])

    # -- rounds of an earlier attempt ---------------------------------------------------
    def _replay_carried(self) -> int:
        """Re-emit the complete rounds an earlier attempt measured; how many there were.

        A carried round counts exactly as it did (kept or excluded by the same
        rule); only whole rounds with every model's repetitions are taken, in
        order from round 0, and at most ``max - 1`` of them.
        """
        raw = self.carried.get("rounds")
        if not isinstance(raw, list) or (len(self.ids) == 1 and
                                         not self.backend.supports_sessions):
            return 0
        attempt = self.carried.get("attempt")
        for round_index, group in enumerate(raw[:self.plan.maximum - 1]):
            if not isinstance(group, list):
                break
            by_model: Dict[int, List[Dict[str, object]]] = {}
            for body in group:
                model = body.get("model") if isinstance(body, dict) else None
                if model in self.ids and body.get("round") == round_index:
                    by_model.setdefault(self.ids.index(str(model)), []).append(body)
            if len(by_model) != len(self.ids) or any(
                    (len(v) < 1 if self.auto else len(v) != self.per_round)
                    for v in by_model.values()):
                break  # an incomplete round ends what can be carried
            order = sorted(by_model, key=lambda i: str(by_model[i][0].get("position")))
            self.emit(EV_PHASE, {"phase": "round", "round": round_index,
                                 "order": [self.ids[i] for i in order],
                                 "carried_from": attempt})
            bodies: Dict[int, List[Dict[str, object]]] = {}
            for i, group_i in sorted(by_model.items()):
                for old in group_i:
                    fields = {k: v for k, v in old.items()
                              if k not in ("v", "seq", "kind", "job", "attempt", "t", "mono",
                                           "index", "carried_from")}
                    fields["carried_from"] = {"attempt": attempt, "t": old.get("t")}
                    fields["index"] = next(self.indices[False])
                    written = self.emit(EV_REPETITION, fields)
                    bodies.setdefault(i, []).append(written if written is not None else fields)
            self._keep_or_exclude(bodies)
            self.carried_rounds = round_index + 1
        return self.carried_rounds

    # -- the two shapes ---------------------------------------------------------------
    def run(self) -> Dict[str, object]:
        start = self._replay_carried()
        if self.backend.supports_sessions:
            resident, why = resident_plan(
                self.paths, self.keep_loaded,
                self.backend.resident_need(self.paths, self.params)
                if self.keep_loaded and len(self.paths) > 1 else None)
            rounds, stop = self._run_sessions(resident, start)
        else:
            resident, why = "per-invocation", "a process per invocation (llama-bench)"
            rounds, stop = self._run_batches(start)
        summary: Dict[str, object] = {
            "models": self.ids, "rounds_run": rounds, "stop_reason": stop,
            "order_seed": self.plan.seed, "resident": resident, "resident_reason": why,
            "excluded_rounds": dict(self.excluded),
            "kept_rounds": min((len(v) for v in self.kept.values()), default=rounds),
            "repetitions_per_round": self.per_round,
            "model_processes": "one per model" if self.workers else "the agent's",
        }
        if self.auto:
            summary["repetitions_per_round_auto"] = dict(self.auto_record) or {
                "chosen": self.per_round, "reason": "no round was timed in this attempt"}
        if self.carried_rounds:
            summary["carried_rounds"] = self.carried_rounds
            summary["carried_from_attempt"] = self.carried.get("attempt")
        if self.plan.adaptive:
            summary["adaptive"] = {"min": self.plan.minimum, "max": self.plan.maximum,
                                   "target_ci_pct": self.plan.target_ci_pct}
        return summary

    def _warm(self, i: int, session: Session) -> None:
        for w in range(self.params.warmup):
            self._repetition(i, None, None, session.repetition(w, True, self.emit), None)

    def _run_sessions(self, resident: str, start: int = 0) -> Tuple[int, str]:
        sessions: Dict[int, Session] = {}
        try:
            if resident == "all":
                for i, path in enumerate(self.paths):
                    sessions[i] = self.open_session(path, self.params, self.emit)
                    self._warm(i, sessions[i])
                self.workers = tuple(p for p in (getattr(s, "pid", None)
                                                 for s in sessions.values()) if p)
            round_index = start
            while True:
                bodies: Dict[int, List[Dict[str, object]]] = {}
                for position, i in enumerate(self._begin_round(round_index)):
                    session = sessions.get(i)
                    t0 = time.monotonic()
                    if session is None:  # one model at a time: load, warm up, measure, unload
                        # Alone in memory, so in this process (no other context to disturb it).
                        session = self.backend.open(self.paths[i], self.params, self.emit)
                        self._warm(i, session)
                    t1 = time.monotonic()
                    for _ in range(self.per_round):
                        before = Snapshot(self.workers)
                        fields = session.repetition(round_index, False, self.emit)
                        bodies.setdefault(i, []).append(
                            self._repetition(i, round_index, position, fields, before))
                    self._timed(i, t1 - t0, time.monotonic() - t1)
                    if i not in sessions:
                        self._keep_info(i, session)
                        session.close()
                round_index += 1
                self._size_rounds(resident != "all")
                stop, reason = self._end_round(round_index - 1, bodies)
                if stop:
                    return round_index, reason
        finally:
            for i, session in sessions.items():
                self._keep_info(i, session)
                session.close()

    def _timed(self, i: int, overhead_s: float, counted_s: float) -> None:
        """Remember the first measured round's load/warm-up and counted time of model ``i``."""
        if self.auto and not self.auto_record:
            self._overhead_s[i] = overhead_s
            self._counted_s[i] = counted_s / max(1, self.per_round)

    def _size_rounds(self, loads_every_round: bool) -> None:
        """After the first measured round of an ``auto`` job: choose repetitions per round."""
        if not self.auto or self.auto_record:
            return
        overhead = sum(self._overhead_s.values())
        counted = sum(self._counted_s.values())
        if loads_every_round:
            each = auto_per_round(overhead, counted)
            # The whole job too: round 1 ran one repetition per load, and the
            # profiling pass loads each MoE again (estimated as its load and
            # one repetition).
            after = sum(self._overhead_s[i] + self._counted_s[i] for i in self._overhead_s
                        if self.archs[i] == "moe") if self.profile_after else 0.0
            elapsed = time.monotonic() - self.started
            left = max(1, self.plan.maximum - self.carried_rounds - 1)
            whole = job_per_round(elapsed, counted, left, overhead, counted, after)
            self.per_round = max(each, whole)
            rule = ("smallest k <= %d with counted repetitions >= %.0f%% of each round "
                    "(%.2f s loads and warm-ups + k x %.2f s: k >= %d) and of the whole job "
                    "(%.1f s so far, %d rounds left, ~%.1f s of profiling after: k >= %d)" % (
                        AUTO_MAX_PER_ROUND, 100 * AUTO_TARGET_EFFICIENCY, overhead, counted,
                        each, elapsed, left, after, whole))
            fit = self._fits_timeout(overhead, counted, left, elapsed)
            if fit is not None and fit < self.per_round:
                self.per_round = fit
                rule += ("; capped at %d so the rounds left end within %.0f%% of the job's "
                         "%.0f s limit" % (fit, 100 * AUTO_TIMEOUT_SHARE, self.timeout_s or 0))
        else:
            self.per_round = 1
            rule = "models stay loaded across rounds: no load to spread"
        self.auto_record = {"chosen": self.per_round, "overhead_s": round(overhead, 3),
                            "repetition_s": round(counted, 3), "rule": rule}

    def _fits_timeout(self, overhead: float, counted: float, rounds_left: int,
                      elapsed: float) -> Optional[int]:
        """The most repetitions per round whose remaining rounds fit the job's time limit.

        The ``rounds_left`` (up to the plan's maximum) must end within
        ``AUTO_TIMEOUT_SHARE`` of the limit, leaving the rest for the
        profiling pass and the result. None when there is no limit; at least 1.
        """
        if not self.timeout_s or counted <= 0:
            return None
        budget = self.timeout_s * AUTO_TIMEOUT_SHARE - elapsed
        return max(1, int((budget / rounds_left - overhead) / counted))

    def _keep_info(self, i: int, session: Session) -> None:
        if self.ids[i] not in self.infos:
            self.infos[self.ids[i]] = session.info()

    def _run_batches(self, start: int = 0) -> Tuple[int, str]:
        if len(self.ids) == 1:
            # One invocation of all the repetitions: llama-bench's own way, one load.
            count = self.plan.maximum if not self.plan.adaptive else self.plan.minimum
            params = self.params.with_repetitions(count)
            before = Snapshot()
            emit = self._batch_emit(0, lambda n: n, lambda n: 0, before)
            self.infos[self.ids[0]] = self.backend.run(self.paths[0], params, emit)
            return count, ("fixed count of %d repetitions in one invocation" % count
                           if not self.plan.adaptive else
                           "single model: min %d repetitions in one invocation" % count)
        round_index = start
        while True:
            params = self.params.with_repetitions(self.per_round)
            bodies: Dict[int, List[Dict[str, object]]] = {}
            for position, i in enumerate(self._begin_round(round_index)):
                before = Snapshot()
                collected: List[Dict[str, object]] = []
                emit = self._batch_emit(i, _constant(round_index), _constant(position),
                                        before, collected)
                t0 = time.monotonic()
                info = self.backend.run(self.paths[i], params, emit)
                wall = time.monotonic() - t0
                self.infos.setdefault(self.ids[i], info)
                bodies[i] = collected
                counted = sum(_repetition_s(b) for b in collected)
                self._timed(i, max(0.0, wall - counted), counted)
            round_index += 1
            self._size_rounds(True)
            stop, reason = self._end_round(round_index - 1, bodies)
            if stop:
                return round_index, reason

    def _batch_emit(self, i: int, round_of: Callable[[int], int],
                    position_of: Callable[[int], int], before: Snapshot,
                    collected: Optional[List[Dict[str, object]]] = None) -> Emit:
        """An emit for a batch backend: its repetitions get the model, round and position."""
        counted = itertools.count()

        def emit(kind: str, fields: Dict[str, object]) -> Optional[Dict[str, object]]:
            if kind != EV_REPETITION:
                return self.emit(kind, fields)
            n = next(counted) if not fields.get("warmup") else -1
            body = self._repetition(i, round_of(n), position_of(n), fields, before)
            if collected is not None and not body.get("warmup"):
                collected.append(body)
            return body

        return emit


def _repetition_s(body: Dict[str, object]) -> float:
    """Seconds one counted repetition of a batch took: its prefill + decode.

    (Not ``wall_s``: in a batch every repetition's disturbance window starts
    with the invocation.)
    """
    return sum(float(v) for v in (body.get("prefill_s"), body.get("decode_s"))
               if isinstance(v, (int, float)))


def _constant(value: int) -> Callable[[int], int]:
    """``n -> value``: every repetition of one invocation has the same round and position."""
    def of(n: int) -> int:
        return value

    return of
