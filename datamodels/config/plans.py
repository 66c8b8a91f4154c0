"""The ``plans`` section: `PlanConfig` (a named set of models, one of the plan kinds) and the
checks each plan kind makes, of its own fields (`check_plan_fields`) and of the rest of the
config (`check_plan_kinds`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from datamodels.config.base import Section, check_name
from datamodels.models import architecture
from datamodels.plans.registry import PLAN_KINDS, plan_kind

if TYPE_CHECKING:
    from datamodels.config.root import Config


class PlanConfig(Section):
    """A named set of models.

    * ``alpha``: ``count`` masks, each point included with probability ``alpha``.
    * ``alpha_grid``: for Shapley via Owen's identity, α spread over (0, 1): ``levels``
      Gauss-Legendre nodes with ``count`` masks each, or (``levels: 0``) ``count`` masks
      with α ~ U(0, 1) drawn per mask.
    * ``loo``: the full training set plus one mask per left-out point (``points``: train
      positions; all when omitted).
    * ``paired_loo``: the ``loo`` masks, every mask of a replicate trained with the full
      model's seed and batch order, the left-out point weighted 0 (batched mlp trainer).
    * ``tmc``: ``count`` random permutations; a task trains growing prefixes of one and
      stops once test accuracy stays within ``tolerance`` of the full-data model's for
      ``patience`` consecutive prefixes (Ghorbani & Zou 2019).
    * ``single_model``: the single-model setting (Ilyas & Engstrom 2025): every model has the
      same seed, initialisation and batch order over the *full* training set; mask 0 keeps
      everything, then ``count`` masks per fraction in ``drops`` each drop that fraction of
      the points at random. A dropped point keeps its place in every batch with loss
      weight 0 (the trainer's ``example_weights``); the stored mask is the kept set.
    * ``stored``: ``count`` masks read from ``plan_masks/<name>.parquet`` (the full training
      set minus each row's ``removed`` train positions), a table written once, after the
      config, by whatever chooses the sets (`datamodels.plans.write_plan_masks`); ``train``
      skips the plan until the table exists.
    * ``removal``: a stored-mask plan whose table the ``removal`` stage writes from the score
      tables (counterfactual removal, brittleness by retraining): for ``count`` test targets
      (``targets``: explicit eval positions instead; default: correctly predicted ones, drawn
      with the config seed), each of ``methods`` and each ``k`` in ``ks`` (plus, with
      ``brittle``, the method's predicted smallest flipping k, at most ``brittle_max`` · n_train),
      the k most helpful training points are removed; mask 0 keeps every point (the baseline).

    * ``classes`` (transfer runs): ``count`` masks over the source classes, each choosing
      exactly round(``alpha`` · C) of the C source classes uniformly at random.

    ``seeds`` trainings (different seeds) per mask (for ``single_model``: one shared seed
    per replicate).
    """

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    kind: str = "alpha"  # a name of datamodels.plans.PLAN_KINDS
    alpha: float = Field(0.5, gt=0.0, le=1.0)
    count: int | None = Field(None, ge=1)
    seeds: int = Field(1, ge=1)
    levels: int = Field(8, ge=0, le=256)
    points: tuple[int, ...] | None = None
    tolerance: float = Field(0.01, ge=0.0)
    patience: int = Field(5, ge=1)
    drops: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5)
    # removal plans (defaults leave the hash of every other plan unchanged)
    ks: tuple[int, ...] = (10, 50)
    methods: tuple[str, ...] = ("datamodels",)
    targets: tuple[int, ...] | None = None
    brittle: bool = True
    brittle_max: float = Field(0.05, gt=0.0, le=1.0)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return check_name(kind, PLAN_KINDS)

    @model_validator(mode="after")
    def _kind_fields(self) -> PlanConfig:
        check_plan_fields(self)
        return self


def default_plans() -> tuple[PlanConfig, ...]:
    """``train`` (2000 models) for fitting, ``eval`` (200) for LDS, both at α = 0.5."""
    return (
        PlanConfig(name="train", alpha=0.5, count=2000),
        PlanConfig(name="eval", alpha=0.5, count=200),
    )


def check_plan_fields(plan: PlanConfig) -> None:
    """The fields the plan's kind needs (``PlanKind.validate``: e.g. ``removal`` a ``count``
    or ``targets``, ``single_model`` ``drops`` in (0, 1)). Raises ValueError naming the
    field."""
    plan_kind(plan.kind).validate(plan)


def check_plan_kinds(config: Config) -> None:
    """What the plan kinds ask of the rest of the config: a checkpointed plan's kind supports
    checkpoints (not a walk, whose models are prefixes, nor a stored kind, whose masks exist
    only after fit); at most one plan of a one-per-config kind (``removal``); a kind trained
    with per-example loss weights (``single_model``) needs an architecture that takes them
    on the batched trainer; a kind over source classes (``classes``) needs a ``transfer``
    section, and a transfer run has only kinds that can range over source classes. Raises
    ValueError naming the plans."""
    checkpointed = config.checkpoints.plan
    if checkpointed is not None:
        kind = plan_kind(config.plan(checkpointed).kind)
        if kind.walks:
            raise ValueError(
                f"checkpoints.plan {checkpointed!r} is a {kind.name} plan "
                "(its models are prefixes of "
                "walks); choose an alpha, alpha_grid or loo plan"
            )
    for name in PLAN_KINDS:
        if not plan_kind(name).one_per_config:
            continue
        several = [p.name for p in config.plans_of_kind(name)]
        if len(several) > 1:
            raise ValueError(
                f"plans {', '.join(several)}: one {name} plan per config (its tables are "
                "removals/sets.parquet and removals/results.parquet); merge their ks and methods"
            )
    if checkpointed is not None and plan_kind(config.plan(checkpointed).kind).stored:
        raise ValueError(
            f"checkpoints.plan {checkpointed!r} is a stored-mask plan (its masks "
            "exist only after fit); choose an alpha, alpha_grid or loo plan"
        )
    weighted = [p.name for p in config.plans if plan_kind(p.kind).example_weights]
    if weighted and (
        not architecture(config.model.arch).example_weights
        or config.resources.trainer != "batched"
    ):
        raise ValueError(
            f"plans {', '.join(weighted)}: single_model plans and paired_loo plans (per-example "
            "loss weights) train with the batched mlp trainer only (model.arch: mlp, "
            f"resources.trainer: batched); this config has model.arch={config.model.arch!r}"
        )
    if config.transfer is None:
        classes = [p.name for p in config.plans if plan_kind(p.kind).needs_transfer]
        if classes:
            raise ValueError(
                f"plans {', '.join(classes)}: kind classes samples source classes; add a "
                "transfer section (transfer.source) or use kind alpha"
            )
        return
    wrong = [p.name for p in config.plans if not plan_kind(p.kind).in_transfer]
    if wrong:
        raise ValueError(
            f"plans {', '.join(wrong)}: a transfer run's masks are over source classes; "
            "use plan kinds classes, alpha, alpha_grid or stored"
        )
