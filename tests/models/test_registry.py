"""The architecture registry: lookups, the one-line refusal of an unknown name, an import
without torch, and a worked example of adding an architecture."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from datamodels.config import config_from_dict
from datamodels.errors import ConfigError
from datamodels.models import ARCHITECTURES, Architecture, architecture
from datamodels.trainers.paths import TRAINERS


def test_every_name_maps_to_its_declaration():
    assert set(ARCHITECTURES) == {"logreg", "mlp", "resnet9", "fastnet", "null", "custom"}
    for name, cls in ARCHITECTURES.items():
        arch = architecture(name)
        assert isinstance(arch, Architecture) and arch.name == name and type(arch) is cls
        assert arch.trainer in TRAINERS
        assert arch.functional in ("logreg", "mlp", "module", None)
        assert arch.head in ("inputs", "stacked", "module", None)
    assert architecture("mlp").trainer == "batched_mlp"
    assert architecture("fastnet").trainer == "grouped"
    assert architecture("logreg").functional == "logreg" and architecture("logreg").solved
    assert architecture("null").functional is None and not architecture("null").trains
    assert architecture("mlp").accepts_activation and not architecture("resnet9").accepts_activation


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ([], "batched_mlp"),
        (["resources.trainer=sequential"], "sequential"),
        (["model.arch=logreg"], "lbfgs"),
        (["model.arch=logreg", "resources.trainer=sequential"], "lbfgs"),
        (["model.arch=resnet9"], "sequential"),
        (["model.arch=fastnet"], "grouped"),
        (["model.arch='null'"], "null"),
    ],
)
def test_the_trainer_path_follows_the_config(overrides, path):
    config = config_from_dict({"dataset": {"name": "digits"}}, overrides)
    assert architecture(config.model.arch).trainer_path(config, "resident") == path


def test_data_through_one_loader_per_model_trains_one_at_a_time():
    config = config_from_dict({"dataset": {"name": "digits"}})
    assert architecture("mlp").trainer_path(config, "per_model") == "sequential"


def test_an_unknown_architecture_is_one_line_naming_the_field_and_the_choices():
    with pytest.raises(ConfigError) as refused:
        architecture("transformer")
    message = str(refused.value)
    assert "\n" not in message and "model.arch" in message and "'transformer'" in message
    assert all(name in message for name in ARCHITECTURES)


def test_the_registry_imports_without_torch():
    code = "import datamodels.models, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- worked example: adding an architecture ------------------------------------------------
#
# An architecture is one declaration: a subclass of Architecture naming its trainer path, its
# functional form and its head, and building its nn.Module. In the package it is one module
# in datamodels/models/archs/ plus one line in ARCHITECTURES; here it goes into a copy of the
# map so the package's own stays as it is.


class Linear(Architecture):
    """A linear classifier trained by SGD one model at a time (no stacked fast path)."""

    name = "linear"
    trainer = "sequential"
    functional = "module"
    head = "module"

    def build_module(self, model, data, seed: int) -> torch.nn.Module:
        torch.manual_seed(int(seed))
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(data.in_dim, data.num_classes)
        )


def test_a_new_architecture_trains_through_the_path_it_declares():
    from datamodels.gradients.module import checkpoint_model
    from datamodels.trainers.api import train_batch
    from datamodels.trainers.outcome import CheckpointRequest
    from tests.trainers.digits_arrays import digits_data

    known = {**ARCHITECTURES, "linear": Linear}
    arch = architecture("linear", known)
    base = config_from_dict(
        {"dataset": {"name": "digits"}, "train": {"epochs": 5, "batch_size": 32}}
    )
    config = base.model_copy(update={"model": base.model.model_copy(update={"arch": "linear"})})
    assert arch.trainer_path(config, "resident") == "sequential"

    torch.set_num_threads(1)
    data = digits_data(200, 100, 3)
    rng = np.random.default_rng(0)
    masks = rng.random((3, data.n_train)) < 0.8
    request = CheckpointRequest((0,), (config.train.epochs,))
    outcome = train_batch(masks, np.arange(3), data, config, checkpoints=request, arch=arch)

    assert outcome.margins.shape == (3, 100) and not outcome.failed.any()
    assert outcome.eval_accuracy.min() > 0.9  # digits 0-2 are linearly separable
    again = train_batch(masks[:1], np.arange(1), data, config, arch=arch)
    np.testing.assert_array_equal(again.margins[0], outcome.margins[0])  # a seed is one model

    # its checkpoint, in the functional form it declares, is the model it trained
    (snapshot,) = outcome.snapshots
    model = checkpoint_model(config, data, snapshot.params, arch)
    logits = model.logits_fn(model.params, data.eval_x)
    correct = logits.gather(1, data.eval_y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, data.eval_y.view(-1, 1), float("-inf")).max(1).values
    np.testing.assert_allclose((correct - others).detach().numpy(), outcome.margins[0], atol=1e-5)
    assert model.head_io is not None  # its head: the nn.Linear, found by the registry's head
