"""The grouped fastnet trainer (the GPU fast path), on CPU at tiny width.

The promises: K models trained in one grouped pass are the models each would be alone (same
seed: same subset order, augmentation draws, initialisation, whitening and BatchNorm
statistics); a model sees nothing outside its subset; a non-finite model fails alone; the
one-model module (what checkpoints and gradient estimators use) reproduces the margins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodels.config import Config
from datamodels.data.synthetic import synthetic_cifar
from datamodels.errors import ConfigError
from datamodels.models.fastnet import FastNet, build_fastnet, pack, unpack
from datamodels.trainers import grouped
from datamodels.trainers.api import train_batch
from datamodels.trainers.data import TrainData, _stats
from datamodels.trainers.outcome import CheckpointRequest, margins_from_logits
from datamodels.trainers.sequential import build_module

TOL = 2e-4  # float32 margins of 1-model vs grouped convolutions after a few dozen steps


def _data(n_train=96, n_eval=40, size=16, classes=4, **difficulty) -> TrainData:
    xtr, ytr = synthetic_cifar(n_train, seed=1, classes=classes, size=size, **difficulty)
    xte, yte = synthetic_cifar(n_eval, seed=2, classes=classes, size=size, **difficulty)
    mean, std = _stats(xtr)

    def norm(a):
        return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - mean) / std

    return TrainData(
        norm(xtr), torch.from_numpy(ytr), norm(xte), torch.from_numpy(yte), n_eval, classes,
        np.arange(n_train), "", mean, std,
    )


def _config(width: int = 4, **train) -> Config:
    recipe = {
        "epochs": 3, "batch_size": 16, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
        "schedule": "airbench", "label_smoothing": 0.2, "tta": 2, "precision": "fp32",
    } | train
    return Config.model_validate({
        "model": {"arch": "fastnet", "width": width}, "train": recipe,
        "resources": {"models_per_pass": 3},
    })


@pytest.fixture(scope="module")
def data() -> TrainData:
    return _data()


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    masks = np.random.default_rng(0).random((3, 96)) < 0.5
    masks[2, :] = False
    masks[2, :40] = True  # 40 examples: 2 steps an epoch where the others take 3
    return masks


def test_grouped_pass_equals_one_model_passes(data, masks, one_torch_thread):
    config = _config()
    seeds = np.array([11, 12, 13])
    rows = (0, 1, 2)
    both = train_batch(masks, seeds, data, config, checkpoints=CheckpointRequest(rows, (2, 3)))
    assert not both.failed.any()
    for k in range(3):
        alone = train_batch(
            masks[k : k + 1], seeds[k : k + 1], data, config,
            checkpoints=CheckpointRequest((0,), (2, 3)),
        )
        np.testing.assert_allclose(alone.margins[0], both.margins[k], atol=TOL)
        assert alone.train_loss[0] == pytest.approx(both.train_loss[k], abs=1e-4)
        # every tensor of the model, BatchNorm running statistics included, after epochs 2, 3
        mine = [s for s in both.snapshots if s.row == k]
        assert [s.epoch for s in mine] == [2, 3] == [s.epoch for s in alone.snapshots]
        for grouped_snap, alone_snap in zip(mine, alone.snapshots, strict=True):
            assert grouped_snap.lr == pytest.approx(alone_snap.lr)
            for a, b in zip(grouped_snap.params, alone_snap.params, strict=True):
                torch.testing.assert_close(a, b, atol=TOL, rtol=1e-3)
    # the models really differ from each other (own subsets, draws and initialisations)
    assert np.abs(both.margins[0] - both.margins[1]).max() > 1e-2


def test_streams_mode_trains_the_same_models(data, masks, one_torch_thread):
    """``pass_mode: streams`` (one network per model, steps interleaved) gives the grouped
    pass's models, checkpoints mapped to the right rows."""
    grouped_cfg = _config(epochs=2)
    streams_cfg = Config.model_validate(
        grouped_cfg.model_dump() | {"resources": {"models_per_pass": 3, "pass_mode": "streams"}}
    )
    seeds = np.array([21, 22, 23])
    request = CheckpointRequest((0, 2), (2,))
    a = train_batch(masks, seeds, data, grouped_cfg, checkpoints=request)
    b = train_batch(masks, seeds, data, streams_cfg, checkpoints=request)
    np.testing.assert_allclose(b.margins, a.margins, atol=TOL)
    assert [s.row for s in b.snapshots] == [s.row for s in a.snapshots] == [0, 2]
    for x, y in zip(a.snapshots, b.snapshots, strict=True):
        torch.testing.assert_close(x.params[0], y.params[0], atol=TOL, rtol=1e-3)


