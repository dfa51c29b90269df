"""How close does a PyTorch decode loop come to the GPU's bandwidth roofline?

For each model (default OLMo-1B and OLMoE-1B-7B, the presets' published
shapes with random weights, bf16, batch 1) and each mode:

* ``eager``: an explicit prefill + decode loop with a dynamic KV cache, one
  Python forward per token (transformers' modules as they are);
  ``agents/backends/torch_decode.py``'s ``EagerDecoder``, the loop the torch
  backend's ``decode: eager`` runs;
* ``graph``: a static KV cache and the whole decode step (forward + greedy
  pick) captured once as a CUDA graph and replayed per token, so no Python
  runs between kernels. Where the step cannot be captured (data-dependent
  shapes, as in a MoE's ``eager`` experts loop) the row says why;
* ``compiled``: the same, with the forward first through ``torch.compile``
  (inductor fuses the small kernels a batch-1 decode step is made of); the
  ``StaticDecoder`` the torch backend's ``decode: compiled`` runs on cuda
  (there with torch.compile's ``default`` mode).

MoE models run with each experts implementation transformers offers
(``eager``, ``grouped_mm``, ``batched_mm``). Each cell is the median of
``--repeats`` timed decodes of ``--gen`` tokens after a ``--prompt``-token
prefill, timed with CUDA events. The roofline is bytes read per decode token
(every weight a token touches: all of a dense model's, the routed experts'
share of a MoE's, plus the KV cache) over the device-to-device copy
bandwidth measured in the same run (bytes read + written per second).

    python3 bench/torch_decode.py                       # on the GPU machine
    python3 bench/torch_decode.py --models olmo-1b --modes graph --gen 64

Targets (issue 14): graph mode at least 0.5 of the roofline for OLMo-1B and
0.3 for OLMoE-1B-7B; the ratio graph / eager is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from agents.backends.torch_backend import model_facts, moe_blocks  # noqa: E402
from agents.backends.torch_decode import EagerDecoder, StaticDecoder  # noqa: E402
from agents.backends.torch_models import EXPERTS_IMPLEMENTATIONS, build_model  # noqa: E402
from agents.models.presets import get_shape  # noqa: E402


def copy_bandwidth(nbytes: int = 4 << 30, repeats: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second (the measured ceiling)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    del src, dst
    return nbytes / seconds


def bytes_per_token(model: Any, context: int) -> int:
    """Weights one decode token reads, plus its KV cache at ``context`` tokens.

    The backend's own rule (``torch_backend.model_facts``, the figures the
    report's roofline uses): the input embedding one row, the LM head whole
    (tied or not), a MoE's router and ``top_k / n_experts`` of its experts;
    the KV cache at 2 bytes an element (bf16 here, as f16).
    """
    facts = model_facts(model, moe_blocks(model))
    return (int(facts["weight_bytes_per_token"])
            + int(facts["kv_bytes_per_position_f16"]) * context)


def time_decode(step: Any, first: torch.Tensor, gen: int) -> float:
    """Seconds for ``gen`` decode steps, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    token = first
    start.record()
    for _ in range(gen):
        token = step(token)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def eager_decoder(model: Any, prompt: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """(step, first token) for a plain loop over a dynamic cache (the torch backend's own)."""
    decoder = EagerDecoder(model)
    first = decoder.prefill(prompt)
    return decoder.step, first


def graph_decoder(model: Any, prompt: torch.Tensor, max_len: int,
                  compiled: Any = None) -> tuple[Any, torch.Tensor]:
    """(step, first token) replaying one captured CUDA graph of the decode step.

    ``compiled``: the model's forward through ``torch.compile`` (inductor's
    fused kernels), captured the same way. The torch backend's ``compiled``
    decode mode runs this same ``StaticDecoder``.
    """
    decoder = StaticDecoder(model, max_len, graph=True, compiled=compiled)
    decoder.capture(prompt)
    first = decoder.prefill(prompt)
    return decoder.step, first


def run_cell(preset: str, mode: str, experts: str | None, args: argparse.Namespace,
             ceiling: float) -> dict[str, Any]:
    model, used, why = build_model(preset, "cuda", "bfloat16", experts)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), device="cuda")
    row: dict[str, Any] = {"model": preset, "mode": mode, "experts": used or experts,
                           "experts_note": why}
    try:
        rates = []
        compiled = None
        if mode == "compiled":
            started = time.monotonic()
            compiled = torch.compile(model, mode=args.compile_mode, dynamic=False)
            row["compile_note"] = f"torch.compile mode {args.compile_mode}, then one CUDA graph"
        for _ in range(args.repeats):
            if mode == "eager":
                step, first = eager_decoder(model, prompt)
            else:
                step, first = graph_decoder(model, prompt, args.prompt + args.gen + 8,
                                            compiled)
                if compiled is not None and "compile_s" not in row:
                    row["compile_s"] = round(time.monotonic() - started, 1)
            time_decode(step, first, 4)  # warm the path (and a freshly captured graph)
            if mode == "eager":
                step, first = eager_decoder(model, prompt)
            seconds = time_decode(step, first, args.gen)
            rates.append(args.gen / seconds)
        tps = statistics.median(rates)
        need = bytes_per_token(model, args.prompt + args.gen // 2)
        roof = ceiling / need
        row.update(tokens_per_s=round(tps, 1), roofline_tps=round(roof, 1),
                   fraction=round(tps / roof, 3), bytes_per_token=need,
                   rates=[round(r, 1) for r in rates])
    except Exception as exc:  # one cell's failure (e.g. a step that cannot be captured)
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    del model
    torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["olmo-1b", "olmoe-1b-7b"])
    ap.add_argument("--modes", nargs="+", default=["eager", "graph"])
    ap.add_argument("--experts", nargs="+", default=list(EXPERTS_IMPLEMENTATIONS))
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                    help="torch.compile mode of the compiled cells (CUDA graphs are ours)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this bench measures a GPU", file=sys.stderr)
        return 2
    import transformers

    ceiling = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; copy bandwidth {ceiling / 1e12:.2f} TB/s (measured)")
    rows = []
    for preset in args.models:
        moe = get_shape(preset).n_expert > 0
        for mode in args.modes:
            for experts in (args.experts if moe else [None]):
                started = time.monotonic()
                row = run_cell(preset, mode, experts, args, ceiling)
                row["wall_s"] = round(time.monotonic() - started, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(f"{'model':<14}{'mode':<7}{'experts':<12}{'tok/s':>9}{'roofline':>10}{'fraction':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<14}{r['mode']:<7}{str(r['experts'] or '-'):<12}  "
                  f"{r['error']}")
        else:
            print(f"{r['model']:<14}{r['mode']:<7}{str(r['experts'] or '-'):<12}"
                  f"{r['tokens_per_s']:>9.1f}{r['roofline_tps']:>10.1f}{r['fraction']:>10.3f}")
    for preset, target in (("olmo-1b", 0.5), ("olmoe-1b-7b", 0.3)):
        graph = [r for r in rows if r["model"] == preset and r["mode"] != "eager" and
                 "fraction" in r]
        eager = [r for r in rows if r["model"] == preset and r["mode"] == "eager" and
                 "fraction" in r]
        if graph:
            best = max(graph, key=lambda r: r["fraction"])
            ratio = (best["tokens_per_s"] / max(r["tokens_per_s"] for r in eager)
                     if eager else float("nan"))  # against the best eager row
            print(f"{preset}: best {best['mode']} mode {best['fraction']:.2f} of the roofline "
                  f"(experts {best['experts'] or '-'}), target {target}: "
                  f"{'met' if best['fraction'] >= target else 'NOT met'}; "
                  f"{best['mode']} / eager {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
