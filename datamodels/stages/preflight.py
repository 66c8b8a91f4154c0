"""Checks across a config's sections that need the estimator registry, made before anything
trains: a config whose later stages need what its earlier settings rule out is refused in one
line naming the fields and the fix, instead of failing after hours of training.

* `check_config`: a method named in ``estimate.methods`` or a removal plan's ``methods``
  that reads checkpoints (or replays ``checkpoints.plan``) while ``checkpoints.plan`` is null;
  a removal plan naming a method that will not run (unknown, left out of
  ``estimate.methods``, run only on request, reading a plan kind the config lacks, or
  refused by the method's own check); ``fit.plan`` naming no plan, and ``estimate.plan``
  naming none while a named method reads it.
* `check_local_gpus`: ``resources.num_gpus`` above 0 for a run on this machine (no cluster
  address) without a CUDA device: local Ray would wait forever for a GPU.

The config package cannot see the methods (it sits below them), so these checks live here;
``prepare`` (and so ``train`` and ``run``) calls `check_config` before it writes anything.
"""

from __future__ import annotations

import torch

from datamodels.config import Config
from datamodels.errors import ConfigError, EstimateError
from datamodels.methods import METHODS, PER_MODEL, Method

FITTED = "datamodels"  # the fit stage's score table; always made by ``run``


def _needs_checkpoints(cls: type[Method]) -> bool:
    return cls.source in PER_MODEL


def _named_method(config: Config, name: str, where: str) -> type[Method]:
    """The class of method ``name`` named in ``where``, checked runnable under ``config``."""
    if name not in METHODS:
        raise ConfigError(
            f"{where} names {name!r}, which is no method; choose from: "
            f"{', '.join((FITTED, *METHODS))}"
        )
    cls = METHODS[name]
    if _needs_checkpoints(cls) and config.checkpoints.plan is None:
        reads = "replays the models of" if cls.source == "replay" else "reads the checkpoints of"
        raise ConfigError(
            f"{where} names {name}, which {reads} checkpoints.plan, but checkpoints.plan is "
            f"null; set it (e.g. --set checkpoints.plan=train) or leave {name} out of {where}"
        )
    kinds, plans = cls.plan_kinds, [p.name for p in config.plans]
    if cls.source == "plan" and not kinds and config.estimate.plan not in plans:
        raise ConfigError(
            f"{where} names {name}, which reads the models of estimate.plan "
            f"{config.estimate.plan!r}, and that is not a plan; set estimate.plan to one of: "
            f"{', '.join(plans)}"
        )
    if kinds and not config.plans_of_kind(*kinds):
        raise ConfigError(
            f"{where} names {name}, which reads a plan of kind {' or '.join(kinds)}; add one "
            f"to plans or leave {name} out of {where}"
        )
    try:
        cls(config).check()
    except EstimateError as err:
        raise ConfigError(f"{where} names {name}: {err}") from None
    return cls


def check_config(config: Config) -> None:
    """Refuse (one `ConfigError` line) a config whose later stages cannot run as set."""
    names = [p.name for p in config.plans]
    if config.fit.plan not in names:
        raise ConfigError(
            f"fit.plan {config.fit.plan!r} is not a plan (plans: {', '.join(names)}); name "
            "the plan whose models the datamodels are fitted on"
        )
    chosen = config.estimate.methods
    for name in chosen or ():
        _named_method(config, name, "estimate.methods")
    for plan in config.plans_of_kind("removal"):
        where = f"plans.{plan.name}.methods"
        for name in plan.methods:
            if name == FITTED:
                continue
            cls = _named_method(config, name, where)
            if chosen is not None and name not in chosen:
                raise ConfigError(
                    f"{where} names {name}, which estimate.methods leaves out (it would have "
                    f"no scores to remove by); add {name} to estimate.methods or leave it out "
                    f"of {where}"
                )
            if chosen is None and cls.on_request:
                raise ConfigError(
                    f"{where} names {name}, which runs only when named; add it to "
                    f"estimate.methods (with the others to compute) or leave it out of {where}"
                )


def check_local_gpus(config: Config, cluster: str | None) -> None:
    """Refuse ``resources.num_gpus`` > 0 where tasks run on this machine (``cluster`` None)
    and it has no CUDA device; on a cluster, the cluster's nodes decide."""
    if cluster or config.resources.num_gpus <= 0 or torch.cuda.is_available():
        return
    raise ConfigError(
        f"resources.num_gpus={config.resources.num_gpus:g} but this machine has no CUDA "
        "device (torch.cuda.is_available() is False), so no local task could start; set "
        "--set resources.num_gpus=0, or --address a Ray cluster with GPUs"
    )
