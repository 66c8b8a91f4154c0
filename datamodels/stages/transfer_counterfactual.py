"""The transfer counterfactual's two stages: the masks, and the tables of the retrained models.

A transfer run's counterfactual leaves the ``k`` most harmful source classes out of mask 1 of
the config's ``stored`` plan of two masks (mask 0 keeps every class), trains that plan through
the ``train`` stage like any other, and compares target test accuracy:

1. `TransferMasksStage` (``transfer_masks``): ``plan_masks/<plan>.parquet`` from the
   datamodels' total weights (`applications.transfer.removed_classes`). The masks are
   written once: a later call that would remove other classes is refused in one line.
2. `TransferCounterfactualStage` (``transfer_counterfactual``): the plan's trained models
   reduced to ``transfer/counterfactual_{models,removed,margins}.parquet``, read back by
   `applications.transfer.read_counterfactual`.

`datamodels.api.transfer_counterfactual` runs 1, ``train``, 2 under the run's lock.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datamodels.applications.transfer import (
    COUNTERFACTUAL_MARGINS_PATH,
    COUNTERFACTUAL_MARGINS_SCHEMA,
    COUNTERFACTUAL_MODELS_PATH,
    COUNTERFACTUAL_MODELS_SCHEMA,
    COUNTERFACTUAL_REMOVED_PATH,
    COUNTERFACTUAL_REMOVED_SCHEMA,
    counterfactual_plan,
    counterfactual_tables,
    removed_classes,
)
from datamodels.config import Config
from datamodels.errors import DatamodelsError
from datamodels.stages.base import Stage, Unit, recorded_settings
from datamodels.stages.versions import transfer_versions
from datamodels.store import Run


class _Counterfactual(Stage):
    """What both stages share: the settings (``k``, the plan) and one unit."""

    what = "tables"

    def __init__(self, config: Config, run: Run, k: int = 4, plan: str | None = None) -> None:
        super().__init__(config, run)
        self.k = int(k)
        self.plan = counterfactual_plan(config, plan)
        if self.k < 1:
            raise DatamodelsError(f"--k {k}: remove at least one source class")

    @classmethod
    def as_recorded(cls, config: Config, run: Run) -> _Counterfactual:
        """The stage with the settings its marker recorded (for status and the report)."""
        return cls(config, run, **recorded_settings(run, cls.name))

    @property
    def settings(self) -> dict:
        return {"k": self.k, "plan": self.plan.name}

    def versions(self) -> dict[str, int]:
        return transfer_versions()

    def units(self) -> list[Unit]:
        return [Unit("table")]

    def done(self, unit: Unit) -> bool:
        return False  # one cheap unit; the marker says when it is current

    def finish(self) -> bool:
        return True

    def up_to_date(self) -> bool:
        return False


class TransferMasksStage(_Counterfactual):
    """Step 1: mask 1 of the stored plan without the ``k`` most harmful source classes."""

    name = "transfer_masks"

    def fingerprint(self) -> dict:
        return {"settings": self.settings, "config": self.config.hash,
                "weights": self.run.fs.stats("scores", "datamodels.parquet")}

    def outputs(self) -> list[str]:
        return [self.run.plan_masks_path(self.plan.name)]

    def compute(self, ctx: Any, unit: Unit, shared: Any = None) -> None:
        chosen = removed_classes(self.run, self.k)["train_position"].to_numpy(np.int64)
        written = self.run.plan_masks(self.plan.name)
        if written is None:
            self.run.write_plan_masks(self.plan.name, [np.zeros(0, np.int64), chosen])
        elif len(written) != 2 or len(written[0]) or sorted(written[1]) != sorted(chosen):
            raise DatamodelsError(
                f"{self.run.fs.display(self.run.plan_masks_path(self.plan.name))} already "
                f"removes source classes {sorted(written[-1].tolist())}, not the {self.k} most "
                f"harmful {sorted(chosen.tolist())}; its masks are written once: add another "
                "stored plan (or use a new run)"
            )


class TransferCounterfactualStage(_Counterfactual):
    """Step 2: the retrained models' accuracies and margins, per setting."""

    name = "transfer_counterfactual"

    def fingerprint(self) -> dict:
        masks = self.run.plan_masks_path(self.plan.name)
        folder, _, name = masks.rpartition("/")
        return {"settings": self.settings, "masks": self.run.fs.stats(folder, name),
                "models": self.run.plan_witness(self.plan.name),
                "weights": self.run.fs.stats("scores", "datamodels.parquet")}

    def outputs(self) -> list[str]:
        return [COUNTERFACTUAL_MODELS_PATH, COUNTERFACTUAL_REMOVED_PATH,
                COUNTERFACTUAL_MARGINS_PATH]

    def compute(self, ctx: Any, unit: Unit, shared: Any = None) -> None:
        run, plan = self.run, self.plan.name
        masks, margins = run.masks_and_margins(plan=plan)
        if not len(masks) or masks.all(1).all():
            raise DatamodelsError(
                f"plan {plan!r}: no model without the removed classes trained (see "
                f"{run.fs.display('failures.parquet')})"
            )
        models = run.models(plan=plan, columns=["seed", "eval_accuracy"]).to_pandas()
        n_test = int((run.examples()["split"] == "test").sum())
        per_model, by_correctness = counterfactual_tables(masks, margins, models, n_test)
        removed = removed_classes(run, self.k).assign(plan=plan)
        self.write_table(COUNTERFACTUAL_REMOVED_PATH, removed, COUNTERFACTUAL_REMOVED_SCHEMA)
        self.write_table(COUNTERFACTUAL_MARGINS_PATH, by_correctness,
                         COUNTERFACTUAL_MARGINS_SCHEMA)
        self.write_table(COUNTERFACTUAL_MODELS_PATH, per_model, COUNTERFACTUAL_MODELS_SCHEMA)
