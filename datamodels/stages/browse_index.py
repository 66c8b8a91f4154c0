"""The ``browse_index`` stage: what the pages of `datamodels serve` rank, computed once.

A page of the run browser shows a few dozen numbers, but some of them rank a whole score
matrix (``float32[T, n_train]``, 2 GB at 10,000 × 50,000): the test examples a training
point helps most (a column of every method's matrix), the per-target LDS, brittleness,
where two methods disagree, the leakage pairs. This stage reads each matrix once, walks it in
blocks of `BLOCK` targets and writes what the pages look up:

``browse/top_train.parquet``  method, target, side (helpful | harmful), rank, train_position,
                              score: each test target's K highest (lowest) scoring training
                              points, rank 0 first
``browse/top_test.parquet``   method, train_position, side (helps | hurts), rank, target,
                              score: each training point's K test targets
``browse/targets.parquet``    method, target, lds (on the evaluate plan's models; NaN with
                              fewer than 3), brittleness (datamodels only; NaN otherwise)
``browse/pairs.parquet``      method_a, method_b, target, rho: the Spearman correlation of
                              two methods' score rows (average ranks)
``browse/leakage.parquet``    ranking (weight | cosine), rank, target, train_position, value:
                              the datamodels' top train/test pairs (cosine needs the train
                              split's own datamodels, ``dataset.eval_train``)

Test targets only (the test split's eval positions). The fingerprint holds K, the score
tables' and datamodel files' listings (name, size, mtime) and the evaluate plan's models, so
a rewritten score table makes the index stale and `datamodels serve` falls back to reading
the scores (`datamodels.browse.reader`).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from datamodels.config import Config
from datamodels.metrics.lds import average_replicates, lds, spearman_columns
from datamodels.stages.base import Stage, Unit
from datamodels.store import SCORES_DIR, TARGETS_PATH, Run
from datamodels.store.schema_checks import schema_metadata

K = 32  # entries of every per-example ranking (serve's --top may ask up to this many)
LEAKAGE_N = 100  # pairs kept per leakage ranking
BLOCK = 512  # targets per block while walking a score matrix

BROWSE_DIR = "browse"
TOP_TRAIN_PATH = f"{BROWSE_DIR}/top_train.parquet"
TOP_TEST_PATH = f"{BROWSE_DIR}/top_test.parquet"
BROWSE_TARGETS_PATH = f"{BROWSE_DIR}/targets.parquet"
PAIRS_PATH = f"{BROWSE_DIR}/pairs.parquet"
LEAKAGE_PATH = f"{BROWSE_DIR}/leakage.parquet"


def _schema(columns: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """A table of this stage, versioned as every table of a run."""
    return pa.schema(columns, metadata=schema_metadata())


def _ranking_schema(key: str, value: str) -> pa.Schema:
    return _schema(
        [
            ("method", pa.string()),
            (key, pa.int64()),
            ("side", pa.string()),
            ("rank", pa.int32()),
            (value, pa.int64()),
            ("score", pa.float32()),
        ]
    )


TOP_TRAIN_SCHEMA = _ranking_schema("target", "train_position")
TOP_TEST_SCHEMA = _ranking_schema("train_position", "target")
BROWSE_TARGETS_SCHEMA = _schema(
    [
        ("method", pa.string()),
        ("target", pa.int64()),
        ("lds", pa.float64()),
        ("brittleness", pa.float64()),
    ]
)
PAIRS_SCHEMA = _schema(
    [
        ("method_a", pa.string()),
        ("method_b", pa.string()),
        ("target", pa.int64()),
        ("rho", pa.float64()),
    ]
)
LEAKAGE_SCHEMA = _schema(
    [
        ("ranking", pa.string()),
        ("rank", pa.int32()),
        ("target", pa.int64()),
        ("train_position", pa.int64()),
        ("value", pa.float64()),
    ]
)
TABLES = {
    TOP_TRAIN_PATH: TOP_TRAIN_SCHEMA,
    TOP_TEST_PATH: TOP_TEST_SCHEMA,
    BROWSE_TARGETS_PATH: BROWSE_TARGETS_SCHEMA,
    PAIRS_PATH: PAIRS_SCHEMA,
    LEAKAGE_PATH: LEAKAGE_SCHEMA,
}


def top_rows(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(highest, lowest): int64[B, k] column indices of each row of ``block`` (float[B, n]),
    highest first (ties: lower index first) and lowest first (ties: higher index first):
    exactly the first ``k`` of a stable sort of the negated row and of its reverse, in O(n)
    a row (a partition, then the ties at the k-th value taken in index order)."""
    k = min(k, block.shape[1])
    out = []
    for sign in (-1.0, 1.0):
        keyed = sign * block
        kth = np.partition(keyed, k - 1, axis=1)[:, k - 1]
        picks = np.empty((len(block), k), np.int64)
        for r, (row, value) in enumerate(zip(keyed, kth, strict=True)):
            better = np.flatnonzero(row < value)
            better = better[np.lexsort((better if sign < 0 else -better, row[better]))]
            ties = np.flatnonzero(row == value)
            ties = ties[: k - len(better)] if sign < 0 else ties[::-1][: k - len(better)]
            picks[r] = np.concatenate([better, ties])
        out.append(picks)
    return out[0], out[1]


