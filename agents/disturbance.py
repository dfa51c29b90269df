"""Did a repetition run undisturbed? What the machine did around it, and the rule.

A benchmark on a shared or busy machine can lose a thread to another process
for part of a repetition; llama.cpp's threads then wait for the slowest one
and the repetition comes out slow for a reason that has nothing to do with
the model. A report that takes such a repetition at face value states a
finding that is not there (a loaded run once said "MoE is 88.7% behind").
So every counted repetition records, from the operating system's own
counters, how it ran, and a fixed rule decides whether it was disturbed:

* **other load** (Linux, ``/proc/stat``): CPU time the whole machine spent
  busy during the repetition, minus the benchmark process's own CPU time
  (and its children's), as a share of the machine's capacity (wall time ×
  CPUs). Disturbed above ``OTHER_LOAD_MAX`` (10%). Quiet 7-8 s decode
  repetitions of the seed shapes on the 2-core development VM measured 0-2%
  (the controller, Ray and the sampler included); one busy process there is
  50%, so a quarter of a repetition under it already crosses the line.
* **hypervisor steal** (Linux, ``/proc/stat``): time the hypervisor gave this
  VM's CPUs to others. Disturbed above ``STEAL_MAX`` (10%).

Both count in 10 ms clock ticks, so a repetition shorter than
``MIN_JUDGED_CPU_S`` of CPU capacity (0.25 s on 2 CPUs) is recorded but not
judged: one stray tick would be most of its share.

Recorded beside them for the reader, deciding nothing: the process's CPU time
against the time its threads had (``cpu_share``, CPU inference only),
involuntary context switches and the load average. The CPU share would seem
the direct sign of a descheduled thread, but its undisturbed level depends on
the backend (llama.cpp's thread pool sleeps between graph nodes: a quiet
2-thread xllamacpp decode measured 0.41-0.51 of its threads' time here), so a
fixed threshold on it would flag quiet runs; the machine-wide counters above
do not depend on how the benchmark uses its threads. Clock and throttle
changes come from the job's telemetry (``agents/telemetry``): a repetition
whose counted window saw a clock fall or a throttle flag is disturbed too
(``add_telemetry_reason``, applied by the runner once telemetry has looked).
An NVIDIA GPU held at its own power cap (NVML's SW power cap reason, alone)
is not: a compute-bound prefill reaches the cap in every repetition (OLMo-7B's
2048-token prefill on the H200 did), so it is the device under this load, not
something that happened to one repetition; the repetition records it as
``power_limited`` instead.

The thresholds are fixed before any run and written into every repetition's
record (``disturbance_rule``), so nothing is excluded by a rule chosen after
seeing the data.
"""

import os
import resource
import time
from typing import Dict, List, Optional, Tuple

OTHER_LOAD_MAX = 0.10
STEAL_MAX = 0.10
#: /proc/stat counts in clock ticks (10 ms): a window of less CPU capacity
#: than this (seconds × CPUs) cannot tell 10% from noise, so it is not judged.
MIN_JUDGED_CPU_S = 0.5
RULE = ("other load > %d%% of the CPUs, or hypervisor steal > %d%% (Linux /proc/stat), or "
        "a clock drop or a throttle flag during the counted window (telemetry; a GPU at its "
        "own power cap alone is recorded as power_limited, not a disturbance)"
        % (OTHER_LOAD_MAX * 100, STEAL_MAX * 100))
#: The reason a telemetry warning (a clock fell, a throttle flag) gives.
CLOCK_REASON = "clock or throttle change"


def add_telemetry_reason(fields: Dict[str, object]) -> None:
    """Mark a judged repetition disturbed when its telemetry saw a clock or throttle change.

    The job's telemetry adds ``warning`` to a repetition for changes inside
    its counted window only (``agents/telemetry/job.py``); a throttled
    repetition measures the throttle, not the model.
    """
    warning = fields.get("warning")
    if not warning or "disturbance_rule" not in fields:
        return
    reasons = [str(fields["disturbed"])] if fields.get("disturbed") else []
    reasons.append("%s: %s" % (CLOCK_REASON, warning))
    fields["disturbed"] = "; ".join(reasons)

