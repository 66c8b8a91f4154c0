"""Inverse Hessian-vector products s = (H + λI)⁻¹ v for a batch of vectors v[T, P].

H = ∇²J(θ) of the training objective (``model.py``), λ the damping. Three solvers:

* ``Exact``: form H (``torch.func.hessian``) and solve; P×P memory, small models only.
* ``ConjugateGradient``: CG on (H + λI) s = v for all T right-hand sides at once (each with
  its own step sizes), HVPs by the pullback of ``vjp(grad(J))``; needs H + λI ⪰ 0 on
  the span of v (convex models, or enough damping).
* ``Lissa`` (Agarwal et al. 2017, as used by Koh & Liang 2017): the truncated Neumann series
  h_0 = v, h_j = v + (I − (H_j + λI)/scale)·h_{j−1}, s ≈ h_depth / scale, with H_j the
  Hessian on a random minibatch (``batch_size``; None = all examples), averaged over
  ``repeats`` independent runs. Converges when scale > λ_max(H + λI); the error decays as
  (1 − λ_min/scale)^depth. ``scale=None`` estimates λ_max by power iteration (× 1.2).

Null directions U (``model.null_directions``, H U = 0, not penalised): every vector solved
for here is first projected onto U⊥ and the answer is taken on U⊥ — the Moore–Penrose
solution (H + λI)⁺v there. ``Exact`` solves (H + λI + UUᵀ) s = (I − UUᵀ) v, which is
invertible and gives exactly that; CG and LiSSA keep iterates in U⊥ by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodels.gradients.grads import exact_hessian, hvp_fn
from datamodels.gradients.model import FunctionalModel
from datamodels.trainers.unit_progress import report


@dataclass(frozen=True)
class Exact:
    damping: float = 0.0


@dataclass(frozen=True)
class ConjugateGradient:
    damping: float = 0.0
    tol: float = 1e-10  # stop when ||r|| <= tol·||v|| for every vector
    max_iter: int = 2000
    hvp_chunk: int | None = None  # examples per HVP pass (``grads.hvp_fn``); None: all at once


@dataclass(frozen=True)
class Lissa:
    damping: float = 0.0
    scale: float | None = None
    depth: int = 5000
    repeats: int = 1
    batch_size: int | None = None
    seed: int = 0
    hvp_chunk: int | None = None  # examples per HVP pass (``grads.hvp_fn``); None: all at once


Solver = Exact | ConjugateGradient | Lissa


def project_out(vectors: torch.Tensor, null_directions: torch.Tensor) -> torch.Tensor:
    """(I − UUᵀ) v for v[T, P], U[r, P] orthonormal."""
    if null_directions.numel() == 0:
        return vectors
    U = null_directions.to(vectors)
    return vectors - (vectors @ U.T) @ U


def solve_with_hessian(
    H: torch.Tensor, vectors: torch.Tensor, damping: float = 0.0,
    null_directions: torch.Tensor | None = None,
) -> torch.Tensor:
    """(H + λI)⁺ v on the complement of ``null_directions``: H[P, P], v[T, P] -> [T, P]."""
    return FactoredHessian.of(H, damping, null_directions).solve(vectors)


@dataclass(frozen=True)
class FactoredHessian:
    """An LU factorisation of H + λI + UUᵀ (U the null directions): factor once per model
    (O(P³)), then every batch of right-hand sides costs O(P²) (``Exact`` solves reuse it)."""

    lu: torch.Tensor
    pivots: torch.Tensor
    damping: float
    null_directions: torch.Tensor

    @classmethod
    def of(
        cls, H: torch.Tensor, damping: float = 0.0, null_directions: torch.Tensor | None = None
    ) -> FactoredHessian:
        P = H.shape[0]
        U = (
            torch.zeros(0, P, dtype=H.dtype, device=H.device)
            if null_directions is None
            else null_directions.to(H)
        )
        A = H + damping * torch.eye(P, dtype=H.dtype, device=H.device) + U.T @ U
        lu, pivots = torch.linalg.lu_factor(A)
        return cls(lu, pivots, float(damping), U)

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """(H + λI)⁺ v on the complement of the null directions: v[T, P] -> [T, P]."""
        rhs = project_out(vectors.to(self.lu), self.null_directions)
        solved = torch.linalg.lu_solve(self.lu, self.pivots, rhs.T).T
        return project_out(solved, self.null_directions)


def _cg(matvec, rhs: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Batched CG: rhs[T, P] -> s[T, P] with matvec(s) = rhs, one step size per row."""
    s = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = (r * r).sum(1)
    stop = (tol * rhs.norm(dim=1)) ** 2
    for step in range(max_iter):
        active = rr > stop
        if not bool(active.any()):
            break
        Ap = matvec(p)
        pAp = (p * Ap).sum(1)
        alpha = torch.where(active, rr / torch.where(active, pAp, 1.0), 0.0)
        s = s + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rr_new = (r * r).sum(1)
        beta = torch.where(active, rr_new / torch.where(active, rr, 1.0), 0.0)
        p = r + beta[:, None] * p
        rr = torch.where(active, rr_new, rr)
        report(step + 1, max_iter)  # against the bound: CG often stops early
    return s


