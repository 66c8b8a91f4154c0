"""The shipped GPU config (``configs/cifar10_fast.yaml``, fastnet) end to end on a generated
CIFAR-10 archive, on the CPU: planned models trained once each, checkpoints that reproduce the
stored margins, and the same models whatever the pass composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodels.api import train
from datamodels.config import load_config
from datamodels.orchestrate.context import context
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run, verify
from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index
from datamodels.trainers.outcome import margins_from_logits
from datamodels.trainers.sequential import build_module
from tests.conftest import write_cifar_archive

CONFIG = Path(__file__).parents[2] / "configs" / "cifar10_fast.yaml"


def _config(archive: Path, *extra: str):
    return load_config(CONFIG, [
        f"dataset.path={archive}", "model.width=4", "train.epochs=2", "train.batch_size=8",
        "train.tta=0", "train.precision=fp32", "plans.train.count=4", "plans.eval.count=1",
        "resources.num_gpus=0",
        "resources.num_cpus=1", "resources.device=cpu", "resources.models_per_task=3",
        "resources.models_per_pass=2", "checkpoints.plan=train", "checkpoints.models=2",
        *extra,
    ])


def test_shipped_fast_config_on_a_generated_archive(tmp_path, ray_local):
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", n_per_batch=8, n_test=10)
    config = _config(archive)
    out = tmp_path / "run"
    summary = train(config, str(out), show_progress=False)
    assert summary.trained == 4 + 2  # the eval plan trains 2 seeds per mask
    run = Run(str(out))
    assert np.isfinite(run.margins()).all() and verify(run) == []

    # each checkpoint, loaded into the one-model network, gives the stored margins
    data = context().data(run, config)
    index = read_checkpoint_index(run.fs)
    final = index[index["epoch"] == config.train.epochs]
    assert len(final) == 2
    ids = run.models()["model_id"].to_numpy()
    for model_id, path in zip(final["model_id"], final["path"], strict=True):
        saved = load_checkpoint(run.fs, path)
        module = build_module(config.model, data, seed=0)
        module.load_state_dict(dict(zip(module.state_dict(), saved["layers"], strict=True)))
        with torch.no_grad():
            logits = module.eval()(data.eval_x)
        margins = margins_from_logits(logits.unsqueeze(0), data.eval_y)[0].numpy()
        stored = run.margins()[ids == model_id][0]
        np.testing.assert_allclose(margins, stored, atol=2e-4)


def test_same_models_whatever_the_pass_composition(tmp_path):
    """In-process (no Ray): 3 models a task in passes of 2, or one model a task."""
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", n_per_batch=8, n_test=10)
    a = train(_config(archive), str(tmp_path / "a"), executor=SerialExecutor(),
              show_progress=False)
    b = train(
        _config(archive, "resources.models_per_pass=1", "resources.models_per_task=1"),
        str(tmp_path / "b"), executor=SerialExecutor(), show_progress=False,
    )
    assert a.trained == b.trained
    ma, mb = Run(str(tmp_path / "a")), Run(str(tmp_path / "b"))
    order_a = np.argsort(ma.models()["model_id"].to_numpy())
    order_b = np.argsort(mb.models()["model_id"].to_numpy())
    np.testing.assert_allclose(ma.margins()[order_a], mb.margins()[order_b], atol=2e-4)
