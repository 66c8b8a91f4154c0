"""Architectures (``model.arch``): the registry and the networks.

``ARCHITECTURES`` maps each name to its declaration (``base.Architecture``: how it trains,
its functional form for the gradient estimators, its head, what its trainer accepts), one
module per architecture in ``archs/``; ``architecture(name)`` looks one up. Importing this
package imports no torch (config validates ``model.arch`` against the map's names). The
networks themselves: ``mlp.py`` (stacked and ``nn.Sequential``), ``resnet9.py``,
``fastnet.py``, ``factory.py`` (``model.factory``), ``activations.py``; ``head.py`` reads a
network's last linear layer and its input features; ``callables.py`` resolves the user's
``"package.module:name"`` paths.

Adding an architecture: a subclass of ``Architecture`` in ``archs/<name>.py`` (its trainer
path, functional form, head, ``build_module``) and one line below.
"""

from __future__ import annotations

from collections.abc import Mapping

from datamodels.errors import ConfigError
from datamodels.models.archs.custom import Custom
from datamodels.models.archs.fastnet import FastNet
from datamodels.models.archs.logreg import LogReg
from datamodels.models.archs.mlp import MLP
from datamodels.models.archs.null import Null
from datamodels.models.archs.resnet9 import ResNet9
from datamodels.models.base import Architecture

ARCHITECTURES: dict[str, type[Architecture]] = {
    "logreg": LogReg,
    "mlp": MLP,
    "resnet9": ResNet9,
    "fastnet": FastNet,
    "null": Null,
    "custom": Custom,
}


def architecture(
    name: str, known: Mapping[str, type[Architecture]] | None = None
) -> Architecture:
    """The declaration of ``model.arch`` ``name`` (from ``known``, by default
    ``ARCHITECTURES``); an unknown name is one ``ConfigError`` line listing the known ones."""
    known = ARCHITECTURES if known is None else known
    if name not in known:
        raise ConfigError(
            f"model.arch {name!r} is not an architecture; choose from: {', '.join(known)}"
        )
    return known[name]()


__all__ = ["ARCHITECTURES", "Architecture", "architecture"]
