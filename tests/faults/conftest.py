"""The fault-injection suite's summary: one row per case, printed after the run.

Each case of ``test_faults.py`` adds a ``Tally`` (jobs planned, done,
duplicated, lost) through the ``tally`` fixture; ``make faults`` (and
``make test``, which runs this folder too) prints them as a table at the end,
and ``FAULTS_TABLE=path`` also writes it as Markdown (docs/results/faults.md
quotes such a run).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fault_tally import HEADER, Tally

TALLIES: list[Tally] = []


@pytest.fixture
def tally() -> Callable[[Tally], None]:
    return TALLIES.append


def _table() -> list[str]:
    rows = [HEADER] + [t.row() for t in TALLIES]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLIES:
        return
    terminalreporter.section("fault injection: every job once")
    for line in _table():
        terminalreporter.write_line(line)
    target = os.environ.get("FAULTS_TABLE")
    if target:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(t.row()) + " |" for t in TALLIES]
        Path(target).write_text("\n".join(lines) + "\n")
