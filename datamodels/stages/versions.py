"""The code versions a stage declares (`Stage.versions`), named the same way by every stage
that depends on the same code.

A name is ``<kind>.<producer>``: ``trainer.lbfgs`` (`trainers.versions`), ``method.shapley``
(``Method.version``), ``fit.datamodels`` (`regress.select.VERSION`), ``metric.lds``
(``VERSION`` of a module of `datamodels.metrics`), ``application.removal``,
``application.alpha_effect``, ``application.lds_curve``, ``application.transfer`` (the modules
of `datamodels.applications`), ``regress.glm`` (the sparse decision layer) and
``attack.influence_pert`` (`gradients.influence_pert.ATTACK_VERSION`). Each constant is read
when the stage asks (a test may patch it), not when this module is imported; the modules that
import torch are imported by the helpers that need them (``evaluate``'s stays light).
"""

from __future__ import annotations

from datamodels.metrics import lds, loo, mislabel
from datamodels.metrics import removal as removal_metrics

METRICS = {"lds": lds, "loo": loo, "mislabel": mislabel, "removal": removal_metrics}


def trainer_part_versions(parts: dict[str, int]) -> dict[str, int]:
    """``trainer.<path>`` for each trainer part (`trainers.api.trainer_versions`)."""
    return {f"trainer.{name}": version for name, version in parts.items()}


def method_versions(names: list[str] | tuple[str, ...], methods: dict | None = None) -> dict:
    """``method.<name>`` for each estimator named (its ``Method.version``; ``methods``: the
    registry to look it up in, default ``methods.METHODS``)."""
    from datamodels.methods import method as lookup  # torch: the estimator registry

    return {f"method.{name}": lookup(name, methods).version for name in names}


def fit_versions() -> dict[str, int]:
    """The datamodel regression of ``fit`` (and of every stage that fits datamodels)."""
    from datamodels.regress.select import VERSION  # torch: the LASSO path

    return {"fit.datamodels": VERSION}


def metric_versions(*names: str) -> dict[str, int]:
    """``metric.<name>`` for each module of `datamodels.metrics` named."""
    return {f"metric.{name}": METRICS[name].VERSION for name in names}


def removal_versions() -> dict[str, int]:
    from datamodels.applications.removal import VERSION  # torch: as the removal stage

    return {"application.removal": VERSION}


def alpha_effect_versions() -> dict[str, int]:
    from datamodels.applications.alpha_effect import ALPHA_EFFECT_VERSION  # torch: LASSO

    return ({"application.alpha_effect": ALPHA_EFFECT_VERSION} | fit_versions()
            | metric_versions("lds"))


def lds_curve_versions() -> dict[str, int]:
    from datamodels.applications.alpha_effect import LDS_CURVE_VERSION  # torch: LASSO

    return ({"application.lds_curve": LDS_CURVE_VERSION} | fit_versions()
            | metric_versions("lds"))


def transfer_versions() -> dict[str, int]:
    from datamodels.applications.transfer import VERSION  # torch: as the transfer stages

    return {"application.transfer": VERSION}


def sparse_layer_versions() -> dict[str, int]:
    from datamodels.regress.glm import VERSION  # torch: the GLM path

    return {"regress.glm": VERSION}


def attack_versions(trainer_parts: dict[str, int]) -> dict[str, int]:
    """The attack's own steps, the influence it picks its point by (``influence_pert``) and
    the trainer it retrains with."""
    from datamodels.gradients.influence_pert import ATTACK_VERSION  # torch: its gradients

    return ({"attack.influence_pert": ATTACK_VERSION}
            | method_versions(["influence_pert"]) | trainer_part_versions(trainer_parts))
