"""Batched L-BFGS: K independent smooth problems minimised in lockstep.

Each problem keeps its own curvature pairs, its own backtracking (Armijo) step and its own
stopping test ||grad_k||_2 <= tol; problems that have converged are frozen while the others
go on. Used for the convex reference model (``logreg``), where every subset's optimum is
unique, so the answer does not depend on how many problems share a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LBFGSResult:
    x: torch.Tensor  # [K, P]
    f: torch.Tensor  # [K]
    grad_norm: torch.Tensor  # [K]
    converged: torch.Tensor  # bool[K]
    iterations: int


def _two_loop(
    g: torch.Tensor, s_hist: torch.Tensor, y_hist: torch.Tensor, rho: torch.Tensor,
    gamma: torch.Tensor, slots: list[int],
) -> torch.Tensor:
    """The L-BFGS two-loop recursion: the inverse-Hessian estimate times ``g`` [K, P], from
    the history pairs at ``slots`` (newest first) and initial scaling ``gamma`` [K]."""
    q = g.clone()
    alphas = []
    for slot in slots:
        a = rho[slot] * (s_hist[slot] * q).sum(1)
        q -= a.unsqueeze(1) * y_hist[slot]
        alphas.append(a)
    r = gamma.unsqueeze(1) * q
    for slot, a in zip(reversed(slots), reversed(alphas), strict=True):
        b = rho[slot] * (y_hist[slot] * r).sum(1)
        r += s_hist[slot] * (a - b).unsqueeze(1)
    return r


def batched_lbfgs(
    fun: Objective, x0: torch.Tensor, tol: float = 1e-6, max_iter: int = 500, history: int = 10,
    armijo: float = 1e-4, max_halvings: int = 40,
) -> LBFGSResult:
    """Minimise ``fun`` (x[K, P] -> (f[K], grad[K, P])) from ``x0`` for every row at once."""
    x = x0.clone()
    f, g = fun(x)
    K = x.shape[0]
    s_hist = torch.zeros(history, *x.shape, dtype=x.dtype, device=x.device)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(history, K, dtype=x.dtype, device=x.device)
    gamma = torch.ones(K, dtype=x.dtype, device=x.device)
    filled = 0
    newest = -1
    finite = torch.isfinite(f) & torch.isfinite(g).all(1)
    active = finite & (g.norm(dim=1) > tol)
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported in the result
        if not bool(active.any()):
            iteration -= 1
            break
        slots = [(newest - j) % history for j in range(filled)]
        direction = -_two_loop(g, s_hist, y_hist, rho, gamma, slots)
        slope = (g * direction).sum(1)
        not_descent = slope >= 0
        if bool(not_descent.any()):  # lost curvature information: fall back to steepest descent
            direction[not_descent] = -g[not_descent]
            slope = (g * direction).sum(1)
        direction[~active] = 0.0
        step = torch.ones(K, dtype=x.dtype, device=x.device)
        if filled == 0:
            step = torch.clamp(1.0 / g.abs().sum(1).clamp(min=1e-12), max=1.0)
        for _ in range(max_halvings):
            x_new = x + step.unsqueeze(1) * direction
            f_new, g_new = fun(x_new)
            ok = (f_new <= f + armijo * step * slope) & torch.isfinite(f_new) | ~active
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step * 0.5)
        s = x_new - x
        y = g_new - g
        sy = (s * y).sum(1)
        usable = active & (sy > 1e-12 * (y * y).sum(1).clamp(min=1e-300).sqrt() * s.norm(dim=1))
        newest = (newest + 1) % history
        filled = min(filled + 1, history)
        s_hist[newest] = torch.where(usable.unsqueeze(1), s, 0.0)
        y_hist[newest] = torch.where(usable.unsqueeze(1), y, 0.0)
        rho[newest] = torch.where(usable, 1.0 / sy.where(usable, torch.ones_like(sy)), 0.0)
        gamma = torch.where(usable, sy / (y * y).sum(1).clamp(min=1e-300), gamma)
        moved = active & torch.isfinite(f_new)
        x = torch.where(moved.unsqueeze(1), x_new, x)
        f = torch.where(moved, f_new, f)
        g = torch.where(moved.unsqueeze(1), g_new, g)
        active = moved & (g.norm(dim=1) > tol)
    grad_norm = g.norm(dim=1)
    converged = torch.isfinite(f) & (grad_norm <= tol)
    return LBFGSResult(x, f, grad_norm, converged, iteration)
