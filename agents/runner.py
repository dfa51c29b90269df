"""Run one job on this device: the agent's side of the job life cycle.

A job directory holds ``job.json`` (written by the controller) and, once the
agent runs, ``agent.pid`` and ``events.jsonl``. The event log always opens
with ``hello`` and, unless the process is killed, ends with ``result``::

    hello -> phase(model) -> phase(load) -> [phase(cooldown)] [phase(idle), sample]
          -> [phase, repetition, [phase(cooldown)]]* -> [phase(profile), routing]* -> result
                                  \\-> error -> result(status=failed)

with ``sample`` events (telemetry, at most one a second) anywhere between
hello and result. Every event a backend emits passes through the job's
telemetry (``agents/telemetry/job.py``): it measures idle power before the
first repetition, waits for the device to cool when the job asks, and adds
energy, power, peak memory and temperature fields to each ``repetition``.

Backend torch (``agents/backends/torch_backend.py``) differs in three places:
a preset is built in torch rather than written as a GGUF (``resolve_torch_model``),
its model facts come from the session rather than a GGUF header, and its
profiling pass times the MoE blocks with forward hooks
(``agents/backends/torch_routing.py``) rather than cutting llama.cpp's graph.

Nothing here raises to the caller: every failure becomes an ``error`` event
with a kind the controller understands (see ``backends/base.py``).
"""

import json
import os
import sys
import traceback
from typing import Any, Dict, List, Optional

from agents import probe
from agents.backends import get_backend
from agents.backends.base import BackendError, Emit, JobParams, Session
from agents.decode_traffic import kv_bytes_per_position, tensors_of, weight_bytes_per_token
from agents.disturbance import add_telemetry_reason
from agents.events import EventWriter, Heartbeat
from agents.gguf_info import read_gguf_info
from agents.model_worker import WorkerSession
from agents.protocol import (
    ERR_AGENT,
    ERR_BAD_JOB,
    ERR_MODEL_MISSING,
    ERR_OUT_OF_MEMORY,
    EV_REPETITION,
    EVENTS_FILE,
    JOB_FILE,
    PID_FILE,
)
from agents.round_runner import RoundRunner
from agents.rounds import RoundPlan
from agents.routing_share import profile_job_models
from agents.telemetry.job import JobTelemetry, TelemetryConfigError


def resolve_model(source: Dict[str, object], models_dir: str, emit: Emit) -> str:
    """Return a local path for the model source, synthesizing presets once."""
    if "path" in source:
        path = os.path.expanduser(str(source["path"]))
        if not os.path.isfile(path):
            raise BackendError(ERR_MODEL_MISSING, "model file not found on device: %s" % path)
        return path
    from agents.models.synth import cached_model

    def progress(done: int, total: int) -> None:
        emit("phase", {"phase": "synth", "done_bytes": done, "total_bytes": total})

    try:
        return cached_model(os.path.expanduser(models_dir), str(source["preset"]),
                            str(source.get("quant", "Q4_0")),
                            int(source.get("seed", 0)),  # type: ignore[call-overload]
                            progress=progress)
    except ValueError as exc:
        raise BackendError(ERR_BAD_JOB, str(exc)) from exc
    except OSError as exc:
        raise BackendError(ERR_MODEL_MISSING,
                           "could not synthesize %s: %s" % (source, exc)) from exc


def resolve_torch_model(source: Dict[str, object]) -> str:
    """What backend torch opens for a source: a preset's marker or a checkpoint directory.

    A preset is built in torch from its shape (``torch_backend.preset_marker``:
    no GGUF is written); ``hf_dir`` must be a directory holding ``config.json``.
    """
    from agents.backends.torch_backend import preset_marker

    if "hf_dir" in source:
        folder = os.path.expanduser(str(source["hf_dir"]))
        if not os.path.isdir(folder):
            raise BackendError(ERR_MODEL_MISSING, "hf_dir not found on device (not a "
                                                  "directory): %s" % folder)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise BackendError(ERR_MODEL_MISSING, "hf_dir %s holds no config.json: not a "
                                                  "Hugging Face checkpoint" % folder)
        return folder
    if "preset" in source:
        from agents.models.presets import get_shape

        try:
            get_shape(str(source["preset"]))
        except ValueError as exc:
            raise BackendError(ERR_BAD_JOB, str(exc)) from exc
        return preset_marker(str(source["preset"]),
                             int(source.get("seed", 0)))  # type: ignore[call-overload]
    raise BackendError(ERR_BAD_JOB, "backend torch runs a preset or an hf_dir checkpoint, not "
                                    "%r (a GGUF file needs xllamacpp or llama-bench)" % (source,))


