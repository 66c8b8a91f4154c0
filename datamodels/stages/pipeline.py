"""The pipeline, declared: every stage of a run, what it reads, what it writes, and whether
``run`` walks it.

`PIPELINE` is data: one `StageSpec` per stage, in the order ``datamodels run`` walks the
default ones (prepare -> train -> fit -> estimate -> removal sets -> removal -> evaluate); the
others run when asked for (their command is ``command``). ``reads`` names the stages whose
outputs a stage reads: a stage whose upstream is stale is stale too (`stages.states`).
``produces`` lists the run-relative paths (``fnmatch`` patterns) the stage writes; together
with `STORE_OWNED` (what the store itself keeps: shards, locks, stashes, checkpoints) they
account for every file a run directory holds (tests/stages/test_pipeline.py checks a run).

Adding a stage: write its module (a `stages.base.Stage`), then one `StageSpec` line here
naming it, what it reads and produces, and the command that makes it; ``api.run`` walks it
when ``default`` is true (give it a runner in ``api.walk.RUNNERS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from datamodels.config import Config
from datamodels.errors import DatamodelsError
from datamodels.methods import METHODS
from datamodels.stages.alpha_effect import AlphaEffectStage
from datamodels.stages.attack import AttackStage
from datamodels.stages.attribute import IMPORTED_DIR, AttributeStage, recorded
from datamodels.stages.base import MARKERS_DIR, PARTS_DIR, Stage, read_marker
from datamodels.stages.browse_index import BrowseIndexStage
from datamodels.stages.estimate import EstimateStage
from datamodels.stages.evaluate import EvaluateStage
from datamodels.stages.fit import FitStage
from datamodels.stages.lds_curve import LdsCurveStage
from datamodels.stages.prepare import PrepareStage
from datamodels.stages.removal import RemovalSetsStage, RemovalStage, removal_plan
from datamodels.stages.sparse_layer import SparseLayerStage
from datamodels.stages.train import TrainStage
from datamodels.stages.transfer_counterfactual import (
    TransferCounterfactualStage,
    TransferMasksStage,
)
from datamodels.store import Run

# What the store keeps for itself (not any stage's output): written by `store` modules.
STORE_OWNED = (
    ".datamodels.lock", ".datamodels.lock.*", "*/.probe-*",
    "models/*", "models/_invalid/*",  # shards (train writes them through the store)
    "failures.parquet", "_failures/*",  # attempts spent; cleared budgets
    "plan_masks/*",  # stored-mask plans (removal sets, transfer counterfactual)
    "checkpoints/*", "checkpoints/*/*",  # per-model checkpoints and their index
    "_compacting/*", "_compacting/*/*",  # compaction stash
    "data/*",  # the beton and its local caches
    "trainer.json",  # the trainer path model.factory models took (store.trainer_choice)
)
# The stage contract's own bookkeeping (`stages.base`).
CONTRACT_OWNED = (f"{MARKERS_DIR}/*.json", f"{PARTS_DIR}/*", f"{PARTS_DIR}/*/*")


def _one(cls: type[Stage]) -> Callable[[Config, Run], list[Stage]]:
    return lambda config, run: [cls(config, run)]


def _recorded(cls) -> Callable[[Config, Run], list[Stage]]:
    """A stage with its own settings: as its marker recorded them (none before it ran)."""
    return lambda config, run: [cls.as_recorded(config, run)] if read_marker(run, cls.name) else []


def _markers(run: Run, prefix: str) -> list[dict]:
    names = run.fs.listdir(MARKERS_DIR, ".json")
    return [read_marker(run, n[:-5]) for n in names if n.startswith(prefix)]


def _estimates(config: Config, run: Run) -> list[Stage]:
    """One stage per estimator the run has run (its ``estimate-<method>`` marker)."""
    stages = []
    for record in _markers(run, "estimate-"):
        method = record["stage"].removeprefix("estimate-")
        if method in METHODS:
            stages.append(EstimateStage(config, run, method))
    return stages


def _attributes(config: Config, run: Run) -> list[Stage]:
    """One stage per method ``attribute`` ran (its ``attribute-<method>`` marker)."""
    names = [r["stage"].removeprefix("attribute-") for r in _markers(run, "attribute-")]
    return recorded(config, run, names)


def _attacks(config: Config, run: Run) -> list[Stage]:
    keys = ("target", "budget", "point", "max_iter")
    return [AttackStage(config, run, *(r["fingerprint"][k] for k in keys))
            for r in _markers(run, "attack-")]


def _removal(cls: type[Stage]) -> Callable[[Config, Run], list[Stage]]:
    return lambda config, run: [cls(config, run)] if removal_plan(config) is not None else []


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline (module docstring)."""

    name: str
    classes: tuple[type[Stage], ...]
    reads: tuple[str, ...]
    default: bool
    produces: tuple[str, ...]
    command: str  # what makes it: `datamodels <command> RUN`
    instances: Callable[[Config, Run], list[Stage]] = field(repr=False, default=None)

    def stages(self, config: Config, run: Run) -> list[Stage]:
        """The stage objects status judges (none for a stage that does not apply)."""
        try:
            return (self.instances or _one(self.classes[0]))(config, run)
        except DatamodelsError:
            return []  # a stage that cannot be built on this run (no checkpoints...)


