"""``mlp``: the multi-layer perceptron (``datamodels.models.mlp``).

Trains K models per pass as stacked parameters on resident data (``batched_mlp``), else one
``nn.Sequential`` at a time from the same initial values. Checkpoints hold the stacked
layout ``[W1 [d, h], b1, ..., Wout [h, C], bout]``; its head is the last hidden layer.
"""

from __future__ import annotations

from typing import Any

from datamodels.models.base import Architecture


class MLP(Architecture):
    name = "mlp"
    trainer = "batched_mlp"
    functional = "mlp"
    dense = True
    head = "stacked"
    accepts_activation = True
    stacked = True
    example_weights = True
    finetunes = True
    replayed_by = ("metagradient", "hydra")

    def build_module(self, model, data, seed: int) -> Any:
        from torch import nn  # torch

        from datamodels.models.activations import activation_for  # torch
        from datamodels.models.mlp import init_params, layer_sizes, to_module  # torch

        sizes = layer_sizes(data.in_dim, model.hidden, model.depth, data.num_classes)
        return nn.Sequential(
            nn.Flatten(), to_module(init_params(seed, sizes), activation_for(model))
        )

    def module_layers(self, module) -> list:
        """The stacked layout ``[W1 [d, h], b1, ...]`` (``nn.Linear`` stores W transposed)."""
        from torch import nn  # torch

        layers = []
        for linear in (m for m in module.modules() if isinstance(m, nn.Linear)):
            layers += [linear.weight.detach().T.cpu().clone(), linear.bias.detach().cpu().clone()]
        return layers

    def probe_features(self, models, data, config, *xs) -> list:
        """The K stacked bodies' last hidden layer, float64[K, n, h] per batch."""
        import torch  # torch

        from datamodels.models.activations import activation_for  # torch
        from datamodels.models.head import stacked_features  # torch

        K = len(models)
        device = data.eval_x.device
        bodies = [torch.stack(group).to(device) for group in zip(*models, strict=True)][:-2]
        activation = activation_for(config.model)
        out = []
        for x in xs:
            if bodies:
                out.append(stacked_features(bodies, x, activation))
            else:
                out.append(x.reshape(len(x), -1).expand(K, -1, -1))
        return out
