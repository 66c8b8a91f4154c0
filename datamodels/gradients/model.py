"""One trained model as flat parameters plus a functional forward, and its training objective.

A ``FunctionalModel`` holds ``params: float[P]`` and ``logits_fn(params[P], x[B, ...]) ->
logits[B, C]``, so ``torch.func`` can differentiate with respect to parameters *and* inputs.
The objective is the one the trainers minimise, written as a mean of per-example terms:

    J(θ) = (1/n) Σ_i [ ℓ(z_i; θ) + R(θ) ],   ℓ = cross-entropy,
    R(θ) = (λ_wd/2)·||θ ⊙ m||² + (λ_b/2)·||b − mean(b)·1||²

with ``m`` the penalty mask: ``logreg`` penalises W with λ_wd and its *centred* bias with
λ_b = ``logreg_bias_decay(λ_wd)`` (exactly ``train_logreg_batched``'s objective, which has a
finite optimum on every subset, single-class ones included; ``datamodels.trainers.batched``);
``mlp`` penalises every parameter with λ_wd and has λ_b = 0 (``train_mlp_batched`` adds
``weight_decay * p`` to every gradient). Writing R inside each example's term makes "drop
example z and re-solve the mean objective over the n − 1 others" exactly an ε = −1/n
up-weighting of z's term ``ℓ(z) + R`` (arg-min is invariant to the 1/(n−1) vs 1/n scale).

``null_directions`` (float64[r, P], orthonormal) are directions in which J is exactly flat:
for ``logreg`` adding one constant to every class bias changes no softmax and is not
penalised (the bias penalty acts on the centred bias only), so H has a zero eigenvalue
there. Every per-example gradient of the loss, of the margin and of R is orthogonal to it,
so inverse-HVPs are taken on its orthogonal complement.

Flat layouts: ``logreg``: [W (d×C, row-major), b (C)]; ``mlp``: [W1 (d×h), b1 (h), …,
Wout (h×C), bout (C)], each row-major, the order of ``datamodels.models.mlp``. Any other
``nn.Module`` (``resnet9``, ``fastnet``, a user's): ``datamodels.gradients.module``, its
trainable parameters in ``named_parameters`` order, every parameter penalised with λ_wd
(SGD's coupled weight decay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datamodels.models.activations import RELU, Activation
from datamodels.models.mlp import stacked_forward
from datamodels.trainers.batched import logreg_bias_decay, logreg_objective
from datamodels.trainers.lbfgs import batched_lbfgs
from datamodels.trainers.outcome import margins_from_logits

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FunctionalModel:
    """A trained model: ``params`` float[P] (float64 for ``logreg`` / ``mlp``; a module's own
    precision otherwise), ``logits_fn(params, x[B, ...]) -> [B, C]``, ``penalty_mask`` [P];
    ``bias_decay`` λ_b on the centred ``params[bias]`` (``logreg``; 0 and None otherwise).

    ``head_io(params, x) -> (logits [B, C], features f [B, h], z [B, C])``: one forward that
    also returns the last linear layer's input f (detached) and its output z as a leaf that
    requires grad, the logits computed from it (so ∂logits/∂z comes from autograd): what
    representer points need. None where the model has no usable last linear layer
    (``head_problem`` says why). ``features_fn`` / ``last_weight`` (the last layer's weight
    at ``params[last_weight]`` viewed as [h, C]) exist for the dense models only."""

    params: torch.Tensor
    logits_fn: LogitsFn
    num_classes: int
    weight_decay: float
    penalty_mask: torch.Tensor
    null_directions: torch.Tensor
    label_smoothing: float = 0.0
    # (params, x[B, ...]) -> (logits, inputs a_l [B, in_l], pre-activations z_l = a_l W_l + b_l):
    # for models that are a chain of dense layers, per-example gradients factor as a_l ⊗ ∂f/∂z_l
    layer_io: Callable | None = None
    bias_decay: float = 0.0
    bias: slice | None = None
    head_io: Callable | None = None
    head_problem: str = ""
    # HVPs of several vectors at once by vmap over the pullback; False: one vector at a time
    # (conv backward kernels cannot run under vmap, and it bounds memory by one pullback)
    vmap_hvp: bool = True
    features_fn: LogitsFn | None = None
    last_weight: slice | None = None
    # the nn.Module behind ``logits_fn`` (module form only): what layer-wise estimators hook
    module: object | None = None

    @property
    def num_params(self) -> int:
        return int(self.params.numel())

    @property
    def device(self) -> torch.device:
        return self.params.device

    def with_params(self, params: torch.Tensor) -> FunctionalModel:
        return FunctionalModel(**{**self.__dict__, "params": params})

    def last_layer_weight(self, params: torch.Tensor | None = None) -> torch.Tensor:
        """float64[h, C] (dense models)."""
        p = self.params if params is None else params
        return p[self.last_weight].view(-1, self.num_classes)


def dense_head(features_fn: LogitsFn, weight: slice, bias: slice, C: int) -> Callable:
    """``head_io`` of a model whose logits are its last dense layer's output: z = f W + b."""

    def head_io(p: torch.Tensor, x: torch.Tensor):
        f = features_fn(p, x).detach()
        z = (f @ p[weight].view(-1, C) + p[bias]).detach().requires_grad_(True)
        return z, f, z

    return head_io


