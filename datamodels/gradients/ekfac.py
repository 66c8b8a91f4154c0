"""EK-FAC influence: the Gauss–Newton Hessian of the training objective approximated per
layer in a Kronecker eigenbasis, with its eigenvalues refitted, then inverted in that basis.

For a tracked layer (``ekfac_layers``: weight matrix W [out, cols], inputs a_p, output
gradients δ_p at positions p) and the model's training subset of n examples:

* the *curvature* is the Gauss–Newton matrix of the mean loss, G = (1/n) Σ_i J_iᵀ H_i J_i
  (J_i: the logits' Jacobian, H_i = diag(p_i) − p_i p_iᵀ the cross-entropy's Hessian in the
  logits). H_i = Σ_c m_ic m_icᵀ with m_ic = √p_ic (e_c − p_i), so G is the second moment of
  the *pseudo-gradients* g_ic = ∇_W (m_icᵀ logits_i). ``fisher="ggn"`` takes all C of them
  per example (G exactly, C backward passes); ``"sampled"`` one per example, m = p − e_ŷ with
  ŷ drawn from the model's own prediction p_i: the true Fisher, whose expectation is G
  (one backward pass, a Monte-Carlo estimate).
* Kronecker factors: A = Σ_i Σ_p a_p a_pᵀ [cols, cols] and S = Σ_i Σ_c Σ_p δ_p δ_pᵀ [out, out];
  their eigenvectors Q_A, Q_S make the basis Q = Q_A ⊗ Q_S (only the bases are used, so the
  factors' scale does not matter).
* eigenvalue correction: Λ[o, k] = (1/n) Σ_i Σ_c ((Q_Sᵀ ∇_W g_ic Q_A)[o, k])², the diagonal
  of G itself in that basis (not the product of the factors' eigenvalues): the best diagonal
  fit to G in the basis, exact whenever G is diagonal there.
* the approximate Hessian of J = mean loss + (λ_wd/2)‖θ‖² is Q diag(Λ) Qᵀ + λ_wd I, and
  with the damping λ, for a layer's gradient matrix V,

      (H + λI)⁻¹ V = Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ_wd + λ)] Q_Aᵀ.

Scores follow ``influence.py``: score[t, i] = −(1/n)·∇u_tᵀ (H + λI)⁻¹ ∇(ℓ + R)(z_i), summed
over the tracked layers (the Hessian is block-diagonal across layers), u_t the target's
margin (or −loss). Layers outside the tracked set (BatchNorm parameters) do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import grad

from datamodels.gradients.ekfac_layers import Layer, capture, deltas, tracked_layers
from datamodels.gradients.grads import _outputs_from_logits
from datamodels.gradients.model import FunctionalModel, regulariser

Fisher = Literal["ggn", "sampled", "empirical"]
ELEMENTS = 1 << 24  # bound on examples × the largest layer's weight per per-example matrix


@dataclass(frozen=True)
class Ekfac:
    """A model's fitted EK-FAC: per tracked layer the bases ``qa`` [cols, cols] and ``qs``
    [out, out], the corrected eigenvalues ``eig`` [out, cols] of the Gauss–Newton matrix of
    the mean loss, and ∇R ``reg`` [out, cols]; ``shift`` = λ_wd + λ is added to every
    eigenvalue; ``n`` the subset size; ``step`` examples per per-example-matrix pass."""

    layers: list[Layer]
    qa: list[torch.Tensor]
    qs: list[torch.Tensor]
    eig: list[torch.Tensor]
    reg: list[torch.Tensor]
    shift: float
    n: int
    step: int

    def precondition(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """(H + λI)⁻¹ applied to per-example gradients, layer by layer: [B, out, cols] each."""
        out = []
        for g, qa, qs, eig in zip(grads, self.qa, self.qs, self.eig, strict=True):
            qa, qs = qa.to(g), qs.to(g)
            rotated = qs.T @ g @ qa
            out.append(qs @ (rotated / (eig + self.shift).to(g)) @ qa.T)
        return out

    def dense(self) -> torch.Tensor:
        """The approximated Hessian of the mean loss (no λ_wd, no λ) over the tracked layers,
        in the order of the layers, each flattened row-major as [out, cols]: float64[P, P]
        (small models; for checks)."""
        blocks = []
        for qa, qs, eig in zip(self.qa, self.qs, self.eig, strict=True):
            q = torch.kron(qs, qa)  # vec(Q_Sᵀ V Q_A) = (Q_S ⊗ Q_A)ᵀ vec(V), row-major
            blocks.append(q @ torch.diag(eig.reshape(-1)) @ q.T)
        return torch.block_diag(*blocks)


def logit_vectors(
    model: FunctionalModel, logits: torch.Tensor, y: torch.Tensor, output: str
) -> torch.Tensor:
    """∂f(z_b)/∂logits_b [B, C] for f = ``loss``, ``margin`` or ``-loss``."""
    sign = -1.0 if output == "-loss" else 1.0
    leaf = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        f = _outputs_from_logits(model, leaf, y, "loss" if output == "-loss" else output)
        (v,) = torch.autograd.grad(f.sum(), leaf)
    return sign * v


def fisher_vectors(
    logits: torch.Tensor, fisher: Fisher, generator: torch.Generator,
    y: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The pseudo-gradient vectors on the logits [B, C]: C of them (``ggn``,
    √p_c (e_c − p)) or one (``sampled``, p − e_ŷ with ŷ ~ p; ``empirical``, p − e_y with the
    true labels ``y``: the empirical Fisher, not G in expectation, for comparisons only)."""
    p = torch.softmax(logits.detach().double(), 1)
    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    if fisher == "ggn":
        return [p[:, c : c + 1].sqrt() * (eye[c] - p) for c in range(p.shape[1])]
    if fisher == "sampled":
        drawn = torch.multinomial(p.cpu(), 1, generator=generator)[:, 0].to(p.device)
        return [p - eye[drawn]]
    if fisher == "empirical":
        return [p - eye[y]]
    raise ValueError(f"fisher must be 'ggn', 'sampled' or 'empirical'; got {fisher!r}")


