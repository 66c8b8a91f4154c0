"""The ``evaluate`` stage: every ``scores/<method>.parquet`` scored on the same footing.

LDS uses only the held-out ``evaluate.plan`` models (seeds of one subset averaged), never
the models any estimator was fitted on; mislabel detection ranks the training points by
each ``self_scores/<method>.parquet`` when the run has flipped labels. A ``single_model``
plan adds the single-model LDS per drop fraction (metric ``lds_single_<fraction>``); a run
with ``removals/results.parquet`` adds the removal and brittleness rows
(`datamodels.metrics.removal`); a run with a trained ``paired_loo`` or ``loo`` plan adds
``loo_pearson`` and ``loo_spearman`` per method and the LOO effects' split-half reliability
(method ``loo``: ``loo_split_half`` and its Spearman–Brown value ``loo_split_half_sb``,
`datamodels.metrics.loo`). One unit writes
``evaluation.parquet`` (one row per method and metric); the stage returns it as a frame.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from datamodels import estimators as est
from datamodels.errors import EvaluateError
from datamodels.estimators.loo import left_out_points, replicate_keys
from datamodels.metrics.lds import average_replicates, lds, single_model_lds
from datamodels.metrics.loo import loo_correlation, split_half
from datamodels.metrics.mislabel import mislabel_detection
from datamodels.metrics.removal import removal_metrics
from datamodels.plans import plan_kind, plan_models
from datamodels.stages.base import Stage, Unit
from datamodels.stages.versions import metric_versions
from datamodels.store import (
    EVALUATION_PATH,
    EVALUATION_SCHEMA,
    REMOVAL_RESULTS_PATH,
    SCORES_DIR,
    SELF_SCORES_DIR,
)
from datamodels.store.positions import eval_positions

LOO_KINDS = ("paired_loo", "loo")  # the plan the loo rows read: the first of these kinds


def _finite(value: float) -> float | None:
    """A float for ``details`` JSON: None where undefined (JSON has no NaN)."""
    return float(value) if np.isfinite(value) else None


class EvaluateStage(Stage):
    name = "evaluate"
    what = "tables"

    def versions(self) -> dict[str, int]:
        return metric_versions("lds", "loo", "mislabel", "removal")

    def fingerprint(self) -> dict:
        fs = self.run.fs
        single = {p.name: self.run.plan_witness(p.name) for p in self.single_model_plans()}
        loo_plan = self.loo_plan()
        loo = {"loo": self.run.plan_witness(loo_plan.name)} if loo_plan else {}
        return ({"single_model": single} if single else {}) | loo | {
            "evaluate": self.config.evaluate.model_dump(mode="json"),
            "config": self.config.hash,
            "models": self.run.plan_witness(self.config.evaluate.plan),
            "scores": fs.stats(SCORES_DIR, ".parquet"),
            "self_scores": fs.stats(SELF_SCORES_DIR, ".parquet"),
        } | (
            {"removals": fs.stats("removals", "results.parquet")}
            if fs.isfile(REMOVAL_RESULTS_PATH)
            else {}
        )

    def outputs(self) -> list[str]:
        return [EVALUATION_PATH]

    def units(self) -> list[Unit]:
        if not self.run.score_methods() and not self.run.self_scores():
            raise EvaluateError(
                f"{self.run.uri}: no scores/*.parquet yet; run `datamodels fit` or "
                "`datamodels estimate` first"
            )
        return [Unit("evaluation")]

    def done(self, unit: Unit) -> bool:
        return False  # one cheap unit; the stage marker says when it is current

    def compute(self, ctx, unit: Unit, shared=None) -> None:
        methods = self.run.score_methods()
        has_plan = self.config.evaluate.plan in {p.name for p in self.config.plans}
        rows = self.lds_rows(methods) if methods and has_plan else []
        rows += self.single_model_rows(methods)
        rows += self.loo_rows(methods)
        rows += self.mislabel_rows(self.run.self_scores())
        if self.run.fs.isfile(REMOVAL_RESULTS_PATH):  # the removal stage's retrained sets
            rows += removal_metrics(self.run.removal_results(), self.run.n_train)
        self.write_table(EVALUATION_PATH, pd.DataFrame(rows), EVALUATION_SCHEMA)

    def finish(self) -> pd.DataFrame:
        return self.run.evaluation()

    def up_to_date(self) -> pd.DataFrame:
        return self.run.evaluation()

    def mislabel_rows(self, self_scores: dict[str, np.ndarray]) -> list[dict]:
        examples = self.run.examples()
        train = examples[examples["train_position"].notna()].sort_values("train_position")
        flipped = (train["label"] != train["original_label"]).to_numpy()
        if not flipped.any():
            return []
        rows, every = [], max(1, len(flipped) // 50)
        for method, scores in sorted(self_scores.items()):
            result = mislabel_detection(scores, flipped)
            curve = {
                "inspected": np.round(result.inspected[::every], 4).tolist(),
                "found": np.round(result.found[::every], 4).tolist(),
                "n_flipped": int(flipped.sum()),
                "n_train": int(len(flipped)),
            }
            rows.append(
                {
                    "method": method,
                    "metric": "mislabel_found_at_0.2",
                    "value": result.found_at(0.2),
                    "n_targets": int(len(flipped)),
                    "details": json.dumps({"chance": 0.2}),
                }
            )
            rows.append(
                {
                    "method": method,
                    "metric": "mislabel_auc",
                    "value": result.auc,
                    "n_targets": int(len(flipped)),
                    "details": json.dumps(curve),
                }
            )
        return rows

    def single_model_plans(self) -> list:
        return [
            p
            for p in self.config.plans
            if plan_kind(p.kind).example_weights and p.kind not in LOO_KINDS
        ]

    def single_model_rows(self, methods: list[str]) -> list[dict]:
        """``lds_single_<fraction>`` per method and drop fraction of every trained
        ``single_model`` plan (none where a fraction has fewer than 3 subsets)."""
        rows = []
        for plan in self.single_model_plans():
            masks, margins = self.run.masks_and_margins(plan=plan.name)
            if not len(masks):
                continue
            for method in methods:
                targets, scores = self.run.scores(method)
                results = single_model_lds(scores, masks, margins[:, targets], plan.drops)
                for fraction, result in results.items():
                    details = {
                        "plan": plan.name,
                        "drop_fraction": fraction,
                        "n_subsets": result.n_subsets,
                        "n_undefined_targets": int(len(targets) - result.n_targets),
                        "n_constant_targets": result.n_constant,
                    }
                    rows.append(
                        {
                            "method": method,
                            "metric": f"lds_single_{fraction:g}",
                            "value": result.value,
                            "n_targets": result.n_targets,
                            "details": json.dumps(details),
                        }
                    )
        return rows

    def lds_rows(self, methods: list[str]) -> list[dict]:
        plan = self.config.evaluate.plan
        masks, margins = self.run.masks_and_margins(plan=plan)
        if len(masks) < 3:
            raise EvaluateError(
                f"LDS needs held-out models in plan '{plan}' (found {len(masks)}); "
                "train that plan first"
            )
        subsets, true_margins = average_replicates(masks, margins)
        rows = []
        for method in methods:
            targets, scores = self.run.scores(method)
            result = lds(scores, subsets, true_margins[:, targets])
            per_target = result.per_target[np.isfinite(result.per_target)]
            details = {
                "plan": plan,
                "n_subsets": result.n_subsets,
                "n_models": int(len(masks)),
                "n_undefined_targets": int(len(targets) - result.n_targets),
                "n_constant_targets": result.n_constant,  # predicted constant: counted as 0
                "stderr": float(per_target.std(ddof=1) / np.sqrt(len(per_target)))
                if len(per_target) > 1
                else None,
            }
            rows.append(
                {
                    "method": method,
                    "metric": "lds",
                    "value": result.value,
                    "n_targets": result.n_targets,
                    "details": json.dumps(details),
                }
            )
        return rows

    def loo_plan(self):
        """The config's first ``paired_loo`` or ``loo`` plan (None: there is none)."""
        return next((p for p in self.config.plans if p.kind in LOO_KINDS), None)

    def loo_rows(self, methods: list[str]) -> list[dict]:
        """``loo_pearson`` / ``loo_spearman`` of every method but ``loo`` with the LOO effects
        of the first ``paired_loo`` or ``loo`` plan, over the (left-out point, target) pairs
        (targets: the method's, among ``estimate.targets``), and the effects' split-half
        reliability on those points and ``estimate.targets`` (none before that plan has a
        full-data model and a left-out point)."""
        plan = self.loo_plan()
        if plan is None:
            return []
        ids = self.run.model_ids(plan.name)
        masks, margins = self.run.masks_and_margins(plan=plan.name)
        left_out = left_out_points(masks) if len(masks) else np.zeros(0, np.int64)
        if not (left_out == -1).any() or not (left_out >= 0).any():
            return []
        n_train = masks.shape[1]
        mask_index = plan_models(self.config, n_train).select_ids(ids).mask_index
        keys = replicate_keys(ids, mask_index, plan.seeds)
        paired = plan.kind == "paired_loo"
        targets = eval_positions(self.run, self.config.estimate.targets)  # sorted
        margins = margins[:, targets]
        effects = (
            est.paired_loo(left_out, keys, margins, n_train)
            if paired
            else est.loo(left_out, margins, n_train)
        ).values  # [len(targets), n_train]
        points = np.unique(left_out[left_out >= 0])
        _, differences = est.loo_differences(left_out, keys, margins, points, n_train)
        reliability = split_half(differences)
        common = {"plan": plan.name, "paired": paired, "n_points": int(len(points))}
        halves = {
            "spearman_brown": _finite(reliability.spearman_brown),
            "spearman": _finite(reliability.spearman),
            "n_pairs": reliability.n_pairs,
            "halves": list(reliability.halves),
        }
        rows = [
            {
                "method": "loo",
                "metric": metric,
                "value": value,
                "n_targets": int(len(targets)),
                "details": json.dumps(common | halves),
            }
            for metric, value in (
                ("loo_split_half", reliability.pearson),
                ("loo_split_half_sb", reliability.spearman_brown),
            )
        ]
        for method in methods:
            if method == "loo":
                continue
            method_targets, scores = self.run.scores(method)
            chosen = np.isin(method_targets, targets)
            mine = scores[chosen][:, points]
            truth = effects[np.searchsorted(targets, method_targets[chosen])][:, points]
            pearson, spearman, n_pairs = loo_correlation(mine, truth)
            details = json.dumps(
                common
                | {"n_pairs": n_pairs, "loo_split_half_sb": _finite(reliability.spearman_brown)}
            )
            for metric, value in (("loo_pearson", pearson), ("loo_spearman", spearman)):
                rows.append(
                    {
                        "method": method,
                        "metric": metric,
                        "value": value,
                        "n_targets": int(chosen.sum()),
                        "details": details,
                    }
                )
        return rows
