"""The questions the estimators ask of a config's architecture, plan kinds and transfer mode,
one small function each: the one place to answer them from the architecture and plan-kind
registries. (How the gradient estimators see an architecture's parameters is
``gradients.checkpointed.functional_form``.)"""

from __future__ import annotations

from datamodels.config import Config, PlanConfig
from datamodels.models import architecture


def trains_model(config: Config) -> bool:
    """Whether the architecture trains a model at all (``null`` trains none)."""
    return architecture(config.model.arch).trains


def replay_form(config: Config) -> str | None:
    """How a model of this architecture can be replayed for the metagradient: ``mlp`` (the
    batched trainer's SGD run, replayed step by step), ``logreg`` (a converged optimum,
    refit) or None (it cannot be)."""
    arch = architecture(config.model.arch)
    return arch.functional if arch.replayed_by else None


def first_plan_of_kind(config: Config, kinds: tuple[str, ...]) -> PlanConfig | None:
    """The config's first plan whose kind is one of ``kinds`` (None: there is none)."""
    return next((plan for plan in config.plans if plan.kind in kinds), None)


def is_transfer(config: Config) -> bool:
    """Whether the run's training points are source classes (a transfer run), not examples."""
    return config.transfer is not None
