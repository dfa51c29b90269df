"""Energy fidelity of the llama-bench backend: the agent's decode J/token against a reference.

Issue 9, item 5. For each model (``--model NAME=PATH``) on a machine with
NVML and a CUDA ``llama-bench``:

(a) **The agent.** One job through the real runner (``agents.runner.run_job``
    on a job directory, as a device runs it), backend ``llama-bench``,
    ``-p PROMPT -n GEN -r REPS``, default telemetry (NVML at ``--interval``).
    Its decode J/token is the median of the repetitions' ``j_per_token`` (the
    statistic the report uses); the mean is printed too.
(b) **The reference.** ``llama-bench -p 0 -n GEN -r R`` run as separate
    processes at two repetition counts ``R1 < R2``, NVML's total-energy
    counter (``nvmlDeviceGetTotalEnergyConsumption``) read right before each
    process starts and right after it exits. Load, warm-up and set-up cost the
    same in both, so ``(E(R2) - E(R1)) / ((R2 - R1) * GEN)`` is the energy of
    one decoded token, measured without any window. With ``--pairs 2`` the
    order is R1, R2, R2, R1 (linear drift cancels) and the pairs' differences
    are averaged.

Also printed: what the old method (the process's average power times the tg
runs' seconds) would have said for the R2 process, and GPU memory: NVML's
version-2 ``used`` (the call the agent's source makes) against ``nvidia-smi
--query-gpu=memory.used`` read at the same instant, every ``--smi-interval``
seconds while the job's llama-bench runs (NVML's version 1, which counts
reserved memory, beside it), and the agent's ``peak_mem_bytes`` and
``peak_gpu_mem_job_bytes``. The acceptance is the point-by-point difference:
the agent's peak is over its windows, and a pp run's context (12 ms) holds
more memory than nvidia-smi, polled every 0.2 s, is likely to see.

Needs nvidia-ml-py and ``nvidia-smi``; not part of the tests. Results and the
commands: docs/results/energy-fidelity.md.

    python3 bench/energy_fidelity.py --llama-bench BIN --model olmoe-1b-7b=olmoe.gguf \\
        --model llama-3.2-1b=llama.gguf [--prompt 512 --gen 128 --reps 10 \\
        --ref-reps 5,45 --pairs 2 --json out.json --work DIR]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agents.backends.llama_bench import parse_llama_bench  # noqa: E402
from agents.protocol import EVENTS_FILE, JOB_FILE  # noqa: E402
from agents.runner import run_job  # noqa: E402

MIB = 1048576.0


class MemoryPoller(threading.Thread):
    """``nvidia-smi``'s used memory beside NVML's, stamped with time.monotonic().

    Each tick reads NVML's version-2 ``used`` (the agent's call) right before
    and right after running ``nvidia-smi``, and version 1 once. A tick whose
    two version-2 readings differ saw memory change while nvidia-smi ran, and
    is left out of the point-by-point comparison.
    """

    def __init__(self, nv: Any, handle: Any, interval: float) -> None:
        super().__init__(daemon=True)
        self.nv = nv
        self.handle = handle
        self.interval = interval
        self.stop_event = threading.Event()
        # (t, nvidia-smi MiB, v2 before, v2 after, v1), MiB
        self.rows: List[Tuple[float, Optional[float], float, float, float]] = []

    def _v2(self) -> float:
        info = self.nv.nvmlDeviceGetMemoryInfo(self.handle, version=self.nv.nvmlMemory_v2)
        return info.used / MIB

    def run(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            before = self._v2()
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=10, check=False)
                smi: Optional[float] = float(out.stdout.strip().splitlines()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                smi = None
            after = self._v2()
            v1 = self.nv.nvmlDeviceGetMemoryInfo(self.handle).used / MIB
            self.rows.append(((t0 + time.monotonic()) / 2.0, smi, before, after, v1))
            self.stop_event.wait(self.interval)

    def between(self, t0: float, t1: float) -> List[Tuple[float, Optional[float], float, float,
                                                          float]]:
        return [row for row in self.rows if t0 <= row[0] <= t1]


def agent_job(work: str, name: str, model: str, binary: str, args: argparse.Namespace,
              nv: Any, handle: Any) -> Dict[str, Any]:
    """Run one job through the runner; return its decode J/token and memory numbers."""
    job_dir = os.path.join(work, "job-" + name)
    os.makedirs(job_dir, exist_ok=True)
    spec = {"job_key": "fidelity-" + name, "attempt": 1, "backend": "llama-bench",
            "model": {"id": name, "source": {"path": model}},
            "params": {"prompt_tokens": args.prompt, "gen_tokens": args.gen,
                       "threads": args.threads, "gpu_layers": args.ngl,
                       "repetitions": args.reps, "warmup": 1},
            "device": {"llama_bench": binary}, "heartbeat_s": 5.0,
            "telemetry_interval_s": args.interval, "idle_s": args.idle_s}
    with open(os.path.join(job_dir, JOB_FILE), "w") as handle_out:
        json.dump(spec, handle_out)
    events_path = os.path.join(job_dir, EVENTS_FILE)
    if os.path.exists(events_path):
        os.remove(events_path)
    poller = MemoryPoller(nv, handle, args.smi_interval)
    poller.start()
    status = run_job(job_dir)
    poller.stop_event.set()
    poller.join()
    with open(events_path) as handle_in:
        events = [json.loads(line) for line in handle_in if line.strip()]
    result = events[-1]
    if status != 0 or result.get("status") != "ok":
        errors = [e for e in events if e["kind"] == "error"]
        raise SystemExit(f"agent job for {name} failed: {errors or result}")
    reps = [e for e in events if e["kind"] == "repetition" and not e.get("warmup")]
    info = result["info"]
    jpt = [r["j_per_token"] for r in reps if isinstance(r.get("j_per_token"), (int, float))]
    out: Dict[str, Any] = {
        "job_dir": job_dir, "argv": info.get("argv"), "phase_windows": info.get("phase_windows"),
        "counted_fraction": info.get("counted_fraction"),
        "progress_least_slack_s": info.get("progress_least_slack_s"),
        "energy": info.get("energy"), "backend_version": info.get("backend_version"),
        "energy_methods": sorted({str(r.get("energy_method")) for r in reps}),
        "energy_sources": sorted({str(r.get("energy_source")) for r in reps}),
        "decode_j_per_token": jpt,
        "decode_j_per_token_median": statistics.median(jpt) if jpt else None,
        "decode_j_per_token_mean": statistics.mean(jpt) if jpt else None,
        "decode_tps_median": statistics.median([r["decode_tps"] for r in reps]),
        "decode_window_s": [round(r["decode_window_mono"][1] - r["decode_window_mono"][0], 6)
                            for r in reps if "decode_window_mono" in r],
        "prefill_j": [r.get("energy_prefill_j") for r in reps],
        "decode_avg_power_w": [r["energy_decode_j"] / (r["decode_window_mono"][1]
                                                       - r["decode_window_mono"][0])
                               for r in reps if "energy_decode_j" in r],
        "idle_power_w": reps[0].get("idle_power_w") if reps else None,
        "energy_decode_net_j": [r.get("energy_decode_net_j") for r in reps],
        "energy_process_j": reps[0].get("energy_process_j") if reps else None,
        "process_s": reps[0].get("process_s") if reps else None,
        "warnings": [r["warning"] for r in reps if r.get("warning")],
        "unmeasured": [r["energy_unmeasured_reason"] for r in reps
                       if r.get("energy_unmeasured_reason")],
    }
    # Memory: NVML's version-2 call (the agent's) against nvidia-smi at the same
    # instant, over the whole llama-bench process; and the agent's reported
    # peak over the counted windows beside nvidia-smi's highest reading then.
    process = reps[0].get("process_window_mono") if reps else None
    peaks = [r["peak_mem_bytes"] / MIB for r in reps
             if r.get("peak_mem_scope") == "gpu" and "peak_mem_bytes" in r]
    job_peaks = [r["peak_gpu_mem_job_bytes"] / MIB for r in reps
                 if "peak_gpu_mem_job_bytes" in r]
    if process:
        rows = poller.between(process[0], process[1])
        steady = [(smi, v2a, v1) for _t, smi, v2a, v2b, v1 in rows
                  if smi is not None and v2a == v2b]
        diffs = [v2 - smi for smi, v2, _v1 in steady]
        smi_all = [row[1] for row in rows if row[1] is not None]
        out["memory"] = {
            "ticks": len(rows), "steady_ticks": len(steady),
            "v2_minus_smi_mib": [round(d, 3) for d in diffs],
            "v2_minus_smi_max_abs_mib": max(abs(d) for d in diffs) if diffs else None,
            "v1_minus_smi_mib": [round(v1 - smi, 3) for smi, _v2, v1 in steady],
            "agent_peak_mib": max(peaks) if peaks else None,
            "agent_job_processes_peak_mib": max(job_peaks) if job_peaks else None,
            "nvidia_smi_used_max_mib": max(smi_all) if smi_all else None,
        }
    return out


def reference_run(binary: str, model: str, reps: int, args: argparse.Namespace, nv: Any,
                  handle: Any) -> Dict[str, Any]:
    """One tg-only llama-bench process; NVML's counter read around it."""
    argv = [binary, "-m", model, "-p", "0", "-n", str(args.gen), "-ngl", str(args.ngl),
            "-r", str(reps), "-o", "json"]
    if args.threads > 0:
        argv += ["-t", str(args.threads)]
    e0 = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    t1 = time.monotonic()
    e1 = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    if done.returncode != 0:
        raise SystemExit(f"reference llama-bench failed ({done.returncode}): "
                         f"{done.stderr[-2000:]}")
    records = [r for r in parse_llama_bench(done.stdout) if r.get("test") == "tg"]
    samples = records[0].get("samples_ns", []) if records else []
    return {"reps": reps, "argv": argv[1:], "energy_j": (e1 - e0) / 1000.0,
            "wall_s": t1 - t0, "tg_s": sum(samples) / 1e9 if samples else None}


