"""Decode loops for a transformers causal LM: the one implementation of the decode step.

Used by the torch backend (``agents/backends/torch_backend.py``) and by
``bench/torch_decode.py``, so the loop the bench measured against the H200's
roofline (docs/results/h200/torch-decode.md) is the loop a sweep runs.

Two decoders, one interface (``prefill(prompt) -> first token``, then
``step(token) -> next token``, greedy; every token stays on the device, so a
step never waits for the host):

* ``EagerDecoder``: a ``DynamicCache``, one Python ``model(...)`` per token,
  transformers' modules as they are.
* ``StaticDecoder``: a ``StaticCache`` allocated once (its tensors never move),
  the decode step's inputs in fixed tensors, and optionally the step (forward
  + greedy pick) captured once as a CUDA graph and replayed per token, so no
  Python runs between kernels; ``compiled`` puts the forward through
  ``torch.compile`` first (inductor fuses a batch-1 step's many small
  kernels). On the H200 the graph alone gave 4.4x the eager loop for OLMo-1B,
  the compiled graph 9x. The prefill is never captured (its length varies):
  it runs the plain model into the same cache.

Both take ``experts=(prefill, decode)``, a MoE's experts implementations
when the prefill should run another one than the steps (transformers'
``generate`` prefills with ``grouped_mm`` and decodes with ``batched_mm`` on
GPUs): ``prefill`` switches to the first and back to the second, a Python
attribute per MoE block, so the steps (and a capture) always run the second.

A step that cannot be captured (a MoE's ``eager`` experts loop picks experts
with data-dependent shapes and syncs with the host) raises from ``capture``;
the caller decides what to run instead and records why.

torch and transformers are imported inside the functions: the agent's core
imports this package with the standard library only.
"""

from typing import Any, Callable, Optional, Tuple

__all__ = ["EagerDecoder", "StaticDecoder", "greedy"]

#: ``(prefill, decode)`` experts implementations, or None: one for both.
PhaseExperts = Optional[Tuple[str, str]]


def greedy(logits: Any) -> Any:
    """The greedy pick of the last position, shaped ``[batch, 1]`` (stays on the device)."""
    return logits[:, -1:].argmax(-1)


def prefill_forward(model: Any, experts: PhaseExperts, **inputs: Any) -> Any:
    """``model(**inputs)`` without gradients, under the prefill's experts implementation."""
    import torch

    if experts:
        model.set_experts_implementation(experts[0])
    try:
        with torch.no_grad():
            return model(**inputs)
    finally:
        if experts:
            model.set_experts_implementation(experts[1])


class EagerDecoder(object):
    """Prefill, then one forward per token over a dynamic KV cache (transformers as it is)."""

    def __init__(self, model: Any, experts: PhaseExperts = None) -> None:
        self.model = model
        self.experts = experts
        self.cache: Any = None
        self.position = 0

    def prefill(self, prompt: Any) -> Any:
        """Run ``prompt`` (``[1, n]`` token ids) into a fresh cache; return the first token."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        out = prefill_forward(self.model, self.experts, input_ids=prompt,
                              past_key_values=self.cache, use_cache=True)
        self.position = int(prompt.shape[1])
        return greedy(out.logits)

    def step(self, token: Any) -> Any:
        """One decode step: ``token`` in, the next (greedy) token out."""
        import torch

        pos = torch.tensor([self.position], device=token.device)
        with torch.no_grad():
            out = self.model(input_ids=token, past_key_values=self.cache, cache_position=pos,
                             use_cache=True)
        self.position += 1
        return greedy(out.logits)


class StaticDecoder(object):
    """A static KV cache; the step optionally compiled and captured as one CUDA graph.

    ``max_len`` bounds prompt + generated tokens. ``graph`` (CUDA only):
    capture the step at ``capture`` and replay it per token. ``compiled``:
    the callable to run the step's forward through (``torch.compile(model)``),
    else the model itself.
    """

    def __init__(self, model: Any, max_len: int, graph: bool = False,
                 compiled: Optional[Callable[..., Any]] = None,
                 experts: PhaseExperts = None) -> None:
        import torch
        from transformers import StaticCache

        self.model = model
        self.experts = experts
        self.run = compiled if compiled is not None else model
        self.graph = graph
        self.device = next(model.parameters()).device
        self.max_len = max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        # The step's inputs live in fixed tensors: a captured graph reads them
        # where they were at capture time.
        self.token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.out: Any = None
        self._graph: Any = None

    def _forward(self) -> Any:
        logits = self.run(input_ids=self.token, past_key_values=self.cache,
                          cache_position=self.pos, use_cache=True).logits
        return greedy(logits)

    def prefill(self, prompt: Any) -> Any:
        """Clear the cache, run ``prompt`` into it; return the first token."""
        import torch

        length = int(prompt.shape[1])
        if length >= self.max_len:
            raise ValueError("a %d-token prompt does not fit a %d-position static cache"
                             % (length, self.max_len))
        self.cache.reset()  # zeroes in place: a captured graph keeps its addresses
        out = prefill_forward(self.model, self.experts, input_ids=prompt,
                              past_key_values=self.cache, use_cache=True,
                              cache_position=torch.arange(length, device=prompt.device))
        self.pos.fill_(length)
        return greedy(out.logits)

    def capture(self, prompt: Any, warm_steps: int = 3) -> None:
        """Warm the step up (compiling it, if compiled) and, with ``graph``, capture it.

        Runs on a side stream as CUDA graph capture requires; leaves the cache
        to be cleared by the next ``prefill``. Raises what the capture raises.
        """
        import torch

        first = self.prefill(prompt)
        self.token.copy_(first)
        if not self.graph:
            with torch.no_grad():
                for _ in range(warm_steps):  # compiles a compiled forward, here, not in a timing
                    self.token.copy_(self._forward())
                    self.pos.add_(1)
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warm_steps):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self.out = self._forward()
        self._graph = graph

    def step(self, token: Any) -> Any:
        """One decode step at the current position; the position then advances."""
        import torch

        if self._graph is not None:
            self.token.copy_(token)
            self._graph.replay()
            self.pos.add_(1)
            return self.out
        self.token.copy_(token)
        with torch.no_grad():
            out = self._forward()
        self.pos.add_(1)
        return out
