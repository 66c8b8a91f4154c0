"""``attribute``: the gradient estimators on a model trained elsewhere.

    dm.attribute(config, module, "runs/mine", methods=["trak", "tracin"])

``config`` names the dataset (any source) and ``model.factory``, the function that builds the
module; the checkpoints are ``state_dict`` files (or modules). The run directory is prepared
as for training (the beton, ``examples.parquet``), the files are copied into it, and each
method's ``scores/`` and ``self_scores/`` tables are written by the ``attribute`` stage
(`stages.attribute`), so ``evaluate`` and the report read them like ``estimate``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from datamodels.api._common import locked, ray_executor
from datamodels.api.training import prepare
from datamodels.config import Config
from datamodels.errors import CheckpointError, EstimateError
from datamodels.store import Run
from datamodels.store.lock import writer

DEFAULT_METHODS = ("trak",)


def _state_dict(source: Any) -> dict:
    """A checkpoint's tensors: a ``state_dict`` file's, or a module's ``state_dict``."""
    # torch: loading the checkpoint
    from datamodels.stages.attribute import read_state_dict

    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise CheckpointError(
                f"checkpoint {os.fspath(source)} not found; give a file saved with "
                "torch.save(module.state_dict(), path)"
            )
        with open(source, "rb") as handle:
            return read_state_dict(handle.read(), os.fspath(source))
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return dict(source.state_dict())
    raise CheckpointError(
        f"a checkpoint must be a state_dict file or an nn.Module, not {type(source).__name__}"
    )


def model_histories(checkpoints: Any) -> list[list[Any]]:
    """Per model, its checkpoints in training order: one module or file is one model with one
    checkpoint; a list is one model's checkpoints; a list of lists, several models."""
    if isinstance(checkpoints, (str, os.PathLike)) or not isinstance(checkpoints, Sequence):
        return [[checkpoints]]
    if not checkpoints:
        raise EstimateError("attribute: no checkpoint given")
    if all(isinstance(c, Sequence) and not isinstance(c, (str, bytes)) for c in checkpoints):
        return [list(c) for c in checkpoints]
    return [list(checkpoints)]


def learning_rates(lr: float | Sequence[float] | None, config: Config, count: int) -> list[float]:
    """η_k of each of a model's ``count`` checkpoints (TracIn's weights): ``lr`` for every
    one, one value per checkpoint, or by default ``train.lr``."""
    if lr is None:
        return [float(config.train.lr)] * count
    if isinstance(lr, (int, float)):
        return [float(lr)] * count
    values = [float(v) for v in lr]
    if len(values) != count:
        raise EstimateError(
            f"attribute: {len(values)} learning rates for {count} checkpoints per model; give "
            "one value, or one per checkpoint"
        )
    return values


def attribute(
    config: Config,
    checkpoints: Any,
    out: str | Run,
    methods: Sequence[str] | str = DEFAULT_METHODS,
    lr: float | Sequence[float] | None = None,
    address: str | None = None,
    executor: Any = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> dict[str, dict[str, int]]:
    """Score the training examples of ``config``'s dataset for the model(s) ``checkpoints``
    (see `model_histories`) with each of ``methods`` (gradient estimators that read
    checkpoints: influence, influence_pert, tracin, representer, trak, ...). ``lr``: the
    learning rate after each checkpoint (TracIn). Returns per method the rows written
    (empty when the tables were current); the tables are ``Run(out).scores(method)``."""
    # torch: the attribute stage differentiates the module
    from datamodels.stages.attribute import AttributeStage, attributable

    names = [methods] if isinstance(methods, str) else list(methods)
    histories = model_histories(checkpoints)
    counts = {len(h) for h in histories}
    if len(counts) != 1 and lr is not None and not isinstance(lr, (int, float)):
        raise EstimateError("attribute: per-checkpoint learning rates need as many checkpoints "
                            "per model")
    sources = [
        list(zip([_state_dict(c) for c in h], learning_rates(lr, config, len(h)), strict=True))
        for h in histories
    ]
    run = out if isinstance(out, Run) else Run(str(out))
    unknown = [n for n in names if n not in attributable()]
    if unknown or not names:
        raise EstimateError(
            f"attribute: {unknown[0] if unknown else 'no method'!r} is not a gradient method "
            f"that reads checkpoints; choose from: {', '.join(attributable())}"
        )
    prepare(config, run, show_progress=False, console=console)
    stages = [AttributeStage.importing(config, run, name, sources) for name in names]
    executor = ray_executor(executor, address)
    with writer(run.fs):
        return {s.method: locked(run, s, executor, show_progress, console) for s in stages}
