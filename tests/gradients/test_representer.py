"""Representer points: the representer theorem's identity at a stationary last layer."""

from __future__ import annotations

import torch

from datamodels.gradients import representer_scores, representer_self_scores
from datamodels.gradients.representer import representer_alphas


def test_decomposition_reproduces_the_last_layer(logreg_case):
    """Σ_i α_i (f_i·f_t) = Wᵀ f_t for the trainer-converged logreg (features = inputs)."""
    case = logreg_case
    model = case.model
    features = model.features_fn(model.params, case.target_x)
    W = model.last_layer_weight()
    pre_activation = features @ W  # [T, C], bias excluded
    alphas = representer_alphas(model, case.train_x, case.train_y)
    reconstructed = (features @ model.features_fn(model.params, case.train_x).T) @ alphas
    # stationarity holds to the solver's gradient tolerance 1e-8, divided by λ_wd
    torch.testing.assert_close(reconstructed, pre_activation, rtol=0, atol=1e-5)

    true_class = representer_scores(
        model, case.train_x, case.train_y, case.target_x, case.target_y, output="true_class"
    )
    correct = case.target_y.view(-1, 1)
    torch.testing.assert_close(
        true_class.sum(1), pre_activation.gather(1, correct).squeeze(1), rtol=0, atol=1e-5
    )
    margin = representer_scores(model, case.train_x, case.train_y, case.target_x, case.target_y)
    logits = model.logits_fn(model.params, case.target_x)
    other = logits.scatter(1, case.target_y.view(-1, 1), float("-inf")).argmax(1)
    b = model.params[model.last_weight.stop :]
    expected = (
        pre_activation.gather(1, correct) - pre_activation.gather(1, other.view(-1, 1))
    ).squeeze(1)
    torch.testing.assert_close(margin.sum(1), expected, rtol=0, atol=1e-5)
    margins = logits.gather(1, correct).squeeze(1) - logits.gather(1, other.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(
        margin.sum(1) + b[case.target_y] - b[other], margins, rtol=0, atol=1e-5
    )


def test_self_scores_and_signs(logreg_case):
    case = logreg_case
    own = representer_self_scores(case.model, case.train_x, case.train_y)
    alphas = representer_alphas(case.model, case.train_x, case.train_y)
    # own class: α_{i,y_i} = (1 − p_{y_i}) / (λ n) > 0
    assert (alphas.gather(1, case.train_y.view(-1, 1)) > 0).all()
    assert (own >= 0).all()
    torch.testing.assert_close(
        alphas.sum(1), torch.zeros(len(alphas), dtype=torch.float64), atol=1e-12, rtol=0
    )
