"""Cross-field checks made before anything trains (`datamodels.stages.preflight`): each
refusal is one line naming the fields, and the run directory is never created."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import datamodels as dm
from datamodels.cli import app
from datamodels.config import load_config
from datamodels.errors import ConfigError
from datamodels.stages.preflight import check_config, check_local_gpus

DIGITS = Path(__file__).parents[2] / "configs" / "digits.yaml"
runner = CliRunner()


def _refused(tmp_path, command, *sets):
    out = tmp_path / "r"
    args = [command, str(DIGITS), "--out", str(out), "--quiet" if command != "prepare" else ""]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, [a for a in args if a])
    text = (result.stderr or "") + (result.stdout or "")
    assert result.exit_code == 2, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    assert not out.exists()  # nothing written
    return text


def test_the_shipped_digits_config_passes():
    check_config(load_config(DIGITS))  # removal names datamodels and trak; trak checkpointed


def test_removal_method_needing_checkpoints_without_a_checkpoint_plan(tmp_path):
    text = _refused(tmp_path, "run", "checkpoints.plan=null")
    assert "plans.removal.methods names trak" in text and "checkpoints.plan is null" in text
    assert "--set checkpoints.plan=train" in text


def test_estimate_method_needing_checkpoints_without_a_checkpoint_plan(tmp_path):
    text = _refused(
        tmp_path, "prepare", "checkpoints.plan=null", "estimate.methods=[tracin]",
        "plans.removal.methods=[datamodels]",
    )
    assert "estimate.methods names tracin" in text and "checkpoints.plan" in text


def test_replayed_method_without_a_checkpoint_plan(tmp_path):
    text = _refused(
        tmp_path, "train", "checkpoints.plan=null", "estimate.methods=[metagradient]",
        "plans.removal.methods=[datamodels]",
    )
    assert "metagradient, which replays" in text


def test_removal_method_left_out_of_estimate_methods(tmp_path):
    text = _refused(tmp_path, "run", "estimate.methods=[banzhaf]")
    assert "plans.removal.methods names trak, which estimate.methods leaves out" in text


def test_run_methods_option_is_checked_like_estimate_methods(tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, [
        "run", str(DIGITS), "--out", str(out), "--quiet", "--methods", "banzhaf,tracin",
        "--set", "checkpoints.plan=null", "--set", "plans.removal.methods=[datamodels]",
    ])
    text = (result.stderr or "") + (result.stdout or "")
    assert result.exit_code == 2 and "estimate.methods names tracin" in text, text
    assert len(text.strip().splitlines()) == 1 and not out.exists()


def test_removal_method_run_only_on_request(tmp_path):
    text = _refused(tmp_path, "run", "plans.removal.methods=[hydra]")
    assert "plans.removal.methods names hydra, which runs only when named" in text
    assert "estimate.methods" in text


def test_removal_method_reading_a_plan_kind_the_config_lacks():
    config = load_config(
        DIGITS, ["plans.removal.methods=[tmc_shapley]", "estimate.methods=[tmc_shapley]"]
    )
    with pytest.raises(ConfigError, match="tmc_shapley, which reads a plan of kind tmc"):
        check_config(config)


def test_unknown_removal_method():
    config = load_config(DIGITS, ["plans.removal.methods=[trakk]"])
    with pytest.raises(ConfigError, match=r"plans.removal.methods names 'trakk', which is no "
                       r"method; choose from: datamodels, downsampling"):
        check_config(config)


def test_method_refused_by_its_own_check():
    # metagradient replays the batched SGD run of an mlp or logreg; a null model has none
    config = load_config(
        DIGITS, ["model.arch='null'", "estimate.methods=[metagradient]"]
    )
    with pytest.raises(ConfigError, match="estimate.methods names metagradient: metagradient: "
                       "model.arch='null' cannot be replayed"):
        check_config(config)


def test_estimate_plan_that_is_no_plan_for_a_method_reading_it():
    config = load_config(DIGITS, ["estimate.plan=trian", "estimate.methods=[banzhaf]",
                                  "plans.removal.methods=[datamodels]"])
    with pytest.raises(ConfigError, match="estimate.methods names banzhaf, which reads the "
                       "models of estimate.plan 'trian', and that is not a plan"):
        check_config(config)
    # a method that reads a plan of its own kind does not read estimate.plan
    check_config(load_config(DIGITS, ["estimate.plan=trian", "estimate.methods=[shapley]",
                                      "plans.removal.methods=[datamodels]"]))


def test_fit_plan_that_is_no_plan(tmp_path):
    text = _refused(tmp_path, "prepare", "fit.plan=trian")
    assert "fit.plan 'trian' is not a plan" in text


def test_python_verbs_refuse_too(tmp_path):
    config = load_config(DIGITS, ["checkpoints.plan=null"])
    with pytest.raises(ConfigError, match="checkpoints.plan is null"):
        dm.run(config, tmp_path / "r", show_progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_gpus_on_a_machine_without_cuda_refused_for_a_local_run(tmp_path):
    text = _refused(tmp_path, "train", "resources.num_gpus=1")
    assert "resources.num_gpus=1 but this machine has no CUDA device" in text
    assert "--address" in text
    # a cluster address: the cluster's nodes have the GPUs, the driver need not
    check_local_gpus(load_config(DIGITS, ["resources.num_gpus=1"]), "ray://head:10001")
    check_local_gpus(load_config(DIGITS), None)  # no GPU asked: nothing to refuse
