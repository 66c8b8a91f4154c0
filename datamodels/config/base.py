"""What every config section shares: the frozen, closed pydantic base class and the checks of
user import paths (``"package.module:name"``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # "package.module:function"


class Section(BaseModel):
    """A config section: unknown keys are refused and a validated section never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def name_from_factory(values: Any, field: str, implied: str) -> Any:
    """A section that gives ``factory`` but no ``field`` (``name`` / ``arch``) means
    ``implied``, so ``model: {factory: ...}`` needs nothing else."""
    if isinstance(values, dict) and values.get("factory") and field not in values:
        return {**values, field: implied}
    return values


def import_path(value: str | None, field: str) -> str | None:
    """``value`` when it is None or ``"package.module:name"``; else a ValueError naming
    ``field``."""
    if value is not None and not re.match(IMPORT_PATH, value):
        raise ValueError(
            f"{field} must be an import path 'package.module:name' (a colon before the "
            "function's name)"
        )
    return value


def check_name(value: str, known: Iterable[str]) -> str:
    """``value`` if it is one of ``known`` (the names of a registry), else a ValueError that
    lists them the way pydantic lists a Literal's values."""
    names = list(known)
    if value not in names:
        quoted = [repr(name) for name in names]
        raise ValueError(f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}")
    return value
