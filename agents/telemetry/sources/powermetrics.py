"""Apple Silicon telemetry from ``powermetrics -f plist`` under ``sudo -n``.

Apart from macmon because it needs root: the exact command line has to match
a sudoers line (:data:`POWERMETRICS_SAMPLERS`, :data:`SUDOERS_HINT`), and
``available()`` asks sudo about that command without running it. The plists
are parsed by :mod:`agents.telemetry.powermetrics`.
"""

import os
import plistlib
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple
from xml.parsers.expat import ExpatError

from agents.telemetry.powermetrics import parse_powermetrics_plist
from agents.telemetry.sample import Sample
from agents.telemetry.sources.process import ProcessSource

__all__ = ["POWERMETRICS_SAMPLERS", "SUDOERS_HINT", "PowermetricsSource"]

#: The samplers the agent asks powermetrics for (a sudoers line must match exactly).
POWERMETRICS_SAMPLERS = "cpu_power,gpu_power,ane_power,thermal"

SUDOERS_HINT = ("let the agent's user run powermetrics without a password: a sudoers drop-in "
                "(sudo visudo -f /etc/sudoers.d/edgefarm-powermetrics) with the line "
                "'<user> ALL=(root) NOPASSWD: /usr/bin/powermetrics', see docs/telemetry.md")


class PowermetricsSource(ProcessSource):
    """``powermetrics -f plist -i N`` under ``sudo -n`` (Apple Silicon; root needed).

    Each plist's ``cpu_energy``/``gpu_energy``/``ane_energy`` (mJ in its
    interval) are accumulated into counters ``energy_j["cpu"]``...
    (``counter_label = "powermetrics-counter"``).
    """

    name = "powermetrics"
    power = True
    separator = b"\0"
    counter_keys = ("cpu", "gpu", "ane")
    counter_label = "powermetrics-counter"
    throttle_keys = ("thermal_pressure",)

    def __init__(self, interval: float = 0.1, binary: Optional[str] = None,
                 sudo: Optional[str] = None) -> None:
        ProcessSource.__init__(self, interval)
        self.binary = binary
        self.sudo = sudo
        self._totals: Dict[str, float] = {}

    def command(self) -> List[str]:
        """The powermetrics command line (what a pinned sudoers line must name)."""
        return [self.binary or "/usr/bin/powermetrics", "--samplers", POWERMETRICS_SAMPLERS,
                "-f", "plist", "-i", str(self.interval_ms())]

    def argv(self) -> List[str]:
        if _euid() == 0:
            return self.command()
        return [self.sudo or "sudo", "-n"] + self.command()

    def available(self) -> Tuple[bool, str]:
        path = self.binary or shutil.which("powermetrics") or (
            "/usr/bin/powermetrics" if os.path.exists("/usr/bin/powermetrics") else None)
        if not path:
            return False, "powermetrics not found (not macOS?)"
        self.binary = path
        if _euid() == 0:
            return True, "%s (as root)" % path
        sudo = self.sudo or shutil.which("sudo")
        if not sudo:
            return False, "powermetrics needs root and sudo is not installed: " + SUDOERS_HINT
        self.sudo = sudo
        # "sudo -n true" would answer for *any* command; with a drop-in that
        # allows powermetrics only (the safe setup) it fails although
        # powermetrics would run. "sudo -n -l CMD" asks about exactly the
        # command the agent runs, without running it and without a prompt.
        try:
            done = subprocess.run([sudo, "-n", "-l"] + self.command(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=5, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, "cannot ask sudo about powermetrics: %s" % exc
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return False, ("powermetrics needs root and passwordless sudo is not set up for it "
                           "(sudo -n -l said: %s): %s"
                           % (said[-1] if said else "exit status %d" % done.returncode,
                              SUDOERS_HINT))
        return True, "%s via sudo -n" % path

    def start(self) -> None:
        self._totals = {}
        ProcessSource.start(self)

    def parse(self, record: bytes) -> Optional[Sample]:
        try:
            obj = plistlib.loads(record.strip(b" \t\r\n"))
        except (ValueError, ExpatError):
            return None
        if not isinstance(obj, dict):
            return None
        return parse_powermetrics_plist(obj, self._totals)


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1
