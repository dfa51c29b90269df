"""Parse ``tegrastats`` lines (NVIDIA Jetson) into :class:`Sample` objects.

Pure functions over text: nothing here starts tegrastats or opens a file.

One line, as an AGX Orin on JetPack 6 prints it::

    09-01-2025 10:55:25 RAM 1313/30697MB (lfb 37x4MB) SWAP 0/15348MB (cached 0MB)
    CPU [0%@729,...,off] GR3D_FREQ 0% cpu@43.343C tj@43.343C
    VDD_GPU_SOC 1995mW/1995mW VDD_CPU_CV 0mW/0mW VIN_SYS_5V0 2524mW/2524mW

(one line in reality) gives::

    {"rails_w": {"VDD_GPU_SOC": 1.995, "VDD_CPU_CV": 0.0, "VIN_SYS_5V0": 2.524},
     "total_w": 4.519, "total_rail": "sum", "ram_used_mb": 1313, ...,
     "temps_c": {"cpu": 43.343, "tj": 43.343}, "gpu_util_pct": 0.0,
     "cpu_util_pct": [0.0, ..., null], "clocks_mhz": {"cpu0": 729, ...},
     "extra": {"timestamp": "2025-09-01T10:55:25", "ram_lfb": "37x4MB", ...}}

What the formats across JetPack 4 to 7 differ in, and what becomes of it:

- Rails: ``NAME cur/avg`` (JetPack 4, milliwatts without a unit), ``NAME
  curmW/avgmW`` (JetPack 5/6) and ``NAME curmW/avgmW/maxmW`` (JetPack 7). The
  first value is the instantaneous power and goes to ``rails_w`` in watts;
  the running average and maximum are not kept. Negative and zero readings are
  kept as printed. A rail printed twice (``NC``) gets ``NC_2``.
- Total: the rail chosen by :func:`agents.telemetry.sample.pick_total`.
- Temperatures ``NAME@45.5C`` in any case; names are lower-cased (``CPU`` on
  JetPack 4/5 and ``cpu`` on 6 are the same sensor). ``-256C`` is what
  tegrastats prints for a sensor that is off: it is left out of ``temps_c``
  and listed in ``extra["temp_offline"]``. A second value (JetPack 7:
  ``cpu@52.968C/52.968C``) goes to ``extra["<name>_temp2_c"]``.
- ``GR3D_FREQ 14%@[407,407]`` / ``14%@1300`` / ``0%`` / ``@[314,314,314]``:
  utilisation to ``gpu_util_pct``; one frequency to ``clocks_mhz["gpu"]``, a
  per-GPC array to ``gpu_gpc0``, ``gpu_gpc1``...
- Engines (``EMC_FREQ``, ``VIC``, ``NVENC``, ``NVDLA0_FREQ``, ``APE``...): the
  frequency to ``clocks_mhz[<engine>]`` (lower case, ``_FREQ`` dropped),
  utilisation to ``extra["<engine>_util_pct"]``, ``off`` to
  ``extra[<engine>] = "off"``.
- ``CPU [12%@1190,off,...]``: ``cpu_util_pct`` per core (None for ``off``)
  and ``clocks_mhz["cpuN"]``; off cores are listed in ``extra["cpu_off"]``.
- A leading ``MM-DD-YYYY HH:MM:SS`` is local time of an unknown zone: it goes
  to ``extra["timestamp"]`` (ISO, no zone); ``wall`` is only set when the
  caller passes the zone's ``utc_offset_s``.
- Anything else is kept in ``extra``: ``NAME value`` pairs under ``NAME``,
  lone tokens in ``extra["unparsed"]``. A line never raises.
"""

import calendar
import re
from typing import Iterable, List, Optional

from agents.telemetry.sample import Sample, unique_name, w_from_mw

__all__ = ["parse_tegrastats", "parse_tegrastats_line", "OFFLINE_TEMP_C"]

#: What tegrastats prints for a thermal sensor that is switched off.
OFFLINE_TEMP_C = -256.0

_END = r"(?=\s|$)"
_NUM = r"-?\d+(?:\.\d+)?"
_FREQ = r"(\d+|\[[\d,]*\])"

