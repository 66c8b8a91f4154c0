"""Worked example (docs/architecture.md, "Adding a stage"): a new stage is one module with a
`Stage` subclass and one `StageSpec` line; the contract in `stages.base` then gives it
skipping when current, recomputing when its inputs change, and a state in ``status``.

The example stage counts the training examples of each label that a plan's models saw on
average (a table of mean label coverage), from the prepared examples and the plan's masks.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa

from datamodels import api
from datamodels.config import config_from_dict
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.stages import pipeline, states
from datamodels.stages.base import Stage, Unit, run_stage
from datamodels.store import Run
from datamodels.store.schema_checks import column, schema_metadata
from tests.conftest import SMALL_DIGITS

COVERAGE_PATH = "applications/label_coverage.parquet"
COVERAGE_SCHEMA = pa.schema(  # a run table carries its columns and the schema version
    [column("label", pa.int64()), column("mean_included", pa.float64())],
    metadata=schema_metadata(),
)


class LabelCoverage(Stage):
    """Per label, how many of its training examples a model of ``plan`` saw on average."""

    name = "label_coverage"
    what = "tables"

    def __init__(self, config, run: Run, plan: str = "train") -> None:
        super().__init__(config, run)
        self.plan = plan

    def fingerprint(self) -> dict:  # what changes the result: the plan and its models
        return {"plan": self.plan, "models": self.run.plan_witness(self.plan)}

    def outputs(self) -> list[str]:
        return [COVERAGE_PATH]

    def units(self) -> list[Unit]:
        return [Unit("coverage")]

    def compute(self, ctx, unit: Unit, shared=None) -> None:
        masks = self.run.masks(self.plan)  # bool[m, n_train]
        labels = self.run.labels("train")  # int[n_train]
        frame = pd.DataFrame({
            "label": np.unique(labels),
            "mean_included": [masks[:, labels == c].sum(1).mean() for c in np.unique(labels)],
        })
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        self.run.fs.write_bytes_atomic(self.part_path(unit), buffer.getvalue())

    def finish(self) -> pd.DataFrame:
        part = self.run.fs.read_bytes(self.part_path(Unit("coverage")))
        frame = pd.read_parquet(io.BytesIO(part))
        self.run.write_table(COVERAGE_PATH, frame, COVERAGE_SCHEMA)
        return frame

    def up_to_date(self) -> pd.DataFrame:
        return self.run.read_table(COVERAGE_PATH, COVERAGE_SCHEMA).to_pandas()


def test_a_new_stage_runs_once_then_follows_its_inputs(tmp_path, monkeypatch):
    config = config_from_dict(SMALL_DIGITS, ["plans.train.count=12", "plans.eval.count=4"])
    out = str(tmp_path / "run")
    api.train(config, out, executor=SerialExecutor(), show_progress=False)
    run = Run(out)

    first = run_stage(LabelCoverage(config, run), show_progress=False)
    labels = run.labels("train")
    masks = run.masks("train")
    for row in first.itertuples(index=False):  # the known answer, computed directly
        assert np.isclose(row.mean_included, masks[:, labels == row.label].sum(1).mean())
    marker = json.loads((tmp_path / "run" / "_stages" / "label_coverage.json").read_text())
    assert marker["fingerprint"]["plan"] == "train"

    # current: a second run computes nothing (compute would fail if it were called)
    monkeypatch.setattr(LabelCoverage, "compute", lambda *a, **k: 1 / 0)
    pd.testing.assert_frame_equal(run_stage(LabelCoverage(config, run), show_progress=False), first)
    monkeypatch.undo()

    # one StageSpec line puts it in the declared pipeline: status judges it
    spec = pipeline.StageSpec("label_coverage", (LabelCoverage,), ("train",), False,
                              (COVERAGE_PATH,), "label-coverage")
    monkeypatch.setattr(states, "PIPELINE", (*pipeline.PIPELINE, spec))
    table = states.stage_states(config, run).set_index("stage")
    assert table.loc["label_coverage", "state"] == "done"

    # other settings (another plan): stale until it runs again
    assert states.stage_state(LabelCoverage(config, run, plan="eval")) == "stale"
    again = run_stage(LabelCoverage(config, run, plan="eval"), show_progress=False)
    assert again["mean_included"].sum() > 0
    assert states.stage_state(LabelCoverage(config, run, plan="eval")) == "done"
