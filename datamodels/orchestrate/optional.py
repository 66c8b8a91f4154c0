"""Whether Ray is installed (an optional dependency: the ``ray`` extra), found without importing
it, and the one line a command that needs it gives where it is missing."""

from __future__ import annotations

import importlib.util

from datamodels.errors import MissingDependencyError

RAY_INSTALL = "pip install 'datamodels[ray]'"


def ray_installed() -> bool:
    """Whether Ray is installed here; found, not imported (its import is slow)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def require_ray(purpose: str) -> None:
    """One line (`MissingDependencyError`) when ``purpose`` needs Ray and it is missing."""
    if not ray_installed():
        raise MissingDependencyError("Ray", purpose, RAY_INSTALL)