def model_facts(path: str) -> Dict[str, object]:
    """Parameter counts and architecture from the GGUF header, or the reason they are absent."""
    try:
        gguf = read_gguf_info(path)
    except (OSError, ValueError) as exc:
        return {"model_facts_error": str(exc)}
    meta = gguf["metadata"]
    if not isinstance(meta, dict):
        meta = {}
    facts: Dict[str, object] = {
        "params_total": gguf["params_total"], "params_active": gguf["params_active"],
        "architecture": gguf["architecture"],
        "synthetic": bool(meta.get("edgefarm.synthetic", False)),
        "preset": meta.get("edgefarm.preset")}
    # What a decode step reads (agents/decode_traffic.py): the roofline's denominator.
    table = gguf.get("tensors")
    weights = weight_bytes_per_token(tensors_of(table if isinstance(table, list) else []), meta)
    facts["weight_bytes_per_token"] = weights["bytes"]
    facts["expert_bytes_per_token"] = weights["expert_bytes"]
    if weights["reason"]:
        facts["weight_bytes_note"] = weights["reason"]
    facts["kv_bytes_per_position_f16"] = kv_bytes_per_position(meta, "f16", "f16")
    arch = gguf["architecture"]
    for key in ("expert_count", "expert_used_count"):  # prefill reads the experts it touches
        value = meta.get("%s.%s" % (arch, key))
        if isinstance(value, int) and value > 0:
            facts[key] = value
    return facts


