"""Representer points (Yeh et al. 2018) on the last linear layer.

With features f_i = f(x_i) (the input of the last linear layer: the last hidden layer of the
``mlp``, the inputs for ``logreg``, the pooled features of a conv net), last-layer weights
W [h, C], its output z = Wᵀf (+ b) and the objective (1/n)Σ ℓ_i + (λ_wd/2)||W||²,
stationarity in W gives the representer theorem

    W = Σ_i f_i α_iᵀ,   α_i = −1/(λ_wd·n) · ∂ℓ_i/∂z_i  ∈ R^C

so the last layer's output on a target is Wᵀ f_t = Σ_i α_i (f_i · f_t) exactly (the bias is
not part of the sum). For ``logreg`` and ``mlp`` z is the logits ŷ; a module that transforms
z afterwards (resnet9 scales it by 1/8) gets the chain rule: a target quantity u_t(logits)
changes by w_tᵀ dz_t with w_t = ∂u_t/∂z_t, so its share of point i is (w_t·α_i)(f_i·f_t) —
exact when the map z → logits is affine. Yeh et al. write the penalty λ||W||² and the factor
−1/(2λn); with our λ_wd/2 convention λ = λ_wd/2 and the two agree. The identity is exact only
at a stationary point of W (Yeh et al. fine-tune the last layer to one; ``logreg`` trained by
the trainer is one, to its tolerance).

score[t, i], one number per (target, train point), by ``output``:

* ``"margin"`` (default): (α_{i,y_t} − α_{i,k_t})·(f_i · f_t), k_t the target's largest
  other class under the model; Σ_i score[t, i] = m_t − (b_{y_t} − b_{k_t}).
* ``"true_class"``: α_{i,y_t}·(f_i · f_t), the contribution to the correct-class logit.
* ``"predicted_class"``: α_{i,ĉ_t}·(f_i · f_t), ĉ_t = argmax of the target's logits.

(the α_{i,c} above are w_t·α_i with w_t = e_{y_t} − e_{k_t}, e_{y_t}, e_{ĉ_t} when logits = z.)
Positive = z_i pushes the target's (correct-class / margin) logit up = helpful. Self scores:
α_{i,y_i}·||f_i||² (Yeh et al. use |α_{i,y_i}| for mislabel detection).

The last layer comes from ``FunctionalModel.head_io``; a model without a usable one is
refused in one line naming why.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from datamodels.gradients.model import FunctionalModel
from datamodels.trainers.outcome import margins_from_logits
from datamodels.trainers.unit_progress import report

RepresenterOutput = Literal["margin", "true_class", "predicted_class"]
_OUTPUTS = ("margin", "true_class", "predicted_class")


def _heads(model: FunctionalModel, x: torch.Tensor, chunk_size: int):
    """(start, logits, features f, last-layer output z) chunk by chunk over ``x``."""
    if model.head_io is None:
        raise ValueError(f"representer points need a last linear layer: {model.head_problem}")
    for start in range(0, len(x), chunk_size):
        yield (start, *model.head_io(model.params, x[start : start + chunk_size]))
        report(min(len(x), start + chunk_size), len(x))


def last_layer_features(
    model: FunctionalModel, x: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features f float64[n, h], logits float64[n, C]) of ``x``: the input of the model's
    last linear layer (the penultimate features that sparse decision layers refit) and the
    model's own output."""
    features, logits = [], []
    for _, out, f, _ in _heads(model, x, chunk_size):
        features.append(f.detach().double())
        logits.append(out.detach().double())
    if not features:
        raise ValueError("last_layer_features needs at least one input")
    return torch.cat(features), torch.cat(logits)


def _output_weights(
    logits: torch.Tensor, z: torch.Tensor, y: torch.Tensor, output: RepresenterOutput
) -> torch.Tensor:
    """w = ∂u/∂z: float64[B, C] for the target quantity u of ``output`` (one row per example)."""
    if output == "true_class":
        u = logits.gather(1, y.view(-1, 1))
    elif output == "predicted_class":
        u = logits.gather(1, logits.detach().argmax(1, keepdim=True))
    elif output == "margin":
        u = margins_from_logits(logits.unsqueeze(0), y)
    else:
        raise ValueError(f"output must be one of {', '.join(_OUTPUTS)}; got {output!r}")
    return torch.autograd.grad(u.sum(), z, retain_graph=True)[0].double()


def _train_side(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, n_train: int | None,
    chunk_size: int, self_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(α [m, C], features f [m, h], w_i = ∂(own-class logit)/∂z_i [m, C] or None), float64."""
    if model.weight_decay <= 0:
        raise ValueError("representer points need weight_decay > 0 (the theorem divides by it)")
    n = len(x) if n_train is None else n_train
    grads, features, weights = [], [], []
    for start, logits, f, z in _heads(model, x, chunk_size):
        labels = y[start : start + chunk_size]
        if self_weights:
            weights.append(_output_weights(logits, z, labels, "true_class"))
        loss = F.cross_entropy(
            logits, labels, reduction="sum", label_smoothing=model.label_smoothing
        )
        grads.append(torch.autograd.grad(loss, z)[0].double())
        features.append(f.double())
    if not grads:
        raise ValueError("representer points need at least one training point")
    alphas = -torch.cat(grads) / (model.weight_decay * n)
    return alphas, torch.cat(features), torch.cat(weights) if self_weights else None


def representer_alphas(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor,
    n_train: int | None = None, chunk_size: int = 1024,
) -> torch.Tensor:
    """α_i = −1/(λ_wd·n) · ∂ℓ_i/∂z_i: float64[len(train_x), C] (needs weight_decay > 0).
    ``n_train``: the model's training-set size n when ``train_x`` holds other points too
    (a point outside the set gets the weight it would have in the sum); default len(train_x)."""
    return _train_side(model, train_x, train_y, n_train, chunk_size)[0]


def representer_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, *, output: RepresenterOutput = "margin", n_train: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """score[t, i] = (w_t·α_i)(f_i·f_t): train_x[n, ...], train_y[n], target_x[T, ...],
    target_y[T] -> float64[T, n]."""
    alphas, train_features, _ = _train_side(model, train_x, train_y, n_train, chunk_size)
    target_features, weights = [], []
    for start, logits, f, z in _heads(model, target_x, chunk_size):
        target_features.append(f.double())
        weights.append(_output_weights(logits, z, target_y[start : start + chunk_size], output))
    if not weights:
        return torch.zeros(0, len(train_x), dtype=torch.float64, device=alphas.device)
    similarity = torch.cat(target_features) @ train_features.T
    return (torch.cat(weights) @ alphas.T) * similarity


def representer_self_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor,
    n_train: int | None = None, chunk_size: int = 1024,
) -> torch.Tensor:
    """(w_i·α_i)·||f_i||², w_i = ∂(logit y_i)/∂z_i (= α_{i,y_i}·||f_i||² when logits = z):
    float64[n]."""
    alphas, features, weights = _train_side(model, train_x, train_y, n_train, chunk_size, True)
    return (weights * alphas).sum(1) * (features * features).sum(1)
