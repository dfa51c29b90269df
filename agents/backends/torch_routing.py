"""Routing share of MoE-block time in PyTorch, by forward hooks (issue 14, item 2).

The llama.cpp profiler (``agents/routing_share.py``) has to cut the compute
graph to see inside a MoE block. In PyTorch every MoE block of transformers
is two modules, the router (``mlp.gate``: projection, softmax, top-k, weight
normalisation) and the experts (``mlp.experts``), so a forward pre-hook and a
forward hook on each time exactly those two, in every MoE layer of every
decoded token, with nothing cut.

* Clocks: on cuda each hook records a CUDA event on the current stream (no
  synchronise during the pass: the hooks only enqueue; every span is read
  after one synchronise at the end), so a span is the GPU time between the
  module's first and last kernel boundaries. On cpu the hooks read
  ``time.perf_counter`` (Python's clock for intervals; on Linux the same
  CLOCK_MONOTONIC as ``time.monotonic``, at full resolution everywhere); on
  mps they synchronise first, which slows the pass (said in the result).
* The pass: after the job's counted repetitions (never during them), the MoE
  model is opened again with the ``eager`` decode loop (hooks run only in a
  Python forward: not inside a replayed CUDA graph, and they would break a
  compiled graph), warmed up by one whole decode, decoded once without hooks
  for a reference rate, then once with them: ``gen_tokens`` decode steps
  after a ``prompt_tokens`` prompt, the job's shape.
* What a span holds on a GPU: the eager loop is launch-bound (the GPU waits
  for Python between kernels), so the events bracket the module's host-side
  launch time as much as its kernels' time: the share is of the eager loop's
  MoE-block time. (OLMoE-1B-7B, bf16, batched_mm, H200: router 128-136 us
  and experts 265-300 us per layer, a share of 32%.)
* The result has the shape of the llama.cpp profile, so the report reads both
  alike: ``samples`` holds one ``[-1, routing_s, experts_s]`` per decoded
  token (-1: every MoE layer of that token, the mean time per layer), so a
  sample's share is the token's routing time over its MoE-block time (router +
  experts) summed over the layers, and ``share`` their mean. ``per_layer``
  gives each layer's own share and median times, the spread between layers.
  ``profiled_decode_tps`` beside ``reference_decode_tps`` (the same loop
  without hooks) shows what the hooks cost.

torch is imported inside the functions: the agent's core imports this module
with the standard library only.
"""

import copy
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from agents.backends.base import Backend, BackendError, Emit, JobParams
from agents.protocol import ERR_BAD_JOB

METHOD = ("torch forward hooks: a pre- and a post-hook on each MoE block's router (mlp.gate) "
          "and experts module (mlp.experts), every MoE layer of every decoded token; routing = "
          "the router's forward, experts = the experts module's forward; eager decode loop")

#: A span: (token, layer, "routing" | "experts", start, end); start/end are
#: seconds (cpu) or CUDA events (cuda).
Span = Tuple[int, int, str, Any, Any]


