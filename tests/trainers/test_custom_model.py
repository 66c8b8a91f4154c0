"""A user's own model, recipe and output (``model.factory``, ``train.recipe``,
``train.output``): a small CNN from ``tests.custom_models`` through the whole pipeline, K
models per vmapped pass equal to one at a time, a recipe equal to the built-in steps, and the
one-line refusals before anything trains."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodels import api
from datamodels.config import config_from_dict
from datamodels.errors import ConfigError, DataError
from datamodels.orchestrate.context import Context
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.plans import masks_for, plan_models
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index
from datamodels.trainers import path_choice
from datamodels.trainers.api import train_batch
from datamodels.trainers.orders import interval_lr
from datamodels.trainers.outcome import CheckpointRequest, margins_from_logits
from datamodels.trainers.sequential import build_module

CNN = {
    "name": "cnn_digits",
    "dataset": {"factory": "tests.custom_models:digit_images", "kwargs": {"limit": 250}},
    "model": {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 8}},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.05},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 160},  # datamodels' LDS about 0.4 (measured)
        {"name": "eval", "alpha": 0.5, "count": 16, "seeds": 2},
    ],
    "resources": {"models_per_task": 64},
    "checkpoints": {"plan": "train", "models": 8, "epochs": [2]},
    "gradients": {"proj_dim": 64, "trak_models": 8, "models": 1},
}
SMALL = {  # for trainer comparisons: 500 digits, 8 models, a recipe that learns them well
    "name": "cnn_small",
    "dataset": {"factory": "tests.custom_models:digit_images", "kwargs": {"limit": 500}},
    "model": {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 8}},
    "train": {"epochs": 8, "batch_size": 32, "lr": 0.2},
    "plans": [{"name": "train", "alpha": 0.5, "count": 8}],
}


def _config(base: dict, *overrides: str):
    return config_from_dict(base, list(overrides))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cnn_data(tmp_path_factory):
    """(config, TrainData) of the digit images, prepared through the dataset factory."""
    config = _config(SMALL)
    out = str(tmp_path_factory.mktemp("cnn") / "run")
    api.prepare(config, out)
    return config, Context().data(Run(out), config)


def _models(config, data, k):
    planned = plan_models(config, data.n_train).take(np.arange(k))
    return masks_for(config, planned, data.n_train), planned.seed


def test_config_without_arch_means_custom_and_defaults_keep_their_hash():
    config = _config(SMALL)
    assert config.model.arch == "custom" and config.dataset.name == "custom"
    assert config.train.output == "margin" and config.train.recipe is None
    plain = config_from_dict({})
    assert "factory" not in plain.model_dump(mode="json", exclude_defaults=True).get("model", {})
    assert plain.hash == config_from_dict({"train": {"output": "margin"}}).hash
    assert _config(SMALL, "train.output=loss").hash != config.hash  # it changes the table


def test_vmapped_cnn_equals_one_at_a_time(cnn_data, monkeypatch):
    config, data = cnn_data
    path_choice.forget_choices()  # K at once, whatever this machine would measure
    monkeypatch.setattr(path_choice, "measure", lambda *_: {"vmapped": 0.0, "sequential": 1.0})
    masks, seeds = _models(config, data, 5)
    request = CheckpointRequest((1, 3), (2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CNN is vmapped: no fall-back notice
        together = train_batch(masks, seeds, data, config, checkpoints=request)
    alone = train_batch(masks, seeds, data, _config(SMALL, "resources.trainer=sequential"),
                        checkpoints=request)
    # the same snapshots (state_dict order, rows, epochs, step sizes)
    assert [(s.row, s.epoch) for s in together.snapshots] == [(1, 2), (3, 2), (1, 8), (3, 8)]
    assert sorted((s.row, s.epoch) for s in alone.snapshots) == [(1, 2), (1, 8), (3, 2), (3, 8)]
    by_key = {(s.row, s.epoch): s for s in alone.snapshots}
    for snap in together.snapshots:
        other = by_key[(snap.row, snap.epoch)]
        assert snap.lr == pytest.approx(other.lr)
        for mine, theirs in zip(snap.params, other.params, strict=True):
            torch.testing.assert_close(mine, theirs, atol=2e-3, rtol=1e-3)
    assert not together.failed.any() and not alone.failed.any()
    # same seeds, orders and SGD steps: float rounding only (batched vs single convolutions),
    # grown over 8 epochs at lr 0.2 to at most 1.4e-3 on margins of up to 33 (measured)
    np.testing.assert_allclose(together.margins, alone.margins, atol=5e-3)
    np.testing.assert_allclose(together.train_loss, alone.train_loss, rtol=1e-3)
    np.testing.assert_allclose(together.eval_accuracy, alone.eval_accuracy, atol=0.011)
    assert together.eval_accuracy.mean() > 0.8
    one = train_batch(masks[2:3], seeds[2:3], data, config)  # models do not interact
    np.testing.assert_allclose(one.margins[0], together.margins[2], atol=5e-3)


def test_batchnorm_module_falls_back_with_one_line(cnn_data):
    config, data = cnn_data
    bn = _config(SMALL, "model.factory=tests.custom_models:make_bn_cnn", "model.kwargs={}")
    masks, seeds = _models(bn, data, 3)
    with pytest.warns(UserWarning, match="one model at a time.*running_mean") as caught:
        fast = train_batch(masks, seeds, data, bn)
    assert "\n" not in str(caught[0].message)
    slow = train_batch(masks, seeds, data, _config(bn.model_dump(mode="json"),
                                                   "resources.trainer=sequential"))
    np.testing.assert_array_equal(fast.margins, slow.margins)


def test_dropout_falls_back_and_a_seed_still_gives_one_model(cnn_data):
    config, data = cnn_data
    dropout = _config(SMALL, "model.factory=tests.custom_models:make_dropout_mlp",
                      "model.kwargs={}")
    masks, seeds = _models(dropout, data, 2)
    with pytest.warns(UserWarning, match="not K at once: torch.func.vmap cannot run it"):
        first = train_batch(masks, seeds, data, dropout)
    torch.rand(3)  # the process's generator moves on; the models do not depend on it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = train_batch(masks[::-1], seeds[::-1], data, dropout)
    np.testing.assert_array_equal(first.margins, again.margins[::-1])


def test_custom_recipe_of_the_builtin_steps_gives_identical_margins(cnn_data):
    config, data = cnn_data
    masks, seeds = _models(config, data, 3)
    request = CheckpointRequest((2,), (3, 8))
    builtin = train_batch(masks, seeds, data, _config(SMALL, "resources.trainer=sequential"),
                          checkpoints=request)
    custom = train_batch(
        masks, seeds, data, _config(SMALL, "train.recipe=tests.custom_models:builtin_steps"),
        checkpoints=request,
    )
    np.testing.assert_array_equal(custom.margins, builtin.margins)
    np.testing.assert_array_equal(custom.train_loss, builtin.train_loss)
    # a recipe that saves nothing itself: its final module, after the last epoch
    assert [(s.row, s.epoch) for s in custom.snapshots] == [(2, 8)]
    final = next(s for s in builtin.snapshots if s.epoch == 8)
    steps = -(-int(masks[2].sum()) // 32)  # the schedule's mean over all 8 epochs
    expected = interval_lr("linear", 0.2, steps, 8, 0, 7)
    assert custom.snapshots[0].lr == pytest.approx(expected)
    for mine, theirs in zip(custom.snapshots[0].params, final.params, strict=True):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


def test_outputs_loss_and_user_function(cnn_data):
    config, data = cnn_data
    masks, seeds = _models(config, data, 2)
    margins = train_batch(masks, seeds, data, config)
    loss = train_batch(masks, seeds, data, _config(SMALL, "train.output=loss"))
    user = train_batch(
        masks, seeds, data, _config(SMALL, "train.output=tests.custom_models:correct_probability")
    )
    np.testing.assert_array_equal(loss.eval_accuracy, margins.eval_accuracy)  # argmax accuracy
    assert (loss.margins >= 0).all() and (user.margins > 0).all() and (user.margins <= 1).all()
    # the same models: the loss is -log of the correct-class probability
    np.testing.assert_allclose(loss.margins, -np.log(user.margins), rtol=1e-4, atol=1e-5)
    assert ((margins.margins > 0) == (user.margins > 0.5))[:, : data.n_test].mean() > 0.9


def test_output_loss_on_the_batched_mlp(digits_data):
    config, data = digits_data
    masks, seeds = _models(config, data, 2)
    margins = train_batch(masks, seeds, data, config)
    loss = train_batch(masks, seeds, data, _config(config.model_dump(mode="json"),
                                                   "train.output=loss"))
    np.testing.assert_array_equal(loss.eval_accuracy, margins.eval_accuracy)
    correct = loss.margins[:, : data.n_test][margins.margins[:, : data.n_test] > 2]
    assert (correct < np.log(2)).all()  # a margin of 2 bounds the loss below log 2


def test_cnn_pipeline_train_fit_evaluate(tmp_path):
    """K > 1 vmapped through the train stage, checkpoints that reproduce the stored margins,
    the datamodels fitted, TRAK, TracIn and influence (CG, a few iterations) on the
    checkpoints, all evaluated: finite LDS, the datamodels' above 0.2."""
    config = _config(CNN, "gradients.solver=cg", "gradients.cg_max_iter=3",
                     "gradients.damping=0.1")
    out = str(tmp_path / "run")
    summary = api.train(config, out, executor=SerialExecutor(), show_progress=False)
    assert summary.trained == 160 + 32
    run = Run(out)
    margins, ids = run.margins(), run.models()["model_id"].to_numpy()
    assert np.isfinite(margins).all()

    data = Context().data(run, config)
    index = read_checkpoint_index(run.fs)
    assert sorted(index["epoch"].unique()) == [2, config.train.epochs]
    final = index[index["epoch"] == config.train.epochs]
    assert len(final) == 8
    for model_id, path in zip(final["model_id"], final["path"], strict=True):
        module = build_module(config.model, data, seed=0)
        saved = load_checkpoint(run.fs, path)["layers"]
        module.load_state_dict(dict(zip(module.state_dict(), saved, strict=True)))
        with torch.no_grad():
            logits = module.eval()(data.eval_x)
        again = margins_from_logits(logits.unsqueeze(0), data.eval_y)[0].numpy()
        np.testing.assert_allclose(again, margins[ids == model_id][0], atol=1e-4)

    api.fit(config, out, show_progress=False)
    for method in ("trak", "tracin", "influence"):  # gradient estimators on the module
        written = api.estimate(config, out, method, executor=SerialExecutor(),
                               show_progress=False)
        assert written["scores"] == data.n_test
    evaluation = api.evaluate(config, out)
    lds = evaluation[evaluation.metric == "lds"].set_index("method")["value"]
    assert set(lds.index) == {"datamodels", "trak", "tracin", "influence"}
    assert np.isfinite(lds).all()
    assert lds["datamodels"] > 0.2, lds


