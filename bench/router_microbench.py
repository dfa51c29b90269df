"""Cross-check of the routing share: the router's and the experts' operations alone, timed.

agents/routing_share.py measures routing against the experts inside llama.cpp,
by cutting its graph. This microbenchmark times the same two pieces of one
MoE layer outside llama.cpp, at a preset's shapes (batch 1, one token):

* router: the gate projection (n_expert x n_embd), softmax, top-k, and the
  normalisation of the selected weights where the model has one;
* experts: for each of the k selected experts, the SwiGLU FFN (gate and up
  n_ff_exp x n_embd, down n_embd x n_ff_exp), weighted and summed.

It is a cross-check, labelled as such wherever it is quoted: its kernels are
numpy's (float32, CPU) or PyTorch's (bf16, CUDA, each piece replayed from a
CUDA graph so launch costs do not count), not llama.cpp's quantised ones, so
the experts read 32 or 16 bits per weight where a Q4_0 file has 4.5. The
share it prints is the router's time over router + experts.

    .venv/bin/python bench/router_microbench.py                  # numpy, this CPU
    python3 bench/router_microbench.py --torch cuda               # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.models.presets import PRESETS  # noqa: E402


def numpy_pieces(shape: Any, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    d, e, k, f = shape.n_embd, shape.n_expert, shape.n_expert_used, shape.n_ff_exp
    x = rng.standard_normal(d, dtype=np.float32)
    gate_inp = rng.standard_normal((e, d), dtype=np.float32)
    gate = rng.standard_normal((e, f, d), dtype=np.float32) * 0.02
    up = rng.standard_normal((e, f, d), dtype=np.float32) * 0.02
    down = rng.standard_normal((e, d, f), dtype=np.float32) * 0.02

    def router() -> tuple[Any, Any]:
        logits = gate_inp @ x
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argpartition(probs, -k)[-k:]
        return top, probs[top] / probs[top].sum()

    chosen = router()

    def experts() -> Any:
        top, weights = chosen
        out = np.zeros(d, dtype=np.float32)
        for i, w in zip(top, weights, strict=True):
            g = gate[i] @ x
            h = (g / (1 + np.exp(-g))) * (up[i] @ x)
            out += w * (down[i] @ h)
        return out

    return router, experts


def torch_pieces(shape: Any, device: str, seed: int = 0) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(seed)
    d, e, k, f = shape.n_embd, shape.n_expert, shape.n_expert_used, shape.n_ff_exp
    dt = torch.bfloat16
    x = torch.randn(1, d, device=device, dtype=dt)
    gate_inp = torch.randn(e, d, device=device, dtype=dt)
    gate_up = torch.randn(e, 2 * f, d, device=device, dtype=dt) * 0.02
    down = torch.randn(e, d, f, device=device, dtype=dt) * 0.02
    top = torch.zeros(1, k, device=device, dtype=torch.long)
    weights = torch.zeros(1, k, device=device, dtype=dt)
    out = torch.zeros(1, d, device=device, dtype=dt)

    def router() -> None:
        probs = torch.softmax((x @ gate_inp.T).float(), dim=-1)
        w, idx = torch.topk(probs, k, dim=-1)
        top.copy_(idx)
        weights.copy_((w / w.sum(dim=-1, keepdim=True)).to(dt))

    def experts() -> None:
        gu = torch.bmm(gate_up[top[0]], x.expand(k, d).unsqueeze(-1)).squeeze(-1)
        g, u = gu[:, :f], gu[:, f:]
        h = torch.nn.functional.silu(g) * u
        y = torch.bmm(down[top[0]], h.unsqueeze(-1)).squeeze(-1)
        out.copy_((weights[0].unsqueeze(-1) * y).sum(0, keepdim=True))

    if device != "cuda":
        return router, experts
    router()
    graphs = []
    for fn in (router, experts):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graphs.append(graph)
    return graphs[0].replay, graphs[1].replay


def time_piece(fn: Any, repeats: int, inner: int, sync: Any) -> float:
    """Median seconds of one call, from ``repeats`` timings of ``inner`` back-to-back calls."""
    for _ in range(inner):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="olmoe-1b-7b", choices=sorted(
        n for n, s in PRESETS.items() if s.n_expert))
    ap.add_argument("--torch", metavar="DEVICE", default=None,
                    help="use PyTorch on DEVICE (cuda: bf16 with CUDA graphs) instead of numpy")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--inner", type=int, default=200)
    args = ap.parse_args()
    shape = PRESETS[args.preset]
    if args.torch:
        import torch

        router, experts = torch_pieces(shape, args.torch)
        sync = torch.cuda.synchronize if args.torch == "cuda" else (lambda: None)
        kernels = f"PyTorch {torch.__version__} bf16 on {args.torch}" + (
            f" ({torch.cuda.get_device_name()}), each piece one CUDA graph replay"
            if args.torch == "cuda" else "")
    else:
        import numpy as np

        router, experts = numpy_pieces(shape)
        sync = lambda: None  # noqa: E731
        kernels = f"numpy {np.__version__} float32 on the CPU"
    r = time_piece(router, args.repeats, args.inner, sync)
    e = time_piece(experts, args.repeats, args.inner, sync)
    print(f"router microbenchmark (a cross-check, not llama.cpp): {args.preset} "
          f"(n_embd {shape.n_embd}, {shape.n_expert} experts, top-{shape.n_expert_used}, "
          f"n_ff_exp {shape.n_ff_exp}), batch 1; {kernels}")
    print(f"router {r * 1e6:.1f} us, experts {e * 1e6:.1f} us (medians of {args.repeats} x "
          f"{args.inner} calls); routing share {r / (r + e) * 100:.1f}%")


if __name__ == "__main__":
    main()
