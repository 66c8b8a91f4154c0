"""The ``fit`` stage: one sparse linear datamodel per evaluation target (DESIGN §6).

Reads the masks and margins of the fitting plan, holds out a seeded validation fraction of
those models, runs the batched LASSO path for a block of targets at a time, picks λ per
target by validation error and refits on train+validation. Each finished block is written
to ``datamodels/blocks/`` so an interrupted fit resumes where it stopped; when every block
is present they are merged into ``datamodels/weights.parquet`` (non-zeros),
``datamodels/targets.parquet`` and a dense ``scores/datamodels.parquet``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from datamodels.config import Config
from datamodels.errors import DatamodelsError
from datamodels.orchestrate.progress import TrainProgress
from datamodels.regress.lasso import lasso_select, split_rows
from datamodels.store import TARGETS_PATH, TARGETS_SCHEMA, WEIGHTS_PATH, WEIGHTS_SCHEMA, Run

BLOCKS_DIR = "datamodels/blocks"
METHOD = "datamodels"


class FitError(DatamodelsError):
    """The run cannot be fitted as configured (too few models, no targets)."""


def fit_targets(config: Config, run: Run) -> np.ndarray:
    """Evaluation positions to fit: the test split, or every evaluation example."""
    examples = run.examples()
    chosen = examples[examples["eval_position"].notna()]
    if config.fit.targets == "test":
        chosen = chosen[chosen["split"] == "test"]
    return np.sort(chosen["eval_position"].to_numpy(np.int64))


def _settings(config: Config, n_models: int) -> str:
    return json.dumps({**config.fit.model_dump(mode="json", exclude={"device", "targets_per_block"}),
                       "config_hash": config.hash, "n_models": n_models}, sort_keys=True)


def _block_names(start: int) -> tuple[str, str]:
    return f"{BLOCKS_DIR}/targets-{start:07d}.parquet", f"{BLOCKS_DIR}/weights-{start:07d}.parquet"


def _device(choice: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice


def _outputs_current(run: Run, settings: str) -> bool:
    if not (run.fs.exists(TARGETS_PATH) and run.fs.exists(WEIGHTS_PATH) and run.fs.exists(run.scores_path(METHOD))):
        return False
    meta = pq.read_schema(run.fs.open_input_file(TARGETS_PATH)).metadata or {}
    return meta.get(b"fit_settings", b"").decode() == settings


def fit(config: Config, run: Run, show_progress: bool = True, console=None) -> bool:
    """Fit every target; returns False when the outputs already exist for these settings."""
    masks, margins = run.masks_and_margins(plan=config.fit.plan)
    m = len(masks)
    settings = _settings(config, m)
    if _outputs_current(run, settings):
        if console:
            console.print("fit: datamodels/ is complete for these settings; nothing to do")
        return False
    needed = int(np.ceil(2 / config.fit.val_fraction)) + 2
    if m < needed:
        raise FitError(
            f"fit needs at least {needed} models in plan '{config.fit.plan}' "
            f"(validation fraction {config.fit.val_fraction}); the run has {m}. Train more models first"
        )
    targets = fit_targets(config, run)
    if len(targets) == 0:
        raise FitError(f"fit: no evaluation targets for fit.targets={config.fit.targets!r}")
    train_rows, val_rows = split_rows(m, config.fit.val_fraction, config.fit.split_seed)
    block = config.fit.targets_per_block
    starts = list(range(0, len(targets), block))
    device = _device(config.fit.device)
    with TrainProgress(len(targets), 0, enabled=show_progress, console=console, what="targets") as progress:
        for start in starts:
            targets_file, weights_file = _block_names(start)
            stop = min(len(targets), start + block)
            if _block_done(run, targets_file, weights_file, settings):
                progress.advance(stop - start)
                continue
            block_targets = targets[start:stop]
            y = margins[:, block_targets]
            selection = lasso_select(
                masks, y, (train_rows, val_rows), n_lambdas=config.fit.n_lambdas, eps=config.fit.eps,
                patience=config.fit.patience, tol=config.fit.tol, device=device,
            )
            _write_block(run, targets_file, weights_file, block_targets, selection, settings)
            progress.advance(stop - start)
    _merge(run, targets, starts, settings)
    return True


def _with_settings(schema: pa.Schema, settings: str) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), b"fit_settings": settings.encode()})


def _block_done(run: Run, targets_file: str, weights_file: str, settings: str) -> bool:
    if not (run.fs.exists(targets_file) and run.fs.exists(weights_file)):
        return False
    try:
        meta = pq.read_schema(run.fs.open_input_file(targets_file)).metadata or {}
    except Exception:  # noqa: BLE001 - a torn block is simply redone
        return False
    return meta.get(b"fit_settings", b"").decode() == settings


def _write_block(run: Run, targets_file: str, weights_file: str, block_targets: np.ndarray, selection, settings: str) -> None:
    weights = np.asarray(selection.weights, dtype=np.float32)
    rows, cols = np.nonzero(weights)
    weight_rows = pd.DataFrame(
        {"target": block_targets[rows].astype(np.int64), "train_position": cols.astype(np.int64),
         "weight": weights[rows, cols]}
    )
    target_rows = pd.DataFrame(
        {"target": block_targets.astype(np.int64), "bias": selection.bias.astype(np.float32),
         "lam": selection.lam.astype(np.float32), "val_mse": selection.val_mse.astype(np.float32),
         "val_spearman": selection.val_spearman.astype(np.float32), "nnz": selection.nnz.astype(np.int64)}
    )
    run.write_table(weights_file, weight_rows, _with_settings(WEIGHTS_SCHEMA, settings))
    run.write_table(targets_file, target_rows, _with_settings(TARGETS_SCHEMA, settings))


def _merge(run: Run, targets: np.ndarray, starts: list[int], settings: str) -> None:
    target_tables, weight_tables = [], []
    for start in starts:
        targets_file, weights_file = _block_names(start)
        target_tables.append(run.read_table(targets_file, TARGETS_SCHEMA))
        weight_tables.append(run.read_table(weights_file, WEIGHTS_SCHEMA))
    weights = pa.concat_tables(weight_tables).to_pandas()
    run.write_table(WEIGHTS_PATH, weights, _with_settings(WEIGHTS_SCHEMA, settings))
    dense = np.zeros((len(targets), run.n_train), dtype=np.float32)
    row_of = {int(t): i for i, t in enumerate(targets)}
    dense[weights["target"].map(row_of).to_numpy(), weights["train_position"].to_numpy()] = weights["weight"].to_numpy()
    run.write_scores(METHOD, targets, dense)
    # targets.parquet last: its metadata marks the whole fit as complete
    run.write_table(TARGETS_PATH, pa.concat_tables(target_tables).to_pandas(), _with_settings(TARGETS_SCHEMA, settings))
