"""The one data model every telemetry source produces: a :class:`Sample`.

A sample is what one source saw at one moment: power per rail, the total the
board's own total rail reports, memory, temperatures, utilisation, clocks and
(where the hardware keeps one) cumulative energy counters. Parsers of recorded
logs, sysfs readers and (later) the live sampler and NVML all return samples,
and ``Sample.to_json()`` is what travels in a ``sample`` event.

Rules that hold for every source:

- Units are fixed by the field name: ``_w`` watts, ``_mb`` MiB (2**20 bytes,
  what tegrastats calls "MB"), ``_c`` degrees Celsius, ``_mhz`` MHz, ``_pct``
  percent (0-100), ``_j`` joules, ``t``/``wall`` seconds.
- A value the source did not report is ``None`` (or missing from a dict) and
  is left out of ``to_json()``: never a zero, never an estimate.
- Fields the parser does not understand go to ``extra`` (strings or numbers),
  so nothing a new board prints is lost.
"""

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = [
    "Sample",
    "TOTAL_RAIL_PRIORITY",
    "pick_total",
    "unique_name",
    "w_from_mw",
]

#: Rails that measure a Jetson board's whole input, best first: ``VIN`` (the
#: INA238 on Jetson Thor's module input), ``POM_5V_IN`` (Nano, TX1: JetPack 4)
#: and ``VDD_IN`` (TX2, Orin NX, Orin Nano). Boards with none of these get the
#: sum of their rails: AGX Xavier, and AGX Orin, whose ``VIN_SYS_5V0`` is the
#: carrier's 5 V system rail, not the module input (a recorded AGX Orin line
#: shows VDD_CPU_CV at 14.3 W beside VIN_SYS_5V0 at 5.0 W; on Thor it reads
#: 5.6 W beside VIN at 19.8 W). See docs/telemetry.md.
TOTAL_RAIL_PRIORITY = ("VIN", "POM_5V_IN", "VDD_IN")

_DICT_FIELDS = ("rails_w", "temps_c", "clocks_mhz", "energy_j", "extra")
_SCALAR_FIELDS = ("total_w", "total_rail", "ram_used_mb", "ram_total_mb", "swap_used_mb",
                  "swap_total_mb", "gpu_mem_used_mb", "gpu_util_pct")

#: The order of keys in ``to_json()``.
FIELDS = ("t", "wall", "rails_w", "total_w", "total_rail", "ram_used_mb", "ram_total_mb",
          "swap_used_mb", "swap_total_mb", "gpu_mem_used_mb", "temps_c", "gpu_util_pct",
          "cpu_util_pct", "clocks_mhz", "energy_j", "extra")


def w_from_mw(value: float) -> float:
    """Milliwatts to watts, rounded to the microwatt so 2524 mW prints as 2.524."""
    return round(value / 1000.0, 6)


