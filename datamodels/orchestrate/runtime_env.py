"""The user's import paths for the workers of a local Ray cluster.

A notebook that does ``sys.path.insert(0, "/home/me/project")`` and names
``model.factory: mynets:make`` imports ``mynets`` itself, but Ray's workers are separate
processes started by the raylet with the raylet's environment: without the path they fail
with ``no module named 'mynets'``. While a local cluster starts (`pythonpath_for_workers`),
``PYTHONPATH`` holds the driver's own ``sys.path`` entries (`user_paths`: not the standard
library, not site-packages), so the raylet, and every worker it starts, imports what the
driver imports. The driver's environment is restored once the cluster is up.

A cluster joined by address is left alone: paths on this machine mean nothing on its nodes
(there, install the package in the image or ship it with the job's working directory).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SITE_DIRS = ("site-packages", "dist-packages")


def _system_dirs() -> set[str]:
    """The interpreter's own library folders (standard library, extension modules)."""
    found = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            found.add(str(Path(path).resolve()))
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        found.add(str(Path(prefix).resolve()))
    return found


def user_paths(path: list[str] | None = None) -> list[str]:
    """The entries of ``path`` (default ``sys.path``) a worker needs beyond its interpreter's:
    existing folders that are neither the standard library nor a site-packages folder, as
    absolute paths, in order, once each (``""``, the current directory, as its path)."""
    system = _system_dirs()
    found: list[str] = []
    for entry in sys.path if path is None else path:
        absolute = Path(entry or os.getcwd()).expanduser()
        if not absolute.is_dir():  # zip archives of the standard library, stale entries
            continue
        resolved = str(absolute.resolve())
        if resolved in system or any(part in _SITE_DIRS for part in Path(resolved).parts):
            continue
        if resolved not in found:
            found.append(resolved)
    return found


@contextmanager
def pythonpath_for_workers() -> Iterator[None]:
    """While a local Ray cluster starts: ``PYTHONPATH`` = `user_paths` followed by what it
    held before, so the raylet and the workers it starts inherit the driver's imports;
    restored afterwards."""
    saved = os.environ.get("PYTHONPATH")
    before = [p for p in (saved or "").split(os.pathsep) if p]
    joined = [*user_paths(), *(p for p in before if p not in user_paths())]
    if joined:
        os.environ["PYTHONPATH"] = os.pathsep.join(joined)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
