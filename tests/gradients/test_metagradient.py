"""Metagradients against finite differences of the training run itself (float64), the
replayed run against the batched trainer, and ``logreg`` against its converged optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodels.config import config_from_dict
from datamodels.gradients import Exact, influence_scores
from datamodels.gradients.metagradient import (
    checkpoint_interval,
    logreg_metagradient_scores,
    metagradient_scores,
    metagradient_self_scores,
    replay_mlp,
)
from datamodels.gradients.model import fit_logreg, logreg_model
from datamodels.trainers.batched import logreg_objective, train_mlp_batched
from datamodels.trainers.data import TrainData
from datamodels.trainers.lbfgs import batched_lbfgs
from datamodels.trainers.outcome import margins_from_logits

N, D, C, T = 48, 10, 3, 4
SEED = 123


SMOOTH = {"activation": "softplus", "softplus_beta": 4.0}  # φ'' ≠ 0: the adjoint's curvature


@pytest.fixture(scope="module")
def tiny():
    """A tiny float64 problem and a recipe using every part of it: momentum, weight decay,
    a warm-up schedule, label smoothing, a short last batch, two hidden layers."""
    return _tiny({})


@pytest.fixture(scope="module")
def tiny_smooth():
    """``tiny`` with the softplus activation."""
    return _tiny(SMOOTH)


@pytest.fixture(scope="module")
def tiny_gelu():
    return _tiny({"activation": "gelu"})


def _tiny(activation: dict):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=gen)
    tx = torch.randn(T, D, generator=gen, dtype=torch.float64)
    ty = torch.randint(0, C, (T,), generator=gen)
    data = TrainData(x, y, tx, ty, T, C, np.arange(N), "", torch.zeros(1, D), torch.ones(1, D))
    config = config_from_dict(
        {
            "model": {"arch": "mlp", "hidden": 6, "depth": 2, **activation},
            "train": {
                "epochs": 3, "batch_size": 10, "lr": 0.2, "momentum": 0.9,
                "weight_decay": 5e-3, "label_smoothing": 0.1, "schedule": "triangle",
            },
        }
    )
    mask = np.ones(N, dtype=bool)
    mask[::5] = False
    return data, config, mask


def replayed_margins(tiny, weights=None) -> np.ndarray:
    data, config, mask = tiny
    run = replay_mlp(
        data.train_x, data.train_y, mask, SEED, config.model, config.train, C, weights
    )
    logits = run.model.logits_fn(run.final, data.eval_x).unsqueeze(0)
    return margins_from_logits(logits, data.eval_y)[0].numpy()


@pytest.mark.parametrize(
    "weighted, case", [(False, "tiny"), (True, "tiny"), (True, "tiny_smooth"), (True, "tiny_gelu")]
)
def test_replay_is_the_trainers_run(request, weighted, case):
    tiny = request.getfixturevalue(case)
    data, config, mask = tiny
    weights = None
    if weighted:
        weights = np.random.default_rng(1).uniform(0, 2, N)
    margins, *_ = train_mlp_batched(
        data, mask[None], np.array([SEED]), config.model, config.train,
        example_weights=None if weights is None else weights[None],
    )
    np.testing.assert_allclose(replayed_margins(tiny, weights), margins[0], atol=1e-5)


@pytest.mark.parametrize("case", ["tiny", "tiny_smooth"])
def test_metagradient_equals_central_differences(request, case):
    """The exact derivative of the real run (two hidden layers, momentum, weight decay,
    label smoothing): with the ReLU and with softplus, whose adjoint has the curvature term."""
    tiny = request.getfixturevalue(case)
    data, config, mask = tiny
    run = replay_mlp(data.train_x, data.train_y, mask, SEED, config.model, config.train, C)
    scores = metagradient_scores(run, data.train_x, data.train_y, data.eval_x, data.eval_y)
    assert scores.shape == (T, N)
    h = 1e-5
    for i in (1, 2, 11, 47):
        up, down = np.ones(N), np.ones(N)
        up[i] += h
        down[i] -= h
        fd = (replayed_margins(tiny, up) - replayed_margins(tiny, down)) / (2 * h)
        scale = 1e-4 * np.abs(fd).max()
        np.testing.assert_allclose(scores[:, i].numpy(), fd, rtol=1e-4, atol=scale)
    # points outside the mask are in no batch
    assert torch.all(scores[:, ~torch.from_numpy(mask)] == 0)


def test_metagradient_is_deterministic_and_self_scores_are_the_diagonal(tiny):
    data, config, mask = tiny
    run = replay_mlp(data.train_x, data.train_y, mask, SEED, config.model, config.train, C)
    again = replay_mlp(data.train_x, data.train_y, mask, SEED, config.model, config.train, C)
    positions = np.array([1, 2, 3, 7])
    args = (data.train_x, data.train_y, data.train_x[positions], data.train_y[positions])
    first, second = metagradient_scores(run, *args), metagradient_scores(again, *args)
    assert torch.equal(first, second)
    own = metagradient_self_scores(run, data.train_x, data.train_y, positions)
    torch.testing.assert_close(own, first[torch.arange(4), torch.from_numpy(positions)])


@pytest.mark.parametrize(
    "hessian, case",
    [(True, "tiny"), (False, "tiny"), (True, "tiny_smooth"), (False, "tiny_smooth"),
     (True, "tiny_gelu")],
)
def test_matmul_products_equal_the_autograd_reference(request, hessian, case):
    """The hand-written batched adjoint (two hidden layers, weighted run) is the batched
    double backward's, to rounding: for the ReLU, and for softplus and gelu, where the
    Hessian-vector products carry the activation's second-order term."""
    tiny = request.getfixturevalue(case)
    data, config, mask = tiny
    weights = np.random.default_rng(2).uniform(0, 2, N)
    run = replay_mlp(
        data.train_x, data.train_y, mask, SEED, config.model, config.train, C, weights
    )
    args = (run, data.train_x, data.train_y, data.eval_x, data.eval_y, weights, hessian)
    fast = metagradient_scores(*args, products="matmul")
    reference = metagradient_scores(*args, products="autograd")
    assert fast.abs().max() > 0
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12 * reference.abs().max())


