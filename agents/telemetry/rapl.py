"""Read RAPL energy counters from the Linux powercap sysfs (Intel and AMD x86).

Layout assumed (Documentation/power/powercap/powercap.rst in the kernel)::

    /sys/class/powercap/
        intel-rapl/                  control type (no counter)
        intel-rapl:0/                zone: package 0
            name                     "package-0"
            energy_uj                cumulative energy, microjoules
            max_energy_range_uj      where energy_uj wraps back to 0
        intel-rapl:0:0/              subzone "core" (part of package-0)
        intel-rapl:0:1/              subzone "uncore"
        intel-rapl:1/                "psys" on some laptops, or package-1
        intel-rapl-mmio:0/           second interface to the same package

AMD Zen CPUs are served by the same ``intel_rapl`` powercap driver on recent
kernels, so their zones are also called ``intel-rapl:N`` (package and core
only). In the real tree these entries are symlinks; subzones also appear
nested under their parent. Both layouts are searched.

Since the PLATYPUS fix (CVE-2020-8694, Linux 5.10 and stable kernels of late
2020) ``energy_uj`` is mode 0400: only root can read it. :meth:`RaplReader.available`
then says so instead of failing later.
"""

import os
import re
import stat
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from agents.telemetry.energy import counter_delta
from agents.telemetry.sample import Sample

__all__ = ["RaplReader", "RaplZone", "DEFAULT_ROOT"]

DEFAULT_ROOT = "/sys/class/powercap"
_ZONE = re.compile(r"^[a-z][a-z0-9-]*:\d+(?::\d+)*$")


class RaplZone(object):
    """One powercap zone: its id (``intel-rapl:0``), name and wrap range."""

    __slots__ = ("zone", "name", "label", "path", "max_range_uj")

    def __init__(self, zone: str, name: str, label: str, path: str,
                 max_range_uj: Optional[int]) -> None:
        self.zone = zone
        self.name = name
        self.label = label
        self.path = path
        self.max_range_uj = max_range_uj

    @property
    def energy_path(self) -> str:
        return os.path.join(self.path, "energy_uj")

    def __repr__(self) -> str:
        return "RaplZone(%r, name=%r, max_range_uj=%r)" % (self.zone, self.name,
                                                           self.max_range_uj)


class RaplReader(object):
    """Energy counters of every RAPL zone under ``root``.

    ``opener`` is the function used to open sysfs files (``open`` by default);
    tests pass one that fails the way the kernel does for a non-root reader.

    >>> reader = RaplReader("/nonexistent")
    >>> reader.available()[0]
    False
    """

    def __init__(self, root: str = DEFAULT_ROOT,
                 opener: Callable[..., Any] = open) -> None:
        self.root = root
        self._open = opener
        self.zones: List[RaplZone] = self._discover()

    def _read_text(self, path: str) -> str:
        with self._open(path, "r") as handle:
            return handle.read().strip()

    def _read_int(self, path: str) -> Optional[int]:
        try:
            return int(self._read_text(path))
        except (OSError, ValueError):
            return None

    def _candidates(self) -> Dict[str, str]:
        """Zone id -> directory, from the flat symlinks and the nested tree alike."""
        found: Dict[str, str] = {}

        def walk(path: str, depth: int) -> None:
            try:
                entries = sorted(os.listdir(path))
            except OSError:
                return
            for entry in entries:
                child = os.path.join(path, entry)
                if not os.path.isdir(child):
                    continue
                # Only zone directories are entered (plus control types at the
                # top), so sysfs links such as "subsystem" never loop.
                if _ZONE.match(entry):
                    found.setdefault(entry, child)
                    if depth < 3:
                        walk(child, depth + 1)
                elif depth == 0 and ":" not in entry:
                    walk(child, depth + 1)

        walk(self.root, 0)
        return found

    def _discover(self) -> List[RaplZone]:
        candidates = self._candidates()
        names: Dict[str, str] = {}
        for zone, path in candidates.items():
            try:
                names[zone] = self._read_text(os.path.join(path, "name"))
            except OSError:
                names[zone] = zone
        zones = []
        for zone in sorted(candidates, key=_zone_order):
            path = candidates[zone]
            has_counter = os.path.exists(os.path.join(path, "energy_uj")) or \
                os.path.exists(os.path.join(path, "max_energy_range_uj"))
            if not has_counter:
                continue
            control, _, numbers = zone.partition(":")
            parts = numbers.split(":")
            label = names[zone]
            if len(parts) > 1:
                parent = "%s:%s" % (control, ":".join(parts[:-1]))
                label = "%s/%s" % (names.get(parent, parent), label)
            if control != "intel-rapl":
                label = "%s/%s" % (control, label)
            max_range = self._read_int(os.path.join(path, "max_energy_range_uj"))
            zones.append(RaplZone(zone, names[zone], label, path, max_range))
        return zones

    def available(self) -> Tuple[bool, str]:
        """``(True, what is read)`` or ``(False, why not)``, by reading every counter once."""
        if not self.zones:
            return False, ("no RAPL zones under %s: not a Linux x86 host, or the intel_rapl "
                           "powercap driver is not loaded" % self.root)
        readable = []
        denied = []
        problems = []
        for zone in self.zones:
            path = zone.energy_path
            try:
                int(self._read_text(path))
            except PermissionError:
                denied.append(zone)
            except FileNotFoundError:
                problems.append("%s has no energy_uj" % zone.zone)
            except (OSError, ValueError) as exc:
                problems.append("cannot read %s: %s" % (path, exc))
            else:
                readable.append("%s (%s)" % (zone.zone, zone.label))
        if readable:
            return True, "reads " + ", ".join(readable)
        if denied:
            problems.insert(0, _permission_reason(self.root, denied))
        return False, "; ".join(problems)

    def read(self) -> Dict[str, int]:
        """``{zone id: energy_uj}`` for every zone that can be read now."""
        values: Dict[str, int] = {}
        for zone in self.zones:
            value = self._read_int(zone.energy_path)
            if value is not None:
                values[zone.zone] = value
        return values

    def energy_delta_j(self, before: Dict[str, int], after: Dict[str, int]) -> Dict[str, float]:
        """Joules per zone between two :meth:`read` results, across one wrap-around."""
        ranges = {z.zone: z.max_range_uj for z in self.zones}
        return {zone: counter_delta(before[zone], after[zone], ranges.get(zone)) / 1e6
                for zone in sorted(set(before) & set(after))}

    def read_sample(self) -> Sample:
        """A sample whose ``energy_j`` holds each zone's counter in joules, by label.

        The counters wrap: compare two samples with :meth:`energy_delta_j` on
        :meth:`read` values, or with ``counter_delta`` and the zone's range.
        """
        labels = {z.zone: z.label for z in self.zones}
        values = self.read()
        return Sample(t=time.monotonic(), wall=time.time(),
                      energy_j={labels[z]: v / 1e6 for z, v in values.items()})


def _zone_order(zone: str) -> Tuple[str, List[int]]:
    control, _, numbers = zone.partition(":")
    return control, [int(n) for n in numbers.split(":")]


def _permission_reason(root: str, zones: List[RaplZone]) -> str:
    mode = ""
    try:
        mode = " (mode %04o)" % stat.S_IMODE(os.stat(zones[0].energy_path).st_mode)
    except OSError:
        pass
    return ("energy_uj of %s under %s is readable by root only%s: Linux restricts RAPL energy "
            "counters to root since the PLATYPUS fix (CVE-2020-8694); run the agent as root "
            "or make the files readable (docs/telemetry.md)"
            % (", ".join(z.zone for z in zones), root, mode))
