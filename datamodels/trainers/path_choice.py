"""Which trainer a ``model.factory`` module takes: K models per ``vmap`` pass, or one at a
time, chosen by measurement.

K at once is not always faster: for a small conv net on a CPU, one model at a time can win
(the stacked convolutions are slower per example than K plain ones). So the first task of a
worker process for a config times both on a few steps (``PROBE_STEPS`` minibatches of the
task's own models, on a small evaluation slice, after one warm-up step each) and keeps the
faster for every later task of that process with that config, device and K. Nothing is
measured when the choice is not free: ``resources.trainer: sequential`` or a
``train.recipe`` (one at a time), a module that cannot be vmapped (one at a time, found on
two examples), or a task of one model.

Each choice is a `PathChoice` (path, why, the seconds measured); it is printed once per
process and queued for the run (`take_choices`: the train task records it in
``trainer.json``, which ``datamodels status`` prints). ``measure`` is a module attribute so
that a test can put fake timings in its place.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from datamodels.config import Config
from datamodels.trainers.data import TrainData
from datamodels.trainers.sequential import train_sequential
from datamodels.trainers.unit_progress import reporting_to
from datamodels.trainers.vmapped import train_vmapped

PROBE_STEPS = 3
VMAPPED, SEQUENTIAL = "vmapped", "sequential"


@dataclass(frozen=True)
class PathChoice:
    """The path a config's ``model.factory`` modules train by, and why."""

    path: str  # "vmapped" (K at once) or "sequential" (one at a time)
    reason: str
    seconds: dict[str, float | None] = field(default_factory=dict)  # measured, per path
    models: int = 0  # K of the task that measured

    def record(self) -> dict:
        return dataclasses.asdict(self)


def decide(seconds: dict[str, float | None], models: int) -> PathChoice:
    """The faster of the measured paths (``seconds[path]``: None when it cannot run)."""
    vmapped, sequential = seconds.get(VMAPPED), seconds.get(SEQUENTIAL)
    if vmapped is None:
        return PathChoice(SEQUENTIAL, "the module cannot be vmapped: one model at a time",
                          dict(seconds), models)
    faster = VMAPPED if sequential is None or vmapped <= sequential else SEQUENTIAL
    words = {VMAPPED: f"{models} at once", SEQUENTIAL: "one at a time"}
    other = SEQUENTIAL if faster == VMAPPED else VMAPPED
    reason = (
        f"measured faster: {words[faster]} {seconds[faster]:.3g}s vs {words[other]} "
        f"{seconds[other]:.3g}s for {PROBE_STEPS} steps of {models} models"
    )
    return PathChoice(faster, reason, dict(seconds), models)


def _probe(masks: np.ndarray, data: TrainData, batch: int, steps: int):
    """The task's models cut to ``steps`` minibatches each, and a small evaluation slice."""
    probe = np.zeros_like(masks)
    for k, row in enumerate(masks):
        probe[k, np.flatnonzero(row)[: steps * batch]] = True
    small = dataclasses.replace(
        data, eval_x=data.eval_x[:batch], eval_y=data.eval_y[:batch],
        n_test=min(data.n_test, batch),
    )
    return probe, small


def measure_paths(config: Config, data: TrainData, masks: np.ndarray, seeds: np.ndarray,
                  arch) -> dict[str, float | None]:
    """Seconds for ``PROBE_STEPS`` steps of the task's models, K at once and one at a time
    (each after one warm-up step); None for K at once when the module cannot be vmapped."""
    recipe = config.train.model_copy(update={"epochs": 1})
    runs: dict[str, Callable] = {
        VMAPPED: lambda m, d: train_vmapped(d, m, seeds, config.model, recipe),
        SEQUENTIAL: lambda m, d: train_sequential(d, m, seeds, config.model, recipe,
                                                  arch=arch),
    }
    seconds: dict[str, float | None] = {}
    with reporting_to(None):  # the probe is not the task's progress
        for name, run in runs.items():
            if run(*_probe(masks, data, recipe.batch_size, 1)) is None:  # warm-up: traces
                return {VMAPPED: None, SEQUENTIAL: None}  # cannot be vmapped: nothing to time
            probe = _probe(masks, data, recipe.batch_size, PROBE_STEPS)
            started = time.perf_counter()
            result = run(*probe)
            seconds[name] = None if result is None else time.perf_counter() - started
    return seconds


measure = measure_paths  # what `choose` calls (a test may replace it)
_CHOICES: dict[tuple, PathChoice] = {}  # this process: (config hash, device, K) -> choice
_PENDING: list[PathChoice] = []  # made here and not yet recorded in a run


def choose(config: Config, data: TrainData, masks: np.ndarray, seeds: np.ndarray, loader: str,
           arch) -> PathChoice:
    """The path of a ``vmapped`` architecture's task (module docstring)."""
    key = (config.hash, config.resources.trainer, config.train.recipe, loader,
           str(data.train_y.device), len(seeds))
    if key in _CHOICES:
        return _CHOICES[key]
    if config.resources.trainer == SEQUENTIAL:
        choice = PathChoice(SEQUENTIAL, "resources.trainer: sequential")
    elif config.train.recipe is not None:
        choice = PathChoice(SEQUENTIAL, "train.recipe trains one model at a time")
    elif loader != "resident":
        choice = PathChoice(SEQUENTIAL, f"data through the {loader} loader: one at a time")
    elif len(seeds) < 2:
        choice = PathChoice(SEQUENTIAL, "one model in the task")
    else:
        choice = decide(measure(config, data, masks, seeds, arch), len(seeds))
        print(f"trainer: {choice.path} ({choice.reason})", file=sys.stderr, flush=True)
    _CHOICES[key] = choice
    _PENDING.append(choice)
    return choice


def take_choices() -> list[PathChoice]:
    """The choices made in this process since the last call (for the run to record)."""
    taken = list(_PENDING)
    _PENDING.clear()
    return taken


def forget_choices() -> None:
    """Measure again on the next task (tests; a process that changed machines)."""
    _CHOICES.clear()
    _PENDING.clear()