def _long(
    method: str,
    keys: np.ndarray,
    side: str,
    picks: np.ndarray,
    values: np.ndarray,
    key: str,
    value: str,
) -> pd.DataFrame:
    n, k = picks.shape
    return pd.DataFrame(
        {
            "method": method,
            key: np.repeat(keys, k),
            "side": side,
            "rank": np.tile(np.arange(k, dtype=np.int32), n),
            value: picks.reshape(-1),
            "score": values.reshape(-1),
        }
    )


class BrowseIndexStage(Stage):
    """One unit in the driver: every method's matrix walked block by block."""

    name = "browse_index"
    what = "tables"

    def __init__(self, config: Config, run: Run) -> None:
        super().__init__(config, run)

    def fingerprint(self) -> dict:
        fs = self.run.fs
        return {
            "settings": {"k": K, "leakage_n": LEAKAGE_N},
            "scores": fs.stats(SCORES_DIR, ".parquet"),
            "datamodels": fs.stats("datamodels", ".parquet"),
            "evaluate_plan": self.config.evaluate.plan,
            "models": self.run.plan_witness(self.config.evaluate.plan),
        }

    def outputs(self) -> list[str]:
        return list(TABLES)

    def units(self) -> list[Unit]:
        return [Unit("index")]

    def done(self, unit: Unit) -> bool:
        return False  # one unit; the marker says when the tables are current

    def compute(self, ctx: Any, unit: Unit, shared: Any = None) -> None:
        run = self.run
        examples = run.examples()
        test = np.sort(
            examples.loc[examples["split"] == "test", "eval_position"].dropna().to_numpy(np.int64)
        )
        masks, margins = run.masks_and_margins(plan=self.config.evaluate.plan)
        subsets, truth = average_replicates(masks, margins) if len(masks) >= 3 else (None, None)
        tables: dict[str, list[pd.DataFrame]] = {path: [] for path in TABLES}
        matrices: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for method in run.score_methods():
            targets, scores = run.scores(method)
            keep = np.isin(targets, test)
            if not keep.all():
                targets, scores = targets[keep], scores[keep]
            matrices[method] = (targets, scores)
            self._one_method(method, targets, scores, subsets, truth, tables)
        for a, b in combinations(sorted(matrices), 2):
            tables[PAIRS_PATH].append(self._pair(a, b, matrices[a], matrices[b]))
        if "datamodels" in matrices:
            tables[LEAKAGE_PATH].append(self._leakage(*matrices["datamodels"]))
        for path, schema in TABLES.items():
            frames = tables[path]
            frame = (
                pd.concat(frames, ignore_index=True) if frames else schema.empty_table().to_pandas()
            )
            run.write_table(path, pa.Table.from_pandas(frame, schema, preserve_index=False), schema)

    def _one_method(
        self,
        method: str,
        targets: np.ndarray,
        scores: np.ndarray,
        subsets: np.ndarray | None,
        truth: np.ndarray | None,
        tables: dict[str, list[pd.DataFrame]],
    ) -> None:
        # torch: datamodels.applications imports its alpha_effect module (fits)
        from datamodels.applications.brittleness import brittleness

        n_train = scores.shape[1]
        k = min(K, n_train, max(len(targets), 1))
        best = {
            side: (np.empty((0, n_train), np.float32), np.empty((0, n_train), np.int64))
            for side in ("helps", "hurts")
        }
        lds_values, support = [], []
        bias = None
        if method == "datamodels" and self.run.fs.isfile(TARGETS_PATH):
            bias = self.run.targets().set_index("target")["bias"]
        for start in range(0, len(targets), BLOCK):
            block, ids = scores[start : start + BLOCK], targets[start : start + BLOCK]
            high, low = top_rows(block, min(K, n_train))
            for side, picks in (("helpful", high), ("harmful", low)):
                values = np.take_along_axis(block, picks, axis=1)
                tables[TOP_TRAIN_PATH].append(
                    _long(method, ids, side, picks, values, "target", "train_position")
                )
            for side, sign in (("helps", -1.0), ("hurts", 1.0)):
                kept, kept_ids = best[side]
                merged = np.concatenate([kept, block])
                merged_ids = np.concatenate([kept_ids, np.broadcast_to(ids[:, None], block.shape)])
                pick = (
                    np.argpartition(sign * merged, k - 1, axis=0)[:k]
                    if len(merged) > k
                    else np.arange(len(merged))[:, None].repeat(n_train, 1)
                )
                best[side] = (
                    np.take_along_axis(merged, pick, 0),
                    np.take_along_axis(merged_ids, pick, 0),
                )
            if subsets is not None:
                lds_values.append(lds(block, subsets, truth[:, ids]).per_target)
            if bias is not None:
                b = bias.reindex(ids).to_numpy(np.float64)
                support.append(brittleness(block, b + block.astype(np.float64).sum(1)).support)
        positions = np.arange(n_train)
        for side, sign in (("helps", -1.0), ("hurts", 1.0)):
            values, ids = best[side]
            tie = ids if sign < 0 else -ids
            order = np.lexsort((tie, sign * values), axis=0)  # [k, n_train]
            values = np.take_along_axis(values, order, 0).T
            ids = np.take_along_axis(ids, order, 0).T
            tables[TOP_TEST_PATH].append(
                _long(method, positions, side, ids, values, "train_position", "target")
            )
        nan = np.full(len(targets), np.nan)
        tables[BROWSE_TARGETS_PATH].append(
            pd.DataFrame(
                {
                    "method": method,
                    "target": targets,
                    "lds": np.concatenate(lds_values) if lds_values else nan,
                    "brittleness": np.concatenate(support) if support else nan,
                }
            )
        )

    @staticmethod
    def _pair(a: str, b: str, first: tuple, second: tuple) -> pd.DataFrame:
        (ta, sa), (tb, sb) = first, second
        common = np.intersect1d(ta, tb)
        ra, rb = sa[np.searchsorted(ta, common)], sb[np.searchsorted(tb, common)]
        rho = [
            spearman_columns(ra[i : i + BLOCK].T, rb[i : i + BLOCK].T)
            for i in range(0, len(common), BLOCK)
        ]
        values = np.concatenate(rho) if rho else np.zeros(0)
        return pd.DataFrame({"method_a": a, "method_b": b, "target": common, "rho": values})

    def _leakage(self, targets: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        # torch: datamodels.applications imports its alpha_effect module (fits)
        from datamodels.applications.leakage import cosine_pairs, top_weight_pairs
        from datamodels.applications.tables import split_scores  # torch: as above

        candidates = [
            top_weight_pairs(scores[i : i + BLOCK], targets[i : i + BLOCK], LEAKAGE_N)
            for i in range(0, len(targets), BLOCK)
        ]
        by_weight = (
            pd.concat(candidates, ignore_index=True)
            .sort_values(
                ["weight", "target", "train_position"], ascending=[False, True, True], kind="stable"
            )
            .head(LEAKAGE_N)
        )
        frames = [
            pd.DataFrame(
                {
                    "ranking": "weight",
                    "rank": np.arange(len(by_weight)),
                    "target": by_weight["target"].to_numpy(),
                    "train_position": by_weight["train_position"].to_numpy(),
                    "value": by_weight["weight"].to_numpy(),
                }
            )
        ]
        examples = self.run.examples()
        evaluated_train = examples["train_position"].notna() & examples["eval_position"].notna()
        split = (
            split_scores(self.run, "datamodels")
            if len(targets) and int(evaluated_train.sum()) == self.run.n_train
            else None
        )
        if split is not None and split.train_rows is not None:
            pairs = cosine_pairs(split.test_scores, split.train_rows, split.test_targets, LEAKAGE_N)
            frames.append(
                pd.DataFrame(
                    {
                        "ranking": "cosine",
                        "rank": pairs["rank"].to_numpy(),
                        "target": pairs["target"].to_numpy(),
                        "train_position": pairs["train_position"].to_numpy(),
                        "value": pairs["cosine"].to_numpy(),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def finish(self) -> None:
        return None