def example_matrices(acts: list[torch.Tensor], ds: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-example gradient matrices Σ_p δ_p a_pᵀ: [B, out, cols] per layer."""
    return [torch.einsum("bpo,bpi->boi", d, a.to(d)) for a, d in zip(acts, ds, strict=True)]


def fit_ekfac(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, *, damping: float,
    fisher: Fisher = "ggn", chunk_size: int = 256, seed: int = 0,
) -> Ekfac:
    """EK-FAC of the model over its training subset ``x[n, ...]``, ``y[n]`` (``y`` is read
    by the ``empirical`` Fisher only: the others depend on the model's own predictions)."""
    layers = tracked_layers(model, x)
    largest = max(layer.out * layer.cols for layer in layers)
    step = max(1, min(chunk_size, ELEMENTS // largest))
    f64 = {"dtype": torch.float64, "device": model.device}
    A = [torch.zeros(layer.cols, layer.cols, **f64) for layer in layers]
    S = [torch.zeros(layer.out, layer.out, **f64) for layer in layers]
    gen = torch.Generator().manual_seed(int(seed))
    for s in range(0, len(x), step):
        logits, acts, outs = capture(model, layers, x[s : s + step])
        for i, a in enumerate(acts):
            a = a.double()
            A[i] += torch.einsum("bpi,bpj->ij", a, a)
        for v in fisher_vectors(logits, fisher, gen, y[s : s + step]):
            for i, d in enumerate(deltas(layers, logits, outs, v)):
                d = d.double()
                S[i] += torch.einsum("bpo,bpq->oq", d, d)
    qa = [torch.linalg.eigh(a)[1] for a in A]
    qs = [torch.linalg.eigh(s)[1] for s in S]
    eig = [torch.zeros(layer.out, layer.cols, **f64) for layer in layers]
    for s in range(0, len(x), step):
        logits, acts, outs = capture(model, layers, x[s : s + step])
        for v in fisher_vectors(logits, fisher, gen, y[s : s + step]):
            ds = deltas(layers, logits, outs, v)
            for i, (a, d) in enumerate(zip(acts, ds, strict=True)):
                a_rot, d_rot = a.to(d) @ qa[i].to(d), d @ qs[i].to(d)
                if a.shape[1] == 1:  # one position: the square of an outer product
                    eig[i] += (d_rot[:, 0, :, None] ** 2 * a_rot[:, 0, None, :] ** 2).sum(0)
                else:
                    rotated = torch.einsum("bpo,bpi->boi", d_rot, a_rot)
                    eig[i] += (rotated.double() ** 2).sum(0)
    eig = [e / len(x) for e in eig]
    reg_flat = grad(lambda p: regulariser(model, p))(model.params.detach())
    reg = [layer.matrix(reg_flat) for layer in layers]
    return Ekfac(layers, qa, qs, eig, reg, model.weight_decay + damping, len(x), step)


def _gradients(
    model: FunctionalModel, ek: Ekfac, x: torch.Tensor, y: torch.Tensor, output: str
) -> list[torch.Tensor]:
    logits, acts, outs = capture(model, ek.layers, x)
    return example_matrices(acts, deltas(ek.layers, logits, outs,
                                         logit_vectors(model, logits, y, output)))


def _dot(left: list[torch.Tensor], right: list[torch.Tensor]) -> torch.Tensor:
    """Σ_l ⟨left_l[t], right_l[i]⟩: [T, I] from per-layer [T, out, cols] and [I, out, cols]."""
    return sum(a.flatten(1) @ b.flatten(1).T for a, b in zip(left, right, strict=True))


def ekfac_directions(
    model: FunctionalModel, ek: Ekfac, target_x: torch.Tensor, target_y: torch.Tensor,
    utility: str = "margin",
) -> list[torch.Tensor]:
    """(H + λI)⁻¹ ∇u_t per layer: [T, out, cols] each (u = margin, or −loss)."""
    output = "margin" if utility == "margin" else "-loss"
    parts = [
        ek.precondition(_gradients(model, ek, target_x[s : s + ek.step],
                                   target_y[s : s + ek.step], output))
        for s in range(0, len(target_x), ek.step)
    ]
    return [torch.cat(layer) for layer in zip(*parts, strict=True)]


def ekfac_scores(
    model: FunctionalModel, ek: Ekfac, target_x: torch.Tensor, target_y: torch.Tensor,
    points_x: torch.Tensor, points_y: torch.Tensor, utility: str = "margin",
) -> torch.Tensor:
    """score[t, i] = −(1/n)·∇u_tᵀ (H_ekfac + λI)⁻¹ ∇(ℓ + R)(z_i): float64[T, m] for the
    targets ``target_x[T, ...]`` and the points ``points_x[m, ...]``."""
    v = ekfac_directions(model, ek, target_x, target_y, utility)
    const = _dot(v, [r[None] for r in ek.reg])  # [T, 1]: the regulariser's part of every term
    out = torch.empty(len(target_x), len(points_x), dtype=torch.float64, device=model.device)
    for s in range(0, len(points_x), ek.step):
        g = _gradients(model, ek, points_x[s : s + ek.step], points_y[s : s + ek.step], "loss")
        out[:, s : s + ek.step] = -(_dot(v, g) + const).double() / ek.n
    return out


def ekfac_self_scores(
    model: FunctionalModel, ek: Ekfac, points_x: torch.Tensor, points_y: torch.Tensor
) -> torch.Tensor:
    """self[i] = −(1/n)·∇u_iᵀ (H_ekfac + λI)⁻¹ ∇(ℓ + R)(z_i), u = −loss: float64[m]."""
    out = torch.empty(len(points_x), dtype=torch.float64, device=model.device)
    for s in range(0, len(points_x), ek.step):
        g = _gradients(model, ek, points_x[s : s + ek.step], points_y[s : s + ek.step], "loss")
        v = ek.precondition([-t for t in g])
        total = sum(
            (vi * (gi + r[None])).flatten(1).sum(1) for vi, gi, r in zip(v, g, ek.reg, strict=True)
        )
        out[s : s + ek.step] = -total.double() / ek.n
    return out