# -- one line, before anything trains -------------------------------------------------------

BAD = [
    ("model.factory=tests.no_such_module:make", ConfigError,
     r"^model.factory 'tests.no_such_module:make': no module named 'tests.no_such_module'"),
    ("model.factory=tests.custom_models:missing", ConfigError,
     r"^model.factory 'tests.custom_models:missing': tests.custom_models has no attribute"),
    ("model.factory=tests.custom_models:make_raising", ConfigError,
     r"^model.factory '.*make_raising' raised RuntimeError: no weights file at /nowhere"),
    ("model.factory=tests.custom_models:make_wrong_width", ConfigError,
     r"^model.factory .*maps inputs \(2, 1, 8, 8\) to \(2, 13\), but the labels have 10 "),
    ("model.factory=tests.custom_models:not_a_module", ConfigError,
     r"^model.factory .* returned a str, not a torch.nn.Module"),
    ("train.recipe=tests.custom_models:nothing_here", ConfigError,
     r"^train.recipe 'tests.custom_models:nothing_here': tests.custom_models has no attr"),
    ("train.output=tests.custom_models:one_number", ConfigError,
     r"^train.output 'tests.custom_models:one_number' returned shape \(\) for 2 examples"),
    ("dataset.factory=tests.custom_models:make_raising", DataError,
     r"^dataset.factory '.*make_raising' raised TypeError"),
]


