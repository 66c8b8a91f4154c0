"""A user's code named in the config by import path (``"package.module:name"``).

``resolve_callable`` imports it and checks that it is callable; whatever goes wrong is one
``ConfigError`` line naming the config field. It imports no heavy dependency, so the data
sources (``dataset.factory``), the model factory (``model.factory``) and the trainers'
``train.recipe`` / ``train.output`` all resolve through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from datamodels.errors import ConfigError


def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"`` of an exception the user's code raised."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def resolve_callable(path: str, field_name: str) -> Callable:
    """``"package.module:name"`` (``name`` may be dotted) -> the callable; a path that does
    not import, or names nothing callable, is one ``ConfigError`` line naming the field."""
    module_name, _, attr = path.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        raise ConfigError(
            f"{field_name} {path!r}: no module named {missing!r} (is the package installed, "
            "or its folder on PYTHONPATH on every worker?)"
        ) from None
    except Exception as err:  # noqa: BLE001 - the user's module failed to import
        raise ConfigError(
            f"{field_name} {path!r}: importing {module_name} raised {first_line(err)}"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"{field_name} {path!r}: {module_name} has no attribute {attr!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{field_name} {path!r} is a {type(target).__name__}, not a function")
    return target
