"""Representer points (Yeh et al. 2018) on the last linear layer.

With features f_i = f(x_i) (the last hidden layer of the ``mlp``; the inputs for ``logreg``),
last-layer weights W [h, C] and the objective (1/n)Σ ℓ_i + (λ_wd/2)||W||², stationarity in W
gives the representer theorem

    W = Σ_i f_i α_iᵀ,   α_i = −1/(λ_wd·n) · ∂ℓ_i/∂ŷ_i  ∈ R^C     (ŷ = logits)

so the last layer's pre-activation on a target is Wᵀ f_t = Σ_i α_i (f_i · f_t) exactly (the
bias is not part of the sum). Yeh et al. write the penalty λ||W||² and the factor
−1/(2λn); with our λ_wd/2 convention λ = λ_wd/2 and the two agree. The identity is exact only
at a stationary point of W (Yeh et al. fine-tune the last layer to one; ``logreg`` trained by
the trainer is one, to its tolerance).

score[t, i], one number per (target, train point), by ``output``:

* ``"margin"`` (default): (α_{i,y_t} − α_{i,k_t})·(f_i · f_t), k_t the target's largest
  other class under the model; Σ_i score[t, i] = m_t − (b_{y_t} − b_{k_t}).
* ``"true_class"``: α_{i,y_t}·(f_i · f_t), the contribution to the correct-class logit.
* ``"predicted_class"``: α_{i,ĉ_t}·(f_i · f_t), ĉ_t = argmax of the target's logits.

Positive = z_i pushes the target's (correct-class / margin) logit up = helpful. Self scores:
α_{i,y_i}·||f_i||² (Yeh et al. use |α_{i,y_i}| for mislabel detection).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.func import grad, vmap

from datamodels.gradients.model import FunctionalModel

RepresenterOutput = Literal["margin", "true_class", "predicted_class"]


def representer_alphas(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, n_train: int | None = None
) -> torch.Tensor:
    """α_i = −1/(λ_wd·n) · ∂ℓ_i/∂ŷ_i: float64[len(train_x), C] (needs weight_decay > 0).
    ``n_train``: the model's training-set size n when ``train_x`` holds other points too
    (a point outside the set gets the weight it would have in the sum); default len(train_x)."""
    if model.weight_decay <= 0:
        raise ValueError("representer points need weight_decay > 0 (the theorem divides by it)")
    logits = model.logits_fn(model.params, train_x)

    def ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            z.unsqueeze(0), y.reshape(1), label_smoothing=model.label_smoothing
        )

    dl_dlogits = vmap(grad(ce))(logits, train_y)
    return -dl_dlogits / (model.weight_decay * (len(train_x) if n_train is None else n_train))


def _target_classes(
    model: FunctionalModel, target_x: torch.Tensor, target_y: torch.Tensor,
    output: RepresenterOutput,
):
    logits = model.logits_fn(model.params, target_x)
    if output == "true_class":
        return target_y, None
    if output == "predicted_class":
        return logits.argmax(1), None
    if output == "margin":
        others = logits.scatter(1, target_y.view(-1, 1), float("-inf"))
        return target_y, others.argmax(1)
    raise ValueError(f"output must be 'margin', 'true_class' or 'predicted_class'; got {output!r}")


def representer_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, *, output: RepresenterOutput = "margin", n_train: int | None = None,
) -> torch.Tensor:
    """train_x[n, ...], train_y[n], target_x[T, ...], target_y[T] -> float64[T, n]."""
    alphas = representer_alphas(model, train_x, train_y, n_train)  # [n, C]
    target_features = model.features_fn(model.params, target_x)
    similarity = target_features @ model.features_fn(model.params, train_x).T  # [T, n]
    plus, minus = _target_classes(model, target_x, target_y, output)
    weight = alphas[:, plus].T  # [T, n]
    if minus is not None:
        weight = weight - alphas[:, minus].T
    return weight * similarity


def representer_self_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, n_train: int | None = None
) -> torch.Tensor:
    """α_{i,y_i}·||f_i||²: float64[n]."""
    alphas = representer_alphas(model, train_x, train_y, n_train)
    features = model.features_fn(model.params, train_x)
    return alphas.gather(1, train_y.view(-1, 1)).squeeze(1) * (features * features).sum(1)
