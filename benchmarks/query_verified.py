"""What `query` pays for verifying every page before DuckDB reads it, first and cached.

    python benchmarks/query_verified.py [--models 4000] [--per-shard 250]

Writes a synthetic run (n_train 5,000, n_eval 1,000, random masks and margins) in a
temporary folder and times one aggregate over ``models``: the baseline is the connection
without checks (``connect(run, check=False)``: DuckDB reads the files unverified); then
``query`` the first time (every page of every file read against its CRC), again in the same
process, and as a new process would (the per-user record on disk answers). Each figure is
printed in seconds and as a multiple of the baseline.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd

from datamodels.store import Run, guards, models_table, query
from datamodels.store.query import connect

N_TRAIN, N_EVAL = 5000, 1000


def _examples() -> pd.DataFrame:
    n = N_TRAIN + N_EVAL
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "split": ["train"] * N_TRAIN + ["test"] * N_EVAL,
            "label": np.zeros(n, np.int64),
            "original_label": np.zeros(n, np.int64),
            "eval_position": pd.array([None] * N_TRAIN + list(range(N_EVAL)), dtype="Int64"),
            "train_position": pd.array(list(range(N_TRAIN)) + [None] * N_EVAL, dtype="Int64"),
        }
    )


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=4000)
    parser.add_argument("--per-shard", type=int, default=250)
    args = parser.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="query-verified-cache-")
    directory = os.path.join(tempfile.mkdtemp(prefix="query-verified-"), "run")
    run = Run(directory)
    run.write_config("seed: 0\n")
    run.write_examples(_examples())
    rng = np.random.default_rng(0)
    for lo in range(0, args.models, args.per_shard):
        ids = np.arange(lo, min(args.models, lo + args.per_shard))
        k = len(ids)
        masks = rng.random((k, N_TRAIN)) < 0.5
        margins = rng.normal(size=(k, N_EVAL)).astype(np.float32)
        table = models_table(ids, "a", 0.5, ids, masks, margins, 0.1, 0.9, 1.0, 1, "w")
        run.write_models(table, config_hash="0123456789abcdef")
    size = sum(os.path.getsize(os.path.join(directory, "models", f)) for f in run.shard_files())
    sql = "SELECT count(*), avg(margins[1]) FROM models"
    baseline = _timed(lambda: connect(run, check=False).execute(sql).df())
    first = _timed(lambda: query(run, sql))
    again = _timed(lambda: query(run, sql))
    guards._memory.clear()  # as a new process: only the record on disk
    fresh = _timed(lambda: query(run, sql))
    print(f"{args.models} models in {len(run.shard_files())} shards, {size / 2**20:.0f} MiB")
    print(f"  unverified (baseline)          {baseline:6.2f} s")
    for label, seconds in (
        ("first query, every page read", first),
        ("again, same process", again),
        ("again, new process", fresh),
    ):
        print(f"  {label:<30} {seconds:6.2f} s  ({seconds / baseline:.1f}x baseline)")


if __name__ == "__main__":
    main()
