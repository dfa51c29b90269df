"""``edgefarm-agent health``: one reading of an idle device, for the farm service.

Between sweeps the farm service (``orchestrator/farm/``) still wants to show
whether each device answers, what it draws at idle, how warm and how full it
is, whether it is throttling and who holds its lease. It runs this command on
every device at a modest interval (a minute by default): the device's own
telemetry sources (the same choice a job's sampler makes,
``agents/telemetry/sources/selection.py``) sample for ``seconds`` and the
newest value of each field is printed as one JSON object::

    {"t": 1764633600.1, "sample": {"total_w": 4.6, "temps_c": {...}, "ram_used_mb": ...},
     "measures_power": true, "unmeasured": null, "throttled": [],
     "lease": {"owner": "host:123:sweep", "age_s": 3.2, "fresh": true}, "load1": 0.4}

Nothing is written on the device. Standard library only (Python 3.8).
"""

import json
import os
import time
from typing import Dict, List, Optional

from agents.protocol import LEASE_FILE
from agents.telemetry.job import unmeasured_reason
from agents.telemetry.sampler import Sampler, _throttle_text
from agents.telemetry.sources.selection import select_sources

__all__ = ["health", "lease_state", "throttle_flags"]

#: How often the sources are read while the health reading lasts.
INTERVAL_S = 0.25


def lease_state(work_dir: str, now: Optional[float] = None) -> Optional[Dict[str, object]]:
    """Who holds the device lease in ``work_dir`` and whether it is still fresh; None: nobody."""
    try:
        with open(os.path.join(os.path.expanduser(work_dir), LEASE_FILE)) as handle:
            current = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(current, dict) or not current.get("owner"):
        return None
    now = time.time() if now is None else now
    try:
        age = now - float(current.get("heartbeat", 0))
        ttl = float(current.get("ttl", 0))
    except (TypeError, ValueError):
        return {"owner": str(current.get("owner")), "age_s": None, "fresh": False}
    return {"owner": str(current["owner"]), "age_s": round(age, 1), "fresh": age <= ttl}


def throttle_flags(sampler: Sampler) -> List[str]:
    """Throttle flags the sources raise in their newest samples ("" when nominal)."""
    flags: List[str] = []
    newest = sampler.samples[-8:]
    for source in sampler.sources:
        for key in source.throttle_keys:
            for sample in reversed(newest):
                value = sample.extra.get(key)
                if value is None:
                    continue
                if value not in (0, "Nominal", "nominal"):
                    flags.append("%s %s: %s" % (source.name, key, _throttle_text(value)))
                break
    return flags


def health(work_dir: str, seconds: float = 2.0, platform: Optional[str] = None
           ) -> Dict[str, object]:
    """Sample the device's telemetry for ``seconds``; the newest reading of every field."""
    sources, missing = select_sources(platform, INTERVAL_S)
    sampler = Sampler(sources, INTERVAL_S, unmeasured_reason=unmeasured_reason(missing))
    with sampler:
        time.sleep(max(0.0, seconds))
        latest = sampler.latest()
        throttled = throttle_flags(sampler)
    try:
        load1: Optional[float] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load1 = None
    return {
        "t": round(time.time(), 3),
        "sample": latest,
        "measures_power": sampler.measures_power,
        "unmeasured": sampler.unmeasured_reason,
        "source_errors": dict(sampler.errors),
        "throttled": throttled,
        "lease": lease_state(work_dir),
        "load1": load1,
    }