PIPELINE: tuple[StageSpec, ...] = (
    StageSpec("prepare", (PrepareStage,), (), True,
              ("config.yaml", "examples.parquet", "transfer/source_classes.parquet"),
              "prepare CONFIG --out"),
    StageSpec("train", (TrainStage,), ("prepare",), True, (), "train CONFIG --out"),
    StageSpec("fit", (FitStage,), ("train",), True,
              ("datamodels/*.parquet", "scores/datamodels.parquet"), "fit"),
    StageSpec("estimate", (EstimateStage,), ("train",), True,
              ("scores/*.parquet", "self_scores/*.parquet"), "estimate", _estimates),
    StageSpec("removal_sets", (RemovalSetsStage,), ("fit", "estimate"), True,
              ("removals/sets.parquet",), "removal", _removal(RemovalSetsStage)),
    StageSpec("removal", (RemovalStage,), ("removal_sets", "train"), True,
              ("removals/results.parquet",), "removal", _removal(RemovalStage)),
    StageSpec("evaluate", (EvaluateStage,), ("fit", "estimate", "removal"), True,
              ("evaluation.parquet",), "evaluate"),
    StageSpec("attribute", (AttributeStage,), ("prepare",), False,
              ("scores/*.parquet", "self_scores/*.parquet", f"{IMPORTED_DIR}/*.pt"),
              "attribute CONFIG -c STATE_DICT.pt --out", _attributes),
    StageSpec("alpha_effect", (AlphaEffectStage,), ("train", "fit"), False,
              ("applications/alpha_effect.parquet",), "alpha-effect",
              _recorded(AlphaEffectStage)),
    StageSpec("lds_curve", (LdsCurveStage,), ("train",), False,
              ("applications/lds_curve.parquet",), "lds-curve", _recorded(LdsCurveStage)),
    StageSpec("sparse_layer", (SparseLayerStage,), ("train",), False,
              ("sparse_layer/*.parquet",), "sparse-layer",
              lambda config, run: ([SparseLayerStage(config, run)]
                                   if read_marker(run, SparseLayerStage.name) else [])),
    StageSpec("attack", (AttackStage,), ("train",), False, ("attacks/*.parquet",),
              "attack", _attacks),
    StageSpec("transfer_masks", (TransferMasksStage,), ("fit",), False, (),
              "transfer-counterfactual", _recorded(TransferMasksStage)),
    StageSpec("transfer_counterfactual", (TransferCounterfactualStage,),
              ("transfer_masks", "train"), False, ("transfer/counterfactual_*.parquet",),
              "transfer-counterfactual", _recorded(TransferCounterfactualStage)),
    StageSpec("browse_index", (BrowseIndexStage,), ("fit", "estimate", "train"), False,
              ("browse/*.parquet",), "serve --index",
              lambda config, run: ([BrowseIndexStage(config, run)]
                                   if read_marker(run, BrowseIndexStage.name) else [])),
)
SPECS = {spec.name: spec for spec in PIPELINE}


def spec(name: str) -> StageSpec:
    """The stage named ``name`` (a one-line error listing the stages otherwise)."""
    if name not in SPECS:
        raise DatamodelsError(f"unknown stage {name!r}; choose from: {', '.join(SPECS)}")
    return SPECS[name]


def spec_of(stage: Stage) -> StageSpec:
    """The spec a stage object belongs to."""
    return next(s for s in PIPELINE if isinstance(stage, s.classes))


def default_stages() -> list[str]:
    """The stages ``run`` walks, in order."""
    return [s.name for s in PIPELINE if s.default]


def declared_paths() -> tuple[str, ...]:
    """Every pattern a run's file may match: the stages' outputs, the contract's markers and
    parts, the store's own files."""
    return tuple(p for s in PIPELINE for p in s.produces) + CONTRACT_OWNED + STORE_OWNED