def unique_name(name: str, taken: Iterable[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when a board prints a rail twice (``NC``)."""
    existing = set(taken)
    if name not in existing:
        return name
    index = 2
    while "%s_%d" % (name, index) in existing:
        index += 1
    return "%s_%d" % (name, index)


def pick_total(rails_w: Mapping[str, float],
               priority: Tuple[str, ...] = TOTAL_RAIL_PRIORITY,
               sum_of: Optional[Iterable[str]] = None) -> Tuple[Optional[float], Optional[str]]:
    """Choose the total power of a sample: ``(watts, rail name)`` or ``(None, None)``.

    The first rail of ``priority`` present in ``rails_w`` wins. Without one,
    the total is the sum of the rails named in ``sum_of`` that are present (all
    rails when ``sum_of`` is None), reported as rail ``"sum"``. With nothing to
    sum the total is absent.

    >>> pick_total({"VDD_IN": 4.556, "VDD_SOC": 1.451})
    (4.556, 'VDD_IN')
    >>> pick_total({"GPU": 1.155, "CPU": 0.385})
    (1.54, 'sum')
    """
    for rail in priority:
        if rail in rails_w:
            return rails_w[rail], rail
    names = list(rails_w) if sum_of is None else [n for n in sum_of if n in rails_w]
    if not names:
        return None, None
    return round(sum(rails_w[n] for n in names), 6), "sum"


class Sample(object):
    """One telemetry reading, from any source. See the module docstring for units.

    ``t`` is ``time.monotonic()`` when a live reader took it (None for parsed
    logs); ``wall`` is unix seconds when known (None when a log only has local
    time without a zone). ``cpu_util_pct`` is a list indexed by CPU number;
    an entry is None when that core was off or its value unknown.
    ``energy_j`` holds cumulative counters (joules since an arbitrary origin):
    subtract two samples' values to get the energy between them.
    """

    __slots__ = FIELDS

    def __init__(self, t: Optional[float] = None, wall: Optional[float] = None,
                 rails_w: Optional[Dict[str, float]] = None, total_w: Optional[float] = None,
                 total_rail: Optional[str] = None, ram_used_mb: Optional[float] = None,
                 ram_total_mb: Optional[float] = None, swap_used_mb: Optional[float] = None,
                 swap_total_mb: Optional[float] = None,
                 gpu_mem_used_mb: Optional[float] = None,
                 temps_c: Optional[Dict[str, float]] = None,
                 gpu_util_pct: Optional[float] = None,
                 cpu_util_pct: Optional[List[Optional[float]]] = None,
                 clocks_mhz: Optional[Dict[str, float]] = None,
                 energy_j: Optional[Dict[str, float]] = None,
                 extra: Optional[Dict[str, Any]] = None) -> None:
        self.t = t
        self.wall = wall
        self.rails_w: Dict[str, float] = dict(rails_w) if rails_w else {}
        self.total_w = total_w
        self.total_rail = total_rail
        self.ram_used_mb = ram_used_mb
        self.ram_total_mb = ram_total_mb
        self.swap_used_mb = swap_used_mb
        self.swap_total_mb = swap_total_mb
        self.gpu_mem_used_mb = gpu_mem_used_mb
        self.temps_c: Dict[str, float] = dict(temps_c) if temps_c else {}
        self.gpu_util_pct = gpu_util_pct
        self.cpu_util_pct = list(cpu_util_pct) if cpu_util_pct is not None else None
        self.clocks_mhz: Dict[str, float] = dict(clocks_mhz) if clocks_mhz else {}
        self.energy_j: Dict[str, float] = dict(energy_j) if energy_j else {}
        self.extra: Dict[str, Any] = dict(extra) if extra else {}

    def set_total(self, priority: Tuple[str, ...] = TOTAL_RAIL_PRIORITY,
                  sum_of: Optional[Iterable[str]] = None) -> None:
        """Fill ``total_w``/``total_rail`` from ``rails_w`` by :func:`pick_total`."""
        self.total_w, self.total_rail = pick_total(self.rails_w, priority, sum_of)

    def has_measurement(self) -> bool:
        """True when anything besides ``t``, ``wall`` and ``extra`` was measured."""
        if any(getattr(self, name) for name in _DICT_FIELDS if name != "extra"):
            return True
        if any(getattr(self, name) is not None for name in _SCALAR_FIELDS):
            return True
        if not self.cpu_util_pct:
            return False
        return any(v is not None for v in self.cpu_util_pct)

    def to_json(self) -> Dict[str, Any]:
        """The normalised object of docs/telemetry.md; absent values are left out.

        >>> Sample(rails_w={"VDD_IN": 4.556}, total_w=4.556, total_rail="VDD_IN").to_json()
        {'rails_w': {'VDD_IN': 4.556}, 'total_w': 4.556, 'total_rail': 'VDD_IN'}
        """
        out: Dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if name == "cpu_util_pct":
                if value and any(v is not None for v in value):
                    out[name] = list(value)
            elif name in _DICT_FIELDS:
                if value:
                    out[name] = dict(value)
            elif value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Sample":
        """Rebuild a sample from ``to_json()`` output; unknown keys go to ``extra``."""
        kwargs: Dict[str, Any] = {}
        extra = dict(obj.get("extra") or {})
        for key, value in obj.items():
            if key == "extra":
                continue
            if key in FIELDS:
                kwargs[key] = value
            else:
                extra[key] = value
        kwargs["extra"] = extra
        return cls(**kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return "Sample(%s)" % ", ".join("%s=%r" % kv for kv in self.to_json().items())
