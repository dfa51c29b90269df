"""Parse macOS ``powermetrics`` output (plist stream or text) into samples.

Pure functions over bytes/text: nothing here runs powermetrics (which needs
root, see docs/telemetry.md).

**Plist** (``powermetrics -f plist``): one plist per sample, separated by NUL
bytes. Keys read, per sample::

    processor.cpu_power / gpu_power / ane_power / combined_power   mW -> rails_w (W)
    processor.cpu_energy / gpu_energy / ane_energy                  mJ in the sample's
                                                                    interval -> energy_j
    processor.clusters[].name, freq_hz                              -> clocks_mhz[<name>]
    processor.clusters[].cpus[].cpu, freq_hz, idle_ratio, down_ratio
                                  -> cpu_util_pct[cpu] = 100 * (1 - idle - down),
                                     clocks_mhz["cpu<N>"]
    gpu.freq_hz, gpu.idle_ratio   -> clocks_mhz["gpu"], gpu_util_pct = 100 * (1 - idle)
    thermal_pressure              -> extra["thermal_pressure"]
    timestamp (UTC), elapsed_ns, hw_model, kern_osversion -> wall, extra

``energy_j`` is cumulative over the stream: each sample's interval energy is
added to the previous total, so ``b.energy_j["cpu"] - a.energy_j["cpu"]`` is
the energy of the intervals after ``a`` up to and including ``b``.

Two quirks of real output: ``gpu.freq_hz`` holds MHz, not Hz (338 on an M4
Max whose text output says "GPU HW active frequency: 338 MHz"), so a
``freq_hz`` below 100000 is read as MHz; and the GPU sampler's own
``gpu.gpu_energy`` differs from ``processor.gpu_energy`` (kept in ``extra``).

**Text** (``powermetrics`` default): samples start at ``*** Sampled system
activity (Tue Dec  9 12:55:37 2025 -0600) (1003.40ms elapsed) ***``; lines like
``CPU Power: 125 mW``, ``Combined Power (CPU + GPU + ANE): 125 mW``,
``CPU 0 frequency: 1096 MHz``, ``CPU 0 active residency:   4.38% (...)``,
``GPU HW active residency:   0.18%`` and ``Current pressure level: Nominal``.
Cluster power lines (``E-Cluster Power: 96 mW``) go to ``rails_w`` too.

Total: ``combined`` when printed (a macOS 14.1 report says the text lost it), else the
sum of ``cpu``, ``gpu`` and ``ane`` that are present (``total_rail="sum"``);
cluster rails are never summed (they are part of ``cpu``). powermetrics has no
memory sampler: RAM fields stay absent.
"""

import calendar
import datetime
import plistlib
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple
from xml.parsers.expat import ExpatError

from agents.telemetry.sample import Sample, w_from_mw

__all__ = ["parse_powermetrics_plist_stream", "parse_powermetrics_plist",
           "parse_powermetrics_text", "looks_like_plist"]

_TOTAL_PRIORITY = ("combined",)
_SUMMED = ("cpu", "gpu", "ane")
_MHZ_LIMIT = 100000.0  # a "freq_hz" below this is already in MHz


def looks_like_plist(data: bytes) -> bool:
    """True when ``data`` is plist output (XML header or NUL separators), not text."""
    head = data.lstrip(b"\0 \t\r\n")[:64]
    return head.startswith(b"<?xml") or head.startswith(b"<plist") or b"\0" in data


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _mhz(freq_hz: Any) -> Optional[float]:
    value = _num(freq_hz)
    if value is None:
        return None
    if value < _MHZ_LIMIT:
        return value
    return round(value / 1e6, 3)


def _pct_active(idle: Any, down: Any = 0.0) -> Optional[float]:
    idle_v = _num(idle)
    down_v = _num(down) if down is not None else 0.0
    if idle_v is None or down_v is None:
        return None
    return round(max(0.0, 1.0 - idle_v - down_v) * 100.0, 4)


