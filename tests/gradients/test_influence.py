"""Influence functions against leave-one-out retraining of the trainer's convex logreg."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodels.gradients import (
    ConjugateGradient,
    Exact,
    Lissa,
    influence_scores,
    influence_self_scores,
)
from datamodels.gradients.grads import exact_hessian, hvp_fn, per_example_outputs
from datamodels.gradients.ihvp import inverse_hvp
from datamodels.gradients.model import fit_logreg, logreg_model, mlp_model, objective
from datamodels.models.mlp import init_params
from tests.gradients.conftest import N_LEFT_OUT, pearson

LISSA = Lissa(depth=600)


@pytest.fixture(scope="module")
def scores(logreg_case):
    case = logreg_case
    args = (case.model, case.train_x, case.train_y, case.target_x, case.target_y)
    return {
        "exact": influence_scores(*args, solver=Exact()).numpy(),
        "cg": influence_scores(*args, solver=ConjugateGradient()).numpy(),
        "lissa": influence_scores(*args, solver=LISSA).numpy(),
    }


def test_fitted_model_matches_the_trainer(logreg_case):
    case = logreg_case
    margins = per_example_outputs(case.model, case.target_x, case.target_y, "margin")
    np.testing.assert_allclose(margins.numpy(), logreg_case.margins, atol=1e-5)  # float32 margins


@pytest.mark.parametrize("solver, threshold", [("exact", 0.98), ("cg", 0.98), ("lissa", 0.95)])
def test_margin_influence_predicts_leave_one_out(scores, logreg_case, solver, threshold):
    predicted = scores[solver][:, :N_LEFT_OUT]
    r = pearson(predicted, logreg_case.loo)
    print(f"{solver}: Pearson vs LOO = {r:.4f}")
    assert r >= threshold
    # same scale, not just correlated: first order captures most of the LOO effect
    slope = float((predicted * logreg_case.loo).sum() / (predicted**2).sum())
    assert 0.8 < slope < 1.5


def test_solvers_agree(scores):
    exact = scores["exact"]
    scale = np.abs(exact).max()
    assert np.abs(scores["cg"] - exact).max() <= 1e-6 * scale
    assert np.abs(scores["lissa"] - exact).max() <= 1e-2 * scale


def test_damping_shrinks_towards_gradient_similarity(logreg_case):
    case = logreg_case
    args = (case.model, case.train_x, case.train_y, case.target_x, case.target_y)
    damped_exact = influence_scores(*args, solver=Exact(damping=0.5))
    damped_cg = influence_scores(*args, solver=ConjugateGradient(damping=0.5))
    torch.testing.assert_close(damped_exact, damped_cg, rtol=1e-6, atol=1e-10)
    assert not torch.allclose(damped_exact, influence_scores(*args, solver=Exact()))


def test_loss_utility_is_minus_one_over_n_koh_liang(logreg_case):
    """score = −(1/n)·I_up,loss with I_up,loss = −∇L(t)ᵀH⁻¹∇L(z), computed here by hand."""
    case = logreg_case
    n = len(case.train_x)
    H = exact_hessian(case.model, case.train_x, case.train_y)
    got = influence_scores(
        case.model, case.train_x, case.train_y, case.target_x[:3], case.target_y[:3],
        utility="loss", train_output="loss",
    )

    def loss_grad(x, y):
        loss = lambda p: torch.nn.functional.cross_entropy(case.model.logits_fn(p, x), y)  # noqa: E731
        return torch.func.grad(loss)(case.model.params)

    for t in range(3):
        for i in (0, 7):
            g_t = loss_grad(case.target_x[t : t + 1], case.target_y[t : t + 1])
            g_z = loss_grad(case.train_x[i : i + 1], case.train_y[i : i + 1])
            i_up_loss = -g_t @ torch.linalg.pinv(H, hermitian=True) @ g_z
            torch.testing.assert_close(got[t, i], -i_up_loss / n, rtol=1e-6, atol=1e-12)


def test_self_scores_are_the_diagonal(logreg_case):
    case = logreg_case
    x, y = case.train_x[:25], case.train_y[:25]
    full = influence_scores(case.model, case.train_x, case.train_y, x, y, utility="loss")[:, :25]
    for solver in (Exact(), ConjugateGradient()):
        own = influence_self_scores(
            case.model, case.train_x, case.train_y, utility="loss", solver=solver, chunk_size=16
        )
        torch.testing.assert_close(own[:25], torch.diagonal(full), rtol=1e-6, atol=1e-12)
        assert (own > 0).all()  # convex: ∇ℓᵀH⁻¹∇ℓ̃ > 0 for the loss utility


def tiny_logreg():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=gen)
    return logreg_model(fit_logreg(x, y, 3, 0.1), 3, 3, 0.1), x, y


def test_exact_hessian_equals_finite_differences_of_the_gradient():
    for model, x, y in (tiny_logreg(), tiny_mlp()):
        grad_j = torch.func.grad(lambda p, m=model, a=x, b=y: objective(m, p, a, b))
        H = exact_hessian(model, x, y)
        eps = 1e-6
        columns = []
        for j in range(model.num_params):
            e = torch.zeros(model.num_params, dtype=torch.float64)
            e[j] = eps
            columns.append((grad_j(model.params + e) - grad_j(model.params - e)) / (2 * eps))
        torch.testing.assert_close(H, torch.stack(columns, 1), rtol=1e-5, atol=1e-7)
        gen = torch.Generator().manual_seed(1)
        v = torch.randn(4, model.num_params, dtype=torch.float64, generator=gen)
        torch.testing.assert_close(hvp_fn(model, x, y)(v), v @ H, rtol=1e-9, atol=1e-11)


def tiny_mlp():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    return mlp_model([p.double() for p in init_params(0, [3, 4, 3])], 0.01), x, y


def test_logreg_null_direction_is_handled():
    """Adding a constant to every bias leaves J unchanged, so H is singular; the answer lies in
    the complement and the exact, CG and LiSSA solutions agree there."""
    model, x, y = tiny_logreg()
    H = exact_hessian(model, x, y)
    assert torch.linalg.eigvalsh(H)[0].abs() < 1e-10
    assert (H @ model.null_directions[0]).abs().max() < 1e-10
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(5, model.num_params, dtype=torch.float64, generator=gen)
    exact = inverse_hvp(model, x, y, v, Exact())
    assert (exact @ model.null_directions.T).abs().max() < 1e-10
    cg = inverse_hvp(model, x, y, v, ConjugateGradient())
    torch.testing.assert_close(cg, exact, rtol=1e-6, atol=1e-8)
    lissa = inverse_hvp(model, x, y, v, Lissa(depth=1500))
    torch.testing.assert_close(lissa, exact, rtol=1e-4, atol=1e-5)
    projected = v - (v @ model.null_directions.T) @ model.null_directions
    torch.testing.assert_close(exact @ H, projected, rtol=1e-8, atol=1e-10)
