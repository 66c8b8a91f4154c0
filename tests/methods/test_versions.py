"""Each estimator's output is pinned per code version (``Method.version``): a change of its
numbers without a bump of its ``version`` fails here (see ``tests/pinned.py``). One small
digits logreg run with every plan kind the methods read; every method of ``METHODS``."""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.api import estimate, train
from datamodels.config import config_from_dict
from datamodels.methods import METHODS
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run
from tests.pinned import check_pinned, output_hash

N = 10
ALL_KINDS = {
    "name": "versions_tiny",
    "dataset": {"name": "digits", "limit_train": N, "limit_test": 4, "eval_train": True},
    "model": {"arch": "logreg"},
    "train": {"weight_decay": 0.05, "tolerance": 1e-5},
    "plans": [
        {"name": "train", "kind": "alpha", "alpha": 0.5, "count": 16},
        {"name": "grid", "kind": "alpha_grid", "levels": 2, "count": 6},
        {"name": "walks", "kind": "tmc", "count": 2, "tolerance": 0.0, "patience": N + 1},
        {"name": "loo", "kind": "loo"},
    ],
    "checkpoints": {"plan": "train", "models": 2},
    "gradients": {"models": 2},
    "resources": {"models_per_task": 100},
}


# hydra replays the batched trainer's SGD run of an MLP only
MLP = ALL_KINDS | {
    "name": "versions_mlp", "model": {"arch": "mlp", "hidden": 8},
    "train": {"epochs": 2, "batch_size": 8}, "plans": ALL_KINDS["plans"][:1],
}
RUNS = {"hydra": "mlp"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> (config, uri) of a trained run, made when first asked for."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    made: dict = {}

    def get(kind: str):
        if kind not in made:
            config = config_from_dict(MLP if kind == "mlp" else ALL_KINDS)
            uri = str(tmp_path_factory.mktemp(f"versions_{kind}") / "run")
            train(config, uri, executor=SerialExecutor(), show_progress=False)
            made[kind] = config, uri
        return made[kind]

    yield get
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(METHODS))
def test_estimator_output_is_pinned(name, runs):
    config, uri = runs(RUNS.get(name, "logreg"))
    estimate(config, uri, name, executor=SerialExecutor(), show_progress=False)
    run = Run(uri)
    cls = METHODS[name]
    arrays = []
    if "scores" in cls.writes:
        arrays.append(run.scores(name)[1])
    if "self_scores" in cls.writes:
        arrays.append(run.self_scores()[name])
    assert arrays and all(np.isfinite(a).any() for a in arrays), name
    check_pinned(
        f"method:{name}", f"v{cls.version}", output_hash(*arrays),
        f"{cls.__name__}.version in datamodels/methods/{cls.__module__.rsplit('.', 1)[-1]}.py "
        "(or its base class)",
    )


def test_datamodels_regression_output_is_pinned():
    """The fit stage's LASSO datamodels (``regress.select.VERSION``) on a planted linear
    game: 60 random subsets of 12 points, 3 targets."""
    from datamodels.regress.select import VERSION, fit_datamodels

    rng = np.random.default_rng(0)
    masks = rng.random((60, 12)) < 0.5
    truth = rng.normal(size=(12, 3)) * (rng.random((12, 3)) < 0.4)
    margins = (masks @ truth + 0.1 * rng.normal(size=(60, 3))).astype(np.float32)
    fit = config_from_dict({}).fit.model_copy(update={"device": "cpu"})
    chosen = fit_datamodels(masks, margins, fit)
    check_pinned(
        "fit:datamodels", f"v{VERSION}", output_hash(chosen.weights, chosen.bias, chosen.lam),
        "VERSION in datamodels/regress/select.py",
    )
