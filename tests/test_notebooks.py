"""The notebooks in analysis/ run top to bottom in a real kernel (nbclient) against the
small digits run tests/test_report.py makes (``DATAMODELS_RUN``); any cell error fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_report import report_run  # noqa: F401 - the session fixture, built once

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_without_errors(name, report_run, monkeypatch):  # noqa: F811
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DATAMODELS_RUN", report_run)
    notebook = nbformat.read(ANALYSIS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ANALYSIS)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # figures drawn inline
