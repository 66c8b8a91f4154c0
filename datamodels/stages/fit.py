"""The ``fit`` stage: one sparse linear datamodel per evaluation target
(docs/estimators/datamodels.md).

Reads the masks and margins of the fitting plan, holds out a seeded validation fraction of
those models, runs the batched LASSO path for a block of targets at a time (one unit per
``fit.targets_per_block`` targets), picks λ per target by validation error and refits on
train+validation. Each unit writes its block (targets and weights) as one part; ``finish``
merges them into ``datamodels/weights.parquet`` (non-zeros), ``datamodels/targets.parquet``
and a dense ``scores/datamodels.parquet``.

Targets whose solves stopped at the solver's iteration limit (or working-set cap) before
``fit.tol`` keep their last iterate; they are counted, the count is recorded in the stage's
marker (``_stages/fit.json``, key ``short``) and said in one line (`shortfall_line`), never
as a Python warning.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from datamodels.errors import FitError
from datamodels.orchestrate.progress import log_console
from datamodels.regress.select import fit_datamodels, min_models
from datamodels.stages.base import Stage, Unit, read_marker
from datamodels.stages.versions import fit_versions
from datamodels.store import TARGETS_PATH, TARGETS_SCHEMA, WEIGHTS_PATH, WEIGHTS_SCHEMA, Run
from datamodels.store.positions import eval_positions
from datamodels.store.verify import refuse_unusable_shards

METHOD = "datamodels"


def shortfall_line(run: Run) -> str | None:
    """"fit: 12 of 359 targets stopped at the solver's iteration limit before fit.tol..."
    from the fit marker, or None when every target converged (or the run has no fit yet)."""
    return shortfall_line_of((read_marker(run, "fit") or {}).get("short"))


def shortfall_line_of(short: dict | None) -> str | None:
    """The line for a marker's ``short`` record ({targets, of, tol}); None when zero."""
    if not short or not short.get("targets"):
        return None
    return (
        f"fit: {short['targets']:,} of {short['of']:,} targets stopped at the solver's "
        f"iteration limit before fit.tol={short['tol']:g} (their last iterate is kept; see "
        "docs/estimators/datamodels.md)"
    )


class FitStage(Stage):
    name = "fit"
    what = "targets"

    def versions(self) -> dict[str, int]:
        return fit_versions()

    def fingerprint(self) -> dict:
        settings = self.config.fit.model_dump(mode="json", exclude={"device", "targets_per_block"})
        return {"fit": settings, "config": self.config.hash,
                "models": self.run.plan_witness(self.config.fit.plan)}

    def outputs(self) -> list[str]:
        return [TARGETS_PATH, WEIGHTS_PATH, Run.scores_path(METHOD)]

    def start(self) -> None:
        """Refuse the shards `verify` names as unusable (a shard without a config hash whose
        masks are not the plan's among them) and an interrupted compaction, before fitting."""
        refuse_unusable_shards(self.run)

    def targets(self) -> np.ndarray:
        return eval_positions(self.run, "test" if self.config.fit.targets == "test" else "all")

    def units(self) -> list[Unit]:
        fit = self.config.fit
        m, needed = len(self.run.model_ids(plan=fit.plan)), min_models(fit)
        if m < needed:
            raise FitError(
                f"fit needs at least {needed} models in plan '{fit.plan}' (validation fraction "
                f"{fit.val_fraction}); the run has {m}. Train more models first"
            )
        targets = self.targets()
        if len(targets) == 0:
            raise FitError(
                f"fit: no evaluation targets for fit.targets={self.config.fit.targets!r}"
            )
        block = self.config.fit.targets_per_block
        return [
            Unit(
                f"block-{start:07d}-{min(len(targets), start + block):07d}.parquet",
                (start, min(len(targets), start + block)),
                size=min(len(targets), start + block) - start,
            )
            for start in range(0, len(targets), block)
        ]

    def table(self, ctx) -> tuple[np.ndarray, np.ndarray]:
        """(masks, margins) of the fitting plan, read once."""

        def read():
            return self.run.masks_and_margins(plan=self.config.fit.plan)

        return ctx.cached(("models", self.run.uri, self.config.fit.plan, self.digest), read)

    def compute(self, ctx, unit: Unit, shared=None) -> None:
        masks, margins = self.table(ctx)
        start, stop = unit.payload
        block_targets = self.targets()[start:stop]
        selection = fit_datamodels(masks, margins[:, block_targets], self.config.fit)
        weights = np.asarray(selection.weights, dtype=np.float32)
        nz_rows, cols = np.nonzero(weights)
        frame = pd.DataFrame(
            {
                "target": block_targets.astype(np.int64),
                "bias": selection.bias.astype(np.float32),
                "lam": selection.lam.astype(np.float32),
                "val_mse": selection.val_mse.astype(np.float32),
                "val_spearman": selection.val_spearman.astype(np.float32),
                "nnz": selection.nnz.astype(np.int64),
                "converged": np.asarray(selection.converged, dtype=bool),
            }
        )
        # one part holds both tables: the targets' rows and, nested, each target's non-zeros
        frame["weights_at"] = [
            cols[nz_rows == r].astype(np.int64).tolist() for r in range(len(frame))
        ]
        frame["weights"] = [weights[r, cols[nz_rows == r]].tolist() for r in range(len(frame))]
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.run.fs.write_bytes_atomic(self.part_path(unit), buffer.getvalue())

    def finish(self) -> bool:
        blocks = [
            pd.read_parquet(io.BytesIO(self.run.fs.read_bytes(self.part_path(u))))
            for u in self.units()
        ]
        frame = pd.concat(blocks, ignore_index=True)
        converged = frame.pop("converged") if "converged" in frame else pd.Series(True)
        self._short = {"targets": int((~converged.astype(bool)).sum()), "of": len(frame),
                       "tol": self.config.fit.tol}
        lengths = frame["weights_at"].map(len).to_numpy()
        weights = pd.DataFrame(
            {
                "target": np.repeat(frame["target"].to_numpy(np.int64), lengths),
                "train_position": np.concatenate(
                    [np.asarray(v, np.int64) for v in frame["weights_at"]] or [[]]
                ),
                "weight": np.concatenate(
                    [np.asarray(v, np.float32) for v in frame["weights"]] or [[]]
                ),
            }
        )
        self.write_table(WEIGHTS_PATH, weights, WEIGHTS_SCHEMA)
        targets = frame["target"].to_numpy(np.int64)
        dense = np.zeros((len(targets), self.run.n_train), dtype=np.float32)
        row_of = pd.Series(np.arange(len(targets)), index=targets)
        dense[row_of[weights["target"]].to_numpy(), weights["train_position"].to_numpy()] = weights[
            "weight"
        ]
        self.run.write_scores(METHOD, targets, dense, versions=self.versions())
        self.write_table(
            TARGETS_PATH, frame.drop(columns=["weights_at", "weights"]), TARGETS_SCHEMA
        )
        if self.run.fs.exists("datamodels/blocks"):  # the parts of runs fitted before parts/
            self.run.fs.delete_dir("datamodels/blocks")
        line = shortfall_line_of(self._short)
        if line:
            log_console().print(line, highlight=False)
        return True

    def write_marker(self) -> None:
        """The base marker plus ``short``: how many targets stopped short of ``fit.tol``."""
        super().write_marker()
        short = getattr(self, "_short", None)
        if short is not None:
            record = json.loads(self.run.fs.read_bytes(self.marker_path)) | {"short": short}
            self.run.fs.write_bytes_atomic(self.marker_path, json.dumps(record).encode())

    def up_to_date(self) -> bool:
        return False