def _bias_null_direction(P: int, bias_start: int, C: int, device=None) -> torch.Tensor:
    u = torch.zeros(1, P, dtype=torch.float64, device=device)
    u[0, bias_start : bias_start + C] = C**-0.5
    return u


def logreg_model(
    params: torch.Tensor, in_dim: int, num_classes: int, weight_decay: float
) -> FunctionalModel:
    """``params``: float[(d+1)·C] in the trainer's layout [W (d×C), b (C)]; the objective
    penalises W with ``weight_decay`` and the centred b with ``logreg_bias_decay``."""
    d, C = in_dim, num_classes
    P = (d + 1) * C
    if params.numel() != P:
        raise ValueError(
            f"logreg params must have (in_dim+1)*num_classes = {P} entries; "
            f"got {params.numel()}"
        )

    def logits_fn(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).to(p.dtype) @ p[: d * C].view(d, C) + p[d * C :]

    def features_fn(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).to(p.dtype)

    def layer_io(p: torch.Tensor, x: torch.Tensor):
        a = features_fn(p, x)
        z = a @ p[: d * C].view(d, C) + p[d * C :]
        return z, [a], [z]

    mask = torch.zeros(P, dtype=torch.float64, device=params.device)
    mask[: d * C] = 1.0
    null = _bias_null_direction(P, d * C, C, params.device)
    return FunctionalModel(
        params.detach().double().reshape(-1).clone(), logits_fn, C, float(weight_decay), mask,
        null, layer_io=layer_io, bias_decay=logreg_bias_decay(weight_decay), bias=slice(d * C, P),
        head_io=dense_head(features_fn, slice(0, d * C), slice(d * C, P), C),
        features_fn=features_fn, last_weight=slice(0, d * C),
    )


