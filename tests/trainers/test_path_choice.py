"""The trainer path of ``model.factory`` modules, chosen by measurement: the faster of K at
once and one at a time on fake timings, measured once per process, forced by the settings
without measuring, dispatched to the chosen trainer, and recorded where status reads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodels.config import config_from_dict
from datamodels.models import architecture
from datamodels.store import Run
from datamodels.store.trainer_choice import choice_line, read_trainer_choice, write_trainer_choice
from datamodels.trainers import path_choice
from datamodels.trainers.custom import probe_data
from datamodels.trainers.path_choice import choose, decide, take_choices
from datamodels.trainers.paths import train_models
from datamodels.trainers.sequential import train_sequential
from datamodels.trainers.vmapped import train_vmapped
from tests.custom_models import digit_images

CNN = {
    "name": "choice",
    "dataset": {"factory": "tests.custom_models:digit_images", "kwargs": {"limit": 40}},
    "model": {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 4}},
    "train": {"epochs": 1, "batch_size": 8, "lr": 0.05},
    "plans": [{"name": "train", "alpha": 0.5, "count": 2}],
}


@pytest.fixture(autouse=True)
def _fresh():
    path_choice.forget_choices()
    yield
    path_choice.forget_choices()


@pytest.fixture(scope="module")
def tiny():
    images, labels = digit_images(24)
    data = probe_data(images, labels, 10)
    masks = np.zeros((2, 24), dtype=bool)
    masks[0, :16], masks[1, 8:] = True, True
    return data, masks, np.array([3, 4])


def _timer(timings, calls):
    def fake(config, data, masks, seeds, arch):
        calls.append(len(seeds))
        return dict(timings)

    return fake


def test_the_faster_measured_path_is_chosen():
    slow_vmap = decide({"vmapped": 2.2, "sequential": 1.0}, 8)
    assert slow_vmap.path == "sequential"
    assert "one at a time 1s vs 8 at once 2.2s" in slow_vmap.reason
    assert decide({"vmapped": 0.4, "sequential": 1.0}, 8).path == "vmapped"
    refused = decide({"vmapped": None, "sequential": 1.0}, 8)
    assert refused.path == "sequential" and "cannot be vmapped" in refused.reason


@pytest.mark.parametrize("timings, ran", [
    ({"vmapped": 2.2, "sequential": 1.0}, "sequential"),
    ({"vmapped": 0.5, "sequential": 1.0}, "vmapped"),
])
def test_the_task_trains_by_the_chosen_path_and_measures_once(tiny, monkeypatch, timings, ran):
    data, masks, seeds = tiny
    config = config_from_dict(CNN, [])
    calls: list[int] = []
    monkeypatch.setattr(path_choice, "measure", _timer(timings, calls))
    torch.manual_seed(0)
    margins = train_models(masks, seeds, data, config, "resident", None)[0]
    again = train_models(masks, seeds, data, config, "resident", None)[0]
    assert calls == [2]  # measured on the first task only
    direct = (train_sequential(data, masks, seeds, config.model, config.train)
              if ran == "sequential"
              else train_vmapped(data, masks, seeds, config.model, config.train))
    np.testing.assert_array_equal(margins, direct[0])  # the chosen trainer ran
    np.testing.assert_array_equal(again, direct[0])
    taken = take_choices()
    assert [c.path for c in taken] == [ran] and take_choices() == []
    assert taken[0].seconds == timings and taken[0].models == 2


@pytest.mark.parametrize("override, why", [
    ("resources.trainer=sequential", "resources.trainer: sequential"),
    ("train.recipe=tests.custom_models:builtin_steps", "train.recipe"),
])
def test_settings_force_one_at_a_time_without_measuring(tiny, monkeypatch, override, why):
    data, masks, seeds = tiny
    config = config_from_dict(CNN, [override])
    calls: list[int] = []
    monkeypatch.setattr(path_choice, "measure", _timer({"vmapped": 0.1, "sequential": 9}, calls))
    train_models(masks, seeds, data, config, "resident", None)
    assert calls == []
    (choice,) = take_choices()
    assert choice.path == "sequential" and why in choice.reason


def test_one_model_or_a_per_model_loader_is_not_measured(tiny, monkeypatch):
    data, masks, seeds = tiny
    config = config_from_dict(CNN, [])
    calls: list[int] = []
    monkeypatch.setattr(path_choice, "measure", _timer({"vmapped": 0.1, "sequential": 9}, calls))
    arch = architecture(config.model.arch)
    assert choose(config, data, masks[:1], seeds[:1], "resident", arch).path == "sequential"
    assert choose(config, data, masks, seeds, "per_model", arch).path == "sequential"
    assert calls == []


def test_the_real_measurement_times_both_paths(tiny):
    data, masks, seeds = tiny
    config = config_from_dict(CNN, [])
    seconds = path_choice.measure_paths(config, data, masks, seeds, architecture("custom"))
    assert set(seconds) == {"vmapped", "sequential"}
    assert all(s is not None and s > 0 for s in seconds.values())


def test_the_choice_is_recorded_where_status_reads_it(tmp_path):
    run = Run(str(tmp_path / "run"))
    assert read_trainer_choice(run.fs) is None
    choice = decide({"vmapped": 2.2, "sequential": 1.0}, 8)
    write_trainer_choice(run.fs, choice.record())
    record = read_trainer_choice(Run(str(tmp_path / "run")).fs)
    assert record == choice.record()
    assert choice_line(record).startswith("trainer: sequential (measured faster: one at a time")
