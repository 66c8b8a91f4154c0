"""What ``datamodels status`` shows of a run, and giving failed models a fresh budget."""

from __future__ import annotations

import uuid
from collections import Counter

import pandas as pd

from datamodels.config import Config
from datamodels.errors import InfrastructureError
from datamodels.plans import plan_models, tmc_walk_state
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
    """One row per plan: planned, done, failed (attempt budget spent), missing. A tmc plan
    counts permutation walks (a walk stops early, so most of its prefix ids never exist)."""
    n_train = run.n_train
    planned = plan_models(config, n_train)
    done = run.done_model_ids()
    attempts = Counter(run.failures()["model_id"].astype(int).tolist())
    budget = config.resources.max_attempts
    walks = tmc_walk_state(config, planned, n_train, done)
    rows = []
    for plan in config.plans:
        if plan.kind == "tmc":
            units = [
                (rep, present) for (name, _), (rep, present) in walks.items() if name == plan.name
            ]
        else:
            units = [(i, i in done) for i in planned.model_id[planned.plan == plan.name].tolist()]
        n_done = sum(present for _, present in units)
        n_failed = sum(not present and attempts[i] >= budget for i, present in units)
        rows.append(
            {
                "plan": plan.name,
                "kind": plan.kind,
                "planned": len(units),
                "done": n_done,
                "failed": n_failed,
                "missing": len(units) - n_done - n_failed,
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
