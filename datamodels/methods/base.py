"""The estimator contract: what a method reads, what it writes, and how it computes its
scores from the inputs the ``estimate`` stage hands it.

A method declares (class attributes, read by the stage):

* ``source``: what it reads. ``plan``: the masks and margins of one plan (``plan_kinds``:
  the first plan of one of these kinds; empty: ``estimate.plan``); ``features``: the
  inputs of the examples (no models); ``checkpoints``: the saved checkpoints of the first
  ``model_count()`` checkpointed models; ``replay``: the models of ``checkpoints.plan``,
  replayed from their seeds (their files are not needed).
* ``hessian``: each model's damped Hessian over its training subset, one object shared by
  the model's units (computed once per model, with the exact solver).
* ``every_checkpoint``: it reads every checkpoint of a model, not only the last.
* ``reweights``: one extra unit per model, a float[n_train] vector; the score tables are
  the mean over models times the mean of these vectors (TRAK's reweighting).
* ``writes``: the tables it writes, ``scores`` float32[T, n_train] and ``self_scores``
  float32[n_train].
* ``on_request``: run only when named (it costs many training runs).
* ``version``: the code version of its numbers (default 1). Bump it with any change that can
  move a score it writes for the same inputs (the maths, a default, a fixed bug): the
  ``estimate`` stage's fingerprint holds it, so every run's table of the method turns stale
  and is recomputed. ``tests/methods/test_versions.py`` pins a small output per version.

Retraining methods (`RetrainingMethod`) compute from a `PlanTable` or `Features`; gradient
methods (`GradientMethod`) compute one `Block` of one model. Adding one: a module with a
subclass and one line in ``METHODS`` (``datamodels/methods/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from datamodels.errors import EstimateError
from datamodels.estimators import Scores
from datamodels.gradients.checkpointed import factored_hessian

SOURCES = ("plan", "features", "checkpoints", "replay")
PER_MODEL = ("checkpoints", "replay")  # sources whose work is units per model, averaged


@dataclass(frozen=True)
class PlanTable:
    """The models of the plan a retraining method reads: ``ids`` int64[m], ``masks``
    bool[m, n_train], ``margins`` float32[m, n_eval], ``alpha`` float64[m] (the plan's own
    values, not the stored float32), ``rows`` the plan table's rows of ``ids``
    (`plans.PlannedModels`) and ``plan`` its `PlanConfig`."""

    ids: np.ndarray
    masks: np.ndarray
    margins: np.ndarray
    alpha: np.ndarray
    rows: Any
    plan: Any


@dataclass(frozen=True)
class Features:
    """The examples' inputs: ``x`` float64[n_examples, d] (flattened), ``labels``
    int[n_examples], and the example rows of the train points (``train_index`` int[n_train])
    and of the eval positions (``eval_index`` int[n_eval])."""

    x: np.ndarray
    labels: np.ndarray
    train_index: np.ndarray
    eval_index: np.ndarray


@dataclass
class Block:
    """One unit of a gradient method: ``kind`` (``scores``: eval positions ``targets``;
    ``self``: train rows ``start:stop``; ``reweight``: every train point) of model
    ``model_id`` (``slot``: its index among the stage's models), with the task's ``data``
    (`TrainData` on its device), the model's subset ``mask`` bool[n_train], its last
    checkpoint as ``model`` (None when replayed), ``history`` [(params, lr)] of every
    checkpoint (``every_checkpoint`` methods), the shared ``hessian``, the model's ``seed``
    (replayed methods), the run's plan table ``planned``, and ``cached(key, make)``, the
    worker's cache (``key``: what a cached object of this model depends on)."""

    kind: str
    model_id: int
    slot: int
    start: int
    stop: int
    data: Any
    mask: torch.Tensor
    targets: np.ndarray | None
    cached: Callable[[tuple, Callable[[], Any]], Any]
    key: tuple
    model: Any = None
    history: list | None = None
    hessian: Any = None
    seed: int | None = None
    planned: Any = None

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def target_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the block's targets on the data's device."""
        t = torch.as_tensor(np.array(self.targets), device=self.data.train_x.device)
        return self.data.eval_x[t], self.data.eval_y[t]


class Method:
    """Base of every estimator; see the module docstring for the declarations."""

    name: ClassVar[str] = ""
    source: ClassVar[str] = "plan"
    plan_kinds: ClassVar[tuple[str, ...]] = ()
    hessian: ClassVar[bool] = False
    every_checkpoint: ClassVar[bool] = False
    reweights: ClassVar[bool] = False
    writes: ClassVar[tuple[str, ...]] = ("scores", "self_scores")
    on_request: ClassVar[bool] = False
    version: ClassVar[int] = 1

    def __init__(self, config) -> None:
        self.config = config

    @property
    def per_model(self) -> bool:
        """Whether its work is units per model, averaged (checkpoints or replayed runs)."""
        return self.source in PER_MODEL

    def check(self) -> None:
        """Refuse a config the method cannot run on (one line); default: every one."""

    def settings(self) -> dict:
        """What else of the config its scores depend on (added to the stage's fingerprint)."""
        return {}


class RetrainingMethod(Method):
    """A method computed from the masks and margins of a plan (or the examples' features)."""

    def scores(self, inputs: PlanTable | Features, targets: np.ndarray) -> Scores:
        """Scores float32[len(targets), n_train] on the given eval positions."""
        raise NotImplementedError

    def self_scores(
        self, inputs: PlanTable | Features, train_targets: np.ndarray, block: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32[n_train] score of each training point on itself (the diagonal of
        ``scores`` on the eval positions of the training points), in blocks."""
        n = len(train_targets)
        values, stderr = np.zeros(n, dtype=np.float32), np.full(n, np.inf, dtype=np.float32)
        for start in range(0, n, block):
            rows = np.arange(start, min(n, start + block))
            scores = self.scores(inputs, train_targets[rows])
            values[rows] = scores.values[np.arange(len(rows)), rows]
            if scores.stderr is not None:
                stderr[rows] = scores.stderr[np.arange(len(rows)), rows]
        return values, stderr


class GradientMethod(Method):
    """A method computed per model from its checkpoints (or its replayed run), one `Block`
    at a time; the stage averages the models' tables."""

    source: ClassVar[str] = "checkpoints"

    def model_count(self) -> int:
        """How many models (the first by id) it averages over."""
        return self.config.gradients.models

    def shares_hessian(self) -> bool:
        """Whether the units of a model share its factored exact Hessian."""
        return self.hessian and self.config.gradients.solver == "exact"

    def shared(self, model, x: torch.Tensor, y: torch.Tensor):
        """The model's factored exact Hessian over its subset ``x, y``."""
        limit = self.config.gradients.max_exact_params
        if model.num_params > limit:
            raise EstimateError(
                f"{self.name}: the model has {model.num_params} parameters, above "
                f"gradients.max_exact_params={limit} for the exact Hessian; use --set "
                "gradients.solver=cg (or lissa)"
            )
        return factored_hessian(self.config, model, x, y)

    def values(self, block: Block) -> torch.Tensor:
        """[targets, n_train] scores (``scores``) or [rows] self scores / reweighting."""
        raise NotImplementedError

    def held_points(self, planned: Callable, model_ids: np.ndarray, masks_of: Callable):
        """model_id -> bool[n_train], the points each model's run holds, when a self score
        is averaged over the models holding the point only; None: over every model.
        ``planned()``: the run's plan table; ``masks_of(ids)``: the models' subsets
        bool[len(ids), n_train]."""
        return None
