"""What the path solvers share: the geometric λ grid, the proximal operators and the
accelerated-gradient momentum with adaptive restart.

Used by the LASSO path (``path``, ``fista``) and by the elastic-net multinomial GLM path
(``glm``): both walk ``λ_k = λ_max · eps^(k / (K-1))`` from the smallest λ whose solution is
zero, warm-starting each step from the last, and both take proximal (FISTA) steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def geometric_grid(lam_max: Tensor, n_lambdas: int, eps: float) -> Tensor:
    """float[..., K] grid ``lam_max · eps^(k/(K-1))``, k = 0..K-1, for lam_max float[...]."""
    if n_lambdas < 1 or not 0 < eps <= 1:
        raise ValueError(f"n_lambdas must be >= 1 and eps in (0, 1], got {n_lambdas} and {eps}")
    ratio = torch.logspace(0, math.log10(eps), n_lambdas, dtype=torch.float64)
    return lam_max[..., None] * ratio.to(lam_max)


def explicit_grid(
    lams: np.ndarray, shape: tuple[int, ...], dev: torch.device, dtype: torch.dtype
) -> Tensor:
    """float[*shape, K] grid from explicit positive float[K] or float[*shape, K] ``lams``."""
    grid = torch.as_tensor(np.asarray(lams, dtype=np.float64)).to(device=dev, dtype=dtype)
    grid = grid.expand(*shape, -1) if grid.ndim == 1 else grid
    if grid.ndim != len(shape) + 1 or tuple(grid.shape[:-1]) != shape or not bool((grid > 0).all()):
        want = "float[K]" if not shape else f"float[K] or float[{', '.join(map(str, shape))}, K]"
        raise ValueError(f"lams must be positive {want}, got shape {tuple(grid.shape)}")
    return grid


def soft_threshold(z: Tensor, tau: Tensor | float) -> Tensor:
    """Proximal operator of ``tau·||·||_1``."""
    return torch.sign(z) * (z.abs() - tau).clamp_min(0.0)


def elastic_net_prox(z: Tensor, l1: Tensor | float, l2: Tensor | float) -> Tensor:
    """Proximal operator of ``l1·||w||_1 + (l2/2)·||w||²``: soft-threshold, then shrink."""
    return soft_threshold(z, l1) / (1.0 + l2)


def momentum(tk: Tensor, restart: Tensor) -> tuple[Tensor, Tensor]:
    """FISTA's extrapolation weight and next ``t`` per problem (float[B] each), restarting
    (weight 0, t = 1) where ``restart`` (O'Donoghue & Candes 2015)."""
    t_new = 0.5 * (1 + torch.sqrt(1 + 4 * tk * tk))
    beta = torch.where(restart, 0.0, (tk - 1) / t_new)
    return beta, torch.where(restart, 1.0, t_new)


def gradient_restart(y: Tensor, x_new: Tensor, x: Tensor) -> Tensor:
    """bool[B]: the step from ``x`` to ``x_new`` went against the prox-gradient direction
    (``(y - x_new)·(x_new - x) > 0`` over all but the first dimension)."""
    dims = tuple(range(1, x.ndim))
    return ((y - x_new) * (x_new - x)).sum(dims) > 0
