"""Elastic-net multinomial logistic regression paths: the sparse decision layer.

For features ``x: float[n, d]`` and labels ``y`` in ``0..C-1``, and every λ on the path, solve

    min_{W, b}  (1/n) Σ_i CE(s(x_i) W + b, y_i) + λ (α ||W||_1 + (1 − α)/2 ||W||²)

with ``s(x) = (x − mean) / std`` the features standardised on the fitting rows (features with
zero variance stay 0 and get weight 0) and the bias ``b`` unpenalised: glm_saga's objective
(Wong et al. 2021). Weights are in standardised units; ``GlmPath.logits`` applies them to raw
features.

* λ path: ``λ_k = λ_max · eps^(k / (K-1))`` (the grid of the LASSO path, ``prox``), where
  ``λ_max = max_{j,c} |s_j^T (Y_c − ȳ_c)| / n / max(α, 1e-3)`` is the smallest λ at which
  ``W = 0`` is optimal (for α ≥ 1e-3; glm_saga's formula). Warm starts along it.
* Solver: FISTA on ``θ = [W; b]`` with the elastic-net proximal step on ``W`` (the LASSO's
  soft-threshold, then shrinkage), backtracking on the cross-entropy capped at its global
  bound ``½·σ_max([s(X) 1])² / n`` and adaptive restart (the momentum rule shared with the
  LASSO's FISTA). The C classes share ``X`` and form one batched problem (the multinomial
  loss couples them): one ``X θ`` and one ``Xᵀ R`` product per iteration, over a working set
  of features as in the LASSO path: the sequential strong rule proposes it, a full-gradient
  KKT check grows it until no feature outside violates the conditions.
* Convergence: the KKT conditions. With ``G = ∇_W CE + λ(1−α)W`` the minimum-norm
  subgradient is ``G + λα·sign(W)`` where ``W ≠ 0`` and ``sign(G)·max(|G| − λα, 0)`` where
  ``W = 0``; with the bias gradient it must be ≤ ``tol · α·λ_max`` in max-norm (``α·λ_max``
  is the largest gradient at ``W = 0``, the problem's scale).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamodels.regress.prox import (
    elastic_net_prox,
    explicit_grid,
    geometric_grid,
    gradient_restart,
    momentum,
)

# The code version of the sparse decision layer's numbers (``regress.glm``, recorded by the
# ``sparse-layer`` stage): `glm_path` and the stage's choice of λ; bump with any change that can
# move a number it computes for the same inputs.
VERSION = 1


_CHECK_EVERY = 10
_POWER_STEPS = 30
_MAX_ROUNDS = 30  # working-set rounds per λ


@dataclass
class GlmPath:
    """A fitted path (K = λ values walked). lams: float64[K]; coef: float[K, d, C]
    (standardised units); intercept: float[K, C]; objective: float64[K] (the objective above on
    the fitting rows); kkt: float64[K] relative KKT violation; converged: bool[K];
    iterations: int64[K]; seconds: float64[K] per λ; mean, scale: float64[d] the
    standardisation; alpha, lam_max: the mixing and the grid's top."""

    lams: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    objective: np.ndarray
    kkt: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    seconds: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    alpha: float
    lam_max: float

    def logits(self, x: np.ndarray, k: int) -> np.ndarray:
        """float64[m, C] logits of raw features ``x: float[m, d]`` under the k-th solution."""
        s = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return s @ self.coef[k].astype(np.float64) + self.intercept[k]

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """float64[K] accuracy of every solution on ``(x, y)``."""
        y = np.asarray(y)
        return np.array([(self.logits(x, k).argmax(1) == y).mean() for k in range(len(self.lams))])

    def features_per_class(self) -> np.ndarray:
        """int64[K, C] features with a nonzero weight, per λ and class."""
        return np.count_nonzero(self.coef, axis=1).astype(np.int64)