def test_float32_adjoint_is_the_float64_one_to_single_precision(tiny):
    data, config, mask = tiny
    run = replay_mlp(data.train_x, data.train_y, mask, SEED, config.model, config.train, C)
    args = (run, data.train_x, data.train_y, data.eval_x, data.eval_y)
    exact = metagradient_scores(*args)
    single = metagradient_scores(*args, dtype=torch.float32)
    assert single.dtype == torch.float64 and not torch.equal(single, exact)
    torch.testing.assert_close(single, exact, rtol=1e-4, atol=1e-5 * exact.abs().max())


def test_checkpointed_replay_equals_the_kept_iterates_exactly(tiny):
    """A memory bound below S·P·8 bytes keeps (θ, v) every k steps and recomputes each
    segment: the same iterates bit for bit, hence the same scores, in the stated memory."""
    data, config, mask = tiny
    recipe = config.train.model_copy(update={"epochs": 12})  # 48 steps
    args = (data.train_x, data.train_y, mask, SEED, config.model, recipe, C)
    whole = replay_mlp(*args)
    S, P = whole.steps, len(whole.final)
    assert whole.every == 1 and whole.stored_bytes == S * P * 8
    budget = S * P * 8 / 2
    part = replay_mlp(*args, memory_bytes=budget)
    assert part.iterates is None and 1 < part.every < S
    assert part.stored_bytes <= budget
    assert part.saved.numel() * 8 + part.every * P * 8 == part.stored_bytes
    for start, stop in part.segments():
        assert torch.equal(part.segment(start, stop), whole.iterates[start:stop])
    assert torch.equal(part.final, whole.final)
    targets = (data.train_x, data.train_y, data.eval_x, data.eval_y)
    assert torch.equal(metagradient_scores(part, *targets), metagradient_scores(whole, *targets))


