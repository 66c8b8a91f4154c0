"""`Rankings`: the run-wide rankings of the serve pages, from the browse index when it is
current, else from the score tables (on runs of at most `DENSE_LIMIT` scores per method).

Per target: each method's top-k training points, the per-target LDS, brittleness, two
methods' rank correlation; per training point: the test targets it helps and hurts most; the
leakage pairs. A mixin of `RunReader` (it reads through the reader's ``run``, ``config``,
``test``, ``score_row``, ``score_column``, ``_memo``).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from datamodels.browse.index import BrowseIndex
from datamodels.metrics.lds import average_replicates, lds, spearman_columns
from datamodels.stages.browse_index import BrowseIndexStage

DENSE_LIMIT = 10**8  # scores of one method read whole without a browse index (400 MB)


class Rankings:
    """The rankings part of `RunReader`."""

    # -- rankings: the browse index when current, else the score tables -----------------------

    @cached_property
    def index_state(self) -> str:
        """``done`` (a current browse index), ``stale`` (made from other inputs) or
        ``missing``."""
        stage = BrowseIndexStage(self.config, self.run)
        if stage.marker() is None:
            return "missing"
        return "done" if stage.is_complete() else "stale"

    @cached_property
    def index(self) -> BrowseIndex | None:
        return BrowseIndex(self.run) if self.index_state == "done" else None

    @cached_property
    def dense_ok(self) -> bool:
        """Whether a whole score matrix may be read (`DENSE_LIMIT`)."""
        return len(self.test) * self.run.n_train <= DENSE_LIMIT

    def index_note(self) -> str | None:
        """Why the run-wide rankings are not shown, or None when they are."""
        if self.index is not None or self.dense_ok:
            return None
        state = "stale (the scores changed since)" if self.index_state == "stale" else "missing"
        return (
            f"{len(self.test)} test examples × {self.run.n_train} training points: the "
            f"rankings over whole score tables need the browse index, which is {state}; "
            f"run `datamodels serve --index {self.run.uri}`"
        )

    def ranked_train(self, method: str, target: int, k: int) -> dict[str, tuple] | None:
        """{"helpful": (train positions int64[k], scores), "harmful": ...}: ``method``'s
        ``k`` highest and lowest scores of ``target`` (None when it has no row)."""
        if self.index is not None and k <= self.index.k():
            return self.index.train_of(method, target, k)
        row = self.score_row(method, target)
        if row is None:
            return None
        order = np.argsort(-row, kind="stable")
        helpful, harmful = order[:k], order[::-1][:k]
        return {"helpful": (helpful, row[helpful]), "harmful": (harmful, row[harmful])}

    def ranked_tests(self, method: str, position: int, k: int) -> dict[str, pd.Series] | None:
        """{"helps": score by target, highest first, "hurts": lowest first}: the ``k`` test
        targets training point ``position`` raises (lowers) most by ``method``."""
        if self.index is not None and k <= self.index.k():
            return self.index.tests_of(method, position, k)
        column = self.score_column(method, position)
        if column.empty:
            return None
        ordered = column.sort_values(ascending=False, kind="stable")
        return {"helps": ordered[:k], "hurts": ordered[::-1][:k]}

    def rank_correlation(self, a: str, b: str, target: int) -> float:
        """Spearman ρ of methods ``a`` and ``b``'s score rows of ``target``."""
        if self.index is not None:
            return float(self.index.rho(a, b).get(target, np.nan))
        ra, rb = self.score_row(a, target), self.score_row(b, target)
        if ra is None or rb is None:
            return float("nan")
        return float(spearman_columns(ra[:, None], rb[:, None])[0])

    def dense(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(test targets int64[T], scores float32[T, n_train]) of ``method`` (read once)."""

        def read() -> tuple[np.ndarray, np.ndarray]:
            targets, scores = self.run.scores(method)
            keep = np.isin(targets, self.test.index.to_numpy())
            return targets[keep], scores[keep]

        return self._memo(("dense", method), read)

    def target_lds(self, method: str) -> pd.Series | None:
        """Per-target LDS of ``method`` on the evaluate plan's held-out models (Spearman of
        predicted and actual margins over its subsets); None without enough held-out models."""

        if self.index is not None:
            found = self.index.target_column(method, "lds")
            return None if found is None else found.reindex(self.test.index)
        if not self.dense_ok:
            return None

        def compute() -> pd.Series | None:
            masks, margins = self.run.masks_and_margins(plan=self.config.evaluate.plan)
            if len(masks) < 3:
                return None
            subsets, true = average_replicates(masks, margins)
            targets, scores = self.dense(method)
            per_target = lds(scores, subsets, true[:, targets]).per_target
            return pd.Series(per_target, index=targets).reindex(self.test.index)

        return self._memo(("lds", method), compute)

    def brittleness(self) -> pd.Series | None:
        """Predicted smallest number of removals that flip each target (datamodels)."""

        if self.index is not None:
            found = self.index.target_column("datamodels", "brittleness")
            return None if found is None else found.reindex(self.test.index)
        if not self.dense_ok:
            return None

        def compute() -> pd.Series | None:
            if "datamodels" not in self.methods or "targets" not in self.views:
                return None
            # datamodels.applications pulls in torch (its alpha_effect module)
            from datamodels.applications import brittleness_from_run

            result = brittleness_from_run(self.run)
            targets = self.dense("datamodels")[0]
            return pd.Series(result.support, index=targets).reindex(self.test.index)

        return self._memo(("brittleness",), compute)

    def leakage(self, k: int) -> dict[str, pd.DataFrame] | None:
        if "datamodels" not in self.methods or self.inputs("train") is None:
            return None
        if self.index is not None and (found := self.index.leakage(k)) is not None:
            return found
        if not self.dense_ok:
            return None
        # datamodels.applications pulls in torch (its alpha_effect module)
        from datamodels.applications import leakage_from_run

        return self._memo(("leakage", k), lambda: leakage_from_run(self.run, "datamodels", k))

    def disagreement(self, a: str, b: str) -> pd.Series:
        """Per test target, the Spearman correlation of methods ``a`` and ``b``'s score rows
        (lowest = they disagree most), over the targets both score."""
        if self.index is not None:
            return self.index.rho(a, b)
        if not self.dense_ok:
            return pd.Series(dtype=float)

        def compute() -> pd.Series:
            from scipy.stats import rankdata

            ta, sa = self.dense(a)
            tb, sb = self.dense(b)
            common = np.intersect1d(ta, tb)
            ra = rankdata(sa[np.searchsorted(ta, common)], axis=1)
            rb = rankdata(sb[np.searchsorted(tb, common)], axis=1)
            ra -= ra.mean(1, keepdims=True)
            rb -= rb.mean(1, keepdims=True)
            denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
            rho = np.divide(
                (ra * rb).sum(1), denom, out=np.full(len(common), np.nan), where=denom > 0
            )
            return pd.Series(rho, index=common)

        return self._memo(("disagree", a, b), compute)
