"""TRAK: exact identity with the output-gradient Gauss–Newton influence when k >= P, λ -> 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodels.gradients import fit_logreg, logreg_model, trak_scores, trak_self_scores
from datamodels.gradients.grads import per_example_grads
from datamodels.gradients.ihvp import solve_with_hessian
from tests.gradients.conftest import N_LEFT_OUT, pearson


def tiny():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=gen)
    return logreg_model(fit_logreg(x, y, 3, 0.1), 3, 3, 0.1), x, y


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_full_rank_projection_equals_gauss_newton_influence(kind):
    model, x, y = tiny()
    P = model.num_params
    n = len(x)
    tau = trak_scores(
        [model], x, y, x[:5], y[:5], proj_dim=P + 8, kind=kind, damping=0.0, precision="fp64"
    )
    G = per_example_grads(model, x, y, "trak")  # ∇f(z_i): [n, P]
    g_t = per_example_grads(model, x[:5], y[:5], "trak")
    loss_grads = per_example_grads(model, x, y, "loss")
    # influence with utility f, Hessian := GᵀG/n: −(1/n)∇f_tᵀ (GᵀG/n)⁺ ∇ℓ(z_i)
    s = solve_with_hessian(G.T @ G / n, g_t, 0.0, model.null_directions)
    expected = -(s @ loss_grads.T) / n
    torch.testing.assert_close(tau, expected, rtol=1e-6, atol=1e-9)
    assert tau.shape == (5, n)
    own = trak_self_scores([model], x, y, proj_dim=P + 8, kind=kind, precision="fp64")
    torch.testing.assert_close(own[:5], torch.diagonal(tau[:, :5]), rtol=1e-6, atol=1e-9)


def test_ensemble_averages_the_two_factors_separately():
    model, x, y = tiny()
    other = model.with_params(model.params * 0.9)
    both = trak_scores([model, other], x, y, x[:3], y[:3], proj_dim=6, seed=4)
    a = trak_scores([model], x, y, x[:3], y[:3], proj_dim=6, seed=4)
    b = trak_scores([other], x, y, x[:3], y[:3], proj_dim=6, seed=5)

    def q(m):
        return 1 - torch.softmax(m.logits_fn(m.params, x), 1).gather(1, y.view(-1, 1)).squeeze(1)

    expected = 0.5 * (a / q(model) + b / q(other)) * 0.5 * (q(model) + q(other))
    torch.testing.assert_close(both, expected)


def test_trak_ranks_like_leave_one_out_on_logreg(logreg_case):
    """A sanity floor, not an identity: one model, TRAK's ΦᵀΦ has no p(1−p) weights and no
    weight decay (λ plays it), measured 0.775 here."""
    case = logreg_case
    tau = trak_scores(
        [case.model], case.train_x, case.train_y, case.target_x, case.target_y, proj_dim=1024,
        damping=50.0,
    )
    r = pearson(tau[:, :N_LEFT_OUT].numpy(), case.loo)
    print(f"TRAK (k=1024, λ=50, one model) Pearson vs LOO = {r:.3f}")
    assert np.isfinite(r) and r > 0.6


def reference_trak(models, train_x, train_y, target_x, target_y, proj_dim, seed):
    """The implementation before batching: vmap(grad) per example, float64 products, the
    k × k pseudo-inverse (``benchmarks/trak_speed.py`` times it)."""
    from datamodels.gradients.projection import Projection
    from datamodels.gradients.trak import one_minus_p

    attribution, reweight = 0.0, 0.0
    for m, model in enumerate(models):
        projection = Projection(model.num_params, proj_dim, seed + m, precision="fp64")
        phi = projection.project(per_example_grads(model, train_x, train_y, "trak"))
        phi_t = projection.project(per_example_grads(model, target_x, target_y, "trak"))
        attribution = attribution + phi_t @ torch.linalg.pinv(phi.T @ phi, hermitian=True) @ phi.T
        reweight = reweight + one_minus_p(model, train_x, train_y)
    return (attribution / len(models)) * (reweight / len(models))


def test_batched_float32_trak_keeps_the_scores_of_the_reference(digits_data):
    """Trained digits MLPs, k > n and k < n: the batched gradients, float32 products and the
    n × n solve give the scores of the per-example float64 path (r ≥ 0.9999)."""
    from datamodels.gradients.checkpointed import functional_model
    from datamodels.trainers.api import train_batch
    from datamodels.trainers.outcome import CheckpointRequest

    config, data = digits_data
    masks = np.random.default_rng(0).random((2, data.n_train)) < 0.5
    request = CheckpointRequest(rows=(0, 1), epochs=(config.train.epochs,))
    outcome = train_batch(masks, np.arange(2), data, config, checkpoints=request)
    models = [functional_model(config, data, s.params) for s in outcome.snapshots]
    x, y = data.train_x[:400], data.train_y[:400]
    tx, ty = data.eval_x[:40], data.eval_y[:40]
    for k in (512, 256):
        ours = trak_scores(models, x, y, tx, ty, proj_dim=k, seed=3)
        reference = reference_trak(models, x, y, tx, ty, k, 3)
        assert pearson(ours.numpy(), reference.numpy()) >= 0.9999, k
    own = trak_self_scores(models, x, y, proj_dim=256, seed=3)
    torch.testing.assert_close(
        own[:40], torch.diagonal(trak_scores(models, x, y, x[:40], y[:40], proj_dim=256, seed=3))
    )
