"""Expand a sweep into the concrete jobs the scheduler runs.

A job is one model on one device under one matrix point, with all of its
repetitions. Its ``key`` is a content hash of everything that determines the
measurement, so results can be deduplicated and a re-run sweep can skip jobs
already stored, across sweeps too: the sweep's name is not part of the key,
nor are the timeout and retry count, which change how hard we try but not
what is measured.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cached_property
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from agents.protocol import (
    JOB_SPEC_SCHEMA,
    AdaptiveRounds,
    JobSpec,
    ModelRef,
    TorchParamsSpec,
)
from orchestrator.config.inventory import Device, Inventory
from orchestrator.config.sweep import Sweep, TorchSettings, check_against_inventory
from orchestrator.errors import ConfigError

#: Version of the job spec JSON the agent receives (``to_agent_spec``).
AGENT_SPEC_SCHEMA = JOB_SPEC_SCHEMA
#: Length of ``Job.key`` in hex digits (64 bits: collisions are not a concern
#: at the scale of a benchmark farm, and the key stays readable in tables).
KEY_LENGTH = 16
#: Job fields that are deliberately left out of the key.
KEY_EXCLUDED_FIELDS = frozenset({"timeout_s", "retries", "routing_profile"})
#: Column headers matching ``plan_table_rows``.
PLAN_TABLE_COLUMNS: tuple[str, ...] = (
    "device",
    "model",
    "arch",
    "prompt",
    "gen",
    "threads",
    "ngl",
    "reps",
    "key",
)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same data always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class JobModel(BaseModel):
    """One model of a job: its id in the sweep, its arch and where the agent gets it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Id of the model in the sweep.")
    arch: str = Field(description="`moe` or `dense`.")
    source: dict[str, Any] = Field(
        description="The model source as the agent receives it: `{preset, quant[, seed]}` "
        "or `{path}`.")

    def __hash__(self) -> int:
        return hash(canonical_json(self.model_dump()))


#: Fields computed from ``models`` (kept in records for the store, never read back).
COMPUTED_FIELDS = frozenset({"key", "model_id", "model_arch"})