def parse_powermetrics_plist(obj: Mapping[str, Any],
                             totals_j: Optional[Dict[str, float]] = None) -> Sample:
    """One decoded powermetrics plist (a dict) to a sample.

    ``totals_j`` carries the cumulative energy between calls (updated in place).

    >>> s = parse_powermetrics_plist({"processor": {"cpu_power": 2978.45, "gpu_power": 269.614,
    ...     "ane_power": 0.0, "combined_power": 3248.07, "cpu_energy": 3049}})
    >>> s.rails_w, s.total_w, s.total_rail, s.energy_j
    ({'cpu': 2.97845, 'gpu': 0.269614, 'ane': 0.0, 'combined': 3.24807}, 3.24807, \
'combined', {'cpu': 3.049})
    """
    sample = Sample()
    totals = totals_j if totals_j is not None else {}
    stamp = obj.get("timestamp")
    if isinstance(stamp, datetime.datetime):
        # plistlib returns <date> values as naive datetimes in UTC.
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        sample.wall = float(calendar.timegm(stamp.timetuple())) + stamp.microsecond / 1e6
    for key, extra_key in (("elapsed_ns", "elapsed_ns"), ("hw_model", "hw_model"),
                           ("kern_osversion", "os_version"),
                           ("thermal_pressure", "thermal_pressure")):
        value = obj.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            sample.extra[extra_key] = value

    processor = obj.get("processor")
    if isinstance(processor, Mapping):
        for rail in ("cpu", "gpu", "ane", "combined"):
            power = _num(processor.get(rail + "_power"))
            if power is not None:
                sample.rails_w[rail] = w_from_mw(power)
        for counter in ("cpu", "gpu", "ane"):
            energy = _num(processor.get(counter + "_energy"))
            if energy is not None:
                totals[counter] = round(totals.get(counter, 0.0) + energy / 1000.0, 6)
                sample.energy_j[counter] = totals[counter]
        utils: Dict[int, Optional[float]] = {}
        clusters = processor.get("clusters")
        for cluster in clusters if isinstance(clusters, list) else []:
            if not isinstance(cluster, Mapping):
                continue
            name = cluster.get("name")
            if isinstance(name, str):
                freq = _mhz(cluster.get("freq_hz"))
                if freq is not None:
                    sample.clocks_mhz[name] = freq
                active = _pct_active(cluster.get("idle_ratio"), cluster.get("down_ratio"))
                if active is not None:
                    sample.extra[name + "_active_pct"] = active
            cpus = cluster.get("cpus")
            for cpu in cpus if isinstance(cpus, list) else []:
                if not isinstance(cpu, Mapping):
                    continue
                number = cpu.get("cpu")
                if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                    continue
                freq = _mhz(cpu.get("freq_hz"))
                if freq is not None:
                    sample.clocks_mhz["cpu%d" % number] = freq
                utils[number] = _pct_active(cpu.get("idle_ratio"), cpu.get("down_ratio"))
        if utils:
            sample.cpu_util_pct = [utils.get(i) for i in range(max(utils) + 1)]

    gpu = obj.get("gpu")
    if isinstance(gpu, Mapping):
        freq = _mhz(gpu.get("freq_hz"))
        if freq is not None:
            sample.clocks_mhz["gpu"] = freq
        sample.gpu_util_pct = _pct_active(gpu.get("idle_ratio"))
        gpu_energy = _num(gpu.get("gpu_energy"))
        if gpu_energy is not None:
            sample.extra["gpu_sampler_energy_mj"] = gpu_energy

    sample.set_total(_TOTAL_PRIORITY, _SUMMED)
    return sample


