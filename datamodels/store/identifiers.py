"""Checks on identifiers read from a run directory before they become paths.

A run directory may come from somebody else: its ``config.yaml``, a compaction journal or a
checkpoint index can hold any text. Every value read from a run that names a file (the
config hash, a plan or method name, a shard name, a checkpoint path) passes one of these
checks first; a value that could leave its folder (``../``, an absolute path, a separator)
is refused with one line naming the file and the field.
"""

from __future__ import annotations

import re

from datamodels.errors import StoreError

CONFIG_HASH = re.compile(r"[0-9a-f]{16}")  # `Config.hash`: 16 hex digits of a sha256
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # plan and method names (config's own pattern)
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]*\.parquet")
CHECKPOINT_PATH = re.compile(r"checkpoints/[0-9]+/epoch_[0-9]+\.pt")
CONTENT_DIGEST = re.compile(r"[0-9a-f]{64}")  # sha256 of a file's bytes


def _refuse(value: object, source: str, field: str, what: str) -> StoreError:
    return StoreError(f"{source}: {field} {str(value)[:80]!r} is not {what}; is this run intact?")


def check_config_hash(value: object, source: str = "config.yaml") -> str:
    """``value`` when it is a config hash (16 lowercase hex digits), else `StoreError`."""
    if not isinstance(value, str) or not CONFIG_HASH.fullmatch(value):
        raise _refuse(value, source, "config_hash", "a config hash (16 hex digits)")
    return value


def check_name(value: object, source: str, field: str) -> str:
    """A plan or method name: letters, digits and ``_``, starting with a letter."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise _refuse(value, source, field, "a name of letters, digits and _")
    return value


def check_shard_name(value: object, source: str, field: str) -> str:
    """A shard's file name (one path component ending in ``.parquet``, never hidden)."""
    if not isinstance(value, str) or not SHARD_NAME.fullmatch(value) or ".." in value:
        raise _refuse(value, source, field, "a shard file name")
    return value


def check_checkpoint_path(value: object, source: str) -> str:
    """A checkpoint path as the index records it: ``checkpoints/<model_id>/epoch_<e>.pt``."""
    if not isinstance(value, str) or not CHECKPOINT_PATH.fullmatch(value):
        raise _refuse(value, source, "path", "checkpoints/<model_id>/epoch_<epoch>.pt")
    return value


def check_digest(value: object, source: str, field: str) -> str:
    """A sha256 hex digest (64 lowercase hex digits)."""
    if not isinstance(value, str) or not CONTENT_DIGEST.fullmatch(value):
        raise _refuse(value, source, field, "a sha256 digest (64 hex digits)")
    return value
