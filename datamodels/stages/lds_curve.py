"""The ``lds_curve`` stage: ``applications/lds_curve.parquet``, LDS against the number of models.

The computation is `applications.alpha_effect.lds_curve_from_run` (datamodels fitted on the
first m models of the fitting plan, LDS on the evaluation plan); the fingerprint holds the
two plans' models, the fit settings and the grid of model counts.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from datamodels.applications.alpha_effect import DEFAULT_COUNTS, lds_curve_from_run
from datamodels.config import Config
from datamodels.errors import EvaluateError
from datamodels.stages.base import Stage, Unit, recorded_settings
from datamodels.stages.versions import lds_curve_versions
from datamodels.store import Run
from datamodels.store.schemas import LDS_CURVE_PATH, LDS_CURVE_SCHEMA


class LdsCurveStage(Stage):
    """One unit: every count's fit and LDS, in the driver."""

    name = "lds_curve"
    what = "tables"

    def __init__(self, config: Config, run: Run, counts: tuple[int, ...] | None = None) -> None:
        super().__init__(config, run)
        self.counts = tuple(int(c) for c in (counts or DEFAULT_COUNTS))

    @classmethod
    def as_recorded(cls, config: Config, run: Run) -> LdsCurveStage:
        """The stage with the counts its marker recorded (for status and the report)."""
        return cls(config, run, recorded_settings(run, cls.name).get("counts"))

    def versions(self) -> dict[str, int]:
        return lds_curve_versions()

    def fingerprint(self) -> dict:
        fit = self.config.fit.model_dump(mode="json", exclude={"device", "targets_per_block"})
        plans = (self.config.fit.plan, self.config.evaluate.plan)
        return {
            "settings": {"counts": list(self.counts)},
            "fit": fit,
            "evaluate_plan": self.config.evaluate.plan,
            "models": {plan: self.run.plan_witness(plan) for plan in plans},
        }

    def outputs(self) -> list[str]:
        return [LDS_CURVE_PATH]

    def units(self) -> list[Unit]:
        return [Unit("table")]

    def done(self, unit: Unit) -> bool:
        return False  # one unit; the marker says when the table is current

    def compute(self, ctx: Any, unit: Unit, shared: Any = None) -> None:
        frame = lds_curve_from_run(self.run, self.counts, self.config)
        if frame is None:
            raise EvaluateError(
                f"lds-curve: {self.run.uri} needs trained models in its fitting plan (fit.plan) "
                "and at least 3 in its evaluation plan (evaluate.plan); train them first"
            )
        self.write_table(LDS_CURVE_PATH, frame, LDS_CURVE_SCHEMA)

    def finish(self) -> pd.DataFrame:
        return self.up_to_date()

    def up_to_date(self) -> pd.DataFrame:
        return self.run.read_table(LDS_CURVE_PATH, LDS_CURVE_SCHEMA).to_pandas()
