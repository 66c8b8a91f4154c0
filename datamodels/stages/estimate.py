"""The ``estimate`` stage for retraining-based estimators: read the models table once, call
the pure estimator, write ``scores/<method>.parquet`` (with standard errors) and
``self_scores/<method>.parquet`` when the run has margins on its own training examples.

| method          | models it reads                         | utility               |
|-----------------|-----------------------------------------|-----------------------|
| downsampling    | ``estimate.plan`` (alpha subsets)        | margin                |
| downsampling_correct | the same                            | 0/1 correctness       |
| memorization    | the same; self scores only              | 0/1 correctness       |
| banzhaf         | the same (its alpha must be ½)          | margin                |
| shapley         | the first ``alpha_grid`` plan           | margin                |
| beta_shapley    | the same; Beta(a, b) = ``estimate.beta`` | margin               |
| tmc_shapley     | the first ``tmc`` plan                  | margin                |
| loo             | the first ``loo`` plan                  | margin                |
| knn_shapley     | input features (no models)              | K-NN correctness      |

Two units per method, ``scores`` and ``self``, each writing its table atomically.
"""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.errors import EstimateError
from datamodels.orchestrate.context import local_beton
from datamodels.plans import tmc_layout
from datamodels.stages.base import Stage, Unit
from datamodels.store import Run
from datamodels.store.positions import eval_positions

METHODS = (
    "downsampling",
    "downsampling_correct",
    "memorization",
    "banzhaf",
    "shapley",
    "beta_shapley",
    "tmc_shapley",
    "loo",
    "knn_shapley",
)
DIFFMEANS = ("downsampling", "downsampling_correct", "banzhaf", "memorization")