class HookTimer(object):
    """Times the router and the experts module of each MoE block on every forward.

    ``blocks`` are ``(layer, name, router, experts)`` as
    ``torch_backend.moe_blocks`` finds them (any ``torch.nn.Module`` pair
    works: tests give it modules of known duration). Spans are kept only
    while ``token`` is set (not during the prefill).
    """

    def __init__(self, blocks: List[Tuple[int, str, Any, Any]], device: str = "cpu",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.blocks = blocks
        self.device = device
        self.clock = clock
        self.token: Optional[int] = None
        self.spans: List[Span] = []
        self._open: Dict[Tuple[int, str], Any] = {}
        self._handles: List[Any] = []

    @property
    def timer(self) -> str:
        """How the spans are timed, for the result."""
        if self.device == "cuda":
            return "CUDA events (read after one synchronise at the end of the pass)"
        if self.device == "mps":
            return "time.perf_counter after torch.mps.synchronize in every hook (slows the pass)"
        return "time.perf_counter"

    def _now(self) -> Any:
        if self.device == "cuda":
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        if self.device == "mps":
            import torch

            torch.mps.synchronize()
        return self.clock()

    def _pre(self, layer: int, part: str) -> Callable[..., None]:
        def hook(module: Any, args: Any) -> None:
            if self.token is not None:
                self._open[(layer, part)] = self._now()
        return hook

    def _post(self, layer: int, part: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            start = self._open.pop((layer, part), None)
            if self.token is not None and start is not None:
                self.spans.append((self.token, layer, part, start, self._now()))
        return hook

    def attach(self) -> None:
        """Register the hooks (``detach`` removes them)."""
        for layer, _, router, experts in self.blocks:
            for part, module in (("routing", router), ("experts", experts)):
                self._handles.append(module.register_forward_pre_hook(self._pre(layer, part)))
                self._handles.append(module.register_forward_hook(self._post(layer, part)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.token = None

    def seconds(self) -> Dict[int, Dict[int, List[float]]]:
        """``{token: {layer: [routing_s, experts_s]}}`` from the spans (syncs once on cuda)."""
        if self.device == "cuda" and self.spans:
            import torch

            torch.cuda.synchronize()
        out: Dict[int, Dict[int, List[float]]] = {}
        for token, layer, part, start, end in self.spans:
            if self.device == "cuda":
                span = start.elapsed_time(end) / 1000.0
            else:
                span = end - start
            cell = out.setdefault(token, {}).setdefault(layer, [0.0, 0.0])
            cell[0 if part == "routing" else 1] += span
        return out


def summarize(times: Dict[int, Dict[int, List[float]]]) -> Dict[str, object]:
    """``samples`` (one per token), ``share`` and the per-layer spread of hook times.

    A token's sample is ``[-1, mean routing_s, mean experts_s]`` over the
    layers timed in it; its share is routing over routing + experts, summed
    over the layers (the means' ratio), and ``share`` is the mean over tokens,
    as the report's statistic (``orchestrator/stats.py`` routing_share).
    """
    samples: List[List[float]] = []
    per_layer: Dict[int, List[Tuple[float, float]]] = {}
    for token in sorted(times):
        layers = times[token]
        if not layers:
            continue
        routing = [cell[0] for cell in layers.values()]
        experts = [cell[1] for cell in layers.values()]
        samples.append([-1, sum(routing) / len(routing), sum(experts) / len(experts)])
        for layer, cell in layers.items():
            per_layer.setdefault(layer, []).append((cell[0], cell[1]))
    shares = [s[1] / (s[1] + s[2]) for s in samples if s[1] + s[2] > 0]
    layers_out: List[Dict[str, object]] = []
    for layer in sorted(per_layer):
        cells = per_layer[layer]
        layer_shares = [r / (r + e) for r, e in cells if r + e > 0]
        layers_out.append({
            "layer": layer,
            "share": statistics.mean(layer_shares) if layer_shares else None,
            "routing_us": statistics.median(r for r, _ in cells) * 1e6,
            "experts_us": statistics.median(e for _, e in cells) * 1e6,
            "tokens": len(cells)})
    known = [x["share"] for x in layers_out if isinstance(x["share"], float)]
    return {"samples": samples, "share": statistics.mean(shares) if shares else None,
            "per_layer": layers_out,
            "layer_share_min": min(known) if known else None,
            "layer_share_max": max(known) if known else None}


def _decode_rate(decoder: Any, prompt: Any, steps: int, device: str,
                 timer: Optional[HookTimer] = None) -> float:
    """Decode ``steps`` tokens after ``prompt``; tokens per second (synchronised clock)."""
    from agents.backends.torch_backend import _sync

    token = decoder.prefill(prompt)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        if timer is not None:
            timer.token = i
        token = decoder.step(token)
    if timer is not None:
        timer.token = None
    _sync(device)
    seconds = time.perf_counter() - start
    return steps / seconds if seconds > 0 else 0.0


def profile_model(backend: Backend, model_path: str, params: JobParams,
                  emit: Emit) -> Dict[str, object]:
    """The hooks pass over one MoE model (see the module docstring); raises BackendError."""
    eager = copy.copy(params)
    eager.torch_options = dict(params.torch_options or {}, decode="eager")
    session: Any = backend.open(model_path, eager, emit)
    try:
        blocks = session.blocks
        if not blocks:
            raise BackendError(ERR_BAD_JOB, "%s has no MoE blocks (a module with a gate and "
                                          "experts): no routing to measure" % model_path)
        device = session.options.device
        steps = max(1, params.gen_tokens)
        # The session's own eager loop: its prefill runs the job's prefill_experts
        # (batched_mm's 2048-token prefill would ask for ~128 GiB at once).
        decoder = session.decoder
        # Warm-up at full length: the first eager decode of a shape is slow (kernel
        # choice, the allocator growing; OLMoE-1B-7B on an H200 ran its first one at
        # a third of the rate), and it would pass for the hooks' cost.
        _decode_rate(decoder, session.prompt(), steps, device)
        reference = _decode_rate(decoder, session.prompt(), steps, device)
        facts = session.info().get("torch")
        timer = HookTimer(blocks, device)
        timer.attach()
        try:
            profiled = _decode_rate(decoder, session.prompt(), steps, device, timer)
        finally:
            timer.detach()
        out: Dict[str, object] = {"method": METHOD, "timer": timer.timer,
                                  "moe_layers": len(blocks),
                                  "routing_module": blocks[0][1] + ".gate",
                                  "experts_module": blocks[0][1] + ".experts",
                                  "tokens": steps, "prompt_tokens": params.prompt_tokens,
                                  "threads": params.threads, "device": device,
                                  "dtype": session.options.dtype,
                                  "experts": facts.get("experts") if isinstance(facts, dict)
                                  else None,
                                  "prefill_experts": facts.get("prefill_experts")
                                  if isinstance(facts, dict) else None,
                                  "decode": "eager (hooks run only in a Python forward)",
                                  "profiled_decode_tps": profiled,
                                  "reference_decode_tps": reference}
        out.update(summarize(timer.seconds()))
        return out
    finally:
        session.close()


def profile_job_models(models: List[Dict[str, Any]], paths: List[str], params: JobParams,
                       backend: Backend, emit: Emit) -> Dict[str, Dict[str, object]]:
    """The hooks pass of a job: every MoE model, after all counted repetitions.

    As ``agents/routing_share.py``'s: a ``profile`` phase and one ``routing``
    event per MoE model; ``{model id: result}``, a result being the profile or
    ``{"unmeasured": why}``, never an error of the job.
    """
    out: Dict[str, Dict[str, object]] = {}
    for model, path in zip(models, paths):
        if model.get("arch") != "moe":
            continue
        emit("phase", {"phase": "profile", "model": model.get("id")})
        try:
            result = profile_model(backend, path, params, emit)
        except BackendError as exc:
            result = {"unmeasured": exc.message}
        except (RuntimeError, ValueError) as exc:
            result = {"unmeasured": "the hooks pass failed: %s: %s" % (type(exc).__name__, exc)}
        body = dict(result)
        body["model"] = model.get("id")
        emit("routing", body)
        out[str(model.get("id"))] = result
    return out
