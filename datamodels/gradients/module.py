"""Any ``nn.Module`` as a ``FunctionalModel``: ``torch.func.functional_call`` over a flat vector.

``module_model(module, ...)`` flattens the module's *trainable* parameters (those with
``requires_grad``, in ``named_parameters`` order) into ``params: float[P]`` and runs

    logits_fn(params, x) = functional_call(module, (unflatten(params), fixed), x)

so every estimator of this package (per-example gradients by ``vmap(grad)``, HVPs, TRAK's
projection, TracIn) works on it unchanged. ``fixed`` holds everything else, taken from the
checkpoint and never differentiated: the buffers (BatchNorm running mean / variance, batch
counters) and frozen parameters (e.g. a fixed whitening layer).

The module is put in **eval mode**, on purpose: BatchNorm then normalises with the running
statistics saved in the checkpoint, so each example's output depends on that example alone
(in train mode it would depend on the rest of its batch, and per-example gradients, the
Hessian of a mean of per-example terms and TRAK's features would not be defined). The
function differentiated is therefore the model as it is evaluated (its margins in
``models/``), not the batch-statistics function it was trained with.

Objective: J = mean cross-entropy + (λ_wd/2)·||θ||² over every trainable parameter, as SGD
with coupled weight decay (``resnet9``) minimises; for a recipe with another regulariser
(airbench's decoupled decay) it is the nearest objective of this form.

Representer points need the last linear layer: the last ``nn.Linear`` in ``modules()`` order,
found automatically (``models.head.last_linear``); a forward hook reads its input (features
f) and substitutes its output z by a leaf, so ∂logits/∂z comes from autograd whatever follows
the layer (e.g. resnet9's 1/8 output scale). It is usable when it maps to ``num_classes``
outputs and runs once per forward; ``head_problem`` says why not otherwise.

``checkpoint_model`` turns a saved checkpoint into a ``FunctionalModel`` by the functional form
its architecture declares (``Architecture.functional``: ``FUNCTIONAL_FORMS``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from datamodels.errors import CheckpointError
from datamodels.gradients.model import FunctionalModel, logreg_model, mlp_model
from datamodels.models import Architecture, architecture
from datamodels.models.activations import activation_for
from datamodels.models.head import last_linear


def module_model(
    module: nn.Module, num_classes: int, weight_decay: float, label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    head: str | None = None,
) -> FunctionalModel:
    """``module`` (its trained state loaded) -> ``FunctionalModel`` with ``params``
    ``dtype[P]`` on ``device``; the module is moved there, set to eval mode and kept by the
    closures (do not train it afterwards). ``head``: the representer's final linear layer by
    name (default: the last ``nn.Linear``)."""
    module = module.to(device=device, dtype=dtype).eval()
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the module has no trainable parameters (none has requires_grad)")
    names = [name for name, _ in trainable]
    shapes = [tuple(p.shape) for _, p in trainable]
    offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shapes])]).tolist()
    fixed = {name: p.detach() for name, p in module.named_parameters() if not p.requires_grad}
    fixed.update({name: b.detach() for name, b in module.named_buffers()})
    fixed_as: dict[torch.dtype, dict[str, torch.Tensor]] = {dtype: fixed}

    def state(p: torch.Tensor) -> tuple[dict, dict]:
        if p.dtype not in fixed_as:  # e.g. float64 checks of a float32 model
            fixed_as[p.dtype] = {
                n: t.to(p.dtype) if t.is_floating_point() else t for n, t in fixed.items()
            }
        params = {
            name: p[offsets[i] : offsets[i + 1]].view(shapes[i]) for i, name in enumerate(names)
        }
        return params, fixed_as[p.dtype]

    def logits_fn(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, state(p), (x.to(p.dtype),))

    linear, problem = last_linear(module, num_classes, head)
    head_io = None if linear is None else _hooked_head(linear, logits_fn)
    flat = torch.cat([p.detach().reshape(-1) for _, p in trainable]).clone()
    return FunctionalModel(
        flat, logits_fn, num_classes, float(weight_decay), torch.ones_like(flat),
        torch.zeros(0, flat.numel(), dtype=flat.dtype, device=flat.device),
        float(label_smoothing), head_io=head_io, head_problem=problem, vmap_hvp=False,
        module=module,
    )


def _hooked_head(linear: nn.Linear, logits_fn):
    def head_io(p: torch.Tensor, x: torch.Tensor):
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(_module, inputs, output):
            leaf = output.detach().requires_grad_(True)
            seen.append((inputs[0].detach(), leaf))
            return leaf

        handle = linear.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = logits_fn(p.detach(), x)
        finally:
            handle.remove()
        if len(seen) != 1 or seen[0][0].dim() != 2:
            raise ValueError(
                "the last nn.Linear must run once per forward on [batch, features] inputs; "
                f"it ran {len(seen)} times"
                + (f" on shape {tuple(seen[0][0].shape)}" if seen else "")
            )
        features, z = seen[0]
        return logits, features, z

    return head_io


def _logreg_form(config, data, layers: list[torch.Tensor], arch: Architecture) -> FunctionalModel:
    layers = [t.to(data.train_x.device) for t in layers]
    flat = torch.cat([layers[0].reshape(-1), layers[1].reshape(-1)])
    return logreg_model(flat, data.in_dim, data.num_classes, config.train.weight_decay)


def _mlp_form(config, data, layers: list[torch.Tensor], arch: Architecture) -> FunctionalModel:
    layers = [t.to(data.train_x.device) for t in layers]
    return mlp_model(
        layers, config.train.weight_decay, config.train.label_smoothing,
        activation_for(config.model),
    )


def _module_form(config, data, layers: list[torch.Tensor], arch: Architecture) -> FunctionalModel:
    module = arch.build_module(config.model, data, 0)  # the seed is moot: every tensor is loaded
    names = list(module.state_dict())
    if len(names) != len(layers):
        raise CheckpointError(
            f"the checkpoint holds {len(layers)} tensors but model.arch={config.model.arch!r} "
            f"(width {config.model.width}) has {len(names)} in its state_dict; was it saved "
            "with other model settings?"
        )
    module.load_state_dict(dict(zip(names, layers, strict=True)))
    dtype = torch.float64 if config.gradients.precision == "fp64" else torch.float32
    return module_model(
        module, data.num_classes, config.train.weight_decay, config.train.label_smoothing,
        dtype=dtype, device=data.train_x.device, head=config.gradients.representer_layer,
    )


# ``Architecture.functional`` -> (config, data, checkpoint layers, arch) -> FunctionalModel
FUNCTIONAL_FORMS = {"logreg": _logreg_form, "mlp": _mlp_form, "module": _module_form}


def checkpoint_model(
    config, data, layers: list[torch.Tensor], arch: Architecture | None = None
) -> FunctionalModel:
    """A checkpoint's layers as a ``FunctionalModel`` on the data's device, in the functional
    form of its architecture (``arch``, by default ``model.arch``'s): ``logreg`` and ``mlp``
    in float64; any other as the ``nn.Module`` that ``Architecture.build_module`` builds, its
    ``state_dict`` filled from the checkpoint (the tensors in order), in
    ``gradients.precision``."""
    arch = arch or architecture(config.model.arch)
    if arch.functional is None:
        raise ValueError(f"model.arch {arch.name!r} trains no model: it has no functional form")
    return FUNCTIONAL_FORMS[arch.functional](config, data, layers, arch)
