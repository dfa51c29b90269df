"""Throwaway: why does inductor freezing hit a device-side assert in the bench's compiled decode?"""
import os, subprocess, sys, time, traceback
# ran from the repository root as diag_freezing.py; stored here, it finds the root four levels up
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))

def variant(mode, graph, steps=128):
    import torch
    import torch._inductor.config as ic
    from agents.backends.torch_models import build_model
    from agents.backends.torch_decode import StaticDecoder
    m, _, _ = build_model("olmo-1b", "cuda", "bfloat16", None)
    prompt = torch.randint(0, m.config.vocab_size, (1, 128), device="cuda",
                           generator=torch.Generator("cuda").manual_seed(3))
    def run(compiled, g):
        d = StaticDecoder(m, 128 + steps + 16, graph=g, compiled=compiled)
        if compiled is not None or g:
            d.capture(prompt)
        t = d.prefill(prompt); toks = [t.clone()]
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(steps):
            t = d.step(t); toks.append(t.clone())
        torch.cuda.synchronize()
        return torch.cat(toks, 1), steps / (time.perf_counter() - t0)
    ref, _ = run(None, False)
    ic.freezing = True
    out, tps = run(torch.compile(m, mode=mode, dynamic=False), graph)
    same = int((ref == out).sum())
    print(f"RESULT mode={mode} graph={graph} tok/s={tps:.1f} same_tokens={same}/{ref.numel()}", flush=True)

if __name__ == "__main__":
    if len(sys.argv) > 1:
        variant(sys.argv[1], sys.argv[2] == "1")
    else:
        for mode, g in [("default", "0"), ("default", "1"), ("max-autotune-no-cudagraphs", "1")]:
            env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
            t = time.time()
            try:
                p = subprocess.run([sys.executable, __file__, mode, g], env=env, capture_output=True, text=True, timeout=240)
                res = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
                print(mode, g, "rc", p.returncode, round(time.time() - t), res, flush=True)
                if p.returncode:
                    err = [l for l in p.stderr.splitlines() if "Warning" not in l]
                    print("\n".join(err[-45:]), flush=True)
            except subprocess.TimeoutExpired:
                print(mode, g, "timeout", flush=True)
