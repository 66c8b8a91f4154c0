"""A network's head: its last linear layer and that layer's input features.

Representer points decompose the last linear layer, sparse decision layers refit it, and a
transfer run's linear probe trains a new one on its input features. For an ``nn.Module`` the
layer is the last ``nn.Linear`` in ``modules()`` order (or the one named by
``gradients.representer_layer``) and its input is read by a forward hook; for the stacked
MLP it is the last hidden layer, computed for K models at once.
"""

from __future__ import annotations

import torch
from torch import nn

from datamodels.errors import CheckpointError, ConfigError
from datamodels.models.activations import Activation


def last_linear(
    module: nn.Module, num_classes: int, name: str | None = None
) -> tuple[nn.Linear | None, str]:
    """The final linear layer: the module named ``name`` (``gradients.representer_layer``),
    else the last ``nn.Linear``; (None, why) when there is none usable (one must map to
    ``num_classes`` outputs)."""
    if name is not None:
        named = dict(module.named_modules())
        if name not in named:
            return None, (
                f"gradients.representer_layer {name!r} is not a submodule "
                f"(have: {', '.join(n for n in named if n) or 'none'})"
            )
        if not isinstance(named[name], nn.Linear):
            return None, f"gradients.representer_layer {name!r} is not an nn.Linear"
        linears = [named[name]]
    else:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None, "the module has no nn.Linear layer whose input features they use"
    last = linears[-1]
    outputs = getattr(last, "out_features", None)
    if outputs != num_classes:
        return None, (
            f"its last nn.Linear maps to {outputs} outputs, not the {num_classes} classes"
        )
    return last, ""


@torch.no_grad()
def linear_inputs(
    module: nn.Module, linear: nn.Linear, x: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """float64[n, h]: the input of ``linear`` (a layer of ``module``, in eval mode) on each
    row of ``x[n, ...]``, read by a forward hook, ``chunk_size`` rows per forward."""
    dtype = next(module.parameters()).dtype
    features: list[torch.Tensor] = []
    for start in range(0, len(x), chunk_size):
        seen: list[torch.Tensor] = []
        def hook(_module, inputs, _output, seen=seen) -> None:
            seen.append(inputs[0])

        handle = linear.register_forward_hook(hook)
        try:
            module(x[start : start + chunk_size].to(dtype))
        finally:
            handle.remove()
        if len(seen) != 1 or seen[0].dim() != 2:
            raise ValueError(
                "the last nn.Linear must run once per forward on [batch, features] inputs; "
                f"it ran {len(seen)} times"
                + (f" on shape {tuple(seen[0].shape)}" if seen else "")
            )
        features.append(seen[0].detach().double())
    if not features:
        raise ValueError("linear_inputs needs at least one input")
    return torch.cat(features)


def stacked_features(
    bodies: list[torch.Tensor], x: torch.Tensor, activation: Activation
) -> torch.Tensor:
    """float[K, n, h]: the stacked MLP bodies' last hidden layer (``bodies``: the stacked
    layers without the output layer, ``[W1 [K, d, h], b1 [K, h], ...]``) on a shared batch
    ``x[n, ...]``."""
    h = x.reshape(len(x), -1).expand(len(bodies[0]), -1, -1)
    for layer in range(len(bodies) // 2):
        h = activation(torch.baddbmm(bodies[2 * layer + 1].unsqueeze(1), h, bodies[2 * layer]))
    return h


def module_features(
    arch, models: list[list[torch.Tensor]], data, config, xs
) -> list[torch.Tensor]:
    """``Architecture.probe_features`` of an ``nn.Module`` architecture: each model's module
    (built by ``arch``, its ``state_dict`` loaded from the checkpoint layers, in
    ``gradients.precision``, eval mode) read at its last ``nn.Linear``'s input."""
    dtype = torch.float64 if config.gradients.precision == "fp64" else torch.float32
    device = data.source.train_x.device
    classes = data.source.num_classes
    found: list[list[torch.Tensor]] = [[] for _ in xs]
    for layers in models:
        module = arch.build_module(config.model, data.source, 0)  # the seed is moot: all loaded
        names = list(module.state_dict())
        if len(names) != len(layers):
            raise CheckpointError(
                f"the checkpoint holds {len(layers)} tensors but model.arch={config.model.arch!r}"
                f" (width {config.model.width}) has {len(names)} in its state_dict; was it "
                "saved with other model settings?"
            )
        module.load_state_dict(dict(zip(names, layers, strict=True)))
        module = module.to(device=device, dtype=dtype).eval()
        linear, problem = last_linear(module, classes, config.gradients.representer_layer)
        if linear is None:
            raise ConfigError(
                f"transfer.recipe linear_probe reads the input of model.arch="
                f"{config.model.arch!r}'s last nn.Linear, but {problem}"
            )
        for features, x in zip(found, xs, strict=True):
            features.append(linear_inputs(module, linear, x))
    return [torch.stack(features) for features in found]
