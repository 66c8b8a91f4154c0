"""`RunReader`: what the pages of `datamodels serve` read from one run, read once and cached.

Everything goes through the `Run` readers and the read-only DuckDB views of
`datamodels.store.query`, so a local run and an ``s3://`` run read the same way, and nothing
is ever written. When the run holds a current browse index (stage ``browse_index``,
``datamodels serve --index``), every ranking is looked up there (`BrowseIndex`): a page reads
only what it shows. Without one, a page reads one target's score row
(``SELECT scores FROM scores_<m> WHERE target = ?``), one training point's score column
(``scores[i + 1]`` over the targets), one target's weights, and the per-target LDS,
brittleness, leakage and method-disagreement rankings read whole score matrices once, when a
page first asks, on runs of at most `rankings.DENSE_LIMIT` scores per method (above it they say to
build the index instead).

Ids: a test example is its eval position (the row of a score table, the column of
``margins``); a training example is its train position (the column of masks and scores).
"""

from __future__ import annotations

import json
import threading
from functools import cached_property

import numpy as np
import pandas as pd

from datamodels.browse.rankings import Rankings
from datamodels.config import config_from_yaml_text
from datamodels.errors import DatamodelsError
from datamodels.store import Run
from datamodels.store.query import connect
from datamodels.store.schemas import EXAMPLES_SOURCE_COLUMNS, SOURCE_CLASSES_PATH


class NotFound(LookupError):
    """An id the run does not have; the app answers it with a one-line 404 page."""


def _ident(view: str) -> str:
    return '"' + view.replace('"', '""') + '"'


