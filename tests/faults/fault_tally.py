"""One row of the fault-injection summary (shared by the suite and its conftest)."""

from __future__ import annotations

from dataclasses import dataclass

HEADER = ("case", "planned", "done", "duplicated", "lost")


@dataclass(frozen=True)
class Tally:
    case: str
    planned: int
    done: int
    duplicated: int
    lost: int

    def row(self) -> tuple[str, ...]:
        return (self.case, str(self.planned), str(self.done), str(self.duplicated),
                str(self.lost))