class Job(BaseModel):
    """The models of one comparison on one device under one set of conditions.

    A pair's MoE and its dense baselines are one job, so the agent can run
    them in paired rounds (``agents/round_runner.py``); a model in no pair is
    a job of its own. ``models[0]`` is the MoE of a pair.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field(description="Inventory name of the device that runs the job.")
    models: tuple[JobModel, ...] = Field(min_length=1, description="The job's models, MoE "
                                         "first.")
    prompt_tokens: int = Field(description="Prompt length in tokens.")
    gen_tokens: int = Field(description="Tokens generated per repetition.")
    threads: int = Field(description="CPU threads.")
    gpu_layers: int = Field(description="Layers offloaded to the GPU.")
    repetitions: int | dict[str, Any] = Field(
        description="Rounds: a count, or `{min, max, target_ci_pct}`.")
    warmup: int = Field(description="Warm-up runs (stored, never counted).")
    keep_loaded: bool = Field(default=False, description="Paired jobs: keep models loaded "
                              "across rounds instead of a fresh load per repetition.")
    repetitions_per_round: int | str = Field(default=1, description="Counted repetitions "
                                             "of each model per round (their median "
                                             "counts), or `auto`.")
    cpu_repack: bool = Field(default=True, description="llama.cpp repacks CPU weights into "
                             "its faster layouts (its default).")
    routing_profile: bool = Field(default=True, description="After the counted repetitions, "
                                  "a profiling pass per MoE model measures its routing share; "
                                  "not part of the key (no counted repetition changes).")
    backend: str = Field(description="Backend name the agent is asked to use.")
    timeout_s: float = Field(description="Wall-clock limit per attempt; not part of the key.")
    retries: int = Field(description="Extra attempts after a failure; not part of the key.")
    telemetry: dict[str, Any] = Field(
        default_factory=dict,
        description="Telemetry settings for the agent (sampling interval, idle, cooldown); "
        "part of the key, since a cooldown changes what is measured.")
    torch: dict[str, Any] | None = Field(
        default=None,
        description="Backend torch: `{device, dtype, decode[, experts[, prefill_experts]]}` "
        "(experts only for a job holding a MoE); part of the key when set, absent from it "
        "otherwise, so the keys of other backends' jobs are what they were before the field "
        "existed.")

    @model_validator(mode="before")
    @classmethod
    def _drop_stored_key(cls, data: Any) -> Any:
        """Accept ``model_dump()`` output back: the key is always recomputed, never trusted."""
        if isinstance(data, dict) and COMPUTED_FIELDS & data.keys():
            data = {k: v for k, v in data.items() if k not in COMPUTED_FIELDS}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model_id(self) -> str:
        """The job's label: the model's id, or ``moe vs dense1,dense2`` for a pair."""
        if len(self.models) == 1:
            return self.models[0].id
        return f"{self.models[0].id} vs {','.join(m.id for m in self.models[1:])}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model_arch(self) -> str:
        """`moe` or `dense` for one model; `pair` for a MoE with its baselines."""
        return self.models[0].arch if len(self.models) == 1 else "pair"

    def __hash__(self) -> int:
        # The generated hash would fail on the ``model_source`` dict; the key
        # covers every measured field, and equal jobs have equal keys.
        return hash(self.key)

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def key(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON of the measured fields.

        The hashed object is ``{field: value}`` for every field above except
        ``timeout_s``, ``retries`` and ``routing_profile`` (and ``torch`` when it
        is None), serialized by ``canonical_json``.
        """
        excluded = KEY_EXCLUDED_FIELDS | ({"torch"} if self.torch is None else set())
        fields = self.model_dump(mode="json", include=set(type(self).model_fields) - excluded)
        digest = hashlib.sha256(canonical_json(fields).encode("utf-8")).hexdigest()
        return digest[:KEY_LENGTH]

    def to_agent_spec(self) -> JobSpec:
        """The JSON object the agent receives for this job (``agents/protocol.py``)."""
        models: list[ModelRef] = [{"id": m.id, "arch": m.arch, "source": dict(m.source)}
                                  for m in self.models]
        spec: JobSpec = {
            "schema": AGENT_SPEC_SCHEMA,
            "job_key": self.key,
            "model": models[0],
            "models": models,
            "params": {
                "prompt_tokens": self.prompt_tokens,
                "gen_tokens": self.gen_tokens,
                "threads": self.threads,
                "gpu_layers": self.gpu_layers,
                "repetitions": self.repetitions if isinstance(self.repetitions, int)
                else cast(AdaptiveRounds, dict(self.repetitions)),
                "warmup": self.warmup,
                "keep_loaded": self.keep_loaded,
                "cpu_repack": self.cpu_repack,
                "repetitions_per_round": self.repetitions_per_round,
                "routing_profile": self.routing_profile,
            },
            "backend": self.backend,
            "timeout_s": self.timeout_s,
        }
        if self.torch is not None:
            spec["params"]["torch"] = cast(TorchParamsSpec, dict(self.torch))
        telemetry = self.telemetry  # only what the sweep set: the agent has defaults
        if "telemetry" in telemetry:
            spec["telemetry"] = bool(telemetry["telemetry"])
        if "telemetry_interval_s" in telemetry:
            spec["telemetry_interval_s"] = float(telemetry["telemetry_interval_s"])
        if "idle_s" in telemetry:
            spec["idle_s"] = float(telemetry["idle_s"])
        if "cooldown" in telemetry:
            spec["cooldown"] = telemetry["cooldown"]
        return spec


def selected_devices(sweep: Sweep, inventory: Inventory) -> list[Device]:
    """The devices the sweep runs on, in inventory order.

    Raises ``ConfigError`` (at the sweep's lines when it was loaded from a
    file) for unknown device names or an empty selection, so ``plan`` is safe
    to call on objects that never went through ``load_sweep_with_inventory``.
    """
    problems = check_against_inventory(sweep, inventory)
    if problems:
        raise ConfigError(problems=problems)
    return inventory.select(sweep.devices)


def job_groups(sweep: Sweep) -> list[tuple[JobModel, ...]]:
    """The sweep's models as jobs run them: each pair's MoE with its baselines, then the rest.

    Pairs come in file order; a model that is in no pair (not a MoE of one,
    not a baseline of any) is a group of its own, in ``models`` order. A
    dense model that is the baseline of two MoEs is measured in both groups,
    paired with each.
    """
    def entry(model_id: str) -> JobModel:
        model = sweep.model(model_id)
        source = model.source.to_spec()
        if sweep.backend == "torch":
            source.pop("quant", None)  # a GGUF setting: torch runs the job's dtype
        return JobModel(id=model.id, arch=model.arch, source=source)

    groups = [tuple(entry(i) for i in (pair.moe, *pair.dense)) for pair in sweep.pairs]
    grouped = {m.id for group in groups for m in group}
    groups += [(entry(m.id),) for m in sweep.models if m.id not in grouped]
    return groups