def _top_eigenvalue(
    matvec, P: int, dtype: torch.dtype, iterations: int = 30, seed: int = 0, device=None
) -> float:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, P, generator=gen, dtype=dtype).to(device)
    value = 0.0
    for _ in range(iterations):
        w = matvec(v / v.norm())
        value = float(w.norm())
        v = w
    return value


def _lissa(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, rhs: torch.Tensor, solver: Lissa
) -> torch.Tensor:
    full = hvp_fn(model, x, y, chunk_size=solver.hvp_chunk)
    scale = solver.scale
    if scale is None:
        top = _top_eigenvalue(
            full, model.num_params, rhs.dtype, seed=solver.seed, device=rhs.device
        )
        scale = 1.2 * (top + solver.damping)
    gen = torch.Generator().manual_seed(solver.seed)
    total = torch.zeros_like(rhs)
    for repeat in range(solver.repeats):
        h = rhs.clone()
        for depth in range(solver.depth):
            if solver.batch_size is None or solver.batch_size >= len(x):
                hvp = full
            else:
                batch = torch.randperm(len(x), generator=gen)[: solver.batch_size].to(x.device)
                hvp = hvp_fn(model, x[batch], y[batch], chunk_size=solver.hvp_chunk)
            h = rhs + h - (hvp(h) + solver.damping * h) / scale
            report(repeat * solver.depth + depth + 1, solver.repeats * solver.depth)
        total = total + h / scale
    return total / solver.repeats


def inverse_hvp(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, vectors: torch.Tensor,
    solver: Solver = Exact(), hessian: torch.Tensor | FactoredHessian | None = None,
) -> torch.Tensor:
    """(H + λI)⁺ v for v [T, P], H the Hessian of J over ``x[n, ...]``, ``y[n]`` -> [T, P]
    in the model's dtype and device. ``hessian`` (``Exact`` only) reuses a precomputed H or
    its factorisation (which must have been made with the solver's damping)."""
    rhs = project_out(vectors.to(model.params), model.null_directions)
    if isinstance(solver, Exact):
        if isinstance(hessian, FactoredHessian):
            if hessian.damping != solver.damping:
                raise ValueError(
                    f"factorised with damping {hessian.damping}, solver has {solver.damping}"
                )
            return hessian.solve(rhs)
        H = exact_hessian(model, x, y) if hessian is None else hessian
        return solve_with_hessian(H, rhs, solver.damping, model.null_directions)
    if isinstance(solver, ConjugateGradient):
        hvp = hvp_fn(model, x, y, chunk_size=solver.hvp_chunk)
        matvec = lambda v: project_out(hvp(v), model.null_directions) + solver.damping * v  # noqa: E731
        return _cg(matvec, rhs, solver.tol, solver.max_iter)
    if isinstance(solver, Lissa):
        return project_out(_lissa(model, x, y, rhs, solver), model.null_directions)
    raise TypeError(
        f"solver must be Exact, ConjugateGradient or Lissa; got {type(solver).__name__}"
    )
