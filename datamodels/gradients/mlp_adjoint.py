"""The MLP's forward, backward and forward-over-reverse passes written by hand as matrix
products, for the metagradient's replay and adjoint (``gradients.metagradient``).

Parameters are flat float64[P] in ``mlp_model``'s layout (each weight [fan_in, fan_out]
row-major, then its bias). A step of the adjoint carries T directions at once, laid out
layer by layer with the targets inside (``layer_major``), so that each product of a step
is one plain matrix product over all T targets, as the batched trainer's step is over its
K models.
"""

from __future__ import annotations

import torch

from datamodels.models.activations import RELU, Activation


def unflatten(sizes: list[int], flat: torch.Tensor) -> list[torch.Tensor]:
    """``flat`` [..., P] -> views ``[W1 [..., d, h], b1 [..., h], ...]`` (``mlp_model``'s
    layout: each weight [fan_in, fan_out] row-major, then its bias)."""
    lead, out, offset = flat.shape[:-1], [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        out.append(flat[..., offset : offset + fan_in * fan_out].view(*lead, fan_in, fan_out))
        offset += fan_in * fan_out
        out.append(flat[..., offset : offset + fan_out])
        offset += fan_out
    return out


def forward(
    layers: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, smoothing: float,
    activation: Activation = RELU,
):
    """One MLP on one batch: (inputs of every layer [x, a_1, …], the activation's slopes
    φ'(z_l) [c, h] of every hidden layer (ReLU: its 0/1 masks), their pre-activations z_l,
    softmax p [c, C], p − q [c, C] with q the label-smoothed target: ∂ℓ_i/∂logits)."""
    acts, slopes, pre, h = [x], [], [], x
    last = len(layers) // 2 - 1
    for layer in range(last + 1):
        z = torch.addmm(layers[2 * layer + 1], h, layers[2 * layer])
        if layer < last:
            h = activation(z)
            acts.append(h)
            slopes.append(activation.derivative(z))
            pre.append(z)
    p = torch.softmax(z, dim=1)
    C = p.shape[1]
    residual = p - smoothing / C
    residual[torch.arange(len(y), device=y.device), y] -= 1.0 - smoothing
    return acts, slopes, pre, p, residual


def batch_gradient(
    sizes: list[int], theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
    coef: torch.Tensor, smoothing: float, activation: Activation = RELU,
) -> torch.Tensor:
    """∇_θ Σ_i coef_i ℓ_i(θ) float64[P] on one batch, by hand (the MLP's backward pass)."""
    layers = unflatten(sizes, theta)
    acts, slopes, _, _, residual = forward(layers, x, y, smoothing, activation)
    delta = residual * coef[:, None]
    grads = [None] * len(layers)
    for layer in reversed(range(len(layers) // 2)):
        grads[2 * layer] = acts[layer].T @ delta
        grads[2 * layer + 1] = delta.sum(0)
        if layer:
            delta = (delta @ layers[2 * layer].T) * slopes[layer - 1]
    return torch.cat([g.reshape(-1) for g in grads])


def layer_major(sizes: list[int], rows: torch.Tensor) -> torch.Tensor:
    """[T, P] (one θ-direction a row) -> float[T·P] laid out layer by layer with the targets
    inside: each weight as [fan_in, T, fan_out], each bias as [T, fan_out] (``mlp_views``),
    so that every product of a step is one plain matrix product over all T targets."""
    parts = unflatten(sizes, rows)
    return torch.cat(
        [(t.transpose(0, 1) if t.ndim == 3 else t).reshape(-1) for t in parts]
    )


def mlp_views(sizes: list[int], flat: torch.Tensor, T: int) -> list[torch.Tensor]:
    """Views of a layer-major float[T·P]: ``[W1 [d, T, h], b1 [T, h], ...]``."""
    out, offset = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        out.append(flat[offset : offset + fan_in * T * fan_out].view(fan_in, T, fan_out))
        offset += fan_in * T * fan_out
        out.append(flat[offset : offset + T * fan_out].view(T, fan_out))
        offset += T * fan_out
    return out


def step_products(
    sizes: list[int], theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
    coef: torch.Tensor, smoothing: float, directions: torch.Tensor, T: int,
    hessian: bool = True, activation: Activation = RELU,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``metagradient._step_products`` for the MLP by hand, all T targets' directions at once
    (``directions``: float[T·P], layer-major, ``layer_major``). With m_l = φ'(z_l) the
    activation's slopes and κ_l = φ''(z_l) its curvature, the tangent of the forward pass
    along each direction u (dz_l = da_{l−1} W_l + a_{l−1} dW_l + db_l, da_l = m_l ⊙ dz_l)
    gives ∇ℓ_i·u = (p_i − q_i)·dlogits_i; the tangent of the backward pass (δ = coef ⊙ (p − q),
    dδ = coef ⊙ (p ⊙ dlogits − p (p·dlogits)), dgW_l = a_{l−1}ᵀ dδ_l + da_{l−1}ᵀ δ_l,
    dδ_{l−1} = m ⊙ (dδ_l W_lᵀ + δ_l dW_lᵀ) + κ ⊙ dz_{l−1} ⊙ (δ_l W_lᵀ)) gives H u. The last
    term is the activation's second-order one: 0 for the ReLU (as in autograd), not for
    softplus or gelu. With the targets folded into the columns, each product is one matrix
    product over the batch, as the batched trainer's step is over its K models. Returns
    (H u float[T·P] layer-major, or None when not ``hessian``; ∇ℓ_i·u [T, c])."""
    layers = unflatten(sizes, theta)
    dirs = mlp_views(sizes, directions, T)
    acts, slopes, pre, p, residual = forward(layers, x, y, smoothing, activation)
    c, L = len(x), len(layers) // 2
    curvature = None
    if hessian:
        curvature = [activation.second_derivative(z) for z in pre]
        if any(k is None for k in curvature):
            curvature = None
    d_acts: list[torch.Tensor | None] = [None]
    d_pre: list[torch.Tensor] = []  # dz of the hidden layers (kept for the curvature term)
    for layer in range(L):
        weight, d_weight, d_bias = layers[2 * layer], dirs[2 * layer], dirs[2 * layer + 1]
        fan_in, fan_out = weight.shape
        dz = (acts[layer] @ d_weight.reshape(fan_in, T * fan_out)).view(c, T, fan_out)
        dz += d_bias
        if d_acts[layer] is not None:
            dz += (d_acts[layer].reshape(c * T, fan_in) @ weight).view(c, T, fan_out)
        if layer < L - 1:
            d_acts.append(dz * slopes[layer][:, None, :])
            if curvature is not None:
                d_pre.append(dz)
    directional = (dz * residual[:, None, :]).sum(-1).T  # dz: the logits' tangent [c, T, C]
    if not hessian:
        return None, directional
    delta = residual * coef[:, None]
    pc = p[:, None, :]
    d_delta = pc * (dz - (pc * dz).sum(-1, keepdim=True)) * coef[:, None, None]
    out = torch.empty_like(directions)
    grads = mlp_views(sizes, out, T)
    for layer in reversed(range(L)):
        weight = layers[2 * layer]
        fan_in, fan_out = weight.shape
        d_gw = grads[2 * layer]
        torch.mm(acts[layer].T, d_delta.reshape(c, T * fan_out), out=d_gw.view(fan_in, -1))
        if d_acts[layer] is not None:  # Σ_i da[i, t, a] δ[i, b] -> [a, t, b]
            d_gw += (d_acts[layer].reshape(c, T * fan_in).T @ delta).view(
                T, fan_in, fan_out
            ).transpose(0, 1)
        torch.sum(d_delta, 0, out=grads[2 * layer + 1])
        if layer:
            slope = slopes[layer - 1]
            # Σ_b δ[i, b] dW[a, t, b] -> [i, t, a]
            cross = (delta @ dirs[2 * layer].permute(2, 1, 0).reshape(fan_out, -1)).view(
                c, T, fan_in
            )
            d_delta = ((d_delta.reshape(c * T, fan_out) @ weight.T).view(c, T, fan_in) + cross)
            d_delta *= slope[:, None, :]
            back = delta @ weight.T  # ∂/∂a of the hidden layer below [c, fan_in]
            if curvature is not None:
                d_delta += d_pre[layer - 1] * (curvature[layer - 1] * back)[:, None, :]
            delta = back * slope
    return out, directional