def standardise(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(s(x), mean, scale): columns centred and divided by their sample std (ddof 1, as
    glm_saga's ``NormalizedRepresentation``); zero-variance columns get scale 1."""
    mean = x.mean(0)
    std = x.std(0) if len(x) > 1 else torch.zeros_like(mean)
    scale = torch.where(std > 0, std, torch.ones_like(std))
    return (x - mean) / scale, mean, scale


def elastic_net_objective(
    x: Tensor, onehot: Tensor, theta: Tensor, lam: float, alpha: float
) -> float:
    """The objective above at ``theta = [W; b]`` (float[d+1, C]) for standardised ``x``."""
    z = x @ theta[:-1] + theta[-1]
    ce = (torch.logsumexp(z, 1) - (z * onehot).sum(1)).mean()
    w = theta[:-1]
    return float(ce + lam * (alpha * w.abs().sum() + 0.5 * (1 - alpha) * (w * w).sum()))


def _loss(z: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy (0-dim) and softmax probabilities float[n, C] of logits ``z``."""
    lse = torch.logsumexp(z, 1, keepdim=True)
    return (lse.squeeze(1) - (z * onehot).sum(1)).mean(), torch.exp(z - lse)


class _Problem:
    """The fitting rows as ``X1 = [s(X) 1]`` (float[n, d+1]) with one-hot labels; θ = [W; b].

    ``grad0`` (the largest gradient at W = 0, the KKT scale) and ``lip_max`` (the loss's
    global smoothness bound) are those of the full problem, also in a ``restrict``ed one (a
    column subset has a smaller bound, so the full one stays valid)."""

    def __init__(self, x1: Tensor, onehot: Tensor, alpha: float, grad0: float, lip_max: float):
        self.x1, self.onehot, self.alpha, self.n = x1, onehot, alpha, x1.shape[0]
        self.grad0, self.lip_max = grad0, lip_max
        self.ybar = onehot.mean(0)
        self.lam_max = grad0 / max(alpha, 1e-3)

    @classmethod
    def build(cls, x: Tensor, onehot: Tensor, alpha: float) -> _Problem:
        n = x.shape[0]
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        grad0 = float((x.T @ (onehot - onehot.mean(0))).abs().max()) / n if x.shape[1] else 0.0
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(x1.shape[1], generator=gen, dtype=torch.float64).to(x1)
        for _ in range(_POWER_STEPS):
            v = x1.T @ (x1 @ v)
            v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
        top = float((x1 @ v).norm() ** 2) / n
        # power iteration is a lower bound; the 1.05 margin makes the cap safe in practice
        return cls(x1, onehot, alpha, grad0, max(0.5 * 1.05 * top, 1e-12))

    def restrict(self, cols: Tensor) -> _Problem:
        """The problem on columns ``cols`` of ``X1`` (ending with the bias column ``d``)."""
        return _Problem(self.x1[:, cols], self.onehot, self.alpha, self.grad0, self.lip_max)

    def zero(self) -> Tensor:
        """θ of the λ ≥ λ_max solution: W = 0, b = log ȳ (softmax(b) = class frequencies)."""
        theta = self.x1.new_zeros((self.x1.shape[1], self.onehot.shape[1]))
        theta[-1] = torch.log(self.ybar.clamp_min(1e-12))
        return theta

    def prox(self, theta: Tensor, step: float, lam: float) -> Tensor:
        out = theta.clone()
        a = self.alpha
        out[:-1] = elastic_net_prox(theta[:-1], step * lam * a, step * lam * (1 - a))
        return out

    def grad(self, p: Tensor) -> Tensor:
        return self.x1.T @ ((p - self.onehot) / self.n)

    def kkt(self, theta: Tensor, grad: Tensor, lam: float) -> float:
        """Max-norm of the minimum-norm subgradient, relative to ``α·λ_max`` (see module)."""
        w, a = theta[:-1], self.alpha
        g = grad[:-1] + lam * (1 - a) * w
        sub = torch.where(
            w != 0, g + lam * a * torch.sign(w), torch.sign(g) * (g.abs() - lam * a).clamp_min(0)
        )
        worst = max(float(sub.abs().max()) if sub.numel() else 0.0, float(grad[-1].abs().max()))
        return worst / max(self.grad0, torch.finfo(theta.dtype).tiny)

    def objective(self, ce: Tensor, theta: Tensor, lam: float) -> float:
        w, a = theta[:-1], self.alpha
        return float(ce + lam * (a * w.abs().sum() + 0.5 * (1 - a) * (w * w).sum()))


# Long: one FISTA loop (backtracking, restart, the periodic KKT check) kept in one piece so
# the per-iteration state stays visible.
def _solve(
    prob: _Problem, theta: Tensor, lam: float, lip: float, tol: float, max_iter: int
) -> tuple[Tensor, float, float, int]:
    """FISTA from ``theta`` at ``lam`` to relative KKT ≤ ``tol``; returns
    ``(theta, kkt, lip, iterations)``."""
    x1, onehot = prob.x1, prob.onehot
    zx = x1 @ theta
    ce_x, p_x = _loss(zx, onehot)
    kkt = prob.kkt(theta, prob.grad(p_x), lam)
    if kkt <= tol:
        return theta, kkt, lip, 0
    x, y, zy, ce_y, p_y = theta, theta, zx, ce_x, p_x
    tk = torch.ones(1, dtype=theta.dtype, device=theta.device)
    it = 0
    while it < max_iter:
        g = prob.grad(p_y)
        while True:  # backtracking: the quadratic model at y must bound the loss at x_new
            x_new = prob.prox(y - g / lip, 1.0 / lip, lam)
            z_new = x1 @ x_new
            ce_new, p_new = _loss(z_new, onehot)
            d = x_new - y
            bound = ce_y + (g * d).sum() + 0.5 * lip * (d * d).sum()
            if lip >= prob.lip_max or float(ce_new - bound) <= 1e-12 * max(float(ce_y), 1.0):
                break
            lip = min(2.0 * lip, prob.lip_max)
        beta, tk = momentum(tk, gradient_restart(y[None], x_new[None], x[None]))
        b = float(beta)
        y = x_new + b * (x_new - x)
        zy = z_new + b * (z_new - zx)  # X y from X x: no extra product
        x, zx, ce_x, p_x = x_new, z_new, ce_new, p_new
        ce_y, p_y = (ce_x, p_x) if b == 0 else _loss(zy, onehot)
        it += 1
        if it % _CHECK_EVERY == 0:
            kkt = prob.kkt(x, prob.grad(p_x), lam)
            if kkt <= tol:
                break
    if it % _CHECK_EVERY:
        kkt = prob.kkt(x, prob.grad(p_x), lam)
    return x, kkt, lip, it


def _step(
    prob: _Problem,
    theta: Tensor,
    grad: Tensor,
    lam: float,
    lam_prev: float,
    lip: float,
    tol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor, float, float, int]:
    """Move the solution to ``lam`` on a working set of features, as the LASSO path does: the
    sequential strong rule keeps feature j when some class has ``|∇_jc| ≥ α(2λ − λ_prev)``
    (or it is in use); FISTA solves the restricted problem; one full gradient checks the KKT
    conditions on every feature, and the violators join the set until none is left.
    grad: float[d+1, C] the full gradient at ``theta``. Returns
    ``(theta, grad, kkt, lip, iterations)``."""
    d, a = prob.x1.shape[1] - 1, prob.alpha
    keep = (theta[:-1] != 0).any(1) | (grad[:-1].abs().amax(1) >= a * (2 * lam - lam_prev))
    bias = torch.tensor([d], device=theta.device)
    inner, total, kkt = 0.5 * tol, 0, float("inf")
    for _ in range(_MAX_ROUNDS):
        cols = torch.cat([keep.nonzero().squeeze(1), bias])
        sub, _, lip, it = _solve(prob.restrict(cols), theta[cols], lam, lip, inner, max_iter)
        total += it
        theta = torch.zeros_like(theta)
        theta[cols] = sub
        grad = prob.grad(_loss(prob.x1[:, cols] @ sub, prob.onehot)[1])
        kkt = prob.kkt(theta, grad, lam)
        if kkt <= tol:
            break
        outside = ~keep & ((grad[:-1].abs() - lam * a).amax(1) > 0.5 * tol * prob.grad0)
        if bool(outside.any()):
            keep |= outside
        elif inner > 1e-3 * tol:
            inner *= 0.1  # no violator outside: the restricted solve was not tight enough
        else:
            break
    return theta, grad, kkt, lip, total


# Long only by its one-option-per-line signature and docstring (the body is ~40 lines).
def glm_path(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    *,
    alpha: float = 0.99,
    num_classes: int | None = None,
    lams: np.ndarray | None = None,
    n_lambdas: int = 100,
    eps: float = 1e-3,
    tol: float = 1e-6,
    max_iter: int = 10_000,
    standardize: bool = True,
    stop_features: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> GlmPath:
    """Elastic-net multinomial path (see the module docstring for objective and solver).

    x: float[n, d] features; y: int[n] labels in ``0..C-1`` (``num_classes`` default
    ``max(y) + 1``); alpha in (0, 1] the L1 share; lams: explicit positive float[K] (default the
    geometric grid of ``n_lambdas`` down to ``eps·λ_max``); ``stop_features``: stop after the
    first λ at which some class uses more than this many features (the rest of the path is
    not needed to pick a sparse layer). ``tol`` is the relative KKT tolerance.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).long()
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) < 2:
        raise ValueError(
            f"glm_path needs x float[n, d] and y int[n] with n >= 2, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha (the L1 share of the elastic net) must be in (0, 1], got {alpha}")
    classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise ValueError(f"labels must lie in 0..{classes - 1}, got {int(y.min())}..{int(y.max())}")
    dev = torch.device(device)
    x = x.to(device=dev, dtype=dtype)
    if standardize:
        x, mean, scale = standardise(x)
    else:
        mean, scale = x.new_zeros(x.shape[1]), x.new_ones(x.shape[1])
    onehot = torch.nn.functional.one_hot(y.to(dev), classes).to(dtype)
    prob = _Problem.build(x, onehot, alpha)
    top = torch.tensor(prob.lam_max, dtype=torch.float64)
    grid = (
        geometric_grid(top, n_lambdas, eps) if lams is None else explicit_grid(lams, (), dev, dtype)
    )
    grid = grid.double().cpu().numpy()
    theta, lip, lam_prev = prob.zero(), prob.lip_max / 8, prob.lam_max
    grad = prob.grad(_loss(prob.x1 @ theta, onehot)[1])
    out: dict[str, list] = {k: [] for k in ("coef", "b", "obj", "kkt", "it", "sec")}
    for lam in grid:
        start = time.perf_counter()
        if lam >= prob.lam_max:
            theta = prob.zero()
            grad = prob.grad(_loss(prob.x1 @ theta, onehot)[1])
        lip = max(lip / 2, prob.lip_max / 64)
        theta, grad, kkt, lip, it = _step(
            prob, theta, grad, float(lam), min(float(lam_prev), prob.lam_max), lip, tol, max_iter
        )
        lam_prev = lam
        ce, _ = _loss(prob.x1 @ theta, onehot)
        out["obj"].append(prob.objective(ce, theta, float(lam)))
        out["coef"].append(theta[:-1].cpu().numpy().copy())
        out["b"].append(theta[-1].cpu().numpy().copy())
        out["kkt"].append(kkt)
        out["it"].append(it)
        out["sec"].append(time.perf_counter() - start)
        if stop_features is not None and bool(((theta[:-1] != 0).sum(0) > stop_features).any()):
            break
    converged = np.asarray(out["kkt"]) <= tol
    if not converged.all():
        warnings.warn(
            f"glm_path: {int((~converged).sum())} of {len(converged)} λ values did not reach "
            f"KKT tol={tol} in max_iter={max_iter}; see GlmPath.converged",
            stacklevel=2,
        )
    k = len(out["coef"])
    return GlmPath(
        lams=grid[:k],
        coef=np.stack(out["coef"]),
        intercept=np.stack(out["b"]),
        objective=np.asarray(out["obj"]),
        kkt=np.asarray(out["kkt"]),
        converged=converged,
        iterations=np.asarray(out["it"], dtype=np.int64),
        seconds=np.asarray(out["sec"]),
        mean=mean.double().cpu().numpy(),
        scale=scale.double().cpu().numpy(),
        alpha=float(alpha),
        lam_max=float(prob.lam_max),
    )
