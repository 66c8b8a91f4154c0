"""Per-example gradients, Hessian-vector products and the exact Hessian, via ``torch.func``.

Per-example gradients are ``vmap(grad(f))`` over examples (never a Python loop of backward
passes), taken ``chunk_size`` examples at a time to bound memory at chunk·P (+ activations).
Output functions f(z; θ), each a scalar per example:

* ``"loss"``:   ℓ(z; θ), the cross-entropy;
* ``"term"``:   ℓ(z; θ) + R(θ), the example's term of the mean training objective J;
* ``"margin"``: m(z; θ), correct logit − largest other (the trainer's margin);
* ``"trak"``:   log(p_y / (1 − p_y)), TRAK's output function.

HVPs are reverse-over-reverse: ``vjp(grad(J), θ)`` is taken once and its pullback, vmapped
over a batch of vectors ``v[T, P]``, is called per product (H is symmetric, so vᵀH = Hv); the
Hessian is those HVPs applied to the unit vectors (P×P, small models only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.func import grad, vjp, vmap

from datamodels.gradients.model import (
    FunctionalModel,
    example_loss,
    example_margin,
    example_term,
    example_trak_output,
    objective,
)
from datamodels.trainers.outcome import margins_from_logits

Output = Literal["loss", "term", "margin", "trak"]
_OUTPUTS = {
    "loss": example_loss,
    "term": example_term,
    "margin": example_margin,
    "trak": example_trak_output,
}


def output_fn(
    model: FunctionalModel, output: Output
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(params[P], x[...], y[]) -> scalar f(z; θ) for one example."""
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {sorted(_OUTPUTS)}; got {output!r}")
    fn = _OUTPUTS[output]
    return lambda p, x, y: fn(model, p, x, y)


def per_example_grads(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, output: Output = "loss",
    params: torch.Tensor | None = None, chunk_size: int = 256,
) -> torch.Tensor:
    """x[n, ...], y int64[n] -> ∇_θ f(z_i; θ): [n, P] in the params' dtype and device."""
    params = model.params if params is None else params
    batched = vmap(grad(output_fn(model, output)), in_dims=(None, 0, 0))
    chunks = [
        batched(params, x[s : s + chunk_size], y[s : s + chunk_size])
        for s in range(0, len(x), chunk_size)
    ]
    if chunks:
        return torch.cat(chunks)
    return torch.zeros(0, model.num_params, dtype=params.dtype, device=params.device)


