"""Progress within a unit: the loops of a running unit report how far they are, the bar
shows the share, and a finished unit counts whole (no bar sits at 0% for a long unit)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console

from datamodels.gradients.ihvp import ConjugateGradient
from datamodels.gradients.influence import influence_scores
from datamodels.gradients.influence_pert import influence_pert_scores
from datamodels.gradients.model import logreg_model
from datamodels.gradients.tracin import tracin_scores
from datamodels.orchestrate.context import unit_reporting
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.orchestrate.progress import Progress
from datamodels.stages.base import Stage, Unit
from datamodels.trainers.unit_progress import report, reporting_to, within


def test_reports_go_to_the_sink_scaled_into_nested_spans():
    seen: list[float] = []
    report(1, 2)  # no sink: nothing happens
    with reporting_to(seen.append):
        report(1, 4)
        with within(0.5, 1.0):
            report(1, 2)
            with within(0.0, 0.5):
                report(1, 1)
        report(5, 4)  # clipped to the unit
    report(1, 2)
    assert seen == [0.25, 0.75, 0.75, 1.0]


def test_a_running_unit_shows_its_share_and_counts_whole_when_done():
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=200)
    with Progress(16, 0, console=console, what="tasks", interval=0.0) as progress:
        progress.partial(("s", "a"), 0.5, 2)
        progress.partial(("s", "a"), 0.25, 2)  # a share never goes back
        assert progress.shown == 1.0
        progress.partial(("s", "b"), 0.4, 1)
        assert progress.line().startswith("tasks 1.4/16 (9%) ")
        progress.partial(("s", "a"), None, 2)
        progress.advance(2)
        assert progress.shown == 2.4
    assert list(progress.reported) == [(("s", "a"), 0.5), (("s", "a"), 0.25), (("s", "b"), 0.4)]


def _logreg(seed: int, d: int = 5, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return logreg_model(torch.randn(d * classes + classes, generator=g, dtype=torch.float64),
                        d, classes, 1e-2)


class _Blocks(Stage):
    """A gradient stage in miniature: each unit is TracIn over two checkpoints and 40
    training points, 8 points per chunk (or CG influence, 12 iterations), in this process."""

    name, what = "blocks", "tasks"

    def __init__(self, method: str) -> None:
        super().__init__(None, None)
        self.method = method
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 5, generator=g, dtype=torch.float64)
        self.y = torch.randint(0, 3, (40,), generator=g)

    def compute(self, ctx, unit: Unit, shared=None):
        tx, ty = self.x[:3], self.y[:3]
        if self.method == "tracin":
            history = [(_logreg(1).params, 0.1), (_logreg(2).params, 0.05)]
            return tracin_scores(_logreg(0), history, self.x, self.y, tx, ty, chunk_size=8)
        if self.method == "influence_pert":  # 4 points per chunk: 10 chunks
            model = _logreg(0)
            return influence_pert_scores(model, self.x, self.y, tx, ty,
                                         chunk_elements=4 * len(tx) * model.num_params)
        solver = ConjugateGradient(damping=0.1, tol=0.0, max_iter=12)
        return influence_scores(_logreg(0), self.x, self.y, tx, ty, solver=solver, chunk_size=8)

    def on_result(self, unit, result, progress):
        self.result = result
        return super().on_result(unit, result, progress)


def test_units_of_a_gradient_estimator_report_increasing_intermediate_progress():
    for method, least in (("tracin", 10), ("influence", 12), ("influence_pert", 10)):
        stage = _Blocks(method)
        units = [Unit(f"u{i}") for i in range(3)]
        with Progress(3, 0, enabled=False, what="tasks") as progress:
            SerialExecutor().run(stage, units, progress)
            assert progress.done == 3 and progress.shown == 3.0  # no share left behind
        for unit in units:
            fractions = [f for key, f in progress.reported if key == ("blocks", unit.name)]
            assert len(fractions) >= least, (method, fractions)  # one per chunk / iteration
            assert np.all(np.diff(fractions) >= 0), fractions
            assert 0 < fractions[0] < 0.2 and fractions[-1] == 1.0
            assert any(0.4 < f < 0.6 for f in fractions)  # the bar moves inside the unit


def test_reporting_is_silent_without_a_sink_and_names_the_unit_with_one():
    events: list = []
    with unit_reporting("estimate-trak", Unit("scores-1", size=4), None):
        report(1, 2)
    with unit_reporting("estimate-trak", Unit("scores-1", size=4),
                        lambda *event: events.append(event)):
        report(1, 2)
    assert events == [(("estimate-trak", "scores-1"), 0.5, 4), (("estimate-trak", "scores-1"),
                                                               None, 4)]


def test_a_training_task_reports_each_model_as_it_finishes():
    from datamodels.config import config_from_dict
    from datamodels.trainers.custom import probe_data
    from datamodels.trainers.paths import train_models
    from datamodels.trainers.vmapped import train_vmapped
    from tests.custom_models import digit_images

    images, labels = digit_images(24)
    data = probe_data(images, labels, 10)
    masks = np.ones((4, 24), dtype=bool)
    seeds = np.arange(4)
    config = config_from_dict({
        "name": "p", "dataset": {"name": "digits"},
        "model": {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 2}},
        "train": {"epochs": 2, "batch_size": 8}, "resources": {"trainer": "sequential"},
    }, [])
    task = Unit("models-0", size=4)  # a train unit's size is its models
    with Progress(4, 0, enabled=False, what="models") as progress:
        with unit_reporting("train", task, progress.partial):
            train_models(masks, seeds, data, config, "resident", None)
            assert progress.shown == 4.0  # every model counted as it finished
    assert [f for _, f in progress.reported] == [0.25, 0.5, 0.75, 1.0]
    assert progress.shown == 0.0  # the unit ended; on_result counts it whole

    seen: list[float] = []
    with reporting_to(seen.append):  # K at once: per minibatch step, 3 per epoch
        train_vmapped(data, masks, seeds, config.model, config.train)
    assert seen == [i / 6 for i in range(1, 7)]


class _Slow(Stage):
    """Each unit reports a quarter at a time, a little apart (the tasks' channel sends at
    most one report per unit every half second)."""

    name, what = "slow", "tasks"

    def __init__(self, config, run) -> None:
        super().__init__(config, run)

    def compute(self, ctx, unit: Unit, shared=None):
        import time

        for quarter in range(1, 5):
            time.sleep(0.6)
            report(quarter, 4)
        return unit.name


@pytest.mark.slow  # starts a local Ray cluster
def test_ray_tasks_report_through_the_channel(tmp_path, ray_local):
    from datamodels.orchestrate.executor import RayExecutor
    from datamodels.store import Run
    from tests.stages.test_base import CONFIG

    stage = _Slow(CONFIG, Run(str(tmp_path / "run")))
    units = [Unit(f"u{i}") for i in range(2)]
    with Progress(2, 0, enabled=False, what="tasks") as progress:
        RayExecutor().run(stage, units, progress)
    assert progress.done == 2
    for unit in units:
        fractions = [f for key, f in progress.reported if key == ("slow", unit.name)]
        assert fractions and np.all(np.diff(fractions) >= 0), fractions
        assert any(0 < f < 1 for f in fractions), fractions  # heard while the task ran
