"""`BrowseIndex`: the tables of the ``browse_index`` stage (``browse/*.parquet``), read once.

The stage ranks every method's score matrix ahead of time (`datamodels.stages.browse_index`);
here its tables become arrays a page indexes in O(log n): per (method, side) the sorted keys
``int64[n]`` and the ranked ids ``int64[n, k]`` with their scores ``float32[n, k]``. The index
is used only while the stage is done (`stages.states`): a score table rewritten since makes it
stale, and the reader goes back to the score tables.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from datamodels.stages.browse_index import (
    BROWSE_TARGETS_PATH,
    BROWSE_TARGETS_SCHEMA,
    LEAKAGE_N,
    LEAKAGE_PATH,
    LEAKAGE_SCHEMA,
    PAIRS_PATH,
    PAIRS_SCHEMA,
    TOP_TEST_PATH,
    TOP_TEST_SCHEMA,
    TOP_TRAIN_PATH,
    TOP_TRAIN_SCHEMA,
)
from datamodels.store import Run

Ranked = tuple[np.ndarray, np.ndarray, np.ndarray]  # keys int64[n], ids int64[n, k], float32[n, k]


class BrowseIndex:
    """Lookups into a current browse index of one run (tables read on first use)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._lock = threading.Lock()
        self._ranked: dict[str, dict[tuple[str, str], Ranked]] = {}
        self._frames: dict[str, pd.DataFrame] = {}

    def _table(self, path: str) -> dict[tuple[str, str], Ranked]:
        with self._lock:
            if path not in self._ranked:
                self._ranked[path] = self._read_ranked(path)
            return self._ranked[path]

    def _read_ranked(self, path: str) -> dict[tuple[str, str], Ranked]:
        schema = TOP_TRAIN_SCHEMA if path == TOP_TRAIN_PATH else TOP_TEST_SCHEMA
        key, value = schema.names[1], schema.names[4]
        table = self.run.read_table(path, schema)
        out: dict[tuple[str, str], Ranked] = {}
        for method in pc.unique(table["method"]).to_pylist():
            for side in pc.unique(table["side"]).to_pylist():
                mask = pc.and_(pc.equal(table["method"], method), pc.equal(table["side"], side))
                part = table.filter(mask)
                if part.num_rows == 0:
                    continue
                k = int(pc.max(part["rank"]).as_py()) + 1
                keys = part[key].to_numpy()[::k]
                ids = part[value].to_numpy().reshape(-1, k)
                scores = part["score"].to_numpy().reshape(-1, k)
                out[(method, side)] = (keys, ids, scores)
        return out

    def load(self) -> None:
        """Read every table now (the server warms the index as it starts)."""
        self._table(TOP_TRAIN_PATH)
        self._table(TOP_TEST_PATH)
        self._frame(BROWSE_TARGETS_PATH, BROWSE_TARGETS_SCHEMA)
        self._frame(PAIRS_PATH, PAIRS_SCHEMA)
        self._frame(LEAKAGE_PATH, LEAKAGE_SCHEMA)

    def _frame(self, path: str, schema) -> pd.DataFrame:
        with self._lock:
            if path not in self._frames:
                self._frames[path] = self.run.read_table(path, schema).to_pandas()
            return self._frames[path]

    def k(self) -> int:
        """The length of the stored rankings (what the stage kept: K or fewer)."""
        ranked = self._table(TOP_TRAIN_PATH)
        return min((ids.shape[1] for _, ids, _ in ranked.values()), default=0)

    def _lookup(self, path: str, method: str, side: str, key: int, k: int):
        ranked = self._table(path).get((method, side))
        if ranked is None:
            return None
        keys, ids, scores = ranked
        at = int(np.searchsorted(keys, key))
        if at >= len(keys) or keys[at] != key:
            return None
        return ids[at, :k], scores[at, :k]

    def train_of(self, method: str, target: int, k: int) -> dict[str, tuple] | None:
        """{"helpful": (positions, scores), "harmful": ...}: the top ``k`` of one target."""
        found = {
            s: self._lookup(TOP_TRAIN_PATH, method, s, target, k) for s in ("helpful", "harmful")
        }
        return None if any(v is None for v in found.values()) else found

    def tests_of(self, method: str, position: int, k: int) -> dict[str, pd.Series] | None:
        """{"helps": score by target, highest first, "hurts": lowest first} of one point."""
        out = {}
        for side in ("helps", "hurts"):
            found = self._lookup(TOP_TEST_PATH, method, side, position, k)
            if found is None:
                return None
            out[side] = pd.Series(found[1].astype(np.float64), index=found[0])
        return out

    def target_column(self, method: str, column: str) -> pd.Series | None:
        """Per-target ``lds`` or ``brittleness`` of ``method`` (None when all NaN)."""
        frame = self._frame(BROWSE_TARGETS_PATH, BROWSE_TARGETS_SCHEMA)
        rows = frame[frame["method"] == method]
        series = rows.set_index("target")[column].astype(float)
        return None if series.isna().all() else series

    def rho(self, a: str, b: str) -> pd.Series:
        """Spearman ρ of methods ``a`` and ``b``'s score rows, by target."""
        frame = self._frame(PAIRS_PATH, PAIRS_SCHEMA)
        for first, second in ((a, b), (b, a)):
            rows = frame[(frame["method_a"] == first) & (frame["method_b"] == second)]
            if len(rows):
                return rows.set_index("target")["rho"].astype(float)
        return pd.Series(dtype=float)

    def leakage(self, n: int) -> dict[str, pd.DataFrame] | None:
        """{"weight": target, train_position, weight, rank; "cosine": ... cosine, rank}, the
        top ``n`` of each (None when the stage kept fewer than asked: `LEAKAGE_N`)."""
        if n > LEAKAGE_N:
            return None
        frame = self._frame(LEAKAGE_PATH, LEAKAGE_SCHEMA)
        out = {}
        for ranking in ("weight", "cosine"):
            rows = frame[frame["ranking"] == ranking].sort_values("rank").head(n)
            out[ranking] = pd.DataFrame(
                {
                    "target": rows["target"].to_numpy(np.int64),
                    "train_position": rows["train_position"].to_numpy(np.int64),
                    ranking: rows["value"].to_numpy(np.float64),
                    "rank": rows["rank"].to_numpy(np.int64),
                }
            )
        return out
