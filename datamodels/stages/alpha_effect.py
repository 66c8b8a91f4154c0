"""The ``alpha_effect`` stage: ``applications/alpha_effect.parquet``, datamodels per subset size α.

The computation is `applications.alpha_effect.alpha_effect_from_run`; this stage gives it the
contract every artifact of a run has: a fingerprint of what it reads (the α levels' models,
the evaluation plan's models, the run's datamodels as the reference, the fit settings and
its own settings ``k``, ``holdout``, ``models_per_level``), so a second call with the same
settings on the same run does nothing and a change of any of them recomputes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from datamodels.applications.alpha_effect import alpha_effect_from_run
from datamodels.config import Config
from datamodels.errors import FitError
from datamodels.stages.base import Stage, Unit, recorded_settings
from datamodels.stages.versions import alpha_effect_versions
from datamodels.store import Run
from datamodels.store.schemas import ALPHA_EFFECT_PATH, ALPHA_EFFECT_SCHEMA

LEVEL_KINDS = ("alpha", "alpha_grid")


class AlphaEffectStage(Stage):
    """One unit: the whole table (every level's fits, in the driver)."""

    name = "alpha_effect"
    what = "tables"

    def __init__(
        self, config: Config, run: Run, k: int = 10, holdout: float = 0.2,
        models_per_level: int | None = None,
    ) -> None:
        super().__init__(config, run)
        self.settings = {"k": int(k), "holdout": float(holdout),
                         "models_per_level": models_per_level}

    @classmethod
    def as_recorded(cls, config: Config, run: Run) -> AlphaEffectStage:
        """The stage with the settings its marker recorded (for status and the report)."""
        return cls(config, run, **recorded_settings(run, cls.name))

    def versions(self) -> dict[str, int]:
        return alpha_effect_versions()

    def fingerprint(self) -> dict:
        plans = sorted({p.name for p in self.config.plans if p.kind in LEVEL_KINDS}
                       | {self.config.evaluate.plan})
        fit = self.config.fit.model_dump(mode="json", exclude={"device", "targets_per_block"})
        return {
            "settings": self.settings,
            "fit": fit,
            "evaluate_plan": self.config.evaluate.plan,
            "models": {plan: self.run.plan_witness(plan) for plan in plans},
            "reference": self.run.fs.stats("scores", "datamodels.parquet"),
        }

    def outputs(self) -> list[str]:
        return [ALPHA_EFFECT_PATH]

    def units(self) -> list[Unit]:
        return [Unit("table")]

    def done(self, unit: Unit) -> bool:
        return False  # one unit; the marker says when the table is current

    def compute(self, ctx: Any, unit: Unit, shared: Any = None) -> None:
        frame = alpha_effect_from_run(self.run, config=self.config, **self.settings)
        if frame is None:
            raise FitError(
                f"alpha-effect: {self.run.uri} has no models at two or more subset sizes; add "
                "an alpha_grid plan (kind: alpha_grid, levels: 4, count: 200) or alpha plans at "
                "several alpha, and train them"
            )
        self.write_table(ALPHA_EFFECT_PATH, frame, ALPHA_EFFECT_SCHEMA)

    def finish(self) -> pd.DataFrame:
        return self.up_to_date()

    def up_to_date(self) -> pd.DataFrame:
        return self.run.read_table(ALPHA_EFFECT_PATH, ALPHA_EFFECT_SCHEMA).to_pandas()
