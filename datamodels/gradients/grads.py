"""Per-example gradients, Hessian-vector products and the exact Hessian, via ``torch.func``.

Per-example gradients are ``vmap(grad(f))`` over examples (never a Python loop of backward
passes), taken ``chunk_size`` examples at a time to bound memory at chunk·P (+ activations).
Output functions f(z; θ), each a scalar per example:

* ``"loss"``:   ℓ(z; θ), the cross-entropy;
* ``"term"``:   ℓ(z; θ) + R(θ), the example's term of the mean training objective J;
* ``"margin"``: m(z; θ), correct logit − largest other (DESIGN §3);
* ``"trak"``:   log(p_y / (1 − p_y)), TRAK's output function.

HVPs are reverse-over-reverse: ``vjp(grad(J), θ)`` is taken once and its pullback, vmapped
over a batch of vectors ``v[T, P]``, is called per product (H is symmetric, so vᵀH = Hv); the Hessian is those HVPs applied to the
unit vectors (P×P, small models only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import grad, vjp, vmap

from datamodels.gradients.model import (
    FunctionalModel,
    example_loss,
    example_margin,
    example_term,
    example_trak_output,
    objective,
)

Output = Literal["loss", "term", "margin", "trak"]
_OUTPUTS = {"loss": example_loss, "term": example_term, "margin": example_margin, "trak": example_trak_output}


def output_fn(model: FunctionalModel, output: Output) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(params[P], x[...], y[]) -> scalar f(z; θ) for one example."""
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {sorted(_OUTPUTS)}; got {output!r}")
    fn = _OUTPUTS[output]
    return lambda p, x, y: fn(model, p, x, y)


def per_example_grads(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, output: Output = "loss",
    params: torch.Tensor | None = None, chunk_size: int = 256,
) -> torch.Tensor:
    """x[n, ...], y int64[n] -> ∇_θ f(z_i; θ): float64[n, P]."""
    params = model.params if params is None else params
    batched = vmap(grad(output_fn(model, output)), in_dims=(None, 0, 0))
    chunks = [batched(params, x[s : s + chunk_size], y[s : s + chunk_size]) for s in range(0, len(x), chunk_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, model.num_params, dtype=params.dtype)


def per_example_outputs(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, output: Output = "loss",
    params: torch.Tensor | None = None,
) -> torch.Tensor:
    """x[n, ...], y[n] -> f(z_i; θ): float64[n]."""
    params = model.params if params is None else params
    return vmap(output_fn(model, output), in_dims=(None, 0, 0))(params, x, y)


def hvp_fn(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, params: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns v[T, P] -> H v[T, P] with H = ∇²J(θ) over ``x[n, ...]``, ``y[n]``."""
    params = model.params if params is None else params
    # vjp of ∇J taken once: its saved graph serves every later call (Hᵀv = Hv, H symmetric)
    _, vjp_fn = vjp(grad(lambda p: objective(model, p, x, y)), params)
    return vmap(lambda v: vjp_fn(v)[0])


def exact_hessian(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, params: torch.Tensor | None = None, chunk_size: int = 1024,
) -> torch.Tensor:
    """H = ∇²J(θ): float64[P, P], as HVPs with the unit vectors (``chunk_size`` at a time; the
    same numbers as ``torch.func.hessian``, much faster), symmetrised against round-off."""
    hvp = hvp_fn(model, x, y, params)
    eye = torch.eye(model.num_params, dtype=torch.float64, device=model.params.device)
    H = torch.cat([hvp(eye[s : s + chunk_size]) for s in range(0, model.num_params, chunk_size)])
    return 0.5 * (H + H.T)
