"""Synthetic run directories for the store tests, written through the public store API, and
a local S3-compatible server (moto) for the object-store tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
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


# -- runs made from a full config (config.yaml as `prepare` writes it) --------------------------

PLANNED_CONFIG = {
    "seed": 3,
    "plans": [
        {"name": "alpha", "kind": "alpha", "alpha": 0.5, "count": 20},
        {"name": "loo", "kind": "loo", "points": [0, 1, 2, 3], "seeds": 2},
    ],
}
# (first model_id, stop) per shard; the plan above has 30 models: 20 "alpha", 10 "loo".
PLANNED_SHARDS = ((0, 12), (12, 30))


def planned_config(seed: int = 3):
    from datamodels.config import config_from_dict

    return config_from_dict({**PLANNED_CONFIG, "seed": seed})


def planned_shard_table(config, ids: np.ndarray, n_train: int = N_TRAIN, n_eval: int = N_EVAL):
    """The models/ rows the train stage would write for ``ids`` of ``config`` (fake margins)."""
    from datamodels.plans import masks_for, plan_models

    planned = plan_models(config, n_train).select_ids(ids)
    masks = masks_for(config, planned, n_train)
    margins = np.random.default_rng(int(ids[0])).normal(size=(len(ids), n_eval))
    return models_table(
        ids, planned.plan, planned.alpha, planned.seed, masks, margins, 0.1, 0.9, 1.5, 1, "w"
    )


@dataclass
class PlannedRun:
    run: Run
    config: object  # datamodels.config.Config
    shard_paths: list[str]


def build_planned_run(directory: Path, seed: int = 3, shards=PLANNED_SHARDS) -> PlannedRun:
    config = planned_config(seed)
    run = Run(directory)
    run.write_config(config.to_yaml())
    run.write_examples(examples_frame())
    paths = [
        run.write_models(
            planned_shard_table(config, np.arange(start, stop)), config_hash=config.hash
        )
        for start, stop in shards
    ]
    return PlannedRun(run, config, paths)


@pytest.fixture
def planned(tmp_path: Path) -> PlannedRun:
    return build_planned_run(tmp_path / "planned")


def corrupt_page(path: str, column: str, fill: bytes = b"\x7e" * 8) -> int:
    """Overwrite 8 bytes in the middle of ``column``'s first data page, footer left intact.

    Random float32 margins do not compress, so the bytes land in the values themselves and a
    reader without page checksums returns ~1e38 garbage instead of failing. Returns the offset.
    """
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    row_group = metadata.row_group(0)
    (chunk,) = [
        row_group.column(i)
        for i in range(row_group.num_columns)
        if row_group.column(i).path_in_schema.split(".")[0] == column
    ]
    offset = chunk.data_page_offset + chunk.total_compressed_size // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(fill)
    return offset


# -- a local S3-compatible server ------------------------------------------------------------

BUCKET = "datamodels-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """``moto_server`` on 127.0.0.1 (a random free port) with one bucket; the AWS variables
    point this process and the Ray workers it starts at it, and the beton cache is a
    temporary folder. Stopped (and the folder removed) after the session."""
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # the beton cache of these runs (store/beton.py): not the user's own
        "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="datamodels-test-cache-"),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on 127.0.0.1:{port}")
                time.sleep(0.2)
        admin = pafs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", access_key="testing",
            secret_key="testing", region="us-east-1", allow_bucket_creation=True,
        )  # fmt: skip
        admin.create_dir(BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(env["XDG_CACHE_HOME"], ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