@pytest.mark.parametrize(("override", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_user_code_is_one_line_before_training(tmp_path, override, error, message):
    config = _config(SMALL, "model.kwargs={}", override)
    if override.startswith("dataset."):
        config = _config(SMALL, "dataset.kwargs={}", override)
    out = tmp_path / "run"
    with pytest.raises(error, match=message) as caught:
        api.train(config, str(out), executor=SerialExecutor(), show_progress=False)
    assert "\n" not in str(caught.value)
    written = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    assert written == []  # refused before the beton, examples or config were written


def test_prepared_run_is_checked_again_before_training(tmp_path, monkeypatch):
    """The factory breaks between prepare and train: train refuses before any model."""
    config = _config(SMALL)
    out = str(tmp_path / "run")
    api.prepare(config, out)
    import tests.custom_models as user

    def broken(num_classes, input_shape, width=8):
        raise ValueError("edited since")

    before = sorted(p.relative_to(out) for p in Path(out).rglob("*") if p.is_file())
    monkeypatch.setattr(user, "make_cnn", broken)
    with pytest.raises(ConfigError, match=r"^model.factory .* raised ValueError: edited since"):
        api.train(config, out, executor=SerialExecutor(), show_progress=False)
    assert Run(out).stored_model_ids().size == 0
    after = sorted(p.relative_to(out) for p in Path(out).rglob("*") if p.is_file())
    assert set(before) <= set(after)  # nothing in the run directory removed


def test_recipe_needs_a_module_architecture():
    from datamodels.trainers.custom import check_user_code, probe_data

    config = config_from_dict({"model": {"arch": "logreg"},
                               "train": {"recipe": "tests.custom_models:builtin_steps"}})
    probe = probe_data(np.zeros((2, 4), np.float32), np.array([0, 1]), 2)
    with pytest.raises(ConfigError, match=r"^train.recipe trains an nn.Module; model.arch="):
        check_user_code(config, probe)


def test_recipe_returning_something_else_is_refused(cnn_data):
    config, data = cnn_data
    masks, seeds = _models(config, data, 1)
    bad = _config(SMALL, "train.recipe=tests.custom_models:recipe_returning_none")
    with pytest.raises(ConfigError, match=r"returned a NoneType; it must return the trained"):
        train_batch(masks, seeds, data, bad)


def test_loss_helper_matches_cross_entropy():
    from datamodels.trainers.outcome import losses_from_logits

    logits, labels = torch.randn(3, 5, 4), torch.tensor([0, 3, 1, 2, 2])
    expected = torch.stack([F.cross_entropy(z, labels, reduction="none") for z in logits])
    torch.testing.assert_close(losses_from_logits(logits, labels), expected)