def mlp_model(
    layers: list[torch.Tensor], weight_decay: float, label_smoothing: float = 0.0,
    activation: Activation = RELU,
) -> FunctionalModel:
    """``layers``: one model's ``[W1 [d, h], b1 [h], ..., Wout [h, C], bout [C]]`` (unstacked
    ``datamodels.models.mlp`` parameters), hidden activation ``activation``. Every parameter
    is penalised, as in the trainer."""
    shapes = [tuple(t.shape) for t in layers]
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    C = shapes[-1][0]
    P = offsets[-1]

    def unflatten(p: torch.Tensor) -> list[torch.Tensor]:
        return [p[offsets[i] : offsets[i + 1]].view(shapes[i]) for i in range(len(shapes))]

    def logits_fn(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return stacked_forward(
            unflatten(p), x.reshape(x.shape[0], -1).to(p.dtype), activation
        )

    def features_fn(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = stacked_forward(unflatten(p)[:-2], x.reshape(x.shape[0], -1).to(p.dtype), activation)
        return activation(h)

    flat = torch.cat([t.detach().double().reshape(-1) for t in layers])
    mask = torch.ones(P, dtype=torch.float64, device=flat.device)
    null = torch.zeros(0, P, dtype=torch.float64, device=flat.device)
    if weight_decay == 0.0:
        null = _bias_null_direction(P, offsets[-2], C, flat.device)
    def layer_io(p: torch.Tensor, x: torch.Tensor):
        parts = unflatten(p)
        h = x.reshape(x.shape[0], -1).to(p.dtype)
        inputs, pre = [], []
        for layer in range(len(parts) // 2):
            inputs.append(h)
            z = h @ parts[2 * layer] + parts[2 * layer + 1]
            pre.append(z)
            h = activation(z) if layer < len(parts) // 2 - 1 else z
        return h, inputs, pre

    weight, bias = slice(offsets[-3], offsets[-2]), slice(offsets[-2], offsets[-1])
    return FunctionalModel(
        flat, logits_fn, C, float(weight_decay), mask, null, float(label_smoothing), layer_io,
        head_io=dense_head(features_fn, weight, bias, C), features_fn=features_fn,
        last_weight=weight,
    )


def regulariser(model: FunctionalModel, params: torch.Tensor) -> torch.Tensor:
    """R(θ) = (λ_wd/2)·||θ ⊙ m||² + (λ_b/2)·||b − mean(b)||² (scalar)."""
    value = 0.5 * model.weight_decay * (model.penalty_mask * params * params).sum()
    if model.bias is None or model.bias_decay == 0.0:
        return value
    centred = params[model.bias] - params[model.bias].mean()
    return value + 0.5 * model.bias_decay * (centred * centred).sum()


def example_loss(
    model: FunctionalModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """ℓ(z; θ) for one example ``x[...]``, ``y[]`` (scalar): cross-entropy."""
    logits = model.logits_fn(params, x.unsqueeze(0))
    return F.cross_entropy(logits, y.reshape(1), label_smoothing=model.label_smoothing)


def example_term(
    model: FunctionalModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """ℓ(z; θ) + R(θ): one example's term of the mean objective J (scalar)."""
    return example_loss(model, params, x, y) + regulariser(model, params)


def example_margin(
    model: FunctionalModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """m(z; θ) = correct logit − largest other logit (``outcome.margins_from_logits``), scalar."""
    logits = model.logits_fn(params, x.unsqueeze(0))
    return margins_from_logits(logits.unsqueeze(0), y.reshape(1))[0, 0]


def example_trak_output(
    model: FunctionalModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """TRAK's output function f = log(p_y / (1 − p_y)) (Park et al. 2023, §3.2), scalar."""
    logits = model.logits_fn(params, x.unsqueeze(0))[0]
    log_p = torch.log_softmax(logits, 0)
    is_y = torch.arange(log_p.shape[0], device=log_p.device) == y
    log_p_y = log_p.masked_fill(~is_y, float("-inf")).logsumexp(0)
    return log_p_y - log_p.masked_fill(is_y, float("-inf")).logsumexp(0)


def objective(
    model: FunctionalModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """J(θ) = mean_i ℓ(z_i; θ) + R(θ) over ``x[n, ...]``, ``y[n]`` (scalar)."""
    logits = model.logits_fn(params, x)
    ce = F.cross_entropy(logits, y, label_smoothing=model.label_smoothing)
    return ce + regulariser(model, params)


def fit_logreg(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
    tolerance: float = 1e-8, max_iter: int = 5000,
) -> torch.Tensor:
    """Solve the trainer's ``logreg`` objective on all of ``x[n, ...]``, ``y[n]`` (the same
    closure, centred-bias penalty included, and L-BFGS as ``train_logreg_batched``) -> params
    float64[(d+1)·C].

    Raises ``RuntimeError`` when the gradient norm does not reach ``tolerance``."""
    flat = x.reshape(len(x), -1).double()
    weights = torch.full((1, len(flat)), 1.0 / len(flat), dtype=torch.float64, device=flat.device)
    fun = logreg_objective(flat, y, weights, num_classes, weight_decay)
    x0 = torch.zeros(1, (flat.shape[1] + 1) * num_classes, dtype=torch.float64, device=flat.device)
    result = batched_lbfgs(fun, x0, tol=tolerance, max_iter=max_iter)
    if not bool(result.converged[0]):
        raise RuntimeError(
            f"logreg did not reach gradient norm {tolerance} "
            f"(got {float(result.grad_norm[0]):.3g}); raise max_iter or tolerance"
        )
    return result.x[0]
