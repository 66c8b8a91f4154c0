"""Which trained models a gradient method (or a command on one trained model: ``attack``,
``sparse-layer``) reads: the saved checkpoints of the first models of ``checkpoints.plan``,
checked present, or for a replayed method the models and seeds of that plan."""

from __future__ import annotations

from collections.abc import Callable

from datamodels.config import Config
from datamodels.errors import CheckpointError, EstimateError
from datamodels.methods.traits import is_transfer
from datamodels.plans import PlannedModels, checkpoint_epochs, checkpoint_ids
from datamodels.store import Run
from datamodels.store.checkpoints import read_checkpoint_index

History = list[tuple[int, float, str]]  # [(epoch, lr, path)] of one model, as indexed


def find_checkpoints(
    config: Config, run: Run, planned: Callable[[], PlannedModels], method: str,
    wanted: int | None,
) -> dict[int, History]:
    """model_id -> [(epoch, lr, path)] of the first ``wanted`` models (by id; None: every
    one) whose checkpoints the current settings save, each file checked present. ``planned``
    gives the run's plan table (asked only when ``checkpoints.plan`` is set); ``method``
    names the caller in the errors."""
    index = read_checkpoint_index(run.fs)
    fix = f"`datamodels train {run.uri}/config.yaml --out {run.uri}`"
    if is_transfer(config):
        raise EstimateError(
            f"{method} differentiates one model's training examples; a transfer "
            "run's training points are source classes (use datamodels, downsampling, "
            "banzhaf)"
        )
    if index.empty:
        raise EstimateError(
            f"{method} needs saved checkpoints and {run.uri} has none; add them with "
            f"{fix[:-1]} --set checkpoints.plan=train --set checkpoints.models=20` "
            "(retrains just those models, same seeds)"
        )
    if config.checkpoints.plan is not None:  # only what these settings save (older files stay)
        index = index[
            index["model_id"].isin(checkpoint_ids(config, planned()))
            & index["epoch"].isin(checkpoint_epochs(config))
        ]
    model_ids = sorted(int(m) for m in index["model_id"].unique())[:wanted]
    if not model_ids:
        raise EstimateError(
            f"{method}: no checkpoints match checkpoints.plan={config.checkpoints.plan!r}; "
            f"rerun {fix} to save them"
        )
    found = {
        m: [
            (int(r.epoch), float(r.lr), str(r.path))
            for r in index[index["model_id"] == m].itertuples(index=False)
        ]
        for m in model_ids
    }
    for m, history in found.items():
        for _, _, path in history:
            if not run.fs.isfile(path):
                raise CheckpointError(
                    f"checkpoint {run.fs.display(path)} (model {m}) is missing; rerun {fix} "
                    "with the same checkpoints settings to recreate it (same seeds, same model)"
                )
    return found


def find_replayed(
    config: Config, planned: PlannedModels, method: str, wanted: int
) -> dict[int, list[tuple[str, int]]]:
    """model_id -> [("seed", seed)] of the models a replayed method reruns: the first
    ``wanted`` of ``checkpoints.plan`` (their saved files are not needed)."""
    if config.checkpoints.plan is None:
        raise EstimateError(
            f"{method} replays the first gradients.models models of checkpoints.plan; "
            "set one, e.g. --set checkpoints.plan=train"
        )
    ids = checkpoint_ids(config, planned)[:wanted]
    if not len(ids):
        raise EstimateError(
            f"{method}: plan {config.checkpoints.plan!r} has no models; name a plan of "
            "the config in checkpoints.plan"
        )
    seeds = planned.select_ids(ids).seed
    return {int(m): [("seed", int(s))] for m, s in zip(ids, seeds, strict=True)}
