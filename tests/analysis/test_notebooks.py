"""The notebooks in analysis/ run top to bottom in a real kernel (nbclient) against the
small digits run tests/report/test_report.py makes (``DATAMODELS_RUN``); any cell error fails.

One kernel serves them all (its imports of torch, ffcv and datamodels are most of a
notebook's time); each notebook starts with ``%reset -f``, so none sees another's names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.report.test_report import report_run  # noqa: F401 - the session fixture, built once

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


NOTEBOOKS = [
    "explore_run.ipynb",
    "leakage.ipynb",
    "embeddings.ipynb",
    "loo_agreement.ipynb",
    "removal_and_brittleness.ipynb",
    "alpha_effect.ipynb",
]


def test_every_notebook_is_executed():
    assert sorted(NOTEBOOKS) == sorted(p.name for p in ANALYSIS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel(report_run):  # noqa: F811
    manager = pytest.importorskip("jupyter_client").KernelManager(kernel_name="python3")
    manager.start_kernel(env={**os.environ, "DATAMODELS_RUN": report_run}, cwd=str(ANALYSIS))
    yield manager
    manager.shutdown_kernel(now=True)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_without_errors(name, kernel):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ANALYSIS / name, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))  # an empty namespace
    client = nbclient.NotebookClient(notebook, km=kernel, timeout=300)
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # figures drawn inline
