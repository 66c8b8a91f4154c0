"""``trainer.json``: which trainer path a run's ``model.factory`` models took, and why.

One JSON object, written atomically by the train task when a worker process makes its
choice (`datamodels.trainers.path_choice`): ``path`` (``vmapped``: K models per pass, or
``sequential``: one at a time), ``reason`` (measured faster, with the seconds; or what forced
it), ``seconds`` (per path, as measured) and ``models`` (K of the task that measured).
``datamodels status`` prints it. The latest choice wins.
"""

from __future__ import annotations

import json

from datamodels.store.fs import RunFS

TRAINER_CHOICE_PATH = "trainer.json"


def write_trainer_choice(fs: RunFS, record: dict) -> None:
    fs.write_bytes_atomic(TRAINER_CHOICE_PATH, json.dumps(record, sort_keys=True).encode())


def read_trainer_choice(fs: RunFS) -> dict | None:
    """The recorded choice, or None (none made yet, or an unreadable file)."""
    if not fs.isfile(TRAINER_CHOICE_PATH):
        return None
    try:
        record = json.loads(fs.read_bytes(TRAINER_CHOICE_PATH))
    except ValueError:
        return None
    return record if isinstance(record, dict) and "path" in record else None


def choice_line(record: dict) -> str:
    """``trainer: vmapped (measured faster: ...)``, as status prints it."""
    return f"trainer: {record['path']} ({record['reason']})"
