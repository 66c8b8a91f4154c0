"""``model.activation``: every path that runs the MLP uses the configured φ (the batched
trainer, the one-at-a-time module, the checkpoint's functional model), and the default
keeps every existing config's hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datamodels import api
from datamodels.config import config_from_dict, load_config
from datamodels.errors import ConfigError
from datamodels.gradients.checkpointed import functional_model
from datamodels.gradients.grads import per_example_outputs
from datamodels.models.activations import Activation
from datamodels.orchestrate.context import Context
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index
from datamodels.trainers.batched import train_mlp_batched
from datamodels.trainers.outcome import margins_from_logits
from datamodels.trainers.sequential import build_module, train_sequential
from tests.trainers.digits_arrays import digits_data

ROOT = Path(__file__).resolve().parents[2]
SOFTPLUS_RUN = {
    "name": "softplus_tiny",
    "dataset": {"name": "digits", "limit_train": 160, "limit_test": 30},
    "model": {"arch": "mlp", "hidden": 10, "activation": "softplus", "softplus_beta": 4.0},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.05},
    "plans": [{"name": "train", "alpha": 0.5, "count": 3}],
    "checkpoints": {"plan": "train", "models": 2, "epochs": [3]},
    "resources": {"models_per_task": 3},
}


def test_default_activation_keeps_the_hash_and_others_change_it():
    base = load_config(ROOT / "configs/digits.yaml")
    assert load_config(ROOT / "configs/digits.yaml", ["model.activation=relu"]).hash == base.hash
    assert load_config(ROOT / "configs/digits.yaml", ["model.softplus_beta=1.0"]).hash == base.hash
    smooth = load_config(ROOT / "configs/digits.yaml", ["model.activation=softplus"])
    assert smooth.hash != base.hash
    sharper = load_config(
        ROOT / "configs/digits.yaml", ["model.activation=softplus", "model.softplus_beta=4"]
    )
    assert sharper.hash != smooth.hash


def test_activation_is_for_the_mlp_only():
    with pytest.raises(ConfigError, match="model.activation='softplus' applies to model.arch: mlp"):
        config_from_dict({"model": {"arch": "logreg", "activation": "softplus"}})
    with pytest.raises(ConfigError, match="model.activation"):
        config_from_dict({"model": {"activation": "tanh"}})


@pytest.mark.parametrize("activation", ["softplus", "gelu"])
def test_batched_trainer_equals_the_module_trained_one_at_a_time(activation):
    torch.set_num_threads(1)
    data = digits_data(120, 40, 3)
    config = config_from_dict({
        "model": {"arch": "mlp", "hidden": 16, "depth": 2, "activation": activation},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.1, "schedule": "triangle",
                  "label_smoothing": 0.1},
    })
    rng = np.random.default_rng(1)
    masks = rng.random((3, data.n_train)) < rng.uniform(0.3, 0.9, (3, 1))
    seeds = np.arange(3)
    fast = train_mlp_batched(data, masks, seeds, config.model, config.train)
    slow = train_sequential(data, masks, seeds, config.model, config.train, "resident")
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-4)  # margins
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-4)  # last-epoch loss
    relu = config.model.model_copy(update={"activation": "relu"})
    other = train_mlp_batched(data, masks, seeds, relu, config.train)
    assert np.abs(other[0] - fast[0]).max() > 0.05  # the activation is not ignored


def test_a_softplus_run_reproduces_its_stored_margins(tmp_path):
    """Through the driver and store: the checkpointed layers, as the one-model ``nn.Module``
    and as the gradient estimators' functional model, give the stored margins; with a ReLU
    in their place they do not."""
    config = config_from_dict(SOFTPLUS_RUN)
    uri = str(tmp_path / "run")
    api.train(config, uri, executor=SerialExecutor(), show_progress=False)
    run = Run(uri)
    stored, ids = run.margins(), run.models()["model_id"].to_numpy()
    data = Context().data(run, config)
    index = read_checkpoint_index(run.fs)
    assert sorted(index["model_id"]) == [0, 1]
    for model_id, path in zip(index["model_id"], index["path"], strict=True):
        layers = load_checkpoint(run.fs, path)["layers"]
        expected = stored[ids == model_id][0]
        module = build_module(config.model, data, seed=0)
        assert any(isinstance(m, nn.Softplus) for m in module.modules())
        weights = [m for m in module.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for k, linear in enumerate(weights):
                linear.weight.copy_(layers[2 * k].T)
                linear.bias.copy_(layers[2 * k + 1])
            logits = module(data.eval_x)
        again = margins_from_logits(logits.unsqueeze(0), data.eval_y)[0].numpy()
        np.testing.assert_allclose(again, expected, atol=1e-4)
        model = functional_model(config, data, layers)
        outputs = per_example_outputs(model, data.eval_x, data.eval_y, "margin").numpy()
        np.testing.assert_allclose(outputs, expected, atol=1e-4)
        relu = config_from_dict(SOFTPLUS_RUN, ["model.activation=relu"])
        wrong = per_example_outputs(
            functional_model(relu, data, layers), data.eval_x, data.eval_y, "margin"
        ).numpy()
        assert np.abs(wrong - expected).max() > 1e-2


def test_activation_derivatives_are_autograds():
    z = torch.linspace(-8, 8, 101, dtype=torch.float64).requires_grad_(True)
    smooth = (Activation("softplus", 1.0), Activation("softplus", 4.0), Activation("gelu"))
    for activation in smooth:
        (first,) = torch.autograd.grad(activation(z).sum(), z, create_graph=True)
        (second,) = torch.autograd.grad(first.sum(), z)
        torch.testing.assert_close(activation.derivative(z.detach()), first.detach())
        torch.testing.assert_close(activation.second_derivative(z.detach()), second)
    assert Activation("relu").second_derivative(z) is None