def per_example_outputs(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, output: Output = "loss",
    params: torch.Tensor | None = None, chunk_size: int = 1024,
) -> torch.Tensor:
    """x[n, ...], y[n] -> f(z_i; θ): [n] (``chunk_size`` examples per forward)."""
    params = model.params if params is None else params
    batched = vmap(output_fn(model, output), in_dims=(None, 0, 0))
    chunks = [
        batched(params, x[s : s + chunk_size], y[s : s + chunk_size])
        for s in range(0, len(x), chunk_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=params.dtype, device=params.device)


def hvp_fn(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, params: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns v[T, P] -> H v[T, P] with H = ∇²J(θ) over ``x[n, ...]``, ``y[n]``.

    Up to ``chunk_size`` examples (None: any number) the vjp of ∇J is taken once and its saved
    graph serves every call. More examples are summed chunk by chunk, H = Σ_c (n_c/n)·∇²J_c,
    each chunk's graph rebuilt per call: memory bound by one chunk's activations (times T),
    at the cost of a forward and backward per chunk and call (conv nets on many examples)."""
    params = model.params if params is None else params

    def products(vjp_fn) -> Callable[[torch.Tensor], torch.Tensor]:
        if model.vmap_hvp:
            return vmap(lambda v: vjp_fn(v)[0])
        return lambda vs: torch.stack([vjp_fn(v)[0] for v in vs]) if len(vs) else vs.clone()

    if chunk_size is None or len(x) <= chunk_size:
        # vjp of ∇J taken once: its saved graph serves every later call (Hᵀv = Hv, H symmetric)
        _, vjp_fn = vjp(grad(lambda p: objective(model, p, x, y)), params)
        return products(vjp_fn)
    n = len(x)

    def chunked(v: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(v)
        for s in range(0, n, chunk_size):
            xc, yc = x[s : s + chunk_size], y[s : s + chunk_size]
            weight = len(xc) / n  # J = Σ_c (n_c/n)·J_c: mean loss and R both split exactly
            _, vjp_fn = vjp(grad(lambda p, xc=xc, yc=yc: objective(model, p, xc, yc)), params)
            total = total + weight * products(vjp_fn)(v)
        return total

    return chunked


def exact_hessian(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, params: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """H = ∇²J(θ): [P, P], as HVPs with the unit vectors (``chunk_size`` at a time; the
    same numbers as ``torch.func.hessian``, much faster), symmetrised against round-off."""
    hvp = hvp_fn(model, x, y, params)
    eye = torch.eye(model.num_params, dtype=model.params.dtype, device=model.params.device)
    H = torch.cat([hvp(eye[s : s + chunk_size]) for s in range(0, model.num_params, chunk_size)])
    return 0.5 * (H + H.T)


def _outputs_from_logits(
    model: FunctionalModel, logits: torch.Tensor, y: torch.Tensor, output: Output
) -> torch.Tensor:
    if output == "loss":
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=model.label_smoothing)
    if output == "margin":
        return margins_from_logits(logits.unsqueeze(0), y)[0]
    if output == "trak":  # log p_y − log(1 − p_y), as ``model.example_trak_output``
        log_p = torch.log_softmax(logits, 1)
        is_y = torch.nn.functional.one_hot(y, log_p.shape[1]).bool()
        log_p_y = log_p.masked_fill(~is_y, float("-inf")).logsumexp(1)
        return log_p_y - log_p.masked_fill(is_y, float("-inf")).logsumexp(1)
    raise ValueError(
        f"gradient factors support outputs 'loss', 'margin' and 'trak'; got {output!r}"
    )


def dense_per_example_grads(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, output: Output = "trak",
    params: torch.Tensor | None = None,
) -> torch.Tensor:
    """``per_example_grads`` of a chain of dense layers (``model.layer_io``: logreg, the
    built-in MLP) from one forward and one backward over the whole batch: layer l's block of
    ∇_θ f(z_i) is vec(a_i ⊗ δ_i) for its weight [in, out] (row-major) and δ_i for its bias.
    x[B, ...], y[B] -> [B, P] in the params' dtype."""
    factors = gradient_factors(model, x, y, output, params)
    blocks = []
    for a, d in factors:
        blocks.append((a[:, :-1, None] * d[:, None, :]).reshape(len(a), -1))
        blocks.append(d)
    return torch.cat(blocks, 1)


def gradient_factors(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, output: Output = "loss",
    params: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer l, (A_l [B, in_l + 1], D_l [B, out_l]) with ∇_{W_l, b_l} f(z_i) = [a_i; 1] ⊗ δ_i:
    one forward and one backward for the whole batch (f(z_i) depends on row i only, so the
    gradient of Σ_i f(z_i) with respect to z_l holds every δ_i). Needs ``model.layer_io``."""
    if model.layer_io is None:
        raise ValueError(
            "this model has no dense-layer structure (layer_io); use per_example_grads"
        )
    p = (model.params if params is None else params).detach().requires_grad_(True)
    with torch.enable_grad():
        logits, inputs, pre = model.layer_io(p, x)
        deltas = torch.autograd.grad(_outputs_from_logits(model, logits, y, output).sum(), pre)
    ones = lambda a: torch.ones(len(a), 1, dtype=a.dtype, device=a.device)  # noqa: E731
    return [
        (torch.cat([a.detach(), ones(a)], 1), d.detach())
        for a, d in zip(inputs, deltas, strict=True)
    ]


def factor_dots(
    left: list[tuple[torch.Tensor, torch.Tensor]], right: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Gradient dot products ∇f(z_s)·∇g(z_r) from two ``gradient_factors``: float64[S, R] =
    Σ_l (A_l Aʹ_lᵀ) ⊙ (D_l Dʹ_lᵀ), never forming a per-example gradient."""
    out = None
    for (a, d), (a2, d2) in zip(left, right, strict=True):
        term = (a @ a2.T) * (d @ d2.T)
        out = term if out is None else out + term
    return out


def factor_norms(factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """||∇f(z_i)||² from ``gradient_factors``: float64[B]."""
    return sum((a * a).sum(1) * (d * d).sum(1) for a, d in factors)
