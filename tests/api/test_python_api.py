"""The Python API as a notebook uses it: run in a real Jupyter kernel (nbclient), twice in
one process, progress drawn as a widget; the verbs on a run without its config; raw inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import datamodels as dm
from datamodels import api
from tests.conftest import SMALL_DIGITS

TINY = {
    **SMALL_DIGITS,
    "dataset": {"name": "digits", "limit_train": 300, "limit_test": 60},  # a part of digits
    "train": {"epochs": 2, "batch_size": 32},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 24},
        {"name": "eval", "alpha": 0.5, "count": 6},
    ],
    "fit": {"n_lambdas": 4},
}


def test_public_names_are_exactly_the_verbs():
    assert sorted(dm.__all__) == sorted(
        [
            "load_config",
            "run",
            "attribute",
            "train",
            "fit",
            "estimate",
            "evaluate",
            "attack",
            "removal",
            "sparse_layer",
            "alpha_effect",
            "lds_curve",
            "serve",
            "Run",
        ]
    )
    import datamodels.metrics.lds  # noqa: F401 - submodules named like verbs
    import datamodels.trainers.grouped  # noqa: F401

    for name in dm.__all__:
        assert callable(getattr(dm, name)), name
    for name in dm.__all__:  # every verb is the API's (a package by verb group)
        if name not in ("Run", "load_config"):
            assert getattr(dm, name).__module__.startswith("datamodels.api."), name
            assert getattr(dm, name) is getattr(api, name)


def test_load_config_takes_a_dict_with_overrides():
    config = dm.load_config(TINY, ["plans.train.count=10", "train.epochs=2"])
    assert config.plan("train").count == 10 and config.train.epochs == 2
    assert dm.load_config(config, ["seed=3"]).seed == 3


def _notebook(path: Path, cells: list[str]) -> Path:
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": c, "outputs": [],
             "execution_count": None}
            for c in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))
    return path


def test_a_notebook_runs_the_pipeline_twice_in_one_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    cells = [
        f"import sys; sys.path.insert(0, {str(repo)!r})\n"
        "import datamodels as dm\n"
        # one retraining estimator: the kernel, the reuse and the widgets are what is tested
        f"config = dm.load_config({json.dumps(TINY)}, ['estimate.methods=[banzhaf]'])",
        f"first = dm.run(config, {str(out)!r})\n"
        "first[['method', 'metric', 'value']].to_dict('records')",
        # the second call in the same process: Ray is reused, nothing is recomputed
        f"second = dm.run(config, {str(out)!r})\n"
        "assert second.equals(first)\n"
        "import ray\n"
        "assert ray.is_initialized()\n"
        "ray.shutdown()\n"
        "'ok'",
        f"again = dm.evaluate({str(out)!r})\n"
        "assert again.equals(first)",
    ]
    nb = nbformat.read(_notebook(tmp_path / "api.ipynb", cells), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # rich drew its live bars as widgets, not as lines of text
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert widgets
    records = nb.cells[1].outputs[-1]["data"]["text/plain"]
    assert "datamodels" in records
    evaluation = dm.Run(str(out)).evaluation()
    lds = evaluation[(evaluation["method"] == "datamodels") & (evaluation["metric"] == "lds")]
    assert len(lds) == 1 and np.isfinite(lds["value"]).all()


def test_verbs_on_a_run_without_its_config_and_raw_inputs(tmp_path):
    from datamodels.orchestrate.executor import SerialExecutor

    config = dm.load_config(TINY)
    out = str(tmp_path / "run")
    dm.train(config, out, executor=SerialExecutor(), show_progress=False)
    fitted = dm.fit(out, show_progress=False)
    assert fitted and set(fitted.targets.columns) >= {"target", "lam", "nnz"}
    assert not dm.fit(out, show_progress=False)  # current: nothing to do
    written = dm.estimate(out, "banzhaf", show_progress=False)
    assert written and dm.estimate(out, "banzhaf", show_progress=False) == {}
    frame = dm.evaluate(out)
    assert {"datamodels", "banzhaf"} <= set(frame["method"])

    run = dm.Run(out)
    x_train, y_train = run.inputs("train"), run.labels("train")
    x_test, y_test = run.inputs("test"), run.labels("test")
    n_train, n_eval = run.sizes()
    assert len(x_train) == len(y_train) == n_train and x_train.shape[1:] == (64,)
    assert len(x_test) == len(y_test) and len(run.inputs("eval")) == n_eval
    # the same examples as scikit-learn's digits, by position
    from sklearn.datasets import load_digits

    digits = load_digits()
    examples = run.examples()
    train = examples[examples["train_position"].notna()].sort_values("train_position")
    rows = train["index"].to_numpy(np.int64)
    np.testing.assert_allclose(x_train, digits.data[rows] / 16.0, atol=1e-6)  # as loaded
    np.testing.assert_array_equal(y_train, digits.target[rows])
    with pytest.raises(Exception, match="choose train, test or eval"):
        run.inputs("validation")


def test_a_refused_dataset_leaves_no_run_directory_from_python(tmp_path):
    """The Python verbs, like the command line, leave nothing behind for a config whose
    dataset does not load."""
    from datamodels.config import config_from_dict
    from datamodels.errors import DatamodelsError

    config = config_from_dict({"dataset": {"name": "imagefolder", "path": str(tmp_path / "no")}})
    for verb in (api.prepare, api.train):
        out = tmp_path / verb.__name__
        with pytest.raises(DatamodelsError, match="dataset.path"):
            verb(config, str(out))
        assert not out.exists(), verb.__name__
