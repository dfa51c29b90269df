"""A sweep: which models to compare, under which conditions, on which devices.

A sweep file is the unit a user runs. It names MoE models and their dense
baselines (``pairs``), a parameter matrix whose cartesian product is
benchmarked, how many repetitions count, and a device selector resolved
against an inventory. Everything that can be checked without a device is
checked here, at load time and at the offending line, so a sweep never fails
an hour into a run because of a typo.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from orchestrator.config.inventory import (
    ConfigModel,
    DeviceSelector,
    FileModel,
    Inventory,
    Name,
    as_list,
    check_path,
    duplicate_problems,
)
from orchestrator.config.yaml_loader import (
    LocatedValueError,
    LocPart,
    problem_at,
    short_repr,
)
from orchestrator.errors import ConfigError, ConfigProblem

# The agent's list (``agents.models.synth.KNOWN_PRESETS``) is authoritative:
# it is what can actually be synthesized on a device. This copy exists so a
# sweep can be validated on the controller without importing agent code;
# tests/test_config.py checks that the two lists stay in step.
KNOWN_PRESETS: tuple[str, ...] = (
    "olmoe-1b-7b",
    "olmo-1b",
    "olmo-7b",
    "llama-3.2-1b",
    "qwen2.5-1.5b",
    "gemma-2-2b",
    "tiny-moe",
    "tiny-dense",
)
#: Architecture of each preset, so ``arch`` cannot contradict the weights.
PRESET_ARCH: dict[str, str] = {
    "olmoe-1b-7b": "moe",
    "olmo-1b": "dense",
    "olmo-7b": "dense",
    "llama-3.2-1b": "dense",
    "qwen2.5-1.5b": "dense",
    "gemma-2-2b": "dense",
    "tiny-moe": "moe",
    "tiny-dense": "dense",
}

Arch = Literal["moe", "dense"]
Quant = Literal["F16", "Q8_0", "Q4_0"]
Backend = Literal["auto", "xllamacpp", "llama-bench", "torch", "sleep"]
ARCHES: tuple[str, ...] = get_args(Arch)
QUANTS: tuple[str, ...] = get_args(Quant)
BACKENDS: tuple[str, ...] = get_args(Backend)
#: Quantization used for a preset when ``quant`` is left out.
DEFAULT_QUANT = "Q4_0"

# The torch backend's settings (agents/backends/torch_backend.py). The agent's
# ``EXPERTS_IMPLEMENTATIONS`` (agents/backends/torch_models.py) is the list
# transformers offers; this copy validates a sweep on the controller, and
# tests/test_torch_backend.py checks that the two stay in step.
TorchDevice = Literal["cpu", "cuda", "mps"]
TorchDtype = Literal["float32", "float16", "bfloat16"]
ExpertsImplementation = Literal["eager", "grouped_mm", "batched_mm", "gemv"]
DecodeMode = Literal["eager", "compiled"]
EXPERTS_IMPLEMENTATIONS: tuple[str, ...] = get_args(ExpertsImplementation)
#: dtype per device when the sweep names none: bf16 is what GPUs run models in
#: (and what the H200 numbers in docs/results/h200/ used); CPUs have no fast
#: bf16 matmuls before AVX-512-BF16/AMX, so float32 there; float16 on MPS,
#: whose bf16 support depends on the macOS version.
DEFAULT_TORCH_DTYPE: dict[str, str] = {"cpu": "float32", "cuda": "bfloat16", "mps": "float16"}
#: transformers' own default experts implementation, and the plain decode loop.
DEFAULT_EXPERTS: tuple[ExpertsImplementation, ...] = ("grouped_mm",)
DEFAULT_DECODE: tuple[DecodeMode, ...] = ("eager",)

#: Caps that catch typos (an extra zero) rather than describe hardware limits.
MAX_TOKENS = 131072
MAX_THREADS = 1024
MAX_GPU_LAYERS = 1000


class ModelSource(ConfigModel):
    """Where a model's GGUF file comes from: a synthesized preset or an existing file."""

    preset: str | None = Field(
        default=None,
        description=(
            "Name of a preset the agent synthesizes on the device (real architecture "
            "shapes, seeded random weights; with `backend: torch` the same shapes built "
            "in PyTorch): " + ", ".join(KNOWN_PRESETS) + ". Exactly one of preset, path and "
            "hf_dir."
        ),
    )
    path: str | None = Field(
        default=None,
        description=(
            "Absolute path (or `~/...`) of an existing `.gguf` file on every selected "
            "device. Exactly one of preset, path and hf_dir."
        ),
    )
    hf_dir: str | None = Field(
        default=None,
        description=(
            "Absolute path of a Hugging Face checkpoint directory (holding `config.json`) "
            "on every selected device, loaded with `from_pretrained(..., "
            "local_files_only=True)`; only with `backend: torch`. Exactly one of preset, "
            "path and hf_dir."
        ),
    )
    quant: Quant | None = Field(
        default=None,
        description=(
            f"Quantization of a preset: {', '.join(QUANTS)} (default {DEFAULT_QUANT}). "
            "Only with preset; a file's quantization is whatever the file holds. Not with "
            "`backend: torch`, which runs the torch `dtype` instead."
        ),
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**64 - 1,
        description=(
            "Seed of a preset's random weights (the agent uses 0 when left out). Only with "
            "preset; a different seed is a different model file."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_quant(cls, data: Any) -> Any:
        """Fill in the default quant so plans and job keys always state it explicitly."""
        if isinstance(data, dict) and data.get("preset") is not None and "quant" not in data:
            return {**data, "quant": DEFAULT_QUANT}
        return data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_PRESETS:
            raise ValueError(
                f"unknown preset {short_repr(value)}; known presets: {', '.join(KNOWN_PRESETS)}"
            )
        return value

    @field_validator("path")
    @classmethod
    def _gguf_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        check_path(value)
        if not value.startswith(("/", "~")):
            raise ValueError(
                f"model path {short_repr(value)} must be absolute (or start with '~'): "
                "it is resolved on the device, not relative to the sweep file"
            )
        if not value.lower().endswith(".gguf"):
            raise ValueError(f"model path {short_repr(value)} must name a .gguf file")
        return value

    @field_validator("hf_dir")
    @classmethod
    def _checkpoint_dir(cls, value: str | None) -> str | None:
        if value is None:
            return value
        check_path(value)
        if not value.startswith("/"):
            raise ValueError(
                f"hf_dir {short_repr(value)} must be an absolute path: it is resolved on the "
                "device, not relative to the sweep file"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        given = [name for name in ("preset", "path", "hf_dir") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'preset', 'path' or 'hf_dir'")
        if self.preset is None:
            for only_preset in ("quant", "seed"):
                if getattr(self, only_preset) is not None:
                    raise LocatedValueError(
                        f"{only_preset!r} is only allowed with 'preset' "
                        "(a file's or checkpoint's contents are fixed)",
                        at=(only_preset,),
                    )
        return self

    def to_spec(self) -> dict[str, Any]:
        """The source as the agent receives it (and the job key hashes): set fields only."""
        return self.model_dump(exclude_none=True)


class ModelSpec(ConfigModel):
    """One model in a sweep."""

    id: Name = Field(
        description=(
            "Unique id of the model within the sweep; pairs refer to it and results are "
            "stored under it."
        ),
    )
    arch: Arch = Field(
        description="`moe` (mixture of experts) or `dense`; pairs check it.",
    )
    source: ModelSource = Field(
        description="Where the model comes from: `{preset: ..., quant: ...}`, `{path: ...}` "
        "(a GGUF) or `{hf_dir: ...}` (a Hugging Face checkpoint, backend torch only).",
    )
    synthetic: ModelSource | None = Field(
        default=None,
        description=(
            "A preset standing in for a real file: `edgefarm sweep run --synthetic` uses it "
            "instead of `source` (same shapes, random weights), so a study written for "
            "devices holding the real GGUF files runs on any machine."
        ),
    )

    @model_validator(mode="after")
    def _arch_matches_preset(self) -> ModelSpec:
        for field_name in ("source", "synthetic"):
            source = getattr(self, field_name)
            preset = source.preset if source is not None else None
            if preset is not None and PRESET_ARCH.get(preset, self.arch) != self.arch:
                raise LocatedValueError(
                    f"preset {preset!r} is a {PRESET_ARCH[preset]} model, but arch is "
                    f"{self.arch!r}", at=("arch",))
        if self.synthetic is not None and self.synthetic.preset is None:
            raise LocatedValueError("synthetic must name a preset (it stands in for a file)",
                                    at=("synthetic",))
        return self


class AdaptiveRepetitions(ConfigModel):
    """Rounds until the MoE/dense ratio is known well enough: ``{min, max, target_ci_pct}``."""

    min: int = Field(ge=2, le=1000, description="Rounds to keep before stopping may be "
                     "considered (below 5 the report gives a range, not a 95% CI).")
    max: int = Field(ge=2, le=1000, description="Rounds never to exceed, disturbed ones "
                     "included.")
    target_ci_pct: float = Field(gt=0, le=100, description="Stop once every pair's 95% CI "
                                 "of the decode ratio is at most this wide on either side "
                                 "(percent).")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> AdaptiveRepetitions:
        if self.min > self.max:
            raise LocatedValueError.many([(("max",), f"max ({self.max}) is below min "
                                                     f"({self.min})")])
        return self


def _repetitions_shape(value: Any) -> str:
    """Which shape ``repetitions`` is written in, so only that shape's errors are reported."""
    return "<adaptive>" if isinstance(value, dict | AdaptiveRepetitions) else "<count>"


#: A count of rounds, or adaptive rounds; a discriminated union (one shape's
#: errors, not both; the tags are dropped from error locations, see yaml_loader).
Repetitions = Annotated[
    Annotated[Annotated[int, Field(ge=1, le=1000)], Tag("<count>")]
    | Annotated[AdaptiveRepetitions, Tag("<adaptive>")],
    Discriminator(_repetitions_shape)]


def _per_round(value: Any) -> Any:
    """``repetitions_per_round``: a whole number 1..100 or ``auto``, with one message for both."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ValueError(f"expected a whole number from 1 to 100, or 'auto'; got "
                         f"{short_repr(value)}")
    return value


#: Counted repetitions per round: a number, or ``auto`` (sized from the measured load cost).
PerRound = Annotated[int | Literal["auto"], BeforeValidator(_per_round)]


class Pair(ConfigModel):
    """A MoE model and the dense model(s) it is compared against."""

    moe: Name = Field(description="Id of a model in `models` whose arch is `moe`.")
    dense: Annotated[list[Name], BeforeValidator(as_list)] = Field(
        min_length=1,
        description=(
            "Id(s) of the dense baseline model(s) in `models` (arch `dense`); a single id "
            "is also accepted."
        ),
    )


_Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
_Threads = Annotated[int, Field(ge=1, le=MAX_THREADS)]
_GpuLayers = Annotated[int, Field(ge=0, le=MAX_GPU_LAYERS)]


@dataclass(frozen=True)
class MatrixPoint:
    """One combination of matrix values: the conditions a job runs under."""

    prompt_tokens: int
    gen_tokens: int
    threads: int
    gpu_layers: int


class Matrix(ConfigModel):
    """Benchmark conditions; every combination of the listed values is planned."""

    prompt_tokens: Annotated[list[_Tokens], BeforeValidator(as_list)] = Field(
        default_factory=lambda: [128],
        min_length=1,
        description=f"Prompt lengths in tokens (prefill size), each 1 to {MAX_TOKENS}.",
    )
    gen_tokens: Annotated[list[_Tokens], BeforeValidator(as_list)] = Field(
        default_factory=lambda: [64],
        min_length=1,
        description=(
            f"Tokens generated per repetition (decode length), each 1 to {MAX_TOKENS}."
        ),
    )
    threads: Annotated[list[_Threads], BeforeValidator(as_list)] = Field(
        default_factory=lambda: [4],
        min_length=1,
        description=(
            f"CPU threads for inference, each 1 to {MAX_THREADS}. More threads than cores "
            "measures contention, not speed."
        ),
    )
    gpu_layers: Annotated[list[_GpuLayers], BeforeValidator(as_list)] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description=(
            "Layers offloaded to the GPU (llama.cpp `-ngl`), each 0 to "
            f"{MAX_GPU_LAYERS}; 0 = CPU only, 99 = all layers of any model used here."
        ),
    )

    @model_validator(mode="after")
    def _no_repeats(self) -> Matrix:
        """A repeated value would plan the same job twice under one key."""
        problems: list[tuple[Sequence[LocPart], str]] = []
        for field_name in ("prompt_tokens", "gen_tokens", "threads", "gpu_layers"):
            seen: set[int] = set()
            for index, value in enumerate(getattr(self, field_name)):
                if value in seen:
                    problems.append(((field_name, index), f"duplicate value {value}"))
                seen.add(value)
        if problems:
            raise LocatedValueError.many(problems)
        return self

    def points(self) -> list[MatrixPoint]:
        """The cartesian product, in file order (prompt_tokens varies slowest)."""
        return [
            MatrixPoint(p, g, t, n)
            for p, g, t, n in itertools.product(
                self.prompt_tokens, self.gen_tokens, self.threads, self.gpu_layers
            )
        ]


class Cooldown(ConfigModel):
    """Wait between repetitions until the device has cooled down (thermal fairness)."""

    max_temp_c: float = Field(
        gt=0, le=150,
        description="Start the next repetition once the hottest sensor is below this (°C).")
    timeout_s: float = Field(
        default=120.0, gt=0, le=3600,
        description="Give up waiting after this many seconds (the wait is recorded).")


class Telemetry(ConfigModel):
    """Power, energy, memory and temperature sampling during jobs (docs/telemetry.md)."""

    enabled: bool = Field(
        default=True,
        description="Sample telemetry during jobs; `false` records why energy was not measured.")
    interval_s: float = Field(
        default=0.1, ge=0.01, le=10,
        description="Sampling interval in seconds, where the source allows it.")
    idle_s: float = Field(
        default=2.0, ge=0, le=600,
        description="Seconds of idle power measured before a job's first repetition.")
    cooldown: Cooldown | None = Field(
        default=None,
        description="Optional cooldown between repetitions: `{max_temp_c: 60, timeout_s: 120}`.")

    def to_spec(self) -> dict[str, Any]:
        """The job.json keys the agent reads (agents/telemetry/job.py)."""
        spec: dict[str, Any] = {"telemetry": self.enabled,
                                "telemetry_interval_s": self.interval_s, "idle_s": self.idle_s}
        if self.cooldown is not None:
            spec["cooldown"] = self.cooldown.model_dump()
        return spec


class TorchSettings(ConfigModel):
    """The torch backend's settings (``backend: torch`` only; docs/backends.md).

    ``experts`` and ``decode`` are lists: the planner makes one job per value
    (per experts implementation only for jobs that hold a MoE), so one sweep
    compares the implementations on the same device.
    """

    device: TorchDevice = Field(
        default="cpu",
        description="Where the model runs: `cpu`, `cuda` (an NVIDIA GPU) or `mps` (Apple GPU).",
    )
    dtype: TorchDtype = Field(
        default="float32",
        description=(
            "Weights' and activations' type: `float32`, `float16` or `bfloat16`. Default by "
            "device: " + ", ".join(f"{d} on {k}" for k, d in DEFAULT_TORCH_DTYPE.items()) + "."
        ),
    )
    experts: Annotated[list[ExpertsImplementation], BeforeValidator(as_list)] = Field(
        default_factory=lambda: list(DEFAULT_EXPERTS),
        min_length=1,
        description=(
            "MoE experts implementations of transformers, one job each: `eager` (a loop over "
            "the experts hit), `grouped_mm` (one grouped GEMM; transformers' default) or "
            "`batched_mm` (a batched GEMM over the gathered experts), or edgefarm's `gemv` "
            "(a one-token decode step reads each routed expert in place, the gather fused into "
            "a GEMV under torch.compile; more tokens go to `grouped_mm`). One the device cannot "
            "run falls back to transformers' default, with the reason recorded."
        ),
    )
    prefill_experts: ExpertsImplementation | None = Field(
        default=None,
        description=(
            "The experts implementation the prefill runs with, when it should differ from "
            "`experts` (which then holds for the decode): transformers' own `generate` "
            "prefills with `grouped_mm` and decodes with `batched_mm` on GPUs, since "
            "`batched_mm` gathers every routed expert's weights per token (a 2048-token "
            "OLMoE-1B-7B prefill would need about 340 GB). Default: the same as `experts`."
        ),
    )
    decode: Annotated[list[DecodeMode], BeforeValidator(as_list)] = Field(
        default_factory=lambda: list(DEFAULT_DECODE),
        min_length=1,
        description=(
            "Decode loops, one job each: `eager` (a dynamic KV cache, one Python forward per "
            "token) or `compiled` (a static KV cache; on cuda the step through torch.compile "
            "and captured as a CUDA graph; on cpu and mps the static-cache step runs without "
            "either). What ran is recorded in each result."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_dtype(cls, data: Any) -> Any:
        """The device's dtype when none is given, so plans and job keys state it."""
        if isinstance(data, dict) and "dtype" not in data:
            device = data.get("device", "cpu")
            if isinstance(device, str) and device in DEFAULT_TORCH_DTYPE:
                return {**data, "dtype": DEFAULT_TORCH_DTYPE[device]}
        return data

    @model_validator(mode="after")
    def _no_repeats(self) -> TorchSettings:
        """A repeated value would plan the same job twice under one key."""
        problems: list[tuple[Sequence[LocPart], str]] = []
        for field_name in ("experts", "decode"):
            seen: set[str] = set()
            for index, value in enumerate(getattr(self, field_name)):
                if value in seen:
                    problems.append(((field_name, index), f"duplicate value {value!r}"))
                seen.add(value)
        if problems:
            raise LocatedValueError.many(problems)
        return self


class Sweep(FileModel):
    """A benchmark sweep loaded from one sweep file."""

    name: Name = Field(description="Name of the sweep; results are grouped under it.")
    description: str = Field(
        default="",
        max_length=2000,
        description="What the sweep is for; shown in plans and reports.",
    )
    models: list[ModelSpec] = Field(
        min_length=1,
        description=(
            "Every model to benchmark. Models that are in no pair are still run. List each "
            "MoE next to its baselines: jobs on a device run in this order."
        ),
    )
    pairs: list[Pair] = Field(
        default_factory=list,
        description="MoE-vs-dense comparisons the reports draw.",
    )
    matrix: Matrix = Field(
        default_factory=Matrix,
        description="Benchmark conditions; the cartesian product of the values is planned.",
    )
    repetitions: Repetitions = Field(
        default=3,
        description=(
            "Rounds per job: a number, or `{min, max, target_ci_pct}` to run rounds until "
            "every MoE/dense ratio's 95% CI half-width is at most the target. In a round "
            "every model of a pair runs one counted repetition, in a random order."
        ),
    )
    keep_models_loaded: bool = Field(
        default=False,
        description=(
            "Paired jobs: keep every model loaded across rounds (each in its own process) "
            "instead of loading each afresh for every repetition. Faster, but the 95% CI then "
            "covers one load of the models only (load-to-load variation was ~7% on a 2-core "
            "VM: docs/results/verdict-stability.md)."
        ),
    )
    repetitions_per_round: PerRound = Field(
        default=1,
        description=(
            "Counted repetitions of each model in every round, 1 to 100 (their median is "
            "the round's rate). More than 1 spreads a model load (or a llama-bench "
            "invocation) over several repetitions; `repetitions` still counts rounds. "
            "`auto`: the first round runs one and times the loads and warm-ups; later rounds "
            "run enough (at most 12) that counted repetitions fill at least 80% of each "
            "round and of the whole job, every model still loaded afresh each round."
        ),
    )
    cpu_repack: bool = Field(
        default=True,
        description=(
            "llama.cpp's CPU weight repacking (its default). On: faster CPU kernels, but a "
            "second copy of the weights in memory and a slow load (OLMoE-1B-7B Q4_0: ~60 s "
            "on a 2-core VM). Off: the model is used from its mmap'd file, loads in under a "
            "second, decodes slower. Recorded in every result's provenance; pairs must agree."
        ),
    )
    routing_profile: bool = Field(
        default=True,
        description=(
            "After a job's counted repetitions, run a profiling pass for each MoE model that "
            "measures the share of MoE-block time spent routing (llama.cpp's graph-evaluation "
            "callback, in a process of its own: agents/routing_share.py; backend torch: forward "
            "hooks on each router and experts module, agents/backends/torch_routing.py). Costs "
            "one more model load and one generation per MoE model; never changes a counted "
            "repetition."
        ),
    )
    warmup: int = Field(
        default=1,
        ge=0,
        le=100,
        description=(
            "Warm-up runs before the counted repetitions; stored, never counted (they "
            "absorb page-cache and clock ramp-up effects). As llama-bench's own warm-up, "
            "each runs the whole prompt but generates only 2 tokens."
        ),
    )
    devices: DeviceSelector = Field(
        description=(
            "Which inventory devices to run on: `names`, `platform` and/or `labels`; a "
            "device must match every given key. Selecting nothing is an error."
        ),
    )
    backend: Backend = Field(
        default="auto",
        description=(
            "Inference backend on the device: `auto` (llama-bench when the device has a "
            "`llama_bench` path in the inventory, else xllamacpp), `xllamacpp`, "
            "`llama-bench`, `torch` (PyTorch and transformers on cpu, cuda or mps: the `torch` "
            "block), or `sleep`: a test-only backend for scheduler tests that measures "
            "nothing; never use it for results."
        ),
    )
    torch: TorchSettings | None = Field(
        default=None,
        description=(
            "Settings of `backend: torch` (only with it): `{device, dtype, experts, "
            "prefill_experts, decode}`; "
            "left out, the defaults (cpu, float32, grouped_mm, eager)."
        ),
    )
    timeout_s: float = Field(
        default=600,
        gt=0,
        le=7 * 24 * 3600,
        description=(
            "Wall-clock limit per job attempt in seconds, including model creation or "
            "loading, warm-ups and repetitions."
        ),
    )
    retries: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Extra attempts after a failed job attempt (0 = no retry).",
    )
    telemetry: Telemetry = Field(
        default_factory=Telemetry,
        description="Telemetry sampling during jobs: interval, idle power, optional cooldown.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_quant_with_torch(cls, data: Any) -> Any:
        """An explicit ``quant`` with ``backend: torch`` is an error at that quant.

        Checked on the file's own mapping: ``ModelSource`` fills in the default
        quant, so after validation an explicit one cannot be told from it.
        """
        if not isinstance(data, dict) or data.get("backend") != "torch":
            return data
        problems: list[tuple[Sequence[LocPart], str]] = []
        models = data.get("models")
        for index, model in enumerate(models if isinstance(models, list) else []):
            for field_name in ("source", "synthetic"):
                source = model.get(field_name) if isinstance(model, dict) else None
                if isinstance(source, dict) and "quant" in source:
                    problems.append(((("models", index, field_name, "quant")),
                                     "quant is a llama.cpp (GGUF) setting; backend torch runs "
                                     "the torch block's dtype instead: remove it"))
        if problems:
            raise LocatedValueError.many(problems)
        return data

    @model_validator(mode="after")
    def _torch_settings(self) -> Sweep:
        """The torch block and ``hf_dir`` sources go with ``backend: torch``, GGUF files without."""
        problems: list[tuple[Sequence[LocPart], str]] = []
        torch = self.backend == "torch"
        if self.torch is not None and not torch:
            problems.append((("torch",), f"a torch block needs backend: torch (backend is "
                                         f"{self.backend!r})"))
        for index, model in enumerate(self.models):
            if torch and model.source.path is not None:
                problems.append((("models", index, "source", "path"),
                                 "backend torch loads presets or Hugging Face checkpoints "
                                 "(hf_dir), not GGUF files"))
            if not torch and model.source.hf_dir is not None:
                problems.append((("models", index, "source", "hf_dir"),
                                 f"hf_dir needs backend: torch (backend is {self.backend!r})"))
        if problems:
            raise LocatedValueError.many(problems)
        return self

    @model_validator(mode="after")
    def _consistent_models_and_pairs(self) -> Sweep:
        """Ids are unique and every pair compares an existing MoE with existing dense models."""
        problems = duplicate_problems([m.id for m in self.models], "models", "id", "model id")
        by_id: dict[str, ModelSpec] = {}
        for model in self.models:
            by_id.setdefault(model.id, model)
        known = ", ".join(by_id)

        def check_ref(at: tuple[LocPart, ...], model_id: str, arch: str) -> None:
            model = by_id.get(model_id)
            if model is None:
                problems.append((at, f"unknown model {model_id!r}; models in this sweep: {known}"))
            elif model.arch != arch:
                problems.append(
                    (at, f"model {model_id!r} has arch {model.arch!r}, expected {arch!r}")
                )

        paired_moe: dict[str, int] = {}
        for index, pair in enumerate(self.pairs):
            check_ref(("pairs", index, "moe"), pair.moe, "moe")
            if pair.moe in paired_moe:
                problems.append(
                    (
                        ("pairs", index, "moe"),
                        f"model {pair.moe!r} is already paired in pairs[{paired_moe[pair.moe]}]; "
                        "list all its dense baselines there",
                    )
                )
            else:
                paired_moe[pair.moe] = index
            seen_dense: set[str] = set()
            for dense_index, dense_id in enumerate(pair.dense):
                at = ("pairs", index, "dense", dense_index)
                if dense_id in seen_dense:
                    problems.append((at, f"duplicate dense model {dense_id!r} in this pair"))
                    continue
                seen_dense.add(dense_id)
                check_ref(at, dense_id, "dense")
        if problems:
            raise LocatedValueError.many(problems)
        return self

    def model(self, model_id: str) -> ModelSpec:
        """The model with id ``model_id``; an unknown id raises ``ConfigError``."""
        for model in self.models:
            if model.id == model_id:
                return model
        raise ConfigError(
            f"unknown model {short_repr(model_id)}; models in this sweep: "
            f"{', '.join(m.id for m in self.models)}",
            path=self.source_path,
        )


def with_synthetic_sources(sweep: Sweep) -> Sweep:
    """The sweep with every model's ``synthetic`` preset as its source (``--synthetic``).

    A model without one is a ConfigError located at that model, so the switch
    never runs half a study on real files and half on stand-ins.
    """
    problems = [problem_at(sweep.source, ("models", i),
                           f"model {m.id!r} has no `synthetic` preset to stand in for "
                           f"{m.source.path or m.source.hf_dir or m.source.preset!r} under "
                           "--synthetic")
                for i, m in enumerate(sweep.models)
                if m.synthetic is None and (m.source.path or m.source.hf_dir) is not None]
    if problems:
        raise ConfigError(problems=problems)
    models = [m.model_copy(update={"source": m.synthetic, "synthetic": None})
              if m.synthetic is not None else m for m in sweep.models]
    return sweep.model_copy(update={"models": models})


def check_against_inventory(sweep: Sweep, inventory: Inventory) -> list[ConfigProblem]:
    """Problems that only show with the inventory at hand, located in the sweep file.

    Unknown device names are reported one by one at their own line; a selector
    that is valid but matches nothing is reported at the ``devices`` key with
    what the inventory does hold, so the user can see why.
    """
    loaded = sweep.source
    problems: list[ConfigProblem] = []
    known = inventory.names
    selector = sweep.devices
    for index, name in enumerate(selector.names or []):
        if name not in known:
            problems.append(
                problem_at(
                    loaded,
                    ("devices", "names", index),
                    f"unknown device {name!r}; known devices: {', '.join(known)}",
                )
            )
    if not problems and not inventory.select(selector):
        where = f" {inventory.source_path}" if inventory.source_path else ""
        listing = "; ".join(
            f"{d.name} (platform {d.platform}"
            + "".join(f", {k}={v}" for k, v in d.labels.items())
            + ")"
            for d in inventory.devices
        )
        problems.append(
            problem_at(
                loaded,
                ("devices",),
                f"selects no device from the inventory{where}; it has: {listing}",
            )
        )
    return problems


def load_sweep_with_inventory(
    sweep_path: str | os.PathLike[str], inventory_path: str | os.PathLike[str],
    synthetic: bool = False,
) -> tuple[Sweep, Inventory]:
    """Load both files and check the sweep against the inventory.

    Problems in both files are reported together (inventory first); the
    cross-file checks run only once both files are valid on their own. With
    ``synthetic`` every model runs its ``synthetic`` preset (``with_synthetic_sources``).
    """
    problems: list[ConfigProblem] = []
    inventory: Inventory | None = None
    sweep: Sweep | None = None
    try:
        inventory = Inventory.load(inventory_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        sweep = Sweep.load(sweep_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems=problems)
    assert sweep is not None and inventory is not None
    if synthetic:
        sweep = with_synthetic_sources(sweep)
    cross = check_against_inventory(sweep, inventory)
    if cross:
        raise ConfigError(problems=cross)
    return sweep, inventory