class RunReader(Rankings):
    """Cached, thread-safe reads of one run for the serve pages."""

    def __init__(self, run: Run | str) -> None:
        self.run = run if isinstance(run, Run) else Run(run)
        self._lock = threading.RLock()
        self._connection = connect(self.run)
        self._cache: dict[tuple, object] = {}
        self._memo_lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def warm(self) -> None:
        """Read what the first pages need (the decoded inputs, the margins) ahead of them;
        a table the run lacks is left for the page to report."""
        try:
            self.inputs("test")
            self.inputs("train")
            _ = self.margins, self.predicted_margins
            if self.index is not None:
                self.index.load()
        except (DatamodelsError, OSError, ValueError):
            pass

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    # -- SQL ---------------------------------------------------------------------------------

    def sql(self, text: str, params: list | None = None) -> pd.DataFrame:
        """A read query over the run's views (one connection, one query at a time)."""
        with self._lock:
            return self._connection.execute(text, params or []).df()

    @cached_property
    def views(self) -> set[str]:
        return set(self.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")["view_name"])

    def _memo(self, key: tuple, make):
        """``make()`` once per ``key``; other keys are read meanwhile (one lock per key)."""
        with self._memo_lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    # -- examples ----------------------------------------------------------------------------

    @cached_property
    def examples(self) -> pd.DataFrame:
        return self.run.examples()

    @cached_property
    def test(self) -> pd.DataFrame:
        """Test rows by eval position: index (the target id), label, original_label, row
        (the row in ``inputs("test")``)."""
        rows = self.run._split_rows("test")
        frame = pd.DataFrame(
            {
                "label": rows["label"].to_numpy(np.int64),
                "original_label": rows["original_label"].to_numpy(),
                "row": np.arange(len(rows)),
            },
            index=pd.Index(rows["eval_position"].to_numpy(np.int64), name="target"),
        )
        return frame

    @cached_property
    def train(self) -> pd.DataFrame:
        """Training rows by train position: label, original_label, flipped (bool)."""
        rows = self.run._split_rows("train").drop_duplicates("train_position")
        label = rows["label"].to_numpy(np.int64)
        original = rows["original_label"]
        flipped = (original.notna() & (original.astype("Int64") != label)).to_numpy(bool)
        return pd.DataFrame(
            {"label": label, "original_label": original.to_numpy(), "flipped": flipped},
            index=pd.Index(rows["train_position"].to_numpy(np.int64), name="position"),
        )

    @cached_property
    def source_classes(self) -> pd.DataFrame | None:
        """A transfer run's source classes (its training points); None otherwise."""
        if not self.run.fs.isfile(SOURCE_CLASSES_PATH):
            return None
        return self.sql("SELECT train_position, name FROM source_classes ORDER BY 1")

    @cached_property
    def sources(self) -> dict[str, pd.DataFrame]:
        """{"test": by target, "train": by position} -> source_path, class_name, where
        ``examples.parquet`` carries them (``imagefolder`` runs); empty otherwise."""
        described = self.sql("DESCRIBE examples")
        if not set(EXAMPLES_SOURCE_COLUMNS) <= set(described["column_name"]):
            return {}
        frame = self.sql(
            "SELECT split, eval_position, train_position, source_path, class_name FROM examples"
        )
        test = frame[(frame["split"] == "test") & frame["eval_position"].notna()]
        train = frame[frame["train_position"].notna()].drop_duplicates("train_position")
        columns = list(EXAMPLES_SOURCE_COLUMNS)
        return {
            "test": test.set_index(test["eval_position"].astype(np.int64))[columns],
            "train": train.set_index(train["train_position"].astype(np.int64))[columns],
        }

    def source_facts(self, split: str, ident: int) -> list[tuple[str, str]]:
        """[("class name", ...), ("file", ...)] of one example, the ones it has."""
        frame = self.sources.get(split)
        if frame is None or ident not in frame.index:
            return []
        row = frame.loc[ident]
        facts = [("class name", row["class_name"]), ("file", row["source_path"])]
        return [(name, str(value)) for name, value in facts if isinstance(value, str)]

    def source_of(self, split: str, ident: int) -> str | None:
        """ "class name: file" of one example (a thumbnail's hover text), None without."""
        facts = self.source_facts(split, ident)
        return ": ".join(value for _, value in facts) or None

    def test_row(self, target: int) -> pd.Series:
        if target not in self.test.index:
            raise NotFound(
                f"no test example {target}: test ids are the test split's eval positions "
                f"({len(self.test)} of them)"
            )
        return self.test.loc[target]

    def train_row(self, position: int) -> pd.Series:
        if position not in self.train.index:
            raise NotFound(
                f"no training example {position}: train positions are 0..{self.run.n_train - 1}"
            )
        return self.train.loc[position]

    def inputs(self, split: str) -> np.ndarray | None:
        """The decoded inputs of ``split`` ("test" rows by ``test.row``, "train" by train
        position); None for a transfer run's training points (source classes)."""
        if split == "train" and self.source_classes is not None:
            return None
        return self._memo(("inputs", split), lambda: self.run.inputs(split))

    # -- scores ------------------------------------------------------------------------------

    @cached_property
    def methods(self) -> list[str]:
        return [m for m in self.run.score_methods() if f"scores_{m}" in self.views]

    @cached_property
    def default_method(self) -> str | None:
        return "datamodels" if "datamodels" in self.methods else next(iter(self.methods), None)

    def score_row(self, method: str, target: int) -> np.ndarray | None:
        """float32[n_train]: ``method``'s scores of ``target``; None when it has no row."""
        frame = self.sql(
            f"SELECT scores FROM {_ident('scores_' + method)} WHERE target = ?", [int(target)]
        )
        if frame.empty:
            return None
        return np.asarray(frame["scores"].iloc[0], dtype=np.float32)

    def score_column(self, method: str, position: int) -> pd.Series:
        """``method``'s score of training point ``position`` for every test target it scores,
        indexed by target."""
        frame = self.sql(
            f"SELECT target, scores[?] AS score FROM {_ident('scores_' + method)}",
            [int(position) + 1],
        )
        series = frame.set_index("target")["score"].astype(np.float64)
        return series[series.index.isin(self.test.index)]

    @cached_property
    def self_scores(self) -> dict[str, np.ndarray]:
        """method -> float32[n_train] self scores (self-influence, memorisation)."""
        return self.run.self_scores()

    def weights_of(self, target: int) -> np.ndarray:
        """The nonzero datamodel weights of ``target`` (float32[nnz]); empty without a fit."""
        if "weights" not in self.views:
            return np.zeros(0, np.float32)
        frame = self.sql("SELECT weight FROM weights WHERE target = ?", [int(target)])
        return frame["weight"].to_numpy(np.float32)

    # -- per-target metrics ------------------------------------------------------------------

    @cached_property
    def config(self):
        return config_from_yaml_text(self.run.read_config_text())

    @cached_property
    def margins(self) -> pd.Series:
        """Mean margin of each test target over the fitting plan's models (NaN without them)."""
        margins = self.run.margins(plan=self.config.fit.plan)
        mean = margins.mean(0) if len(margins) else np.full(self.run.n_eval, np.nan)
        return pd.Series(mean[self.test.index.to_numpy()], index=self.test.index, dtype=float)

    @cached_property
    def n_margin_models(self) -> int:
        return int(
            self.sql("SELECT count(*) AS n FROM models WHERE plan = ?", [self.config.fit.plan])[
                "n"
            ].iloc[0]
        )

    @cached_property
    def predicted_margins(self) -> pd.Series | None:
        """The datamodels' margin with every training point, b_t + Σ_i w_t,i; None unfitted."""
        if "targets" not in self.views:
            return None
        frame = self.sql(
            "SELECT t.target, t.bias + coalesce(w.total, 0) AS value FROM targets t "
            "LEFT JOIN (SELECT target, sum(weight) AS total FROM weights GROUP BY target) w "
            "ON t.target = w.target"
        ).set_index("target")["value"]
        return frame.reindex(self.test.index).astype(float)

    # -- run-level tables --------------------------------------------------------------------

    @cached_property
    def evaluation(self) -> pd.DataFrame | None:
        try:
            return self.run.evaluation()
        except DatamodelsError:
            return None

    def lds_table(self) -> pd.DataFrame | None:
        """method, lds, stderr, low, high (95% normal interval over targets), n_targets."""
        if self.evaluation is None:
            return None
        rows = self.evaluation[self.evaluation["metric"] == "lds"]
        out = []
        for row in rows.itertuples():
            details = json.loads(row.details) if row.details else {}
            stderr = details.get("stderr")
            half = 1.96 * stderr if stderr is not None else float("nan")
            out.append(
                {
                    "method": row.method,
                    "lds": row.value,
                    "stderr": stderr,
                    "low": row.value - half,
                    "high": row.value + half,
                    "n_targets": row.n_targets,
                }
            )
        return pd.DataFrame(out)

    def removal_of(self, target: int) -> pd.DataFrame | None:
        """The counterfactual removal results of ``target`` (None when the run has none)."""
        if "removal_results" not in self.views:
            return None
        return self.sql(
            "SELECT method, kind, k, predicted, actual, stderr, baseline_margin, "
            "retrained_margin, predicted_flipped, flipped FROM removal_results "
            "WHERE target = ? ORDER BY method, kind, k",
            [int(target)],
        )

    @cached_property
    def lds_curve_state(self) -> str:
        """done / stale / missing of the ``lds_curve`` stage (`stages.states`), judged by the
        settings it was last run with."""
        # torch: stages.states imports the pipeline, whose stages fit with torch
        from datamodels.stages.lds_curve import LdsCurveStage
        from datamodels.stages.states import stage_state  # torch: the pipeline's stages

        return stage_state(LdsCurveStage.as_recorded(self.config, self.run))

    @cached_property
    def lds_curve(self) -> pd.DataFrame | None:
        if "lds_curve" not in self.views:
            return None
        return self.sql("SELECT * FROM lds_curve ORDER BY 1, 2")
