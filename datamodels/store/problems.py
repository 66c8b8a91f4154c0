"""What is wrong with a run's files: `Problem`, its kinds, and how problems are shown."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("missing", "config", "torn", "corrupt", "schema", "length", "foreign", "plan", "duplicate")
UNUSABLE_KINDS = frozenset({"torn", "corrupt", "schema", "length", "foreign", "plan"})

QUARANTINE_FIX = (
    "move it aside with Run.quarantine (models/_invalid/); its models are then trained again "
    "on resume"
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a run (``file`` is relative to the run directory)."""

    file: str
    kind: str
    message: str
    model_ids: tuple[int, ...] | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.message}"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Arrow messages can run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def shown(ids: np.ndarray | list[int]) -> str:
    """The first ten ids, and how many there are in all."""
    ids = [int(i) for i in ids]
    return ", ".join(map(str, ids[:10])) + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    """Problems as lines for an error message, with the fix."""
    lines = [str(problem) for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    lines.append("run `datamodels verify` for the full list; quarantine torn or wrong shards")
    return "\n".join(lines)
