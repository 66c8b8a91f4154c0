"""The one reader the applications share: a method's score rows split into test and train.

A score table's rows are eval positions (`examples.parquet`); the test split's targets are
the test rows, and with ``dataset.eval_train`` the train split's own rows exist too (row of
train position i = the datamodel of training example i, used by cosine leakage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodels.store import Run


@dataclass(frozen=True)
class SplitScores:
    """test_targets: int[T] eval positions; test_scores: float32[T, n_train];
    train_rows: float32[n_train, n_train] or None (row i = training example i's own vector,
    None when the run did not evaluate the train split)."""

    test_targets: np.ndarray
    test_scores: np.ndarray
    train_rows: np.ndarray | None


def split_scores(run: Run, method: str = "datamodels") -> SplitScores:
    """Read ``scores/<method>.parquet`` and split its rows by the examples' split."""
    targets, scores = run.scores(method)
    examples = run.examples()
    evaluated = examples[examples["eval_position"].notna()]
    split_of = dict(
        zip(evaluated["eval_position"].astype(np.int64), evaluated["split"], strict=True)
    )
    is_test = np.array([split_of.get(int(t)) == "test" for t in targets], dtype=bool)
    train_rows = None
    train = evaluated[evaluated["train_position"].notna()]
    if len(train) == run.n_train:
        row_of = {int(t): r for r, t in enumerate(targets)}
        eval_pos = train.sort_values("train_position")["eval_position"].astype(np.int64)
        if all(int(p) in row_of for p in eval_pos):
            train_rows = scores[[row_of[int(p)] for p in eval_pos]]
    return SplitScores(targets[is_test], scores[is_test], train_rows)


def test_input_rows(run: Run, targets: np.ndarray) -> np.ndarray:
    """Row of each test target (eval position) in ``run.inputs("test")``: int[len(targets)]."""
    examples = run.examples()
    test = examples[(examples["split"] == "test") & examples["eval_position"].notna()]
    positions = np.sort(test["eval_position"].to_numpy(np.int64))
    return np.searchsorted(positions, np.asarray(targets, dtype=np.int64))
