"""Whether the code a run's ``config.yaml`` names may be imported.

A config names code when it has ``model.factory``, ``dataset.factory`` (or
``transfer.source.factory``), ``train.recipe`` or a ``train.output`` function: each is a
``package.module:function`` that training or the gradient estimators import. A config file
the user passes to ``run``/``prepare``/``train`` is the user's own; a config read from an
existing run directory may have been written by anyone who could write that directory, so
its code is imported only when the run is trusted (`check_trusted`), by one of:

* ``trust_code`` (``--trust-code`` on the command line, ``Run(path, trust_code=True)`` in
  Python);
* the environment variable ``DATAMODELS_TRUSTED_RUNS``: run directories (or folders holding
  runs), separated by ``os.pathsep``;
* the record this machine's user keeps of the runs they made (`remember`, called when a run's
  ``config.yaml`` is written): the run's location and a digest of the code its config names,
  kept outside every run, in ``$DATAMODELS_TRUST_FILE`` (default
  ``$XDG_STATE_HOME/datamodels/trusted-runs.json``, ``~/.local/state`` when unset). A run
  whose config later names other code is no longer trusted by the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from datamodels.config.base import IMPORT_PATH
from datamodels.errors import ConfigError

if TYPE_CHECKING:
    from datamodels.config.root import Config

TRUSTED_RUNS_ENV = "DATAMODELS_TRUSTED_RUNS"
TRUST_FILE_ENV = "DATAMODELS_TRUST_FILE"


def code_entries(config: Config) -> list[tuple[str, str]]:
    """``[(field, "package.module:function")]``: the code ``config`` names, in field order."""
    found = [
        ("model.factory", config.model.factory),
        ("dataset.factory", config.dataset.factory),
        ("train.recipe", config.train.recipe),
    ]
    if re.match(IMPORT_PATH, config.train.output):
        found.append(("train.output", config.train.output))
    if config.transfer is not None:
        found.append(("transfer.source.factory", config.transfer.source.factory))
    return [(field, path) for field, path in found if path]


def run_key(uri: str) -> str:
    """How a run is named in the record and matched against the environment: an absolute,
    resolved path for a local run, the URI itself on an object store."""
    if "://" in uri and not uri.startswith("file://"):
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).expanduser().resolve())


def _digest(entries: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def trust_file() -> Path:
    """Where this user's record of the runs they made is kept."""
    if os.environ.get(TRUST_FILE_ENV):
        return Path(os.environ[TRUST_FILE_ENV]).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "datamodels" / "trusted-runs.json"


def _read_record() -> dict[str, str]:
    try:
        record = json.loads(trust_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}


def remember(config: Config, uri: str) -> None:
    """Record that this user made run ``uri`` from ``config`` (nothing when it names no
    code). Entries of local runs that no longer exist are dropped; a record that cannot be
    written is skipped (the run is then opened with ``--trust-code``)."""
    entries = code_entries(config)
    if not entries:
        return
    record = {
        key: digest for key, digest in _read_record().items()
        if "://" in key or Path(key).exists()
    }
    record[run_key(uri)] = _digest(entries)
    path = trust_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            json.dump(record, tmp, indent=0, sort_keys=True)
        os.replace(tmp.name, path)
    except OSError:
        return


def _listed(key: str) -> bool:
    for entry in os.environ.get(TRUSTED_RUNS_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        listed = run_key(entry.strip())
        if key == listed or key.startswith(listed.rstrip("/") + "/"):
            return True
    return False


def is_trusted(config: Config, uri: str, trust_code: bool = False) -> bool:
    """Whether the code that ``config`` (read from run ``uri``) names may be imported."""
    entries = code_entries(config)
    if not entries or trust_code:
        return True
    key = run_key(uri)
    return _listed(key) or _read_record().get(key) == _digest(entries)


def check_trusted(config: Config, uri: str, trust_code: bool = False) -> Config:
    """``config`` when its code may be imported (`is_trusted`); otherwise one `ConfigError`
    line naming the code and the ways to trust the run. Nothing is imported either way."""
    if is_trusted(config, uri, trust_code):
        return config
    field, path = code_entries(config)[0]
    raise ConfigError(
        f"{uri}/config.yaml names code to import ({field}: {path}) and this run was not made "
        "here from your own config; if you trust it, pass --trust-code (Python: "
        f"Run(path, trust_code=True)) or list the run in {TRUSTED_RUNS_ENV}"
    )
