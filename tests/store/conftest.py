"""Synthetic run directories for the store tests, written through the public store API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamodels.store import Run, models_table

N_TRAIN = 50
N_EVAL = 20
# (first model_id, stop, plan) per shard: two "alpha" shards and one "loo" shard.
SHARDS = ((0, 10, "alpha"), (10, 25, "alpha"), (25, 40, "loo"))


def examples_frame(n_train: int = N_TRAIN, n_eval: int = N_EVAL) -> pd.DataFrame:
    """Train rows then test rows; every test row is evaluated."""
    n = n_train + n_eval
    labels = np.arange(n) % 3
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "split": ["train"] * n_train + ["test"] * n_eval,
            "label": labels,
            "original_label": labels,
            "eval_position": pd.array([None] * n_train + list(range(n_eval)), dtype="Int64"),
            "train_position": pd.array(list(range(n_train)) + [None] * n_eval, dtype="Int64"),
        }
    )


@dataclass
class SyntheticRun:
    run: Run
    model_ids: np.ndarray  # int64[m], sorted
    plans: np.ndarray  # str[m]
    masks: np.ndarray  # bool[m, n_train]
    margins: np.ndarray  # float32[m, n_eval]
    shard_paths: list[str]  # relative to the run directory, in SHARDS order


def shard_table(ids: np.ndarray, plan: str, masks: np.ndarray, margins: np.ndarray):
    return models_table(ids, plan, 0.5, ids * 7, masks, margins, 0.1, 0.9, 1.5, 1, "worker-0")


def build_run(directory: Path, seed: int = 0, shards=SHARDS) -> SyntheticRun:
    rng = np.random.default_rng(seed)
    run = Run(directory)
    run.write_config("seed: 0\nhash: abc\n")
    run.write_examples(examples_frame())
    m = max(stop for _, stop, _ in shards)
    masks = rng.random((m, N_TRAIN)) < 0.5
    margins = rng.normal(size=(m, N_EVAL)).astype(np.float32)
    plans = np.empty(m, dtype=object)
    paths = []
    for start, stop, plan in shards:
        # Rows inside a shard are shuffled so readers must sort by model_id themselves.
        ids = rng.permutation(np.arange(start, stop))
        plans[start:stop] = plan
        paths.append(run.write_models(shard_table(ids, plan, masks[ids], margins[ids])))
    return SyntheticRun(run, np.arange(m), plans, masks, margins, paths)


@pytest.fixture
def synthetic(tmp_path: Path) -> SyntheticRun:
    return build_run(tmp_path / "run")
