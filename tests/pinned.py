"""Pinned outputs per code version: a small deterministic output of each trainer and
estimator, hashed, kept in ``tests/pinned_outputs.json`` keyed by case and version.

A hash that changed under the same version fails naming the version to bump; a new version
(or a new case) has no pin yet and fails asking to record one. To record the current outputs
(after a bump, or for a new trainer or method)::

    DATAMODELS_PIN=1 python -m pytest -q tests/trainers/test_versions.py \
        tests/methods/test_versions.py

Outputs are rounded to 4 significant digits before hashing and computed on one torch thread,
so a rerun on the same machine hashes the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

PINS = Path(__file__).with_name("pinned_outputs.json")
RECORD = os.environ.get("DATAMODELS_PIN") == "1"


def output_hash(*arrays: np.ndarray) -> str:
    """sha256 (16 hex digits) of the arrays' shapes and values at 4 significant digits."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array, dtype=np.float64)
        h.update(repr(array.shape).encode())
        h.update(" ".join(f"{v:.4g}" for v in array.ravel()).encode())
    return h.hexdigest()[:16]


def load_pins() -> dict[str, str]:
    return json.loads(PINS.read_text()) if PINS.exists() else {}


def record(key: str, value: str) -> None:
    pins = load_pins()
    pins[key] = value
    PINS.write_text(json.dumps(dict(sorted(pins.items())), indent=1) + "\n")


def check_pinned(case: str, version: str, value: str, bump: str) -> None:
    """Compare ``value`` with the pin of (``case``, ``version``); ``bump``: what to bump when
    the output changed under the same version."""
    key = f"{case} {version}"
    if RECORD:
        record(key, value)
        return
    pins = load_pins()
    if key not in pins:
        pytest.fail(
            f"no pinned output for {key}: record it with DATAMODELS_PIN=1 "
            "python -m pytest tests/trainers/test_versions.py tests/methods/test_versions.py"
        )
    if pins[key] != value:
        pytest.fail(
            f"the output of {case} changed under the same version ({version}): bump {bump}, "
            "then record the new output (DATAMODELS_PIN=1, see tests/pinned.py)"
        )
