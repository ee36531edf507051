"""Progress of work done in several steps (one per device of a fan-out, one per drive of a health check).

The core reports each finished step to a plain async callback; the MCP tools turn it into progress and log
notifications, the CLI into a progress bar. Nothing here knows about either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepDone:
    """One step finished: which, how many so far (this one included) out of how many, and how it went."""

    name: str
    done: int
    total: int
    outcome: str = "ok"  # "ok", an error type ("host_unreachable") or a verdict ("healthy")
    problem: str | None = None  # what went wrong, in words, when the step failed

    @property
    def message(self) -> str:
        return f"{self.name} {self.outcome}"


OnStep = Callable[[StepDone], Awaitable[None]]


class Steps:
    """Counts steps as they finish and tells `report` (if any) about each one."""

    def __init__(self, total: int, report: OnStep | None) -> None:
        self.total = total
        self.done = 0
        self.report = report

    async def finished(self, name: str, outcome: str = "ok", problem: str | None = None) -> None:
        self.done += 1
        if self.report is not None:
            await self.report(StepDone(name, self.done, self.total, outcome, problem))