_TIMESTAMP = re.compile(r"(\d{2})-(\d{2})-(\d{4}) (\d{2}):(\d{2}):(\d{2})" + _END)
_RAM = re.compile(r"RAM (\d+)/(\d+)MB(?: \(lfb (\w+)\))?" + _END)
_SWAP = re.compile(r"SWAP (\d+)/(\d+)MB(?: \(cached (\d+)MB\))?" + _END)
_IRAM = re.compile(r"IRAM (\d+)/(\d+)kB ?\(lfb (\d+)kB\)" + _END)
_CPU = re.compile(r"CPU \[([^\]]*)\]" + _END)
_MTS = re.compile(r"MTS fg (\d+)% bg (\d+)%" + _END)
_TEMP = re.compile(r"([A-Za-z][\w]*)@(" + _NUM + r")C(?:/(" + _NUM + r")C)?" + _END)
_RAIL = re.compile(r"([A-Za-z][\w]*) (-?\d+)(mW)?/(-?\d+)(mW)?(?:/(-?\d+)(mW)?)?" + _END)
# Engine with a utilisation (possibly not a number, as in the jtop emulator).
_ENGINE_UTIL = re.compile(r"([A-Z][A-Z0-9_]*) ([^\s%@]*)%(?:@" + _FREQ + r")?" + _END)
_ENGINE_FREQ = re.compile(r"([A-Z][A-Z0-9_]*) @" + _FREQ + _END)
_ENGINE_OFF = re.compile(r"([A-Z][A-Z0-9_]*) off" + _END)
_PLAIN = re.compile(r"([A-Z][A-Z0-9_]*) (\d+)" + _END)
# A NAME followed by a value we cannot read: keep the pair together.
_PAIR = re.compile(r"([A-Z][A-Z0-9_]*) ([^A-Za-z\s]\S*)" + _END)
_TOKEN = re.compile(r"\S+")
_SPACE = re.compile(r"\s*")

# Engines whose bare number (``APE 174``, ``NVENC 716``) is a clock in MHz.
_KNOWN_ENGINE = re.compile(r"^(APE|VIC|NVENC|NVDEC|NVJPG|OFA|NVDLA|PVA|MSENC|GR3D|EMC|CVNAS|SE)"
                           r"\d*$")
_CORE_FULL = re.compile(r"^(\d+)%@(\d+)$")
_CORE_UTIL = re.compile(r"^(\d+)%$")
_CORE_FREQ = re.compile(r"%@(\d+)$")


def _engine_key(name: str) -> str:
    base = name[:-5] if name.endswith("_FREQ") else name
    if base == "GR3D":
        return "gpu"
    return base.lower()


def _freqs(text: str) -> List[int]:
    if text.startswith("["):
        return [int(v) for v in text.strip("[]").split(",") if v]
    return [int(text)]


def _set_freq(sample: Sample, key: str, text: Optional[str]) -> None:
    if not text:
        return
    values = _freqs(text)
    if text.startswith("["):
        for index, value in enumerate(values):
            sample.clocks_mhz["%s_gpc%d" % (key, index)] = value
    elif values:
        sample.clocks_mhz[key] = values[0]


def _set_util(sample: Sample, key: str, name: str, util: str, raw: str) -> None:
    try:
        value = float(int(util))
    except ValueError:
        sample.extra[name] = raw  # e.g. "$RAND_GPU%@1300": keep it as printed
        return
    if key == "gpu":
        sample.gpu_util_pct = value
    else:
        sample.extra[key + "_util_pct"] = value


def _cpu(sample: Sample, body: str, raw: str) -> None:
    utils: List[Optional[float]] = []
    off: List[str] = []
    unreadable = False
    for index, entry in enumerate(body.split(",")):
        entry = entry.strip()
        full = _CORE_FULL.match(entry)
        util_only = _CORE_UTIL.match(entry)
        if full:
            utils.append(float(full.group(1)))
            sample.clocks_mhz["cpu%d" % index] = int(full.group(2))
        elif util_only:
            utils.append(float(util_only.group(1)))
        elif entry == "off":
            utils.append(None)
            off.append(str(index))
        else:
            utils.append(None)
            unreadable = True
            freq = _CORE_FREQ.search(entry)
            if freq:
                sample.clocks_mhz["cpu%d" % index] = int(freq.group(1))
    sample.cpu_util_pct = utils
    if off:
        sample.extra["cpu_off"] = ",".join(off)
    if unreadable:
        sample.extra["CPU"] = raw