def test_checkpoint_interval_on_the_digits_mlp():
    """digits MLP (230 steps × 4,810 parameters, 8.9 MB of iterates): a bound that fits
    keeps every iterate; 2 MB keeps a checkpoint every 8 steps (1.9 MB); a bound below the
    least any interval needs takes that interval, about √(2S) = 21 (0.8 MB): O(√S·P)."""
    S, P = 230, 4810
    assert checkpoint_interval(S, P, None) == 1
    assert checkpoint_interval(S, P, 9e6) == 1
    k = checkpoint_interval(S, P, 2e6)
    assert (2 * -(-S // k) + k) * P * 8 <= 2e6 < (2 * -(-S // (k - 1)) + k - 1) * P * 8
    least = checkpoint_interval(S, P, 1.0)
    assert abs(least - (2 * S) ** 0.5) <= 2


def test_logreg_metagradient_is_the_influence_function_and_the_optimum_derivative(tiny):
    data, _, _ = tiny
    x, y, tx, ty = data.train_x, data.train_y, data.eval_x, data.eval_y
    wd, n_fit = 0.05, 40
    mask = np.arange(N) < n_fit  # the last 8 are scored too: the effect of adding them
    params = fit_logreg(x[:n_fit], y[:n_fit], C, wd, tolerance=1e-11)
    model = logreg_model(params, D, C, wd)
    scores = logreg_metagradient_scores(model, x, y, mask, tx, ty).numpy()
    influence = influence_scores(
        model, x[:n_fit], y[:n_fit], tx, ty, solver=Exact(0.0), train_output="loss",
        points_x=x, points_y=y,
    ).numpy()
    np.testing.assert_allclose(scores, influence, rtol=1e-3, atol=1e-3 * np.abs(influence).max())

    def optimum_margins(weights: np.ndarray) -> np.ndarray:
        # the trainer's objective with weights w_i / |S| in place of mask_i / |S|
        fun = logreg_objective(x, y, torch.from_numpy(weights[None] / n_fit), C, wd)
        solution = batched_lbfgs(fun, params[None].clone(), tol=1e-10, max_iter=5000)
        assert float(solution.grad_norm[0]) < 1e-9
        theta = solution.x[0]
        logits = tx @ theta[: D * C].view(D, C) + theta[D * C :]
        return margins_from_logits(logits.unsqueeze(0), ty)[0].numpy()

    h = 1e-4
    for i in (0, 17, 45):
        up, down = mask.astype(np.float64), mask.astype(np.float64)
        up[i] += h
        down[i] -= h
        fd = (optimum_margins(up) - optimum_margins(down)) / (2 * h)
        np.testing.assert_allclose(scores[:, i], fd, rtol=1e-3, atol=1e-3 * np.abs(fd).max())


STAGE_RUN = {
    "name": "metagradient_tiny",
    "dataset": {"name": "digits", "limit_train": 120, "limit_test": 20},
    "model": {"arch": "mlp", "hidden": 8},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.1, "label_smoothing": 0.1},
    "plans": [{"name": "train", "alpha": 0.5, "count": 4}],
    "checkpoints": {"plan": "train"},
    "gradients": {"models": 2, "targets_per_task": 8, "train_per_task": 50},
    "resources": {"models_per_task": 4},
}


def test_stage_writes_the_replayed_metagradients_and_resumes(tmp_path):
    """``estimate -m metagradient``: per model the pure function on its replayed run (seed and
    mask from the plan), averaged over ``gradients.models``; self scores are the diagonal,
    each point's averaged over the models whose runs hold it (outside its mask a point is in
    no batch: 0 by construction); a rerun finds it done."""
    from datamodels.api import estimate, train
    from datamodels.orchestrate.context import Context
    from datamodels.orchestrate.executor import SerialExecutor
    from datamodels.plans import plan_models
    from datamodels.store import Run
    from datamodels.store.positions import eval_positions

    config = config_from_dict(STAGE_RUN)
    uri = str(tmp_path / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    written = estimate(config, uri, "metagradient", executor=SerialExecutor(), show_progress=False)
    assert written["models"] == 2
    run = Run(uri)
    targets, scores = run.scores("metagradient")
    own = run.self_scores()["metagradient"]
    data = Context().data(run, config)
    planned = plan_models(config, run.n_train)
    t = torch.as_tensor(eval_positions(run, config.estimate.targets))
    expected, own_sum, held = 0.0, 0.0, 0
    for model_id in (0, 1):
        mask = run.masks_of(np.array([model_id]))[0]
        seed = int(planned.select_ids(np.array([model_id])).seed[0])
        replayed = replay_mlp(
            data.train_x, data.train_y, mask, seed, config.model, config.train, data.num_classes
        )
        expected = expected + metagradient_scores(
            replayed, data.train_x, data.train_y, data.eval_x[t], data.eval_y[t]
        ).numpy() / 2
        own_sum = own_sum + metagradient_self_scores(
            replayed, data.train_x, data.train_y, np.arange(run.n_train)
        ).numpy()
        held = held + mask
    assert 0 < (held == 1).sum() and (held == 2).any()  # some points in one run, some in both
    expected_own = np.where(held > 0, own_sum / np.maximum(held, 1), 0.0)
    assert scores.shape == (len(t), 120) and np.abs(scores).max() > 0
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(own, expected_own, rtol=1e-4, atol=1e-6 * np.abs(own).max())
    stamp = (tmp_path / "run" / "scores" / "metagradient.parquet").stat().st_mtime_ns
    estimate(config, uri, "metagradient", executor=SerialExecutor(), show_progress=False)
    assert (tmp_path / "run" / "scores" / "metagradient.parquet").stat().st_mtime_ns == stamp
    # the adjoint in float32 (gradients.adjoint_precision) recomputes: the same to ~1e-5
    fp32 = config_from_dict(STAGE_RUN, ["gradients.adjoint_precision=fp32"])
    estimate(fp32, uri, "metagradient", executor=SerialExecutor(), show_progress=False)
    assert (tmp_path / "run" / "scores" / "metagradient.parquet").stat().st_mtime_ns != stamp
    _, single = run.scores("metagradient")
    assert not np.array_equal(single, scores)
    np.testing.assert_allclose(single, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())


def test_stage_refuses_an_architecture_it_cannot_replay():
    from datamodels.errors import EstimateError
    from datamodels.stages.estimate import EstimateStage

    config = config_from_dict(STAGE_RUN, ["model.arch=resnet9"])
    with pytest.raises(EstimateError, match="model.arch='resnet9' cannot be replayed"):
        EstimateStage(config, None, "metagradient")


def test_hydra_without_momentum_or_decay_is_the_step_gradient_product(tiny):
    """HyDRA drops the Hessian: with μ = λ = 0 and one epoch, each point's score is
    −η_s ∇m_t(θ_S)·∇ℓ_i(θ_s)/c_s at the one step s whose batch holds it."""
    from datamodels.gradients.grads import per_example_grads
    from datamodels.gradients.hydra import hydra_scores

    data, config, mask = tiny
    recipe = config.train.model_copy(update={"momentum": 0.0, "weight_decay": 0.0, "epochs": 1})
    run = replay_mlp(data.train_x, data.train_y, mask, SEED, config.model, recipe, C)
    scores = hydra_scores(run, data.train_x, data.train_y, data.eval_x, data.eval_y)
    target_grads = per_example_grads(run.model, data.eval_x, data.eval_y, "margin")
    expected = torch.zeros(T, N, dtype=torch.float64)
    for s, batch in enumerate(run.batches):
        loss_grads = per_example_grads(
            run.model, data.train_x[batch], data.train_y[batch], "loss",
            params=run.iterates[s],
        )
        expected[:, batch] = -run.lrs[s] * (target_grads @ loss_grads.T) / len(batch)
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)
