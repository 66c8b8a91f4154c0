"""The plan kinds by name: `PLAN_KINDS`, and `plan_kind` to look one up.

Adding a kind is one module in this folder (a `PlanKind` subclass) and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from datamodels.errors import ConfigError
from datamodels.plans.alpha import Alpha
from datamodels.plans.alpha_grid import AlphaGrid
from datamodels.plans.base import PlanKind
from datamodels.plans.classes import Classes
from datamodels.plans.loo import Loo, PairedLoo
from datamodels.plans.removal import Removal
from datamodels.plans.single_model import SingleModel
from datamodels.plans.stored import Stored
from datamodels.plans.tmc import Tmc

PLAN_KINDS: dict[str, type[PlanKind]] = {
    "alpha": Alpha,
    "alpha_grid": AlphaGrid,
    "loo": Loo,
    "paired_loo": PairedLoo,
    "tmc": Tmc,
    "single_model": SingleModel,
    "stored": Stored,
    "removal": Removal,
    "classes": Classes,
}


def plan_kind(name: str, kinds: Mapping[str, type[PlanKind]] | None = None) -> PlanKind:
    """The kind called ``name`` (from ``kinds``, default `PLAN_KINDS`); a one-line
    `ConfigError` naming ``plans[].kind`` and the known kinds when there is none."""
    kinds = PLAN_KINDS if kinds is None else kinds
    if name not in kinds:
        raise ConfigError(
            f"plans[].kind: unknown plan kind {name!r}; choose one of {', '.join(kinds)}"
        )
    return kinds[name]()


def kinds_where(flag: str, kinds: Mapping[str, type[PlanKind]] | None = None) -> tuple[str, ...]:
    """The names of the kinds whose attribute ``flag`` is true (e.g. ``"stored"``)."""
    kinds = PLAN_KINDS if kinds is None else kinds
    return tuple(name for name, kind in kinds.items() if getattr(kind(), flag))


STORED_KINDS = kinds_where("stored")  # ("stored", "removal")