def job_models(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The job's models: ``models`` (a MoE and its baselines), or the one ``model``."""
    models = spec.get("models")
    if not (isinstance(models, list) and models):
        models = [spec.get("model")]
    for model in models:
        if not isinstance(model, dict) or not isinstance(model.get("source"), dict):
            raise BackendError(ERR_BAD_JOB, "every model of a job needs a source mapping, got "
                                            "%r" % (model,))
    return models


def run_job(job_dir: str, echo: bool = False) -> int:
    """Run the job in ``job_dir``; return the process exit status (0 = ok)."""
    with open(os.path.join(job_dir, JOB_FILE)) as handle:
        spec = json.load(handle)
    with open(os.path.join(job_dir, PID_FILE), "w") as handle:
        handle.write(str(os.getpid()))
    writer = EventWriter(os.path.join(job_dir, EVENTS_FILE), spec["job_key"],
                         int(spec.get("attempt", 1)), echo=sys.stdout if echo else None)
    device = spec.get("device", {})
    writer.emit("hello", {"facts": probe.job_facts(device.get("llama_bench"))})

    telemetry: Optional[JobTelemetry] = None

    def emit(kind: str, fields: Optional[Dict[str, object]] = None) -> Dict[str, object]:
        body = dict(fields) if fields else {}
        if telemetry is not None:
            body = telemetry.before(kind, body)
        if kind == EV_REPETITION and "carried_from" not in body:
            add_telemetry_reason(body)
        writer.emit(kind, body)
        if telemetry is not None:
            telemetry.after(kind, body)
        return body

    status = 1
    result: Dict[str, object] = {"status": "failed", "error_kind": ERR_AGENT}
    with Heartbeat(writer, max(0.01, float(spec.get("heartbeat_s", 5.0)))):
        try:
            try:
                telemetry = JobTelemetry.from_spec(spec, writer.emit)
            except TelemetryConfigError as exc:
                raise BackendError(ERR_BAD_JOB, str(exc)) from exc
            telemetry.start()
            emit("phase", {"phase": "model"})
            models = job_models(spec)
            models_dir = device.get("models_dir", "~/.cache/edgefarm/models")
            backend_name = spec.get("backend", "auto")
            if backend_name == "torch":  # presets are built in torch, never written as GGUF
                paths = [resolve_torch_model(m["source"]) for m in models]
            else:
                paths = [resolve_model(m["source"], models_dir, emit) for m in models]
            p = spec["params"]
            try:
                plan = RoundPlan.from_spec(p["repetitions"], seed=int(p.get("seed", 0)))
            except ValueError as exc:
                raise BackendError(ERR_BAD_JOB, str(exc)) from exc
            params = JobParams(int(p["prompt_tokens"]), int(p["gen_tokens"]), int(p["threads"]),
                               int(p["gpu_layers"]), plan.maximum, int(p["warmup"]),
                               seed=int(p.get("seed", 0)),
                               cpu_repack=bool(p.get("cpu_repack", True)),
                               torch_options=p.get("torch"))
            if len(models) > 1 or plan.adaptive:
                telemetry.expected = None  # the count of repetitions is not known up front
            backend = get_backend(backend_name, device.get("llama_bench"),
                                  str((params.torch_options or {}).get("device", "cpu")))
            open_session = None
            if len(models) > 1 and backend.isolate_models:
                name, bench = backend.name, device.get("llama_bench")

                def open_session(path: str, params: JobParams, emit: Emit) -> Session:
                    return WorkerSession(name, bench, path, params, emit)

            per_round = p.get("repetitions_per_round", 1)
            auto = per_round == "auto"
            rounds = RoundRunner(backend, models, paths, params, plan, emit,
                                 1 if auto else int(per_round), open_session,
                                 keep_loaded=bool(p.get("keep_loaded", False)),
                                 carried=spec.get("carried"), auto_per_round=auto,
                                 timeout_s=float(spec.get("timeout_s", 0)) or None,
                                 profile_after=bool(p.get("routing_profile", True)))
            summary = rounds.run()
            routing: Dict[str, Dict[str, object]] = {}
            if bool(p.get("routing_profile", True)) and backend.name == "torch":
                from agents.backends.torch_routing import profile_job_models as hooks_pass

                routing = hooks_pass(models, paths, params, backend, emit)
            elif bool(p.get("routing_profile", True)):
                routing = profile_job_models(models, paths, params, backend.name,
                                             device.get("llama_bench"),
                                             float(spec.get("timeout_s", 600)), emit)
            per_model: Dict[str, object] = {}
            for model_id, path in zip(rounds.ids, paths):
                one = dict(rounds.infos.get(model_id, {}))
                one["model_path"] = path
                if backend.name != "torch":  # a torch session reports its model's facts itself
                    one["model_size_bytes"] = os.path.getsize(path)
                    one.update(model_facts(path))
                if model_id in routing:
                    one["routing"] = routing[model_id]
                per_model[model_id] = one
            # Single-model jobs keep the model's facts at the top level too.
            first = per_model[rounds.ids[0]]
            info = dict(first) if len(models) == 1 and isinstance(first, dict) else {}
            info["models"] = per_model
            info["rounds"] = summary
            telemetry.stop()
            info.update(telemetry.result_info())
            result = {"status": "ok", "info": info}
            status = 0
        except BackendError as exc:
            writer.emit("error", {"error_kind": exc.kind, "message": exc.message})
            result = {"status": "failed", "error_kind": exc.kind}
        except MemoryError:
            writer.emit("error", {"error_kind": ERR_OUT_OF_MEMORY,
                                  "message": "the agent ran out of memory"})
            result = {"status": "failed", "error_kind": ERR_OUT_OF_MEMORY}
        except Exception as exc:  # the agent must report, never die silently
            frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
            writer.emit("error", {"error_kind": ERR_AGENT,
                                  "message": "%s: %s" % (type(exc).__name__, exc),
                                  "traceback": frames[-12:]})
            result = {"status": "failed", "error_kind": ERR_AGENT}
        finally:
            # Stops the sampler thread and any telemetry tool it started
            # (tegrastats, macmon, powermetrics) before the result is written.
            if telemetry is not None:
                telemetry.stop()
    # Emitted only once the heartbeat thread has stopped, so that ``result``
    # really is the last event of the attempt (a heartbeat could otherwise
    # land after it).
    writer.emit("result", result)
    writer.close()
    return status
