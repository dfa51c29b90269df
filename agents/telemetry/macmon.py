"""Parse ``macmon pipe`` JSON lines (Apple Silicon, no root needed) into samples.

Pure functions over text: nothing here starts macmon.

One line (shortened)::

    {"timestamp": "2025-02-24T20:38:15.427569+00:00", "cpu_power": 0.20486385,
     "gpu_power": 0.017451683, "ane_power": 0.0, "all_power": 0.22231553,
     "sys_power": 5.876533, "memory": {"ram_total": 25769803776, ...},
     "temp": {"cpu_temp_avg": 43.73614, ...}, "gpu_active_ratio": 0.09, ...}

gives::

    {"wall": 1740429495.427569, "rails_w": {"cpu": 0.20486385, ..., "sys": 5.876533},
     "total_w": 5.876533, "total_rail": "sys", "ram_total_mb": 24576.0, ...,
     "temps_c": {"cpu_avg": 43.73614, ...}, "gpu_util_pct": 9.0, ...}

Mapping:

- ``*_power`` (watts) -> ``rails_w`` without the suffix (``cpu``, ``gpu``,
  ``ane``, ``ram``, ``gpu_ram``, ``all``, ``sys``). Total: ``sys`` (whole
  system, from the SMC) when present, else ``all`` (CPU + GPU + ANE).
- ``memory.ram_total/ram_usage/swap_total/swap_usage`` (bytes) -> ``*_mb`` (MiB).
- ``temp.cpu_temp_avg/gpu_temp_avg`` -> ``temps_c["cpu_avg"/"gpu_avg"]``.
- GPU utilisation: ``gpu_active_ratio`` (active residency, 0-1) x 100; older
  macmon releases print ``gpu_usage: [freq_mhz, ratio]`` instead.
- ``ecpu_cores``/``pcpu_cores`` (or the per-cluster ratios of older
  releases): ``cpu_util_pct`` from each core's ``active_ratio``, E cores first
  (macOS numbers them first); frequencies to ``clocks_mhz``.
- Everything else that is a number or string goes to ``extra`` (``fans`` as
  ``fan0_rpm``...). macmon reads no energy counter, so ``energy_j`` is empty.
"""

import datetime
import json
from typing import Any, Iterable, List, Mapping, Optional

from agents.telemetry.sample import Sample

__all__ = ["parse_macmon", "parse_macmon_line", "parse_macmon_object"]

_MIB = 1048576.0
_MEMORY = (("ram_usage", "ram_used_mb"), ("ram_total", "ram_total_mb"),
           ("swap_usage", "swap_used_mb"), ("swap_total", "swap_total_mb"))
