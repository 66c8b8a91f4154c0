"""TracIn-CP against a hand-computed gradient dot product."""

from __future__ import annotations

import torch

from datamodels.gradients import mlp_model, tracin_scores, tracin_self_scores
from datamodels.models.mlp import init_params, to_module


def test_one_checkpoint_is_lr_times_the_gradient_dot_product():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    layers = [p.double() for p in init_params(3, [5, 4, 3])]
    model = mlp_model(layers, weight_decay=0.0)
    lr = 0.05
    scores = tracin_scores(model, [(model.params, lr)], x[:4], y[:4], x[4:], y[4:])
    net = to_module(layers).double()

    def loss_grad(i: int) -> torch.Tensor:
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()])

    for t in (4, 5):
        for i in range(4):
            expected = lr * loss_grad(i) @ loss_grad(t)
            torch.testing.assert_close(scores[t - 4, i], expected, rtol=1e-10, atol=1e-14)
    self_scores = tracin_self_scores(model, [(model.params, lr)], x, y)
    torch.testing.assert_close(
        self_scores[2], lr * loss_grad(2).pow(2).sum(), rtol=1e-10, atol=1e-14
    )


def test_checkpoints_sum_and_margin_sign():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    model = mlp_model([p.double() for p in init_params(0, [5, 4, 3])], weight_decay=0.0)
    other = model.params + 0.1 * torch.randn(model.num_params, generator=gen, dtype=torch.float64)
    both = tracin_scores(
        model, [(model.params, 0.1), (other, 0.2)], x, y, x[:2], y[:2], utility="margin"
    )
    one = tracin_scores(model, [(model.params, 0.1)], x, y, x[:2], y[:2], utility="margin")
    two = tracin_scores(model, [(other, 0.2)], x, y, x[:2], y[:2], utility="margin")
    torch.testing.assert_close(both, one + two)
    # a real SGD step on z_i moves the target's margin by about its score
    from datamodels.gradients.grads import per_example_grads, per_example_outputs

    lr = 1e-4
    step = model.params - lr * per_example_grads(model, x[3:4], y[3:4], "loss")[0]
    after = per_example_outputs(model.with_params(step), x[:2], y[:2], "margin")
    change = after - per_example_outputs(model, x[:2], y[:2], "margin")
    score = tracin_scores(
        model, [(model.params, lr)], x[3:4], y[3:4], x[:2], y[:2], utility="margin"
    )[:, 0]
    torch.testing.assert_close(change, score, rtol=1e-3, atol=1e-9)


def test_layer_factors_give_the_per_example_gradient_dot_products():
    import dataclasses

    from datamodels.gradients import logreg_model
    from datamodels.gradients.grads import (
        factor_dots,
        factor_norms,
        gradient_factors,
        per_example_grads,
    )

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=gen)
    # two hidden layers
    deep = mlp_model([p.double() for p in init_params(1, [6, 5, 5, 4])], weight_decay=1e-3)
    linear = logreg_model(torch.randn(7 * 4, generator=gen, dtype=torch.float64), 6, 4, 1e-3)
    for model in (deep, linear):
        for left, right in (("loss", "loss"), ("margin", "loss")):
            dots = factor_dots(
                gradient_factors(model, x[:3], y[:3], left),
                gradient_factors(model, x[3:], y[3:], right),
            )
            expected = (
                per_example_grads(model, x[:3], y[:3], left)
                @ per_example_grads(model, x[3:], y[3:], right).T
            )
            torch.testing.assert_close(dots, expected, rtol=1e-10, atol=1e-12)
        norms = factor_norms(gradient_factors(model, x, y, "loss"))
        torch.testing.assert_close(
            norms, per_example_grads(model, x, y, "loss").pow(2).sum(1), rtol=1e-10, atol=1e-12
        )
        # TracIn through the factors equals TracIn through vmap(grad) per-example gradients
        generic = dataclasses.replace(model, layer_io=None)
        for utility in ("loss", "margin"):
            checkpoints = [(model.params, 0.3)]
            fast = tracin_scores(
                model, checkpoints, x[3:], y[3:], x[:3], y[:3], utility=utility, chunk_size=4
            )
            slow = tracin_scores(generic, checkpoints, x[3:], y[3:], x[:3], y[:3], utility=utility)
            torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            tracin_self_scores(model, [(model.params, 0.3)], x, y),
            tracin_self_scores(generic, [(model.params, 0.3)], x, y),
            rtol=1e-10, atol=1e-12,
        )
