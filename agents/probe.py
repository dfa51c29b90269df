"""Device facts, gathered cheaply and without side effects.

``python3 agent.pyz probe`` prints these as one JSON object; every job's
``hello`` event carries them too, so each result row knows what it ran on.
Facts that cannot be read are left out, never guessed.
"""

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from typing import Dict, List, Optional

from agents import EVENT_SCHEMA, __version__


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        return None


def _sysctl(name: str) -> Optional[str]:
    if not shutil.which("sysctl"):
        return None
    try:
        out = subprocess.run(["sysctl", "-n", name], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.decode("utf-8", "replace").strip()
    return text or None


def cpu_model() -> Optional[str]:
    info = _read("/proc/cpuinfo")
    if info:
        for key in ("model name", "Hardware", "Processor"):
            match = re.search(r"^%s\s*:\s*(.+)$" % key, info, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return _sysctl("machdep.cpu.brand_string") or platform.processor() or None


def nvidia_gpus() -> Optional[List[Dict[str, object]]]:
    """Name and memory of each NVIDIA GPU, from ``nvidia-smi`` (None when it cannot tell).

    The report's roofline divides by the GPU's bandwidth when layers are
    offloaded (orchestrator/roofline.py matches the name) and sets peak GPU
    memory against the card's.
    """
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
            timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return parse_nvidia_smi_gpus(out.stdout) or None


def parse_nvidia_smi_gpus(text: str) -> List[Dict[str, object]]:
    """``name, memory.total`` lines (``--format=csv,noheader,nounits``, MiB) as GPU facts."""
    gpus: List[Dict[str, object]] = []
    for line in text.splitlines():
        name, _, mib = line.rpartition(",")
        try:
            gpus.append({"name": name.strip(), "memory_total_bytes": int(float(mib)) * 2**20})
        except ValueError:
            continue
    return [g for g in gpus if g["name"]]


def job_facts(llama_bench: Optional[str]) -> Dict[str, object]:
    """``facts`` plus the device's measured memory bandwidth: what a job's ``hello`` carries.

    The bandwidth is measured once per boot and cached (agents/bandwidth.py);
    a device that cannot spare the copies' memory says why instead.
    """
    result = facts(llama_bench)
    from agents.bandwidth import cached_measure

    try:
        result["memory_bandwidth"] = cached_measure()
    except (MemoryError, OSError, ValueError) as exc:
        result["memory_bandwidth_error"] = "%s: %s" % (type(exc).__name__, exc)
    return result


def ram_total_bytes() -> Optional[int]:
    info = _read("/proc/meminfo")
    if info:
        match = re.search(r"^MemTotal:\s+(\d+) kB", info, re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    value = _sysctl("hw.memsize")
    return int(value) if value and value.isdigit() else None


def jetson_facts() -> Dict[str, object]:
    facts: Dict[str, object] = {}
    release = _read("/etc/nv_tegra_release")
    if release:
        facts["l4t_release"] = release.splitlines()[0]
    model = _read("/proc/device-tree/model")
    if model and ("jetson" in model.lower() or release):
        facts["module"] = model
    return facts


def backends(llama_bench: Optional[str] = None) -> Dict[str, Dict[str, object]]:
    """Which inference backends this device can run, with versions or reasons."""
    found: Dict[str, Dict[str, object]] = {
        "xllamacpp": python_packages("xllamacpp"),
        # torch's backend needs transformers too (not imported: that takes seconds).
        "torch": python_packages("torch", "transformers"),
    }
    if llama_bench:
        path = os.path.expanduser(llama_bench)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            found["llama-bench"] = {"present": True, "path": path}
        else:
            found["llama-bench"] = {"present": False, "path": path,
                                    "reason": "not an executable file"}
    return found


def python_packages(*packages: str) -> Dict[str, object]:
    """Whether the python packages a backend needs are installed, found but not imported.

    ``{"present": True, "version": "V1 (second V2)"}`` or ``{"present":
    False, "reason": ...}``; the version is best-effort.
    """
    import importlib.util

    missing = []
    for package in packages:
        try:
            if importlib.util.find_spec(package) is None:
                missing.append(package)
        except (ImportError, ValueError):
            missing.append(package)
    if missing:
        return {"present": False,
                "reason": "python package%s %s not installed" % (
                    "s" if len(missing) > 1 else "", " and ".join(missing))}
    entry: Dict[str, object] = {"present": True}
    try:
        from importlib import metadata

        versions = [metadata.version(p) for p in packages]
        entry["version"] = versions[0] + "".join(
            " (%s %s)" % pv for pv in zip(packages[1:], versions[1:]))
    except Exception:  # metadata is best-effort; presence is what matters
        pass
    return entry


def telemetry_sources() -> Dict[str, object]:
    """Which power/thermal sources this device offers, and why not where absent.

    ``{source: what it reads, ..., "unavailable": {source: reason}}``, from the
    same selection the job's sampler makes (agents/telemetry/sources/selection.py),
    so the facts say exactly what a job will measure. Cheap: NVML's
    initialisation and at most one ``sudo -n -l``, no tool is started.
    """
    from agents.telemetry.sources.selection import select_sources

    found: Dict[str, object] = {}
    try:
        chosen, missing = select_sources()
    except Exception as exc:  # facts are best-effort; never fail a hello over them
        return {"unavailable": {"all": "telemetry selection failed: %s" % exc}}
    for source in chosen:
        found[source.name] = source.detail or True
    found["unavailable"] = missing
    return found


def power_mode() -> Optional[str]:
    """Jetson nvpmodel mode (``nvpmodel -q``), when the tool exists."""
    if not shutil.which("nvpmodel"):
        return None
    try:
        out = subprocess.run(["nvpmodel", "-q"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.decode("utf-8", "replace")
    match = re.search(r"NV Power Mode:\s*(\S+)", text)
    if match:
        return match.group(1)
    lines = text.strip().splitlines()
    return lines[0] if lines else None


def facts(llama_bench: Optional[str] = None) -> Dict[str, object]:
    uname = platform.uname()
    result: Dict[str, object] = {
        "agent_version": __version__,
        "event_schema": EVENT_SCHEMA,
        "hostname": socket.gethostname(),
        "os": uname.system,
        "os_release": uname.release,
        "machine": uname.machine,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "backends": backends(llama_bench),
    }
    if uname.system == "Darwin":
        result["macos_version"] = platform.mac_ver()[0]
        chip = _sysctl("machdep.cpu.brand_string")
        if chip:
            result["chip"] = chip
    model = cpu_model()
    if model:
        result["cpu_model"] = model
    ram = ram_total_bytes()
    if ram:
        result["ram_total_bytes"] = ram
    jetson = jetson_facts()
    if jetson:
        result["jetson"] = jetson
    if shutil.which("nvidia-smi"):
        result["nvidia_smi"] = shutil.which("nvidia-smi")
        gpus = nvidia_gpus()
        if gpus:
            result["gpus"] = gpus
    result["telemetry"] = telemetry_sources()
    mode = power_mode()
    if mode:
        result["power_mode"] = mode
    return result