class EstimateStage(Stage):
    what = "tables"

    def __init__(self, config, run: Run, method: str) -> None:
        if method not in METHODS:
            raise EstimateError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")
        super().__init__(config, run)
        self.method = method
        self.name = f"estimate-{method}"
        self.plan = self.source_plan()

    def source_plan(self) -> str | None:
        """The plan whose models the method reads (None: no models)."""
        kind = {
            "shapley": "alpha_grid",
            "beta_shapley": "alpha_grid",
            "loo": "loo",
            "tmc_shapley": "tmc",
        }
        if self.method == "knn_shapley":
            if self.config.transfer is not None:
                raise EstimateError(
                    "knn_shapley ranks training examples by their inputs; a transfer run's "
                    "training points are source classes"
                )
            return None
        if self.method in DIFFMEANS:
            return self.config.estimate.plan
        for plan in self.config.plans:
            if plan.kind == kind[self.method]:
                return plan.name
        raise EstimateError(
            f"{self.method} needs a plan of kind '{kind[self.method]}' in the config "
            f"(plans: {', '.join(p.name for p in self.config.plans)})"
        )

    def fingerprint(self) -> dict:
        e = self.config.estimate
        reads = {"targets": e.targets, "plan": self.plan}  # only what this method reads
        if self.method == "beta_shapley":
            reads["beta"] = list(e.beta)
        if self.method == "knn_shapley":
            reads["knn_k"] = e.knn_k
        return {
            "method": self.method,
            "estimate": reads,
            "config": self.config.hash,
            "models": self.run.plan_witness(self.plan) if self.plan else None,
        }

    def units(self) -> list[Unit]:
        if self.plan is not None and len(self.run.model_ids(plan=self.plan)) < 2:
            raise EstimateError(
                f"plan '{self.plan}' has fewer than 2 trained models; run `datamodels train` first"
            )
        units = [] if self.method == "memorization" else [Unit("scores")]
        if self.has_self_scores() and self.method != "knn_shapley":
            units.append(Unit("self"))
        return units

    def done(self, unit: Unit) -> bool:
        return False  # each unit writes its final table; the marker says when both are current

    def outputs(self) -> list[str]:
        paths = [self.run.scores_path(self.method)] if self.method != "memorization" else []
        if self.method != "knn_shapley" and self.has_self_scores():
            paths.append(self.run.self_scores_path(self.method))
        return paths

    def has_self_scores(self) -> bool:
        """Whether the run has margins on its own training examples (for the diagonal)."""
        return len(eval_positions(self.run, "train")) == self.run.n_train

    def table(self, ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(model ids, masks, margins, alpha) of the source plan, read once per process."""

        def read():
            ids = self.run.model_ids(plan=self.plan)
            masks, margins = self.run.masks_and_margins(plan=self.plan)
            # alpha from the plan (float64, exactly the grid's nodes), not the stored float32
            return (
                ids,
                masks,
                margins,
                self.planned.select_ids(ids).alpha,
            )

        return ctx.cached(("models", self.run.uri, self.plan, self.digest), read)

    def compute(self, ctx, unit: Unit, shared=None) -> int:
        if unit.name == "scores":
            targets = eval_positions(self.run, self.config.estimate.targets)
            scores = self.scores(ctx, targets)
            self.run.write_scores(self.method, targets, scores.values, scores.stderr)
            return len(targets)
        values, stderr = self.self_scores(ctx, eval_positions(self.run, "train"))
        return self.run.write_self_scores(self.method, values, stderr)

    def on_result(self, unit: Unit, result, progress) -> list[Unit]:
        self.written = {
            **getattr(self, "written", {}),
            ("self_scores" if unit.name == "self" else "scores"): result,
        }
        return super().on_result(unit, result, progress)

    def finish(self) -> dict[str, int]:
        return getattr(self, "written", {})

    def up_to_date(self) -> dict[str, int]:
        return {}

    # -- the estimators ----------------------------------------------------------------------

    def scores(self, ctx, targets: np.ndarray) -> est.Scores:
        """Scores float32[len(targets), n_train] of the method on the given eval positions."""
        if self.method == "knn_shapley":
            return self.knn(ctx, targets)
        ids, masks, margins, alpha = self.table(ctx)
        utility = margins[:, targets]
        if self.method in DIFFMEANS:
            if self.method in ("downsampling_correct", "memorization"):
                utility = (utility > 0).astype(np.float32)
            if self.method == "banzhaf":
                return est.banzhaf(masks, utility, alpha=alpha)
            return est.downsampling(masks, utility)
        if self.method in ("shapley", "beta_shapley"):
            plan = self.config.plan(self.plan)
            grid = est.owen_grid(plan.levels) if plan.levels else None
            if self.method == "shapley":
                return est.shapley(masks, utility, alpha, grid=grid)
            return est.beta_shapley(
                masks, utility, alpha, beta_params=tuple(self.config.estimate.beta), grid=grid
            )
        if self.method == "loo":
            left_out = np.where(masks.all(1), -1, np.argmin(masks, axis=1))
            return est.loo(left_out, utility, masks.shape[1])
        return self.tmc(ids, masks, utility)

    def self_scores(
        self, ctx, train_targets: np.ndarray, block: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32[n_train] score of each training point on itself (the diagonal), in blocks."""
        if self.method in ("memorization", "downsampling", "downsampling_correct"):
            _, masks, margins, _ = self.table(ctx)
            utility = margins[:, train_targets]
            if self.method != "downsampling":
                utility = (utility > 0).astype(np.float32)
            scores = est.memorization(masks, utility)
            return scores.values, scores.stderr
        n = len(train_targets)
        values, stderr = np.zeros(n, dtype=np.float32), np.full(n, np.inf, dtype=np.float32)
        for start in range(0, n, block):
            rows = np.arange(start, min(n, start + block))
            scores = self.scores(ctx, train_targets[rows])
            values[rows] = scores.values[np.arange(len(rows)), rows]
            if scores.stderr is not None:
                stderr[rows] = scores.stderr[np.arange(len(rows)), rows]
        return values, stderr

    def tmc(self, ids: np.ndarray, masks: np.ndarray, utility: np.ndarray) -> est.Scores:
        plan = self.config.plan(self.plan)
        if plan.seeds > 1:
            raise EstimateError(
                "tmc_shapley with seeds > 1: average replicates first (not supported yet)"
            )
        n = masks.shape[1]
        perm, step = tmc_layout(self.planned.select_ids(ids), n)
        keep = np.zeros(len(step), dtype=bool)
        for p in np.unique(
            perm
        ):  # a walk's contiguous prefix 0..k (k = n when it was never truncated)
            rows = np.flatnonzero(perm == p)
            present = set(step[rows].tolist())
            k = 0
            while k + 1 in present:
                k += 1
            keep[rows[step[rows] <= k]] = 0 in present
        if not keep.any():
            raise EstimateError(
                f"tmc plan '{plan.name}' has no walk starting at the empty prefix; retrain it"
            )
        added = np.full(len(step), -1, dtype=np.int64)
        for p in np.unique(perm[keep]):
            order = est.tmc_permutation(self.config.seed, int(p), n)
            rows = np.flatnonzero(keep & (perm == p))
            added[rows] = np.where(step[rows] > 0, order[np.maximum(step[rows] - 1, 0)], -1)
        return est.tmc_shapley(perm[keep], step[keep], added[keep], utility[keep], n)

    def knn(self, ctx, targets: np.ndarray) -> est.Scores:
        from datamodels.data.beton import decode_resident
        from datamodels.data.examples import train_and_eval_index

        beton = local_beton(self.run, self.config.hash)
        features, labels = ctx.cached(("decoded", beton), lambda: decode_resident(beton))
        train_index, eval_index = train_and_eval_index(self.run.examples())
        flat = features.reshape(len(features), -1).astype(np.float64)
        return est.knn_shapley(
            flat[train_index],
            labels[train_index],
            flat[eval_index[targets]],
            labels[eval_index[targets]],
            self.config.estimate.knn_k,
        )