def parse_tegrastats_line(line: str, utc_offset_s: Optional[float] = None) -> Sample:
    """Parse one tegrastats line; never raises, unknown fields go to ``extra``.

    >>> parse_tegrastats_line(
    ...     "RAM 330/3964MB (lfb 758x4MB) POM_5V_IN 933/933 POM_5V_CPU 84/84").to_json()
    ... # doctest: +NORMALIZE_WHITESPACE
    {'rails_w': {'POM_5V_IN': 0.933, 'POM_5V_CPU': 0.084}, 'total_w': 0.933,
     'total_rail': 'POM_5V_IN', 'ram_used_mb': 330, 'ram_total_mb': 3964,
     'extra': {'ram_lfb': '758x4MB'}}

    ``utc_offset_s``: the device's offset from UTC, when known, to turn the
    leading local timestamp into ``wall``.
    """
    sample = Sample()
    if not isinstance(line, str):
        sample.extra["unparsed"] = repr(line)
        return sample
    text = line.strip()
    unparsed: List[str] = []
    offline: List[str] = []
    pos = 0
    while True:
        space = _SPACE.match(text, pos)
        assert space is not None  # r"\s*" matches, if only the empty string, at any pos
        pos = space.end()
        if pos >= len(text):
            break
        match = _TIMESTAMP.match(text, pos)
        if match:
            month, day, year, hour, minute, second = (int(g) for g in match.groups())
            if 1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 \
                    and second < 61:
                sample.extra["timestamp"] = "%04d-%02d-%02dT%02d:%02d:%02d" % (
                    year, month, day, hour, minute, second)
                if utc_offset_s is not None:
                    local = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
                    sample.wall = float(local - utc_offset_s)
                pos = match.end()
                continue
        match = _RAM.match(text, pos)
        if match:
            sample.ram_used_mb = int(match.group(1))
            sample.ram_total_mb = int(match.group(2))
            if match.group(3):
                sample.extra["ram_lfb"] = match.group(3)
            pos = match.end()
            continue
        match = _SWAP.match(text, pos)
        if match:
            sample.swap_used_mb = int(match.group(1))
            sample.swap_total_mb = int(match.group(2))
            if match.group(3):
                sample.extra["swap_cached_mb"] = int(match.group(3))
            pos = match.end()
            continue
        match = _IRAM.match(text, pos)
        if match:
            sample.extra["iram_used_kb"] = int(match.group(1))
            sample.extra["iram_total_kb"] = int(match.group(2))
            sample.extra["iram_lfb_kb"] = int(match.group(3))
            pos = match.end()
            continue
        match = _CPU.match(text, pos)
        if match:
            _cpu(sample, match.group(1), match.group(0)[4:])
            pos = match.end()
            continue
        match = _MTS.match(text, pos)
        if match:
            sample.extra["mts_fg_pct"] = float(match.group(1))
            sample.extra["mts_bg_pct"] = float(match.group(2))
            pos = match.end()
            continue
        match = _TEMP.match(text, pos)
        if match:
            name = match.group(1).lower()
            value = float(match.group(2))
            if value == OFFLINE_TEMP_C:
                offline.append(name)
            else:
                sample.temps_c[name] = value
            if match.group(3) is not None:
                sample.extra[name + "_temp2_c"] = float(match.group(3))
            pos = match.end()
            continue
        match = _RAIL.match(text, pos)
        if match:
            name = unique_name(match.group(1), sample.rails_w)
            sample.rails_w[name] = w_from_mw(int(match.group(2)))
            pos = match.end()
            continue
        match = _ENGINE_UTIL.match(text, pos)
        if match:
            name, util, freq = match.groups()
            key = _engine_key(name)
            _set_util(sample, key, name, util, match.group(0)[len(name) + 1:])
            _set_freq(sample, key, freq)
            pos = match.end()
            continue
        match = _ENGINE_FREQ.match(text, pos)
        if match:
            _set_freq(sample, _engine_key(match.group(1)), match.group(2))
            pos = match.end()
            continue
        match = _ENGINE_OFF.match(text, pos)
        if match:
            sample.extra[_engine_key(match.group(1))] = "off"
            pos = match.end()
            continue
        match = _PLAIN.match(text, pos)
        if match:
            name = match.group(1)
            base = name[:-5] if name.endswith("_FREQ") else name
            if _KNOWN_ENGINE.match(base):
                sample.clocks_mhz[_engine_key(name)] = int(match.group(2))
            else:
                sample.extra[name] = int(match.group(2))
            pos = match.end()
            continue
        match = _PAIR.match(text, pos)
        if match:
            sample.extra[match.group(1)] = match.group(2)
            pos = match.end()
            continue
        match = _TOKEN.match(text, pos)
        assert match is not None  # pos is at a non-space character
        unparsed.append(match.group(0))
        pos = match.end()
    if offline:
        sample.extra["temp_offline"] = ",".join(offline)
    if unparsed:
        sample.extra["unparsed"] = " ".join(unparsed)
    sample.set_total()
    return sample


def parse_tegrastats(lines: Iterable[str], utc_offset_s: Optional[float] = None) -> List[Sample]:
    """Parse tegrastats output, one sample per non-blank line.

    Lines starting with ``#`` are skipped (tegrastats never prints one; the
    recorded sample files use them for notes).

    >>> [s.total_w for s in parse_tegrastats(["# note", "", "RAM 1/2MB VDD_IN 4556mW/4556mW"])]
    [4.556]
    """
    samples: List[Sample] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        samples.append(parse_tegrastats_line(stripped, utc_offset_s))
    return samples
