"""The MLP's hidden activation φ, defined once for every path that runs the MLP: the stacked
forward and the batched trainer's hand-written backward (``models.mlp``), the ``nn.Module``
of the one-at-a-time trainer, the functional model of the gradient estimators
(``gradients.model``) and the metagradient / HyDRA replay and adjoint
(``gradients.metagradient``), which also needs φ'' for its Hessian term.

* ``relu``: φ(z) = max(z, 0), φ' = [z > 0], φ'' = 0 (almost everywhere; autograd's too).
* ``softplus`` (β = ``model.softplus_beta``): φ(z) = log(1 + e^{βz})/β, φ' = σ(βz),
  φ'' = β·σ(βz)(1 − σ(βz)); as in ``torch.nn.functional.softplus``, φ(z) = z, φ' = 1 and
  φ'' = 0 where βz > 20 (so every path agrees with autograd to rounding).
* ``gelu``: φ(z) = z·Φ(z) (exact, erf form), φ' = Φ(z) + z·ϕ(z), φ'' = ϕ(z)·(2 − z²).

A smooth φ makes the trained margins smooth in the example weights, which first-order
estimates of dropping points presuppose (docs/applications/metagradients.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SOFTPLUS_THRESHOLD = 20.0  # torch's: φ(z) = z beyond βz > 20
ACTIVATIONS = ("relu", "softplus", "gelu")


@dataclass(frozen=True)
class Activation:
    """φ by ``name`` (``ACTIVATIONS``); ``beta`` is softplus's sharpness (ignored otherwise)."""

    name: str = "relu"
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}; got {self.name!r}"
            )

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """φ(z), elementwise (differentiable by autograd)."""
        if self.name == "relu":
            return torch.relu(z)
        if self.name == "softplus":
            return F.softplus(z, beta=self.beta, threshold=SOFTPLUS_THRESHOLD)
        return F.gelu(z)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """φ'(z), same shape and dtype as ``z``."""
        if self.name == "relu":
            return (z > 0).to(z.dtype)
        if self.name == "softplus":
            bz = self.beta * z
            return torch.where(bz > SOFTPLUS_THRESHOLD, torch.ones_like(z), torch.sigmoid(bz))
        cdf = 0.5 * (1.0 + torch.erf(z * 0.5**0.5))
        return cdf + z * _normal_pdf(z)

    def second_derivative(self, z: torch.Tensor) -> torch.Tensor | None:
        """φ''(z), or None where it is 0 (``relu``)."""
        if self.name == "relu":
            return None
        if self.name == "softplus":
            bz = self.beta * z
            s = torch.sigmoid(bz)
            curvature = self.beta * s * (1 - s)
            return torch.where(bz > SOFTPLUS_THRESHOLD, torch.zeros_like(z), curvature)
        return _normal_pdf(z) * (2.0 - z * z)

    def module(self) -> nn.Module:
        """φ as an ``nn.Module`` (the one-model-at-a-time ``nn.Sequential``)."""
        if self.name == "relu":
            return nn.ReLU()
        if self.name == "softplus":
            return nn.Softplus(beta=self.beta, threshold=SOFTPLUS_THRESHOLD)
        return nn.GELU()

    # The batched trainer's pair: forward keeps what backward needs (the ReLU: its output,
    # z overwritten in place; otherwise z), backward is one fused kernel where torch has one.

    def forward_(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(φ(z), kept for ``backward``); may overwrite ``z``."""
        if self.name == "relu":
            a = z.clamp_(min=0)
            return a, a
        return self(z), z

    def backward(self, upstream: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """∂L/∂z = ∂L/∂a ⊙ φ'(z), from ``forward_``'s ``kept``."""
        if self.name == "relu":
            return torch.ops.aten.threshold_backward(upstream, kept, 0)
        if self.name == "softplus":
            return torch.ops.aten.softplus_backward(upstream, kept, self.beta, SOFTPLUS_THRESHOLD)
        return torch.ops.aten.gelu_backward(upstream, kept)


RELU = Activation("relu")


def _normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def activation_for(model) -> Activation:
    """The ``Activation`` of a ``ModelConfig`` (``model.activation``, ``model.softplus_beta``)."""
    return Activation(model.activation, float(model.softplus_beta))
