"""The ``evaluate`` stage: every ``scores/<method>.parquet`` scored on the same footing.

LDS uses only the held-out ``evaluate.plan`` models (seeds of one subset averaged), never
the models any estimator was fitted on. Results go to ``evaluation.parquet`` (one row per
method and metric) and are returned as a frame for printing.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from datamodels.config import Config
from datamodels.errors import DatamodelsError
from datamodels.evaluate.lds import average_replicates, lds
from datamodels.evaluate.mislabel import mislabel_detection
from datamodels.store import EVALUATION_PATH, EVALUATION_SCHEMA, Run


class EvaluateError(DatamodelsError):
    """Nothing to evaluate, or no held-out models to evaluate on."""


def evaluate(config: Config, run: Run) -> pd.DataFrame:
    from datamodels.estimate import read_self_scores

    methods = run.score_methods()
    self_scores = read_self_scores(run)
    if not methods and not self_scores:
        raise EvaluateError(f"{run.uri}: no scores/*.parquet yet; run `datamodels fit` or `datamodels estimate` first")
    has_plan = config.evaluate.plan in {p.name for p in config.plans}
    rows = _lds_rows(config, run, methods) if methods and has_plan else []
    rows += _mislabel_rows(run, self_scores)
    frame = pd.DataFrame(rows)
    run.write_table(EVALUATION_PATH, frame, EVALUATION_SCHEMA)
    return frame


def _mislabel_rows(run: Run, self_scores: dict[str, np.ndarray]) -> list[dict]:
    examples = run.examples()
    train = examples[examples["train_position"].notna()].sort_values("train_position")
    flipped = (train["label"] != train["original_label"]).to_numpy()
    if not flipped.any():
        return []
    rows = []
    for method, scores in sorted(self_scores.items()):
        result = mislabel_detection(scores, flipped)
        curve = {"inspected": np.round(result.inspected[:: max(1, len(flipped) // 50)], 4).tolist(),
                 "found": np.round(result.found[:: max(1, len(flipped) // 50)], 4).tolist(),
                 "n_flipped": int(flipped.sum()), "n_train": int(len(flipped))}
        rows.append({"method": method, "metric": "mislabel_found_at_0.2", "value": result.found_at(0.2),
                     "n_targets": int(len(flipped)), "details": json.dumps({"chance": 0.2})})
        rows.append({"method": method, "metric": "mislabel_auc", "value": result.auc,
                     "n_targets": int(len(flipped)), "details": json.dumps(curve)})
    return rows


def _lds_rows(config: Config, run: Run, methods: list[str]) -> list[dict]:
    plan = config.evaluate.plan
    masks, margins = run.masks_and_margins(plan=plan)
    if len(masks) < 3:
        raise EvaluateError(
            f"LDS needs held-out models in plan '{plan}' (found {len(masks)}); train that plan first"
        )
    subsets, true_margins = average_replicates(masks, margins)
    rows = []
    for method in methods:
        targets, scores = run.scores(method)
        result = lds(scores, subsets, true_margins[:, targets])
        per_target = result.per_target[np.isfinite(result.per_target)]
        details = {
            "plan": plan, "n_subsets": result.n_subsets, "n_models": int(len(masks)),
            "n_undefined_targets": int(len(targets) - result.n_targets),
            "stderr": float(per_target.std(ddof=1) / np.sqrt(len(per_target))) if len(per_target) > 1 else None,
        }
        rows.append({"method": method, "metric": "lds", "value": result.value, "n_targets": result.n_targets,
                     "details": json.dumps(details)})
    return rows