_TOTAL_PRIORITY = ("sys", "all")


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _wall(text: Any) -> Optional[float]:
    if not isinstance(text, str):
        return None
    stamp = text.strip()
    if stamp.endswith("Z"):
        stamp = stamp[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # local time of an unknown zone: not a unix time
    return parsed.timestamp()


def _pair(value: Any) -> Optional[List[float]]:
    if isinstance(value, list) and len(value) == 2:
        numbers = [_num(v) for v in value]
        if numbers[0] is not None and numbers[1] is not None:
            return [numbers[0], numbers[1]]
    return None


def parse_macmon_object(obj: Mapping[str, Any]) -> Sample:
    """One decoded macmon object to a sample; unknown or mistyped fields go to ``extra``."""
    sample = Sample()
    used = set()
    wall = _wall(obj.get("timestamp"))
    if wall is not None:
        sample.wall = wall
        used.add("timestamp")

    for key, value in obj.items():
        if key.endswith("_power") and _num(value) is not None:
            sample.rails_w[key[:-len("_power")]] = float(value)
            used.add(key)

    memory = obj.get("memory")
    if isinstance(memory, Mapping):
        used.add("memory")
        for key, field in _MEMORY:
            value = _num(memory.get(key))
            if value is not None:
                setattr(sample, field, value / _MIB)  # exact: a power of two
        for key, value in memory.items():
            if key not in dict(_MEMORY) and _num(value) is not None:
                sample.extra["memory." + key] = value

    temp = obj.get("temp")
    if isinstance(temp, Mapping):
        used.add("temp")
        for key, value in temp.items():
            if _num(value) is None:
                continue
            name = key[:-len("_temp_avg")] + "_avg" if key.endswith("_temp_avg") else key
            sample.temps_c[name] = float(value)

    ratio = _num(obj.get("gpu_active_ratio"))
    gpu_usage = _pair(obj.get("gpu_usage"))
    if ratio is not None:
        sample.gpu_util_pct = round(ratio * 100.0, 6)
        used.add("gpu_active_ratio")
    elif gpu_usage is not None:
        sample.gpu_util_pct = round(gpu_usage[1] * 100.0, 6)
    if gpu_usage is not None:
        sample.clocks_mhz.setdefault("gpu", gpu_usage[0])
        used.add("gpu_usage")
    if _num(obj.get("gpu_freq_mhz")) is not None:
        sample.clocks_mhz["gpu"] = float(obj["gpu_freq_mhz"])
        used.add("gpu_freq_mhz")

    utils: List[Optional[float]] = []
    for cluster in ("ecpu", "pcpu"):
        if _num(obj.get(cluster + "_freq_mhz")) is not None:
            sample.clocks_mhz[cluster] = float(obj[cluster + "_freq_mhz"])
            used.add(cluster + "_freq_mhz")
        usage = _pair(obj.get(cluster + "_usage"))
        if usage is not None:
            sample.clocks_mhz.setdefault(cluster, usage[0])
            sample.extra[cluster + "_usage_pct"] = round(usage[1] * 100.0, 6)
            used.add(cluster + "_usage")
        cores = obj.get(cluster + "_cores")
        if isinstance(cores, list):
            used.add(cluster + "_cores")
            for core in cores:
                if not isinstance(core, Mapping):
                    utils.append(None)
                    continue
                freq = _num(core.get("freq_mhz"))
                if freq is not None:
                    sample.clocks_mhz["cpu%d" % len(utils)] = freq
                active = _num(core.get("active_ratio"))
                utils.append(round(active * 100.0, 6) if active is not None else None)
    if utils:
        sample.cpu_util_pct = utils

    fans = obj.get("fans")
    if isinstance(fans, list):
        used.add("fans")
        for index, fan in enumerate(fans):
            if isinstance(fan, Mapping):
                name = fan.get("name") if isinstance(fan.get("name"), str) else "fan%d" % index
                for key in ("rpm", "max_rpm"):
                    if _num(fan.get(key)) is not None:
                        sample.extra["%s_%s" % (name, key)] = fan[key]

    for key, value in obj.items():
        if key in used:
            continue
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            sample.extra[key] = value
        elif value is not None:
            sample.extra[key] = json.dumps(value, sort_keys=True)

    sample.set_total(_TOTAL_PRIORITY, ())
    return sample


def parse_macmon_line(line: str) -> Sample:
    """Parse one ``macmon pipe`` line; raises ValueError if it is not a JSON object.

    >>> parse_macmon_line('{"cpu_power": 0.2, "all_power": 0.22, "sys_power": 5.9}').to_json()
    {'rails_w': {'cpu': 0.2, 'all': 0.22, 'sys': 5.9}, 'total_w': 5.9, 'total_rail': 'sys'}
    """
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ValueError("not a macmon JSON line: %s" % exc) from None
    if not isinstance(obj, dict):
        raise ValueError("not a macmon JSON line: a %s, not an object" % type(obj).__name__)
    return parse_macmon_object(obj)


def parse_macmon(lines: Iterable[str]) -> List[Sample]:
    """Parse ``macmon pipe`` output, one JSON object per line.

    Blank lines are skipped and a truncated last line (macmon stopped
    mid-write) is dropped; any other bad line raises ValueError with its number.
    """
    numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    samples: List[Sample] = []
    for index, (number, line) in enumerate(numbered):
        try:
            samples.append(parse_macmon_line(line))
        except ValueError as exc:
            if index == len(numbered) - 1 and not line.endswith("}"):
                break
            raise ValueError("line %d: %s" % (number, exc)) from None
    return samples

