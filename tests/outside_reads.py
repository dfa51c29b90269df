"""A guard that fails any test reading the project's shared folder beside the checkout.

The recorded tool output once lived in ``../shared/telemetry-samples``, outside
the repository: the suite passed here and failed in every fresh clone. The data
now lives in ``tests/data``; this guard keeps it that way. ``conftest.py``
installs :func:`audit_hook` with :func:`sys.addaudithook`, so every ``open``
(``open()``, ``Path.read_text()``, ``os.open``...) and every directory listing
(``os.listdir``, ``os.scandir``, hence ``glob`` and ``Path.iterdir``) in the test
process is checked before it happens.

The rule is narrow on purpose: only paths inside a *guarded root* trip it, and
the guarded root is ``<repository>/../shared``. A broader rule ("anything in the
repository's parent folder") would trip on legitimate reads wherever the
checkout happens to sit next to /tmp, a venv or another project. Paths are made
absolute and normalised (``..`` folded) but symlinks are not resolved, which
keeps the check free of system calls; the guarded root itself is listed both as
written and with its symlinks resolved.

A read is refused (:class:`OutsideRepositoryRead` is raised from the audit
hook, so the ``open`` never happens) and recorded in :data:`READS`; the
conftest fails the test that made it, or the session when it happened outside
a test (at collection), even where the code under test swallowed the exception.
Child processes (the agent runs as one) are not watched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: Audit events that read a file or a folder. ``open`` covers builtins.open,
#: io.open, os.open and everything built on them.
EVENTS = frozenset({"open", "os.listdir", "os.scandir"})


def guarded_roots(repo: Path) -> list[str]:
    """The folders a test must not read: ``<repo>/../shared``, as written and resolved."""
    written = os.path.join(os.path.abspath(os.path.dirname(repo)), "shared")
    return sorted({written, os.path.realpath(written)})


#: The roots :func:`audit_hook` enforces; a test may add one to prove the guard fires.
ROOTS: list[str] = guarded_roots(REPO)

#: Every refused read, as ``"EVENT PATH"``, in order.
READS: list[str] = []


class OutsideRepositoryRead(RuntimeError):
    """A test read a file outside the repository that a fresh clone does not have.

    Not an OSError, so code that handles a missing file does not hide it.
    """


def inside_a_guarded_root(path: str) -> bool:
    """True when the absolute, normalised ``path`` is a guarded root or lies in one."""
    return any(path == root or path.startswith(root + os.sep) for root in ROOTS)


def audit_hook(event: str, args: tuple[Any, ...]) -> None:
    """Refuse and record an open or a listing of a path inside a guarded root."""
    if event not in EVENTS or not args:
        return
    target = args[0]
    if target is None or isinstance(target, int):  # a file descriptor: opened earlier
        return
    try:
        path = os.path.abspath(os.fsdecode(os.fspath(target)))
    except (TypeError, ValueError):
        return
    if inside_a_guarded_root(path):
        READS.append(f"{event} {path}")
        raise OutsideRepositoryRead(
            f"{event} {path}: tests read only files in the repository "
            f"(recorded tool output lives in tests/data); a fresh clone has no {path}")