try:
    _HZ = float(os.sysconf("SC_CLK_TCK"))
except (AttributeError, ValueError, OSError):
    _HZ = 100.0


def _cpu_times() -> Optional[Tuple[float, float, float]]:
    """(busy, steal, total) seconds of the whole machine since boot; None off Linux."""
    try:
        with open("/proc/stat") as handle:
            first = handle.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = [float(x) for x in first[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice;
    # guest time is already inside user/nice, so it is not added again.
    values = ticks[:8] + [0.0] * (8 - len(ticks[:8]))
    idle = values[3] + values[4]
    steal = values[7]
    total = sum(values)
    return (total - idle - steal) / _HZ, steal / _HZ, total / _HZ


def _process_cpu_s(pid: int) -> float:
    """CPU seconds of a running child (a model worker) from /proc; 0 where unreadable.

    ``RUSAGE_CHILDREN`` counts a child only once it has been waited for, and
    a model worker lives for the whole job.
    """
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (float(fields[11]) + float(fields[12])) / _HZ
    except (OSError, IndexError, ValueError):
        return 0.0


class Snapshot(object):
    """The counters at one moment (taken just before and just after a repetition).

    ``workers``: pids of running children whose CPU time is the benchmark's
    own (the model worker of a paired job).
    """

    def __init__(self, workers: Tuple[int, ...] = ()) -> None:
        self.mono = time.monotonic()
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        self.cpu_s += sum(_process_cpu_s(pid) for pid in workers)
        self.nivcsw = own.ru_nivcsw + kids.ru_nivcsw
        self.machine = _cpu_times()


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    getter = getattr(os, "sched_getaffinity", None)
    if getter is not None:
        try:
            return max(1, len(getter(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def assess(before: Snapshot, after: Snapshot, threads: int, cpu_inference: bool,
           ncpu: Optional[int] = None) -> Dict[str, object]:
    """The repetition's disturbance fields; ``disturbed`` is None or the reason(s).

    ``threads`` is the job's thread count (<= 0: the backend's default, taken
    as all CPUs); ``cpu_inference`` says whether the model ran on the CPU (no
    GPU offload), which is when the descheduled rule applies.
    """
    ncpu = ncpu or cpu_count()
    wall = max(after.mono - before.mono, 1e-9)
    own_cpu = max(0.0, after.cpu_s - before.cpu_s)
    fields: Dict[str, object] = {
        "wall_s": round(wall, 6),
        "process_cpu_s": round(own_cpu, 6),
        "involuntary_switches": after.nivcsw - before.nivcsw,
        "disturbance_rule": RULE,
    }
    try:
        fields["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        pass
    reasons: List[str] = []
    if before.machine is not None and after.machine is not None:
        busy = after.machine[0] - before.machine[0]
        steal = after.machine[1] - before.machine[1]
        capacity = wall * ncpu
        other = max(0.0, busy - own_cpu) / capacity
        steal_share = max(0.0, steal) / capacity
        fields["other_load_share"] = round(other, 4)
        fields["steal_share"] = round(steal_share, 4)
        if capacity < MIN_JUDGED_CPU_S:
            fields["disturbance_unjudged_reason"] = (
                "%.0f ms on %d CPUs is too short to judge with /proc/stat's %.0f ms ticks"
                % (wall * 1000, ncpu, 1000 / _HZ))
        elif other > OTHER_LOAD_MAX:
            reasons.append("other load: %.0f%% of the CPUs busy with other work" % (other * 100))
        if capacity >= MIN_JUDGED_CPU_S and steal_share > STEAL_MAX:
            reasons.append("hypervisor steal: %.0f%% of the CPUs' time" % (steal_share * 100))
    else:
        fields["other_load_unmeasured_reason"] = "no /proc/stat on this system"
    if cpu_inference:
        used = min(threads, ncpu) if threads > 0 else ncpu
        fields["cpu_share"] = round(own_cpu / (wall * used), 4)
    fields["disturbed"] = "; ".join(reasons) if reasons else None
    return fields
