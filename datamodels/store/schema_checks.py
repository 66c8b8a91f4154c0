"""The checks of a file against its table's schema: ``schema_version`` and column types.

Every table of the run directory carries ``schema_version`` in its metadata (`schema_metadata`).
Checks compare column names and types; nullability and list item names are not compared (a
file written by another Parquet tool is still readable when its types match).

A table a stage computes also records the code versions of its producers under
``datamodels.versions`` (`VERSIONS_KEY`: JSON ``{"method.shapley": 1}``, `versions_of`); a
table written before tables recorded them has no such key and reads the same.
"""

from __future__ import annotations

import json

import pyarrow as pa

from datamodels.errors import StoreError

# 2: examples.parquet may carry where each example came from (``source_path``, ``class_name``).
# 3: model shards carry ``trainer``, the trainer and code version that made each model.
# Files of versions 1 and 2 read unchanged (those columns are optional; a shard without
# ``trainer`` counts as version 1 of the run's trainer), so all three are readable.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_VERSION_KEY = b"schema_version"
VERSIONS_KEY = b"datamodels.versions"  # the producers' code versions (JSON), `versions_of`


def schema_metadata(**extra: int) -> dict[bytes, bytes]:
    """The key-value metadata of a table schema: ``schema_version`` and ``extra``."""
    metadata = {_VERSION_KEY: str(SCHEMA_VERSION).encode()}
    metadata.update({key.encode(): str(value).encode() for key, value in extra.items()})
    return metadata


def column(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    """One column of a table schema (not nullable unless asked)."""
    return pa.field(name, type_, nullable=nullable)


def types_match(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Type equality that ignores list item names and nullability."""
    if pa.types.is_fixed_size_list(expected):
        return (
            pa.types.is_fixed_size_list(actual)
            and actual.list_size == expected.list_size
            and types_match(actual.value_type, expected.value_type)
        )
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return type(actual) is type(expected) and types_match(
            actual.value_type, expected.value_type
        )
    return actual.equals(expected)


def schema_version_of(schema: pa.Schema) -> int | None:
    """The ``schema_version`` a file was written with, or None when it carries none."""
    raw = (schema.metadata or {}).get(_VERSION_KEY)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def with_versions(table: pa.Table, versions: dict[str, int] | None) -> pa.Table:
    """``table`` whose metadata also records ``versions`` under `VERSIONS_KEY` (None: as is)."""
    if versions is None:
        return table
    encoded = json.dumps(dict(sorted(versions.items()))).encode()
    return table.replace_schema_metadata({**(table.schema.metadata or {}), VERSIONS_KEY: encoded})


def versions_of(schema: pa.Schema) -> dict[str, int]:
    """The producers' code versions a table records (`with_versions`); empty when it records
    none (written before tables recorded them, or by a stage that names no producer)."""
    raw = (schema.metadata or {}).get(VERSIONS_KEY)
    if raw is None:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}


def version_problem(schema: pa.Schema, file: str) -> str | None:
    """Why ``file``'s schema_version cannot be read by this release, or None when it can."""
    version = schema_version_of(schema)
    if version in READABLE_VERSIONS:
        return None
    if version is None:
        return (
            f"{file} has no schema_version metadata, so it was not written by datamodels; "
            "re-create it with the datamodels stage that owns it"
        )
    if version < min(READABLE_VERSIONS):
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        return (
            f"{file} was written with schema_version {version}, this datamodels reads "
            f"{readable}; re-run the stage that writes it, or read it with the "
            "datamodels release that wrote it"
        )
    return (
        f"{file} was written with schema_version {version}, newer than this datamodels "
        f"({SCHEMA_VERSION}); upgrade datamodels (pip install -U datamodels) to read it"
    )


def column_problems(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """Missing columns and columns of the wrong type (extra columns are allowed)."""
    problems = []
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            problems.append(f"column {field.name!r} ({field.type}) is missing")
        elif not types_match(actual.field(index).type, field.type):
            problems.append(
                f"column {field.name!r} has type {actual.field(index).type}, expected {field.type}"
            )
    return problems


def check_schema(actual: pa.Schema, expected: pa.Schema, file: str) -> None:
    """Raise `StoreError` naming ``file`` unless ``actual`` has ``expected``'s
    version and columns."""
    problem = version_problem(actual, file)
    if problem is not None:
        raise StoreError(problem)
    problems = column_problems(actual, expected)
    if problems:
        raise StoreError(f"{file} has the wrong schema: " + "; ".join(problems))
