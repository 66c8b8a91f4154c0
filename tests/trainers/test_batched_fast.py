"""The batched MLP trainer's hand-written gradients against autograd, and its chunking of the
K models (which must not change any model)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodels.config import config_from_dict
from datamodels.models.activations import Activation
from datamodels.models.mlp import (
    accumulate_gradients,
    init_stacked,
    layer_sizes,
    output_transposed,
    stacked_forward,
)
from datamodels.trainers.batched import train_mlp_batched
from datamodels.trainers.outcome import CheckpointRequest
from datamodels.trainers.sequential import train_sequential
from tests.trainers.digits_arrays import digits_data


def _autograd_reference(layers, x, labels, real, smoothing, activation):
    """The pre-hand-written objective: per model, mean label-smoothed CE over its real
    examples (padding weighted 0), and its gradient by autograd."""
    params = [p.clone().requires_grad_(True) for p in layers]
    logits = stacked_forward(params, x, activation)
    K, B, C = logits.shape
    per_example = F.cross_entropy(
        logits.reshape(-1, C), labels.reshape(-1), reduction="none", label_smoothing=smoothing
    ).view(K, B)
    loss = (per_example * real).sum(1) / real.sum(1).clamp(min=1)
    return loss.detach(), torch.autograd.grad(loss.sum(), params)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize(
    "activation", [Activation("relu"), Activation("softplus", 4.0), Activation("gelu")],
    ids=["relu", "softplus", "gelu"],
)
def test_hand_written_gradients_equal_autograd(depth, smoothing, activation):
    torch.manual_seed(0)
    K, B, d, h, C = 3, 7, 5, 6, 4
    sizes = layer_sizes(d, h, depth, C)
    layers = [p.double() for p in init_stacked([1, 2, 3], sizes)]
    x = torch.randn(K, B, d, dtype=torch.float64)
    x[0, 0] *= 40  # pre-activations beyond softplus's threshold (βz > 20) too
    labels = torch.randint(0, C, (K, B))
    real = torch.ones(K, B, dtype=torch.float64)
    real[1, 4:] = 0  # a short last batch: padding rows
    real[2] = 0  # a model sitting the step out: all padding
    loss, expected = _autograd_reference(layers, x, labels, real, smoothing, activation)

    weight = (real / real.sum(1, keepdim=True).clamp(min=1)).unsqueeze(1)  # [K, 1, B]
    stored = output_transposed(layers)
    grads = [torch.full_like(p, float("nan")) for p in stored]  # beta = 0 ignores them
    got = accumulate_gradients(
        stored, x, labels.unsqueeze(1), weight, smoothing, grads, 0.0, want_loss=True,
        activation=activation,
    )
    torch.testing.assert_close(got, loss, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(output_transposed(grads), expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)

    # beta accumulates: grads ← beta·grads + ∇ (the fused momentum update)
    previous = [g.clone() for g in grads]
    accumulate_gradients(
        stored, x, labels.unsqueeze(1), weight, smoothing, grads, 0.9, activation=activation
    )
    for now, before in zip(grads, previous, strict=True):
        torch.testing.assert_close(now, 1.9 * before, rtol=1e-10, atol=1e-12)


def _mlp_config(**train):
    recipe = {"epochs": 3, "batch_size": 16, "lr": 0.1, "momentum": 0.9,
              "weight_decay": 5e-4, "schedule": "triangle", **train}
    return config_from_dict({"model": {"arch": "mlp", "hidden": 16, "depth": 2},
                             "train": recipe})


def test_chunks_do_not_change_the_models():
    torch.set_num_threads(1)
    data = digits_data(120, 40, 3)
    config = _mlp_config(label_smoothing=0.1)
    rng = np.random.default_rng(0)
    masks = rng.random((5, data.n_train)) < rng.uniform(0.2, 0.9, (5, 1))  # uneven epochs
    masks[3] = False  # an empty subset: never steps
    seeds = np.arange(10, 15)
    request = CheckpointRequest((1, 4), (1, 3))
    together = train_mlp_batched(data, masks, seeds, config.model, config.train, request)
    chunked = train_mlp_batched(
        data, masks, seeds, config.model, config.train, request, models_per_chunk=2
    )
    for a, b in zip(together[:3], chunked[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert [(s.row, s.epoch) for s in together[3]] == [(1, 1), (4, 1), (1, 3), (4, 3)]
    assert [(s.row, s.epoch, s.lr) for s in chunked[3]] == [
        (s.row, s.epoch, s.lr) for s in together[3]
    ]
    sizes = layer_sizes(data.in_dim, 16, 2, 3)
    for a, b in zip(together[3], chunked[3], strict=True):
        # snapshots keep the layers' usual layout (output weight [h, C], not transposed)
        assert [tuple(p.shape) for p in a.params] == [
            tuple(p.shape[1:]) for p in init_stacked([0], sizes)
        ]
        for p, q in zip(a.params, b.params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    # the empty subset keeps its initial parameters: margins of the untrained model
    initial = init_stacked([13], sizes)
    logits = stacked_forward(initial, data.eval_x)[0]
    top2 = logits.topk(2, 1).values
    correct = logits.gather(1, data.eval_y.view(-1, 1)).squeeze(1)
    others = torch.where(correct == top2[:, 0], top2[:, 1], top2[:, 0])
    np.testing.assert_allclose(together[0][3], (correct - others).numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "recipe",
    [
        {"momentum": 0.0, "schedule": "constant", "label_smoothing": 0.1},
        {"momentum": 0.9, "schedule": "airbench", "label_smoothing": 0.0, "weight_decay": 0.0},
    ],
)
def test_depth_two_matches_one_at_a_time(recipe):
    """The recipe's corners (no momentum, label smoothing, no weight decay, uneven epochs,
    two hidden layers) give the same models as ``torch.optim.SGD`` one at a time."""
    torch.set_num_threads(1)
    data = digits_data(120, 40, 3)
    config = _mlp_config(**recipe)
    rng = np.random.default_rng(1)
    masks = rng.random((4, data.n_train)) < rng.uniform(0.3, 0.9, (4, 1))
    seeds = np.arange(4)
    request = CheckpointRequest((0, 2), (2,))
    fast = train_mlp_batched(data, masks, seeds, config.model, config.train, request,
                             models_per_chunk=3)
    slow = train_sequential(data, masks, seeds, config.model, config.train, "resident", request)
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-4)  # margins
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-4)  # last-epoch loss
    for a, b in zip(fast[3], slow[3], strict=True):
        assert (a.row, a.epoch) == (b.row, b.epoch) and a.lr == pytest.approx(b.lr)
        for p, q in zip(a.params, b.params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
