"""Stage helpers that do not need Ray: open a run for a config, and ``prepare``.

``open_run`` is the single place where a config meets a run directory: it writes
``config.yaml`` into a new run, accepts a run made from the same config hash, and refuses
anything else without touching it.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import yaml

from datamodels.config import Config, config_from_yaml_text
from datamodels.data.beton import BETON_NAME, write_beton
from datamodels.data.examples import examples_frame
from datamodels.data.sources import load_dataset
from datamodels.errors import RunMismatchError, StoreError
from datamodels.store import EXAMPLES_SCHEMA, Run, write_table_atomic

BETON_PATH = f"data/{BETON_NAME}"


def open_run(config: Config, uri: str) -> Run:
    """The run at ``uri`` for ``config``: created if absent, refused if made from another config."""
    run = Run(uri)
    if run.fs.exists(run.config_path):
        saved = yaml.safe_load(run.read_config_text()) or {}
        saved_hash = saved.get("config_hash")
        if saved_hash != config.hash:
            raise RunMismatchError(
                f"{uri} holds a run of config hash {saved_hash} ('{saved.get('name')}') but this config "
                f"hashes to {config.hash}; choose a new --out directory, or resume with the run's own "
                f"config: datamodels train {uri}/config.yaml --out {uri}"
            )
        if run.read_config_text() != config.to_yaml():  # same models; record the latest stage settings
            run.write_config(config.to_yaml())
        return run
    existing = [name for name in run.fs.entries("") if not name.startswith(".")]
    if existing:
        raise RunMismatchError(
            f"{uri} is not empty and holds no config.yaml ({', '.join(existing[:3])}...); "
            "choose a new or empty --out directory"
        )
    run.write_config(config.to_yaml())
    return run


def load_run_config(run: Run) -> Config:
    if not run.fs.exists(run.config_path):
        raise StoreError(f"{run.uri}: no config.yaml; is this a run directory? (create one with datamodels prepare)")
    return config_from_yaml_text(run.read_config_text())


def is_prepared(run: Run) -> bool:
    return run.fs.exists("examples.parquet") and run.fs.exists(BETON_PATH)


def prepare(config: Config, run: Run) -> bool:
    """Write the FFCV beton and ``examples.parquet``; returns False when both already exist."""
    if is_prepared(run):
        return False
    dataset = load_dataset(config.dataset)
    examples = examples_frame(dataset, eval_train=config.dataset.eval_train)
    local = run.local_path(BETON_PATH)
    if local is not None:
        write_beton(dataset, local)
    else:  # object store: write locally, then one PUT
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            write_beton(dataset, Path(tmp) / BETON_NAME)
            run.fs.write_bytes_atomic(BETON_PATH, (Path(tmp) / BETON_NAME).read_bytes())
    table = pa.Table.from_pandas(examples, preserve_index=False)
    write_table_atomic(run.fs, "examples.parquet", table, EXAMPLES_SCHEMA)
    return True


def num_classes(examples: pd.DataFrame) -> int:
    return int(max(examples["label"].max(), examples["original_label"].max())) + 1


def plan_status(config: Config, run: Run) -> pd.DataFrame:
    """One row per plan: planned, done, failed (attempt budget spent), missing. A tmc plan
    counts permutation walks (a walk stops early, so most of its prefix ids never exist)."""
    from collections import Counter

    from datamodels.plans import plan_models, tmc_walk_state

    n_train = run.sizes()[0]
    planned = plan_models(config, n_train)
    done = run.done_model_ids()
    attempts = Counter(run.failures()["model_id"].astype(int).tolist())
    budget = config.resources.max_attempts
    walks = tmc_walk_state(config, planned, n_train, done)
    rows = []
    for plan in config.plans:
        if plan.kind == "tmc":
            units = [(rep, present) for (name, _), (rep, present) in walks.items() if name == plan.name]
        else:
            units = [(i, i in done) for i in planned.model_id[planned.plan == plan.name].tolist()]
        n_done = sum(present for _, present in units)
        n_failed = sum(not present and attempts[i] >= budget for i, present in units)
        rows.append({"plan": plan.name, "kind": plan.kind, "planned": len(units), "done": n_done,
                     "failed": n_failed, "missing": len(units) - n_done - n_failed})
    return pd.DataFrame(rows)
