"""Does the harness cost decode speed? edgefarm sweep run vs xllamacpp called directly.

Both sides load the same GGUF with the same settings (prompt and generated
tokens, threads, context, no prompt cache, EOS ignored) and read decode
tokens/s from llama.cpp's own timings. They run in alternating rounds
(direct, sweep, direct, sweep, ...) so drift on this shared machine hits both
alike; the printed ratio is median(sweep) / median(direct). Target >= 0.97.

    .venv/bin/python bench/harness_overhead.py                 # llama-3.2-1b shapes, Q4_0
    .venv/bin/python bench/harness_overhead.py --preset tiny-dense --gen 256
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def direct(model: str, prompt: int, gen: int, threads: int, reps: int, warmup: int) -> list[float]:
    """Decode tok/s of ``reps`` completions straight through xllamacpp (after warm-ups)."""
    import xllamacpp

    from agents.backends.xllamacpp_backend import prompt_id_range

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.n_ctx = prompt + gen + 16
    params.n_batch = max(prompt, 512)
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.cache_prompt = False
    params.warmup = False
    server = xllamacpp.Server(params)
    rng = random.Random(0)
    low, high = prompt_id_range(model)
    out = []
    for i in range(warmup + reps):
        ids = [rng.randrange(low, high) for _ in range(prompt)]
        result = server.handle_completions({"prompt": ids, "n_predict": gen, "ignore_eos": True,
                                            "cache_prompt": False})
        timings = result["timings"]
        if i >= warmup:
            # llama.cpp's own decode rate: the first token comes out of the
            # prefill, so it counts predicted_n - 1 decode steps (as the agent does).
            out.append(timings["predicted_per_second"])
    return out


def through_sweep(model: str, prompt: int, gen: int, threads: int, reps: int, warmup: int,
                  work: Path, round_no: int) -> list[float]:
    """Decode tok/s of the counted repetitions of a one-job ``edgefarm sweep run``."""
    inv = work / "inventory.yaml"
    inv.write_text(yaml.safe_dump({"devices": [{
        "name": "local", "transport": "local", "platform": "linux-cpu",
        "work_dir": str(work / "device"), "models_dir": str(work / "models")}]}))
    sweep = work / f"bench{round_no}.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": f"harness-overhead-{round_no}",
        "models": [{"id": "m", "arch": "dense", "source": {"path": model}}], "pairs": [],
        "matrix": {"prompt_tokens": prompt, "gen_tokens": gen, "threads": threads,
                   "gpu_layers": 0},
        "repetitions": reps, "warmup": warmup, "devices": {"names": ["local"]},
        "timeout_s": 3600, "retries": 0}))
    results = work / "results"
    edgefarm = [sys.executable, "-m", "orchestrator.cli.main"]
    run = subprocess.run([*edgefarm, "sweep", "run", str(sweep), "-i", str(inv), "-r",
                          str(results), "--no-report"], capture_output=True, text=True,
                         cwd=REPO, check=False)
    if run.returncode != 0:
        raise SystemExit(f"sweep failed:\n{run.stdout}\n{run.stderr}")
    sweep_id = run.stdout.split()[1]
    import sqlite3

    with sqlite3.connect(results / "edgefarm.sqlite") as db:
        rows = db.execute("SELECT decode_tps FROM repetitions WHERE sweep_id = ? AND warmup = 0",
                          (sweep_id,)).fetchall()
    return [r[0] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--quant", default="Q4_0")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--direct-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.direct_worker:  # child process: measure directly, print JSON
        print(json.dumps(direct(args.direct_worker, args.prompt, args.gen, args.threads,
                                args.reps, args.warmup)))
        return

    from agents.models.synth import cached_model

    with tempfile.TemporaryDirectory(prefix="edgefarm-bench-") as tmp:
        work = Path(tmp)
        model = cached_model(str(work / "models"), args.preset, args.quant)
        size = os.path.getsize(model) / 2**20
        print(f"model: {args.preset} {args.quant} ({size:,.0f} MiB), prompt {args.prompt}, "
              f"gen {args.gen}, threads {args.threads}, {args.reps} reps x {args.rounds} rounds")
        direct_tps: list[float] = []
        sweep_tps: list[float] = []
        for r in range(args.rounds):
            child = subprocess.run(
                [sys.executable, __file__, "--direct-worker", model, "--prompt", str(args.prompt),
                 "--gen", str(args.gen), "--threads", str(args.threads), "--reps",
                 str(args.reps), "--warmup", str(args.warmup)],
                capture_output=True, text=True, check=True)
            d = json.loads(child.stdout.strip().splitlines()[-1])
            s = through_sweep(model, args.prompt, args.gen, args.threads, args.reps,
                              args.warmup, work, r)
            print(f"round {r + 1}: direct median {statistics.median(d):8.2f} tok/s   "
                  f"sweep median {statistics.median(s):8.2f} tok/s")
            direct_tps += d
            sweep_tps += s
        md, ms = statistics.median(direct_tps), statistics.median(sweep_tps)
        print(f"decode tok/s  direct xllamacpp: {md:.2f} (n={len(direct_tps)})   "
              f"edgefarm sweep run: {ms:.2f} (n={len(sweep_tps)})")
        print(f"ratio sweep/direct = {ms / md:.3f}   (target >= 0.97)")


if __name__ == "__main__":
    main()