def torch_variants(sweep: Sweep, group: tuple[JobModel, ...]) -> list[dict[str, Any] | None]:
    """The ``torch`` dicts of a group's jobs: one per decode mode, and per experts
    implementation when the group holds a MoE; ``[None]`` for other backends."""
    if sweep.backend != "torch":
        return [None]
    settings = sweep.torch or TorchSettings()
    experts: list[str | None] = list(settings.experts) if any(
        m.arch == "moe" for m in group) else [None]
    variants: list[dict[str, Any] | None] = []
    for impl in experts:
        for decode in settings.decode:
            one: dict[str, Any] = {"device": settings.device, "dtype": settings.dtype,
                                   "decode": decode}
            if impl is not None:
                one["experts"] = impl
                if settings.prefill_experts not in (None, impl):
                    one["prefill_experts"] = settings.prefill_experts
            variants.append(one)
    return variants


def variant_label(torch: dict[str, Any] | None) -> str:
    """A job's torch settings in short (``cpu float32 · experts eager · decode compiled``);
    "" for other backends' jobs, whose configuration the matrix alone says."""
    if not torch:
        return ""
    parts = [f"{torch.get('device')} {torch.get('dtype')}"]
    if torch.get("prefill_experts"):
        parts.append(f"prefill experts {torch['prefill_experts']}")
    if torch.get("experts"):
        parts.append(f"experts {torch['experts']}")
    parts.append(f"decode {torch.get('decode')}")
    return " · ".join(parts)


def plan(sweep: Sweep, inventory: Inventory) -> list[Job]:
    """Every job of the sweep: selected devices x matrix points x model groups.

    Order: device (inventory order), then matrix point (file order,
    ``prompt_tokens`` varying slowest), then group (``job_groups``), then, for
    backend torch, the group's variants (``torch_variants``). A pair's
    models are one job, run in alternating rounds on its device, so drift
    (thermals, background load) affects both sides of a comparison alike.
    """
    jobs: list[Job] = []
    points = sweep.matrix.points()
    repetitions = sweep.repetitions if isinstance(sweep.repetitions, int) \
        else sweep.repetitions.model_dump()
    groups = job_groups(sweep)
    # Backend torch: a group runs once per decode mode (and experts implementation).
    variants = [(group, variant) for group in groups for variant in torch_variants(sweep, group)]
    for device in selected_devices(sweep, inventory):
        for point in points:
            for group, variant in variants:
                jobs.append(
                    Job(
                        device=device.name,
                        models=group,
                        prompt_tokens=point.prompt_tokens,
                        gen_tokens=point.gen_tokens,
                        threads=point.threads,
                        gpu_layers=point.gpu_layers,
                        repetitions=repetitions,
                        warmup=sweep.warmup,
                        keep_loaded=sweep.keep_models_loaded,
                        cpu_repack=sweep.cpu_repack,
                        repetitions_per_round=sweep.repetitions_per_round,
                        routing_profile=sweep.routing_profile,
                        backend=sweep.backend,
                        timeout_s=sweep.timeout_s,
                        retries=sweep.retries,
                        telemetry=sweep.telemetry.to_spec(),
                        torch=variant,
                    )
                )
    return jobs


def repetitions_label(repetitions: int | dict[str, Any]) -> str:
    """``12``, or ``5-40 to ±2%`` for adaptive rounds."""
    if isinstance(repetitions, int):
        return str(repetitions)
    return f"{repetitions['min']}-{repetitions['max']} to ±{repetitions['target_ci_pct']:g}%"


def plan_table_rows(jobs: Iterable[Job]) -> list[tuple[str, ...]]:
    """One row of strings per job, columns as in ``PLAN_TABLE_COLUMNS``, for the CLI."""
    return [
        (
            job.device,
            job.model_id,
            job.model_arch,
            str(job.prompt_tokens),
            str(job.gen_tokens),
            str(job.threads),
            str(job.gpu_layers),
            repetitions_label(job.repetitions),
            job.key,
        )
        for job in jobs
    ]