def reference(binary: str, model: str, args: argparse.Namespace, nv: Any,
              handle: Any) -> Dict[str, Any]:
    r1, r2 = args.ref_reps
    order: List[int] = []
    for pair in range(args.pairs):
        order += [r1, r2] if pair % 2 == 0 else [r2, r1]
    runs = [reference_run(binary, model, r, args, nv, handle) for r in order]
    e1 = [run["energy_j"] for run in runs if run["reps"] == r1]
    e2 = [run["energy_j"] for run in runs if run["reps"] == r2]
    per_pair = [(b - a) / ((r2 - r1) * args.gen) for a, b in zip(e1, e2, strict=False)]
    big = [run for run in runs if run["reps"] == r2]
    # What the old process-average split would say: the R2 process's average
    # power times its tg runs' seconds, per token.
    old = [run["energy_j"] / run["wall_s"] * run["tg_s"] / (r2 * args.gen)
           for run in big if run["tg_s"]]
    return {"runs": runs, "j_per_token_pairs": per_pair,
            "j_per_token": statistics.mean(per_pair),
            "process_average_j_per_token": statistics.mean(old) if old else None,
            "counted_fraction_r2": statistics.mean(run["tg_s"] / run["wall_s"] for run in big
                                                   if run["tg_s"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-bench", required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--ref-reps", default="5,45")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--ngl", type=int, default=99)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--idle-s", type=float, default=2.0)
    parser.add_argument("--smi-interval", type=float, default=0.2)
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--work", default="/tmp/energy-fidelity")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.ref_reps = tuple(int(v) for v in args.ref_reps.split(","))
    assert len(args.ref_reps) == 2 and args.ref_reps[0] < args.ref_reps[1]
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)
    out: Dict[str, Any] = {
        "gpu": name.decode() if isinstance(name, bytes) else name,
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "nvml_py": getattr(pynvml, "__version__", None),
        "args": {k: v for k, v in vars(args).items()}, "models": {}}
    print("gpu {}, driver {}".format(out["gpu"], out["driver"]), flush=True)
    os.makedirs(args.work, exist_ok=True)
    ok = True
    for spec in args.model:
        model_name, path = spec.split("=", 1)
        agent = agent_job(args.work, model_name, path, args.llama_bench, args, pynvml, handle)
        ref = reference(args.llama_bench, path, args, pynvml, handle)
        got = agent["decode_j_per_token_median"]
        ratio = got / ref["j_per_token"] if got else None
        within = ratio is not None and abs(ratio - 1.0) <= args.tolerance
        mem = agent.get("memory", {})
        mem_ok = mem.get("v2_minus_smi_max_abs_mib") is not None and \
            mem["v2_minus_smi_max_abs_mib"] <= 64
        ok = ok and within and mem_ok
        out["models"][model_name] = {"agent": agent, "reference": ref, "ratio": ratio,
                                     "within_tolerance": within, "memory_within_64_mib": mem_ok}
        nan = float("nan")
        old = ref["process_average_j_per_token"]
        pairs = ", ".join(f"{v:.4f}" for v in ref["j_per_token_pairs"])
        r1, r2 = args.ref_reps
        print(f"== {model_name}")
        print(f"  agent: {agent['energy_methods']}, {agent['energy_sources']}, phase windows: "
              f"{agent['phase_windows']}, counted {100 * (agent['counted_fraction'] or 0):.1f}% "
              "of the process")
        print(f"  agent decode J/token median {got or nan:.4f}, mean "
              f"{agent['decode_j_per_token_mean'] or nan:.4f} "
              f"({len(agent['decode_j_per_token'])} reps; {agent['decode_tps_median']:.0f} tok/s)")
        print(f"  reference (E(r={r2}) - E(r={r1})) / ({r2 - r1} x {args.gen}): "
              f"{ref['j_per_token']:.4f} J/token, pairs {pairs}")
        print(f"  ratio agent/reference {ratio or nan:.4f} -> {'OK' if within else 'OFF'} "
              f"(tolerance {100 * args.tolerance:.0f}%)")
        print(f"  old process-average split would say {old or nan:.4f} J/token "
              f"({100 * (old or 0) / ref['j_per_token']:.1f}% of reference)")
        print(f"  memory: {json.dumps(mem)} -> {'OK' if mem_ok else 'OFF'}")
        print(f"  warnings: {agent['warnings'] or 'none'}", flush=True)
    if args.json:
        with open(args.json, "w") as handle_out:
            json.dump(out, handle_out, indent=1, sort_keys=True)
    pynvml.nvmlShutdown()
    print("ALL OK" if ok else "NOT ALL WITHIN", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
