"""Build the agent zipapp that the controller ships to every device.

The bundle is the ``agents`` package plus a ``__main__.py``, zipped with fixed
timestamps so the same source always gives the same bytes. Its name carries
the sha256 of those bytes (``agent-<sha256[:16]>.pyz``): a device that already
has that file never receives it again, and a device never runs a stale agent.
Inside, ``agents/_manifest.json`` lists every file's sha256: the agent checks
its zip against its name and its unpacked copy against that manifest before
every command (``agents/cli.py`` ``verify_agent``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import agents
from agents.protocol import MANIFEST_FILE, agent_filename

AGENTS_DIR = Path(agents.__file__).resolve().parent
_EPOCH = (2020, 1, 1, 0, 0, 0)
_MAIN = b"import sys\nfrom agents.cli import main\nsys.exit(main())\n"


@dataclass(frozen=True)
class AgentBundle:
    """A built agent zipapp: where it is on the controller and its content hash."""

    path: Path
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name


def _source_files() -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(AGENTS_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files.extend(Path(root) / n for n in sorted(names) if n.endswith((".py", ".typed")))
    return files


def build_bytes() -> bytes:
    """Return the zipapp's bytes (deterministic for a given source tree)."""
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    manifest: dict[str, str] = {}
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in _source_files():
            arcname = "agents/" + path.relative_to(AGENTS_DIR).as_posix()
            info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = path.read_bytes()
            manifest[arcname] = hashlib.sha256(data).hexdigest()
            zf.writestr(info, data)
        # What the agent checks its unpacked copy against before every command.
        info = zipfile.ZipInfo("agents/" + MANIFEST_FILE, date_time=_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        zf.writestr(info, json.dumps(manifest, sort_keys=True).encode())
        info = zipfile.ZipInfo("__main__.py", date_time=_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        zf.writestr(info, _MAIN)
    return buf.getvalue()


#: Where a site's gateway keeps the bundles it receives (on its own Ray node).
NODE_CACHE = Path("~/.cache/edgefarm/bundles")


class BundleMismatch(ValueError):
    """Bundle bytes that do not hash to the sha256 they came with."""


def materialize(data: bytes, sha256: str, cache_dir: str | Path = NODE_CACHE) -> AgentBundle:
    """Write bundle bytes received over Ray to this node's cache, checked by ``sha256``.

    A gateway on a site's node cannot read the controller's files: the bundle
    reaches it as content, and the file its transports upload is this one.
    """
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise BundleMismatch(f"agent bundle bytes hash to {digest[:16]}, not the "
                             f"{sha256[:16]} they were sent with")
    return _store(data, digest, Path(cache_dir).expanduser())


def build(cache_dir: str | Path) -> AgentBundle:
    """Build the bundle into ``cache_dir`` once per content hash; return it."""
    data = build_bytes()
    return _store(data, hashlib.sha256(data).hexdigest(), Path(cache_dir))


def _store(data: bytes, digest: str, cache: Path) -> AgentBundle:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / agent_filename(digest)
    # A cached file is trusted only if its bytes still hash to its name: a changed
    # one would otherwise be uploaded, fail the device's check, and fail every sweep.
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return AgentBundle(path=path, sha256=digest)
