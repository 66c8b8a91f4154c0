"""The layers EK-FAC factors, and one forward that reads their inputs and outputs.

A model's *tracked* layers are its ``nn.Linear`` and ``nn.Conv2d`` modules whose weight is
trainable (module form: resnet9, fastnet, a user's network), or the dense layers of
``FunctionalModel.layer_io`` (``logreg``, the built-in MLP). Every other trainable parameter
(BatchNorm scales and shifts, say) is left out of the approximation and of the scores.

Each layer is seen as a matrix product at P positions per example: its weight as a matrix
W [out, cols] (a convolution's kernel flattened over (in, kh, kw); the bias, when trainable,
as the last column, against an input of ones), its input at position p as a row a_p [cols]
(a convolution's unfolded patch) and its output as s_p = W a_p [out]. The gradient of any
per-example scalar f(z) with respect to W is then

    ∇_W f(z) = Σ_p δ_p a_pᵀ,   δ_p = ∂f/∂s_p [out]

(a dense layer has P = 1; a convolution one position per output pixel; a linear layer on
[B, ..., in] inputs one per leading index). ``capture`` returns the a's [B, P, cols] and the
outputs s, from which ``deltas`` takes the δ's [B, P, out] for any vector on the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodels.errors import EstimateError
from datamodels.gradients.model import FunctionalModel


@dataclass(frozen=True)
class Layer:
    """One tracked layer: ``name``; ``module`` (None: dense layer ``index`` of ``layer_io``);
    its weight and bias in the flat parameters (``weight``, ``bias`` slices; ``bias`` None
    when it has no trainable bias); ``out`` and ``cols`` (the weight matrix's shape, bias
    column included); ``dense_layout``: the flat weight is [in, out] (``logreg``/``mlp``), not
    [out, ...] (``nn.Module``)."""

    name: str
    module: nn.Module | None
    index: int
    weight: slice
    bias: slice | None
    out: int
    cols: int
    dense_layout: bool

    def matrix(self, flat: torch.Tensor) -> torch.Tensor:
        """This layer's part of a flat parameter-shaped vector as [out, cols]."""
        w = flat[self.weight]
        w = w.view(-1, self.out).T if self.dense_layout else w.view(self.out, -1)
        if self.bias is None:
            return w
        return torch.cat([w, flat[self.bias].view(self.out, 1)], 1)


def tracked_layers(model: FunctionalModel, x: torch.Tensor) -> list[Layer]:
    """The model's tracked layers (``x``: one example or more, to read dense shapes)."""
    if model.module is None:
        if model.layer_io is None:
            raise EstimateError("ekfac: the model has neither an nn.Module nor dense layers")
        with torch.no_grad():
            _, inputs, pre = model.layer_io(model.params, x[:1])
        layers, start = [], 0
        for i, (a, z) in enumerate(zip(inputs, pre, strict=True)):
            d_in, d_out = a.shape[1], z.shape[1]
            w, b = slice(start, start + d_in * d_out), slice(start + d_in * d_out,
                                                            start + (d_in + 1) * d_out)
            layers.append(Layer(f"dense{i}", None, i, w, b, d_out, d_in + 1, True))
            start = b.stop
        return layers
    slices, start = {}, 0
    for _, p in model.module.named_parameters():  # the flattening order of ``module_model``
        if p.requires_grad:
            slices[id(p)] = slice(start, start + p.numel())
            start += p.numel()
    layers = []
    for name, m in model.module.named_modules():
        if not isinstance(m, nn.Linear | nn.Conv2d) or id(m.weight) not in slices:
            continue
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            raise EstimateError(
                f"ekfac: layer {name!r} is a convolution with groups={m.groups}, padding_mode="
                f"{m.padding_mode!r}; only groups=1 with zero padding is factored (build the "
                "model with one group, or use trak / tracin)"
            )
        bias = None if m.bias is None else slices.get(id(m.bias))
        out = m.weight.shape[0]
        cols = int(np.prod(m.weight.shape[1:])) + (bias is not None)
        layers.append(Layer(name, m, len(layers), slices[id(m.weight)], bias, out, cols, False))
    if not layers:
        raise EstimateError(
            "ekfac: the model has no trainable nn.Linear or nn.Conv2d layer to factor"
        )
    return layers


def _patches(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """A layer's input as rows [B, P, in_cols] (a convolution's unfolded patches)."""
    if isinstance(m, nn.Linear):
        return a.reshape(a.shape[0], -1, a.shape[-1])
    padding = m.padding
    if isinstance(padding, str):  # "valid" or "same" (odd or even kernels)
        if padding == "valid":
            padding = (0, 0)
        else:
            total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
            a = F.pad(a, (total[1] // 2, total[1] - total[1] // 2,
                          total[0] // 2, total[0] - total[0] // 2))
            padding = (0, 0)
    cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
    return cols.transpose(1, 2)


def _rows(out: torch.Tensor, conv: bool) -> torch.Tensor:
    """A layer's output as rows [B, P, out]."""
    if conv:
        return out.flatten(2).transpose(1, 2)
    return out.reshape(out.shape[0], -1, out.shape[-1])


def capture(
    model: FunctionalModel, layers: list[Layer], x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One forward of ``x[B, ...]``: (logits [B, C] in the graph, inputs a_l [B, P_l, cols_l]
    (detached, ones appended for a bias), outputs s_l in the graph, any shape)."""
    p = model.params.detach().requires_grad_(True)
    if model.module is None:
        logits, inputs, pre = model.layer_io(p, x)
        acts = [a.detach()[:, None, :] for a in inputs]
        outs = list(pre)
    else:
        seen: dict[int, list] = {layer.index: [] for layer in layers}

        def hook_for(index: int):
            def hook(_m, inputs, output):
                seen[index].append((inputs[0].detach(), output))
                return output.clone()  # an in-place activation after it must not touch it
            return hook

        handles = [layer.module.register_forward_hook(hook_for(layer.index)) for layer in layers]
        try:
            logits = model.logits_fn(p, x)
        finally:
            for h in handles:
                h.remove()
        acts, outs = [], []
        for layer in layers:
            if len(seen[layer.index]) != 1:
                raise EstimateError(
                    f"ekfac: layer {layer.name!r} ran {len(seen[layer.index])} times in one "
                    "forward; a layer is factored only when it runs once"
                )
            a, s = seen[layer.index][0]
            acts.append(_patches(layer.module, a))
            outs.append(s)
    for i, layer in enumerate(layers):
        if layer.bias is not None:
            ones = torch.ones(*acts[i].shape[:2], 1, dtype=acts[i].dtype, device=acts[i].device)
            acts[i] = torch.cat([acts[i], ones], 2)
    return logits, acts, outs


def deltas(
    layers: list[Layer], logits: torch.Tensor, outs: list[torch.Tensor], vectors: torch.Tensor
) -> list[torch.Tensor]:
    """δ_l [B, P_l, out_l] = ∂(Σ_b vectors_bᵀ logits_b)/∂s_l: the per-example output gradients
    of f(z_b) with ∂f/∂logits_b = ``vectors[b]`` [B, C] (the graph is kept for more calls)."""
    grads = torch.autograd.grad(logits, outs, grad_outputs=vectors.to(logits), retain_graph=True)
    return [
        _rows(g, layer.module is not None and isinstance(layer.module, nn.Conv2d))
        for layer, g in zip(layers, grads, strict=True)
    ]
