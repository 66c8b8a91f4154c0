"""The run's beton (``data/examples.beton``) as a local file, and its decoded inputs.

A local run's beton is the file itself; a run on an object store is copied once per host
into the temporary directory, keyed by the config hash (a run's beton never changes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from datamodels.data.beton import BETON_NAME
from datamodels.store.identifiers import check_config_hash

if TYPE_CHECKING:
    from datamodels.store.run import Run

BETON_PATH = f"data/{BETON_NAME}"


def local_beton(run: Run, config_hash: str) -> str:
    """A local path of the run's beton: the file itself, or (object stores) a per-host copy."""
    local = run.local_path(BETON_PATH)
    if local is not None:
        return local
    if config_hash != "run":  # it names the cached file: never a path of the run's choosing
        check_config_hash(config_hash, run.fs.display("config.yaml"))
    cached = Path(tempfile.gettempdir()) / "datamodels-cache" / f"{config_hash}.beton"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(run.fs.read_bytes(BETON_PATH))
        os.replace(tmp, cached)
    return str(cached)