def test_a_model_sees_nothing_outside_its_subset(data, masks, one_torch_thread):
    """Whitening, batches and augmentation come from the model's own subset only: changing
    every training image outside it leaves the model unchanged."""
    config = _config(epochs=2)
    seeds = np.array([3, 4, 5])
    before = train_batch(masks, seeds, data, config)
    changed = TrainData(**data.__dict__)
    outside = torch.from_numpy(~masks[0])
    changed.train_x = data.train_x.clone()
    changed.train_x[outside] = torch.randn_like(data.train_x[outside]) * 3
    changed.train_y = data.train_y.clone()
    changed.train_y[outside] = (data.train_y[outside] + 1) % data.num_classes
    after = train_batch(masks, seeds, changed, config)
    np.testing.assert_allclose(after.margins[0], before.margins[0], atol=TOL)
    assert np.abs(after.margins[1] - before.margins[1]).max() > 1e-3


def test_a_non_finite_model_fails_alone(data, masks, monkeypatch, one_torch_thread):
    config = _config(epochs=2)
    seeds = np.array([7, 8, 9])
    clean = train_batch(masks, seeds, data, config)
    real = grouped.initial_state

    def poisoned(data, plan, seeds, model):
        state = real(data, plan, seeds, model)
        weight = state["block1.conv1.weight"]
        block = weight.shape[0] // len(seeds)
        weight[block : 2 * block] = float("nan")  # model 1 only
        return state

    monkeypatch.setattr(grouped, "initial_state", poisoned)
    dirty = train_batch(masks, seeds, data, config)
    assert dirty.failed.tolist() == [False, True, False]
    np.testing.assert_allclose(dirty.margins[[0, 2]], clean.margins[[0, 2]], atol=TOL)


def test_the_one_model_module_reproduces_the_margins(data, masks, one_torch_thread):
    """The final checkpoint loaded into ``build_module``'s plain network (what the gradient
    estimators differentiate) gives the recorded margins (no TTA)."""
    config = _config(tta=0)
    out = train_batch(masks, np.array([1, 2, 3]), data, config,
                      checkpoints=CheckpointRequest((1,), (config.train.epochs,)))
    snap = [s for s in out.snapshots if s.epoch == config.train.epochs]
    assert len(snap) == 1
    module = build_module(config.model, data, seed=0)
    assert isinstance(module, FastNet) and isinstance(list(module.modules())[-1], torch.nn.Linear)
    names = list(module.state_dict())
    module.load_state_dict(dict(zip(names, snap[0].params, strict=True)))
    with torch.no_grad():
        logits = module.eval()(data.eval_x)
    margins = margins_from_logits(logits.unsqueeze(0), data.eval_y)[0].numpy()
    np.testing.assert_allclose(margins, out.margins[1], atol=TOL)


def test_it_learns(one_torch_thread):
    """320 easy 16×16 images: the recipe (lr scaled up for 80 steps instead of airbench's
    ~500) reaches most of the test set; 4 classes, chance 0.25."""
    data = _data(n_train=320, n_eval=200, shift=1, confusion=0.3, noise=0.2)
    config = _config(width=8, epochs=8, batch_size=32, tta=1, lr=100.0)
    out = train_batch(np.ones((1, 320), bool), np.array([0]), data, config)
    assert out.eval_accuracy[0] > 0.9
    assert out.train_loss[0] < 1.0  # from ln 4 = 1.39


def test_pack_unpack_round_trip():
    nets = [build_fastnet(s, 10, 4) for s in (1, 2)]
    packed = pack([n.state_dict() for n in nets])
    grouped_net = FastNet(2, 10, 4)
    grouped_net.load_state_dict(packed)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        both = grouped_net.eval()(x.repeat(1, 2, 1, 1))
        for k, net in enumerate(nets):
            torch.testing.assert_close(both[:, k], net.eval()(x), atol=1e-5, rtol=1e-4)
            restored = unpack(grouped_net.state_dict(), 2, k)
            for name, t in net.state_dict().items():
                torch.testing.assert_close(restored[name], t)


def test_pass_plan_draws_are_per_model():
    masks = np.ones((2, 50), bool)
    a = grouped.PassPlan(masks, np.array([1, 2]), 16, 2).epoch()
    b = grouped.PassPlan(masks[:1], np.array([1]), 16, 2).epoch()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
    assert not np.array_equal(a[0][0], a[0][1]) and not np.array_equal(a[1][0], a[1][1])


def test_crop_takes_the_shifted_window():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    out = grouped.crop(x, torch.tensor([[0, 2], [1, 0]]), (4, 4))
    torch.testing.assert_close(out[0], x[0, :, 0:4, 2:6])
    torch.testing.assert_close(out[1], x[1, :, 1:5, 0:4])


@pytest.mark.parametrize(
    "shape, message",
    [((8, 64), "needs image data"), ((8, 3, 8, 8), "at least 16×16")],
)
def test_unusable_data_is_refused_in_one_line(shape, message):
    data = TrainData(
        torch.zeros(shape), torch.zeros(8, dtype=torch.long), torch.zeros(shape),
        torch.zeros(8, dtype=torch.long), 8, 2, np.arange(8), "", torch.zeros(1), torch.ones(1),
    )
    with pytest.raises(ConfigError, match=message):
        train_batch(np.ones((1, 8), bool), np.array([0]), data, _config())
