"""What ``datamodels status`` shows of a run, and giving failed models a fresh budget."""

from __future__ import annotations

import uuid
from collections import Counter

import numpy as np
import pandas as pd

from datamodels.config import Config
from datamodels.errors import InfrastructureError
from datamodels.plans import plan_kind, plan_models, tmc_walk_state
from datamodels.store import FAILURES_PATH, Run


def clear_failures(run: Run) -> str | None:
    """Give every model a fresh attempt budget: ``failures.parquet`` moves to
    ``_failures/cleared-<time>.parquet`` (kept, not deleted); returns where it went."""
    import time

    if not run.fs.isfile(FAILURES_PATH):
        return None
    target = f"_failures/cleared-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.parquet"
    run.fs.write_bytes_atomic(target, run.fs.read_bytes(FAILURES_PATH))
    run.fs.filesystem.delete_file(run.fs.join(FAILURES_PATH))
    return target


def plan_status(config: Config, run: Run) -> pd.DataFrame:
    """One row per plan: planned, done, failed (attempt budget spent), waiting (a stored-mask
    plan's models before its ``plan_masks/`` table exists: ``train`` cannot make them yet),
    missing. A tmc plan counts permutation walks (a walk stops early, so most of its prefix
    ids never exist)."""
    n_train = run.n_train
    planned = plan_models(config, n_train)
    done = run.stored_model_ids()
    attempts = Counter(run.failures()["model_id"].astype(int).tolist())
    budget = config.resources.max_attempts
    spent = np.array([i for i, n in attempts.items() if n >= budget], dtype=np.int64)
    has_walks = any(plan_kind(plan.kind).walks for plan in config.plans)
    walks = tmc_walk_state(config, planned, n_train, set(done.tolist()) if has_walks else set())
    rows = []
    for plan in config.plans:
        if plan_kind(plan.kind).walks:  # one unit per walk: a few, not one per model
            pairs = [(rep, p) for (name, _), (rep, p) in walks.items() if name == plan.name]
            units = np.array([rep for rep, _ in pairs], dtype=np.int64)
            present = np.array([p for _, p in pairs], dtype=bool)
        else:  # arrays over the plan: no Python object per model
            units = planned.model_id[planned.plan == plan.name]
            present = np.isin(units, done)
        n_done = int(present.sum())
        n_failed = int((~present & np.isin(units, spent)).sum())
        blocked = plan_kind(plan.kind).stored and run.plan_masks(plan.name) is None
        n_waiting = len(units) - n_done - n_failed if blocked else 0
        rows.append(
            {
                "plan": plan.name,
                "kind": plan.kind,
                "planned": len(units),
                "done": n_done,
                "failed": n_failed,
                "waiting": n_waiting,
                "missing": len(units) - n_done - n_failed - n_waiting,
            }
        )
    return pd.DataFrame(rows)


def check_writable(run: Run, subdir: str) -> None:
    """Refuse a run directory that cannot be written (full, read-only) before any work."""
    probe = f"{subdir}/.probe-{uuid.uuid4().hex}"
    try:
        run.fs.write_bytes_atomic(probe, b"")
        run.fs.filesystem.delete_file(run.fs.join(probe))
    except OSError as err:
        raise InfrastructureError(
            f"{run.fs.display(subdir)} is not writable ({err.strerror or err}); free space or "
            "fix permissions, then rerun"
        ) from None
