"""NVML energy: integrated power against the GPU's own energy counter, under real load.

Runs the agent's NVML source and sampler (agents/telemetry) at ``--interval``
(100 ms) while PyTorch keeps the GPU busy with bf16 matrix products for
``--seconds`` (20 s), between two idle stretches. Over exactly the load window
[t0, t1] (monotonic seconds, taken after ``torch.cuda.synchronize()``) it
prints:

* the energy from NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``),
  read by the sampler and interpolated to t0 and t1 -- what the agent reports;
* the same counter read directly at t0 and t1 (a check on the interpolation);
* the trapezoidal integral of the sampled power the agent uses (instantaneous
  power where the driver has it) over [t0, t1];
* the integral of ``nvmlDeviceGetPowerUsage`` (on recent GPUs a one-second
  average), sampled alongside;

and the differences against the counter. Needs an NVIDIA GPU, torch and
nvidia-ml-py. Not part of the tests.

    python3 bench/nvml_energy.py [--seconds 20] [--interval 0.1] [--json out.json]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agents.telemetry.energy import integrate_trapezoid  # noqa: E402
from agents.telemetry.sample import Sample  # noqa: E402
from agents.telemetry.sampler import Sampler  # noqa: E402
from agents.telemetry.sources.base import Source  # noqa: E402
from agents.telemetry.sources.nvml import NvmlSource  # noqa: E402


class AveragePower(Source):
    """Bench-only: nvmlDeviceGetPowerUsage of GPU 0 into ``extra["power_usage_w"]``."""

    name = "nvml-power-usage"

    def available(self):
        return True, "bench"

    def start(self):
        import pynvml

        self.nv = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def read(self, into: Sample) -> bool:
        into.extra["power_usage_w"] = self.nv.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        return True

    def stop(self):
        self.nv.nvmlShutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration")
    parser.add_argument("--idle", type=float, default=3.0, help="idle before and after")
    parser.add_argument("--interval", type=float, default=0.1, help="sampler interval (s)")
    parser.add_argument("--size", type=int, default=8192, help="matrix size")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    import pynvml
    import torch

    nvml = NvmlSource()
    ok, why = nvml.available()
    print("nvml source:", ok, why)
    if not ok:
        return 2
    sampler = Sampler([nvml, AveragePower()], interval=args.interval)
    sampler.start()
    print("energy source:", sampler.energy_source, "| counters:", nvml.counter_keys,
          "| errors:", sampler.errors)
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    a = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    time.sleep(args.idle)

    torch.cuda.synchronize()
    t0 = time.monotonic()
    counter0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    products = 0
    while True:
        for _ in range(20):
            c = a @ b
        products += 20
        torch.cuda.synchronize()
        if time.monotonic() - t0 >= args.seconds:
            break
    counter1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    t1 = time.monotonic()
    del c
    time.sleep(args.idle)
    sampler.stop()

    samples = sampler.window(t0, t1)
    ticks = [s.t for s in sampler.samples]
    gaps = [y - x for x, y in zip(ticks, ticks[1:], strict=False)]
    counter_j = sampler.energy_j(t0, t1)
    direct_j = (counter1 - counter0) / 1000.0
    instant_j = integrate_trapezoid(samples, t0, t1, "total_w")
    average_j = integrate_trapezoid(samples, t0, t1, "extra.power_usage_w")
    seconds = t1 - t0
    flops = 2.0 * args.size ** 3 * products
    out = {
        "gpu": pynvml.nvmlDeviceGetName(handle),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "nvml_power_kind": samples[-1].extra.get("nvml_power"),
        "load_s": seconds,
        "tflops": flops / seconds / 1e12,
        "samples_total": sampler.count,
        "samples_in_window": len(samples),
        "interval_median_s": statistics.median(gaps),
        "interval_max_s": max(gaps),
        "counter_j_sampled": counter_j,
        "counter_j_direct": direct_j,
        "integrated_instant_j": instant_j,
        "integrated_power_usage_j": average_j,
        "avg_power_w_counter": counter_j / seconds,
        "peak_power_w": max(s.total_w for s in samples if s.total_w is not None),
        "diff_instant_vs_counter_pct": 100.0 * (instant_j - counter_j) / counter_j,
        "diff_power_usage_vs_counter_pct": 100.0 * (average_j - counter_j) / counter_j,
        "diff_sampled_vs_direct_counter_pct": 100.0 * (counter_j - direct_j) / direct_j,
        "max_temp_c": sampler.max_temp_c(t0, t1),
        "peak_memory": sampler.peak_memory(t0, t1),
        "changes": sampler.changes(t0, t1),
        "sampler_errors": sampler.errors,
    }
    for key, value in out.items():
        shown = round(value, 4) if isinstance(value, float) else value
        print(f"{key:<36} {shown}")
    if args.json:
        with open(args.json, "w") as handle_out:
            json.dump(out, handle_out, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
