"""The ``nn.Module`` of ``model.factory``: the user's function, called with ``model.kwargs``
(plus ``num_classes`` / ``input_shape`` when it takes them and ``kwargs`` does not give
them), under ``torch.manual_seed(seed)`` inside ``fork_rng`` so a seed fixes its initial
weights and the process's generators are left as they were."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from datamodels.errors import ConfigError
from datamodels.models.callables import first_line, resolve_callable


def build_factory_module(
    model, num_classes: int, input_shape: tuple[int, ...], seed: int
) -> nn.Module:
    """``model.factory(**model.kwargs)`` (``model``: the ``ModelConfig``), seeded; what it
    raises or returns instead of a module is one line."""
    factory = resolve_callable(str(model.factory), "model.factory")
    kwargs = dict(model.kwargs)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    given = {"num_classes": num_classes, "input_shape": tuple(input_shape)}
    for name, value in given.items():
        if name in parameters and name not in kwargs:
            kwargs[name] = value
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            module = factory(**kwargs)
        except Exception as err:  # noqa: BLE001 - the user's factory: one line names it
            raise ConfigError(
                f"model.factory {model.factory!r} raised {first_line(err)} "
                f"(called with {', '.join(sorted(kwargs)) or 'no arguments'})"
            ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"model.factory {model.factory!r} returned a {type(module).__name__}, not a "
            "torch.nn.Module"
        )
    return module