def parse_powermetrics_plist_stream(data: bytes) -> List[Sample]:
    """Parse ``powermetrics -f plist`` output: NUL-separated plists, one per sample.

    A truncated last plist (powermetrics stopped mid-write) is dropped; any
    other plist that does not parse raises ValueError naming its index.

    >>> one = plistlib.dumps({"processor": {"cpu_power": 125.0, "cpu_energy": 125}})
    >>> [(s.rails_w["cpu"], s.energy_j["cpu"]) for s in
    ...  parse_powermetrics_plist_stream(one + b"\\0" + one + b"\\0")]
    [(0.125, 0.125), (0.125, 0.25)]
    """
    chunks = [c.strip(b" \t\r\n") for c in data.split(b"\0")]
    chunks = [c for c in chunks if c]
    samples: List[Sample] = []
    totals: Dict[str, float] = {}
    for index, chunk in enumerate(chunks):
        try:
            obj = plistlib.loads(chunk)
        except (ValueError, ExpatError) as exc:  # bad or truncated XML / binary plist
            if index == len(chunks) - 1:
                break
            raise ValueError("plist %d of %d does not parse: %s: %s"
                             % (index + 1, len(chunks), type(exc).__name__, exc)) from None
        if not isinstance(obj, dict):
            raise ValueError("plist %d is a %s, not a dict" % (index + 1, type(obj).__name__))
        samples.append(parse_powermetrics_plist(obj, totals))
    return samples


# -- text ----------------------------------------------------------------------

_SEPARATOR = re.compile(r"^\*\*\* Sampled system activity \((.*?)\)(?: \(([\d.]+)ms elapsed\))?"
                        r" \*\*\*\s*$")
_STAMP = re.compile(r"^\w{3} (\w{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) (\d{4})"
                    r" ([+-])(\d{2})(\d{2})$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_POWER = re.compile(r"^(.+?) Power(?: \([^)]*\))?: (-?[\d.]+) mW$")
_CPU_FREQ = re.compile(r"^CPU (\d+) frequency: +([\d.]+) MHz$")
_CPU_ACTIVE = re.compile(r"^CPU (\d+) active residency: +([\d.]+)%")
_CLUSTER_FREQ = re.compile(r"^(\S+-Cluster) HW active frequency: +([\d.]+) MHz$")
_CLUSTER_ACTIVE = re.compile(r"^(\S+-Cluster) HW active residency: +([\d.]+)%")
_CLUSTER_ONLINE = re.compile(r"^(\S+-Cluster) Online: +([\d.]+)%$")
_GPU_FREQ = re.compile(r"^GPU (?:HW )?active frequency: +([\d.]+) MHz$")
_GPU_ACTIVE = re.compile(r"^GPU (?:HW )?active residency: +([\d.]+)%")
_PRESSURE = re.compile(r"^Current pressure level: +(\S+)$")
_HEADER = {"Machine model": "hw_model", "OS version": "os_version"}
# Known lines that carry nothing beyond what is read above.
_REDUNDANT = re.compile(r"^(CPU \d+ (idle|down) residency|\S+-Cluster (idle|down) residency"
                        r"|GPU (idle residency|SW requested state|SW state)"
                        r"|Boot arguments|Boot time)\b")
_KEY_VALUE = re.compile(r"^([A-Za-z][\w .()+/-]*?): +(.+)$")
_RAIL_NAMES = {"CPU": "cpu", "GPU": "gpu", "ANE": "ane", "Combined": "combined"}


def _wall(stamp: str) -> Optional[float]:
    match = _STAMP.match(stamp.strip())
    if not match or match.group(1) not in _MONTHS:
        return None
    month = _MONTHS.index(match.group(1)) + 1
    day, hour, minute, second, year = (int(match.group(i)) for i in (2, 3, 4, 5, 6))
    offset = (int(match.group(8)) * 3600 + int(match.group(9)) * 60) \
        * (1 if match.group(7) == "+" else -1)
    try:
        local = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return float(local - offset)


def _number(text: str) -> Any:
    try:
        return float(text) if "." in text or "e" in text else int(text)
    except ValueError:
        return text


