"""A run's ``config.yaml`` that names code (``model.factory`` ...) is imported only when the
run is trusted: made here from the user's own config, ``--trust-code`` /
``Run(path, trust_code=True)``, or ``DATAMODELS_TRUSTED_RUNS``."""

import json
import sys
import uuid

import pytest
import yaml
from typer.testing import CliRunner

import datamodels as dm
from datamodels.cli import app
from datamodels.config import load_config
from datamodels.config.trust import (
    TRUSTED_RUNS_ENV,
    code_entries,
    is_trusted,
    run_key,
)
from datamodels.errors import ConfigError

runner = CliRunner()

FACTORY = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")  # the side effect of importing this module
from torch import nn


def make(num_classes, input_shape):
    size = 1
    for d in input_shape:
        size *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(size, num_classes))
"""


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, (result.stderr or "") + (result.stdout or "")


def test_code_entries_name_every_imported_field():
    config = load_config({
        "model": {"factory": "pkg.nets:make"},
        "train": {"recipe": "pkg.train:one", "output": "pkg.out:f"},
        "transfer": {"source": {"factory": "pkg.data:source"}},
    })
    assert code_entries(config) == [
        ("model.factory", "pkg.nets:make"), ("train.recipe", "pkg.train:one"),
        ("train.output", "pkg.out:f"), ("transfer.source.factory", "pkg.data:source"),
    ]
    assert code_entries(load_config({})) == []  # the built-in digits MLP: nothing to trust
    assert is_trusted(load_config({}), "/nowhere")


def test_trusted_runs_variable_lists_runs_and_folders_of_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMODELS_TRUST_FILE", str(tmp_path / "record.json"))
    config = load_config({"model": {"factory": "pkg.nets:make"}})
    assert not is_trusted(config, str(tmp_path / "runs" / "a"))
    monkeypatch.setenv(TRUSTED_RUNS_ENV, str(tmp_path / "runs"))
    assert is_trusted(config, str(tmp_path / "runs" / "a"))
    assert not is_trusted(config, str(tmp_path / "runsX" / "a"))  # a prefix is not a folder
    assert is_trusted(config, str(tmp_path / "elsewhere"), trust_code=True)
    assert run_key("s3://bucket/runs/a/") == "s3://bucket/runs/a"


@pytest.fixture
def foreign_run(tmp_path, monkeypatch):
    """A run made (by its author, with their own trust record) from a config whose
    ``model.factory`` module writes a marker file when imported; then opened by another
    user (an empty trust record) with the module not yet imported."""
    module = f"sidefx_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported.txt"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{module}.py").write_text(FACTORY.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(code))
    config = tmp_path / "theirs.yaml"
    config.write_text(yaml.safe_dump({
        "name": "foreign",
        "dataset": {"name": "digits", "limit_train": 60, "limit_test": 10, "eval_train": False},
        "model": {"factory": f"{module}:make"},
        "train": {"epochs": 1, "batch_size": 30},
        "plans": [{"name": "train", "alpha": 0.5, "count": 4}],
        "resources": {"trainer": "sequential"},
    }))
    run = tmp_path / "run"
    monkeypatch.setenv("DATAMODELS_TRUST_FILE", str(tmp_path / "author.json"))
    code_, text = _invoke("train", config, "--out", run, "--shard", "0/1", "--quiet")
    assert code_ == 0, text
    assert marker.exists()  # the author's own config: imported
    assert run_key(str(run)) in json.loads((tmp_path / "author.json").read_text())
    marker.unlink()
    sys.modules.pop(module, None)
    monkeypatch.setenv("DATAMODELS_TRUST_FILE", str(tmp_path / "reader.json"))
    monkeypatch.delenv(TRUSTED_RUNS_ENV, raising=False)
    return run, marker, module


def test_opening_an_untrusted_run_imports_nothing_and_says_so_in_one_line(foreign_run):
    run, marker, module = foreign_run
    code, text = _invoke("estimate", run, "-m", "banzhaf", "--quiet")
    assert code == 2 and len(text.strip().splitlines()) == 1, text
    assert f"names code to import (model.factory: {module}:make)" in text
    assert "--trust-code" in text and TRUSTED_RUNS_ENV in text
    code, text = _invoke(
        "train", run / "config.yaml", "--out", run, "--shard", "0/1",
        "--set", "checkpoints.plan=train",
    )
    assert code == 2 and "names code to import" in text, text
    with pytest.raises(ConfigError, match="names code to import"):
        dm.estimate(str(run), "banzhaf", show_progress=False)
    with pytest.raises(ConfigError, match="names code to import"):
        dm.estimate(dm.Run(run), "banzhaf", show_progress=False)
    assert not marker.exists() and module not in sys.modules  # never imported
    assert not (run / "scores").exists() and not (run / "checkpoints").exists()
    code, text = _invoke("status", run)  # reading tables needs no trust
    assert code == 0, text


def test_a_trusted_run_imports_its_code(foreign_run, monkeypatch):
    run, marker, module = foreign_run
    written = dm.estimate(dm.Run(run, trust_code=True), "banzhaf", show_progress=False)
    assert written["scores"] > 0
    monkeypatch.setenv(TRUSTED_RUNS_ENV, str(run.parent))
    code, text = _invoke("estimate", run, "-m", "memorization", "--quiet")
    assert code == 0, text
    monkeypatch.delenv(TRUSTED_RUNS_ENV)
    code, text = _invoke(  # retraining models to save their checkpoints imports the factory
        "train", run / "config.yaml", "--out", run, "--shard", "0/1", "--quiet",
        "--set", "checkpoints.plan=train", "--trust-code",
    )
    assert code == 0, text
    assert marker.read_text() == "imported" and (run / "checkpoints").exists()
