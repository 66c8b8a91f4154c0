"""Bad input at the command line: one clear line, non-zero exit, nothing deleted."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from datamodels.cli import app

CONFIGS = Path(__file__).parents[2] / "configs"
runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, (result.stderr or "") + (result.stdout or "")


def _write(tmp_path, tree):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_unknown_key(tmp_path):
    code, text = _invoke(
        "prepare", _write(tmp_path, {"trian": {"epochs": 2}}), "--out", tmp_path / "r"
    )
    assert code == 2 and "unknown config key 'trian'" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_wrong_type_via_set(tmp_path):
    code, text = _invoke(
        "prepare", CONFIGS / "digits.yaml", "--out", tmp_path / "r", "--set", "train.epochs=lots"
    )
    assert code == 2 and "train.epochs" in text and "Traceback" not in text


def test_missing_dataset_file(tmp_path):
    config = _write(tmp_path, {"dataset": {"name": "arrays", "path": str(tmp_path / "nope.npz")}})
    code, text = _invoke("prepare", config, "--out", tmp_path / "r")
    assert code == 2 and "nope.npz" in text and "file not found" in text


def test_output_directory_holding_another_run(tmp_path):
    out = tmp_path / "r"
    code, _ = _invoke(
        "prepare", CONFIGS / "digits.yaml", "--out", out, "--set", "dataset.limit_train=50"
    )
    assert code == 0 and (out / "examples.parquet").exists()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    config_text = (out / "config.yaml").read_text()
    code, text = _invoke(
        "prepare", CONFIGS / "digits.yaml", "--out", out, "--set", "dataset.limit_train=60"
    )
    assert code == 2 and "config hash" in text and "new --out" in text
    assert "differs in dataset.limit_train" in text  # the field that changed, by name
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "config.yaml").read_text() == config_text
    # a foreign, non-empty directory is refused too
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, text = _invoke("prepare", CONFIGS / "digits.yaml", "--out", foreign)
    assert code == 2 and "not empty" in text and (foreign / "notes.txt").read_text() == "mine"


def test_status_and_verify_on_a_missing_run(tmp_path):
    code, text = _invoke("status", tmp_path / "none")
    assert code == 2 and "config.yaml" in text


def test_a_failed_prepare_writes_nothing_so_the_fixed_config_is_accepted(tmp_path):
    bad = _write(tmp_path, {"dataset": {"name": "arrays", "path": str(tmp_path / "nope.npz")}})
    code, text = _invoke("prepare", bad, "--out", tmp_path / "r")
    assert code == 2 and "nope.npz" in text
    assert not (tmp_path / "r" / "config.yaml").exists()
    code, text = _invoke(
        "prepare",
        CONFIGS / "digits.yaml",
        "--out",
        tmp_path / "r",
        "--set",
        "dataset.limit_train=40",
    )
    assert code == 0, text
    assert (tmp_path / "r" / "config.yaml").exists() and (
        tmp_path / "r" / "examples.parquet"
    ).exists()


def test_error_messages_are_printed_literally(tmp_path, monkeypatch):
    from datamodels import api
    from datamodels.errors import DataError

    def refuse(*args, **kwargs):
        raise DataError("split may only hold 'train'/'test', found ['unused']")

    monkeypatch.setattr(api, "prepare", refuse)
    code, text = _invoke("prepare", CONFIGS / "digits.yaml", "--out", tmp_path / "r")
    assert code == 2 and "found ['unused']" in text  # rich markup would have eaten [...]


def test_readers_on_a_path_that_is_not_a_run(tmp_path):
    (tmp_path / "plain").mkdir()
    for command in (
        ["query", tmp_path / "plain", "SELECT 1"],
        ["verify", tmp_path / "plain"],
        ["status", tmp_path / "plain"],
    ):
        code, text = _invoke(*command)
        assert code == 2 and "is not a run directory (no config.yaml)" in text, command
        assert len(text.strip().splitlines()) == 1


def test_cuda_on_a_machine_without_it_is_refused_before_training(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # the refusal is for machines without CUDA
    code, text = _invoke(
        "train", CONFIGS / "digits.yaml", "--out", tmp_path / "r", "--set", "resources.device=cuda"
    )
    assert code == 2 and "resources.device=cuda" in text and "no CUDA device" in text
    assert not (tmp_path / "r").exists()


def test_a_refused_config_leaves_no_run_directory(tmp_path):
    tree = {
        "name": "refused",
        "dataset": {"name": "imagefolder", "path": str(tmp_path / "no-such-folder")},
        "model": {"arch": "mlp", "hidden": 8},
        "plans": [{"name": "train", "alpha": 0.5, "count": 4},
                  {"name": "eval", "alpha": 0.5, "count": 3}],
    }
    config = _write(tmp_path, tree)
    for command in ("prepare", "train", "run"):
        code, text = _invoke(command, config, "--out", tmp_path / "r")
        assert code != 0 and "is not a folder" in text and "Traceback" not in text, command
        assert not (tmp_path / "r").exists(), command
    (tmp_path / "kept").mkdir()  # a directory the user made stays
    code, _ = _invoke("prepare", config, "--out", tmp_path / "kept")
    assert code != 0 and (tmp_path / "kept").is_dir()


@pytest.mark.slow  # a whole `run` in a subprocess with its own Ray; the default suite checks
# the same silence on `train` (tests/orchestrate/test_driver.py::test_driver_sigkill_then_resume)
def test_a_local_run_prints_no_ray_token_warning(tmp_path):
    import os
    import subprocess
    import sys

    tree = {
        "name": "tiny",
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp", "hidden": 8},
        "train": {"epochs": 1, "batch_size": 64},
        "plans": [{"name": "train", "alpha": 0.5, "count": 24},
                  {"name": "eval", "alpha": 0.5, "count": 3}],
        "fit": {"n_lambdas": 3},
        "resources": {"models_per_task": 12},
    }
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    done = subprocess.run(
        [sys.executable, "-m", "datamodels.cli", "run", str(_write(tmp_path, tree)), "--out",
         str(tmp_path / "r"), "--quiet", "--methods", "banzhaf"],
        capture_output=True, text=True, env=env, timeout=500,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "Token authentication" not in text and "RAY_AUTH_MODE" not in text
    assert "banzhaf" in text