def _text_sample(lines: List[str], header: Mapping[str, Any]) -> Sample:
    sample = Sample()
    sample.extra.update(header)
    utils: Dict[int, float] = {}
    unparsed: List[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("****"):
            continue
        match = _POWER.match(line)
        if match:
            name = _RAIL_NAMES.get(match.group(1), match.group(1))
            sample.rails_w[name] = w_from_mw(float(match.group(2)))
            continue
        match = _CPU_FREQ.match(line)
        if match:
            sample.clocks_mhz["cpu" + match.group(1)] = _number(match.group(2))
            continue
        match = _CPU_ACTIVE.match(line)
        if match:
            utils[int(match.group(1))] = float(match.group(2))
            continue
        match = _CLUSTER_FREQ.match(line)
        if match:
            sample.clocks_mhz[match.group(1)] = _number(match.group(2))
            continue
        match = _CLUSTER_ACTIVE.match(line)
        if match:
            sample.extra[match.group(1) + "_active_pct"] = float(match.group(2))
            continue
        match = _CLUSTER_ONLINE.match(line)
        if match:
            sample.extra[match.group(1) + "_online_pct"] = float(match.group(2))
            continue
        match = _GPU_FREQ.match(line)
        if match:
            sample.clocks_mhz["gpu"] = _number(match.group(1))
            continue
        match = _GPU_ACTIVE.match(line)
        if match:
            sample.gpu_util_pct = float(match.group(1))
            continue
        match = _PRESSURE.match(line)
        if match:
            sample.extra["thermal_pressure"] = match.group(1)
            continue
        if _REDUNDANT.match(line):
            continue
        match = _KEY_VALUE.match(line)
        if match:
            key = _HEADER.get(match.group(1), match.group(1))
            sample.extra[key] = _number(match.group(2).strip())
        else:
            unparsed.append(line)
    if unparsed:
        sample.extra["unparsed"] = " | ".join(unparsed)
    if utils:
        sample.cpu_util_pct = [utils.get(i) for i in range(max(utils) + 1)]
    sample.set_total(_TOTAL_PRIORITY, _SUMMED)
    return sample


def parse_powermetrics_text(text: str) -> List[Sample]:
    """Parse powermetrics' text output; one sample per ``*** Sampled ...`` block.

    Text before the first separator is the header (``Machine model``, ``OS
    version``), copied to every sample's ``extra``; if it holds measurements
    itself (an excerpt without a separator), it is a sample too.

    >>> text = '''*** Sampled system activity (Tue Dec  9 12:55:37 2025 -0600) ***
    ... CPU Power: 125 mW
    ... GPU Power: 0 mW
    ... ANE Power: 0 mW
    ... Combined Power (CPU + GPU + ANE): 125 mW'''
    >>> s = parse_powermetrics_text(text)[0]
    >>> s.wall, s.rails_w, s.total_w, s.total_rail
    (1765306537.0, {'cpu': 0.125, 'gpu': 0.0, 'ane': 0.0, 'combined': 0.125}, 0.125, 'combined')
    """
    preamble_lines: List[str] = []
    blocks: List[Tuple[Any, List[str]]] = []  # (separator match, lines)
    for line in text.splitlines():
        match = _SEPARATOR.match(line.strip())
        if match:
            blocks.append((match, []))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            preamble_lines.append(line)
    header: Dict[str, Any] = {}
    for line in preamble_lines:
        match = _KEY_VALUE.match(line.strip())
        if match and match.group(1) in _HEADER:
            header[_HEADER[match.group(1)]] = match.group(2).strip()
    samples: List[Sample] = []
    preamble = _text_sample(preamble_lines, header)
    if preamble.has_measurement():
        samples.append(preamble)
    for stamp, lines in blocks:
        sample = _text_sample(lines, header)
        sample.wall = _wall(stamp.group(1))
        if stamp.group(2):
            sample.extra["elapsed_ms"] = float(stamp.group(2))
        samples.append(sample)
    return samples
