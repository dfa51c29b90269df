"""Run one job on this device: the agent's side of the job life cycle.

A job directory holds ``job.json`` (written by the controller) and, once the
agent runs, ``agent.pid`` and ``events.jsonl``. The event log always opens
with ``hello`` and, unless the process is killed, ends with ``result``::

    hello -> phase(model) -> phase(load) -> [phase, repetition]* -> result
                                  \\-> error -> result(status=failed)

Nothing here raises to the caller: every failure becomes an ``error`` event
with a kind the controller understands (see ``backends/base.py``).
"""

import json
import os
import sys
import traceback
from typing import Dict

from agents import probe
from agents.backends import get_backend
from agents.backends.base import BackendError, JobParams
from agents.events import EventWriter, Heartbeat
from agents.gguf_info import read_gguf_info

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
PID_FILE = "agent.pid"


def resolve_model(source, models_dir, emit):
    # type: (Dict[str, object], str, object) -> str
    """Return a local path for the model source, synthesizing presets once."""
    if "path" in source:
        path = os.path.expanduser(str(source["path"]))
        if not os.path.isfile(path):
            raise BackendError("model-missing", "model file not found on device: %s" % path)
        return path
    from agents.models.synth import cached_model

    def progress(done, total):
        # type: (int, int) -> None
        emit("phase", {"phase": "synth", "done_bytes": done, "total_bytes": total})

    try:
        return cached_model(os.path.expanduser(models_dir), str(source["preset"]),
                            str(source.get("quant", "Q4_0")), int(source.get("seed", 0)),  # type: ignore[call-overload]
                            progress=progress)
    except ValueError as exc:
        raise BackendError("bad-job", str(exc))
    except OSError as exc:
        raise BackendError("model-missing", "could not synthesize %s: %s" % (source, exc))


def model_facts(path):
    # type: (str) -> Dict[str, object]
    """Parameter counts and architecture from the GGUF header, or the reason they are absent."""
    try:
        gguf = read_gguf_info(path)
    except (OSError, ValueError) as exc:
        return {"model_facts_error": str(exc)}
    meta = gguf["metadata"]
    return {"params_total": gguf["params_total"], "params_active": gguf["params_active"],
            "architecture": gguf["architecture"],
            "synthetic": bool(meta.get("edgefarm.synthetic", False)),  # type: ignore[union-attr]
            "preset": meta.get("edgefarm.preset")}  # type: ignore[union-attr]


def run_job(job_dir, echo=False):
    # type: (str, bool) -> int
    """Run the job in ``job_dir``; return the process exit status (0 = ok)."""
    with open(os.path.join(job_dir, JOB_FILE)) as handle:
        spec = json.load(handle)
    with open(os.path.join(job_dir, PID_FILE), "w") as handle:
        handle.write(str(os.getpid()))
    writer = EventWriter(os.path.join(job_dir, EVENTS_FILE), spec["job_key"],
                         int(spec.get("attempt", 1)), echo=sys.stdout if echo else None)
    device = spec.get("device", {})
    writer.emit("hello", {"facts": probe.facts(device.get("llama_bench"))})

    def emit(kind, fields=None):
        # type: (str, object) -> None
        writer.emit(kind, fields)  # type: ignore[arg-type]

    status = 1
    with Heartbeat(writer, float(spec.get("heartbeat_s", 5.0))):
        try:
            emit("phase", {"phase": "model"})
            model_path = resolve_model(spec["model"]["source"],
                                       device.get("models_dir", "~/.cache/edgefarm/models"), emit)
            p = spec["params"]
            params = JobParams(int(p["prompt_tokens"]), int(p["gen_tokens"]), int(p["threads"]),
                               int(p["gpu_layers"]), int(p["repetitions"]), int(p["warmup"]),
                               seed=int(p.get("seed", 0)))
            backend = get_backend(spec.get("backend", "auto"), device.get("llama_bench"))
            info = backend.run(model_path, params, emit)
            info["model_path"] = model_path
            info["model_size_bytes"] = os.path.getsize(model_path)
            info.update(model_facts(model_path))
            writer.emit("result", {"status": "ok", "info": info})
            status = 0
        except BackendError as exc:
            writer.emit("error", {"error_kind": exc.kind, "message": exc.message})
            writer.emit("result", {"status": "failed", "error_kind": exc.kind})
        except MemoryError:
            writer.emit("error", {"error_kind": "out-of-memory",
                                  "message": "the agent ran out of memory"})
            writer.emit("result", {"status": "failed", "error_kind": "out-of-memory"})
        except Exception as exc:  # the agent must report, never die silently
            frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
            writer.emit("error", {"error_kind": "agent-error",
                                  "message": "%s: %s" % (type(exc).__name__, exc),
                                  "traceback": frames[-12:]})
            writer.emit("result", {"status": "failed", "error_kind": "agent-error"})
    writer.close()
    return status
