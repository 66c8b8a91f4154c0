"""Fixtures of the orchestration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def array_store():
    """Runs prepared in the module hold the array store (``data/examples.npy``), not the
    FFCV beton: a module whose promises are about the driver, not the data file, spends no
    time writing a beton or compiling its decoder in each Ray worker. The beton through Ray
    workers is checked where the file is the point (tests/data/test_beton.py, test_shards.py,
    test_fastnet_run.py, test_context.py)."""
    from datamodels.data.beton import FORMAT_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FORMAT_ENV, "arrays")
        yield
