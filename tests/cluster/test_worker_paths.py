"""A folder the user put on ``sys.path`` (a notebook's ``sys.path.insert``) reaches the
workers of a local Ray cluster, without ``PYTHONPATH`` set beforehand
(`datamodels.orchestrate.runtime_env`)."""

from __future__ import annotations

import os
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

import datamodels as dm
from datamodels.orchestrate.executor import init_ray
from datamodels.orchestrate.runtime_env import pythonpath_for_workers, user_paths

FACTORY = """
from torch import nn


def make(num_classes, input_shape):
    size = 1
    for d in input_shape:
        size *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(size, num_classes))
"""


def test_user_paths_keep_the_users_folders_only(tmp_path, monkeypatch):
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    site = sysconfig.get_paths()["purelib"]
    stdlib = sysconfig.get_paths()["stdlib"]
    monkeypatch.chdir(other)
    found = user_paths(
        [str(mine), stdlib, site, str(tmp_path / "gone"), "", str(mine) + "/", stdlib + ".zip"]
    )
    assert found == [str(mine.resolve()), str(other.resolve())]  # "" is the current folder


def test_pythonpath_is_set_while_the_cluster_starts_and_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/already/there")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pythonpath_for_workers():
        during = os.environ["PYTHONPATH"].split(os.pathsep)
    assert during[0] == str(tmp_path.resolve()) and during[-1] == "/already/there"
    assert os.environ["PYTHONPATH"] == "/already/there"


@pytest.fixture
def fresh_local_ray(monkeypatch):
    """``ray`` with no cluster started yet (one started by another test is shut down), shut
    down again afterwards."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield ray
    ray.shutdown()


def _module_on_sys_path(tmp_path, monkeypatch) -> tuple[str, Path]:
    module = f"mynets_{uuid.uuid4().hex[:8]}"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{module}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(code))  # only here: PYTHONPATH does not name it
    assert str(code) not in os.environ.get("PYTHONPATH", "")
    return module, code / f"{module}.py"


def test_a_module_on_the_drivers_sys_path_imports_on_local_ray_workers(
    fresh_local_ray, tmp_path, monkeypatch
):
    ray = fresh_local_ray
    module, path = _module_on_sys_path(tmp_path, monkeypatch)
    before = os.environ.get("PYTHONPATH")
    try:
        init_ray()
        where = ray.get(ray.remote(lambda: __import__(module).__file__).remote())
    finally:
        sys.modules.pop(module, None)
    assert where == str(path)
    assert os.environ.get("PYTHONPATH") == before  # the driver's environment is as it was


@pytest.mark.slow
def test_a_factory_on_the_drivers_sys_path_trains_on_local_ray_workers(
    fresh_local_ray, tmp_path, monkeypatch
):
    ray = fresh_local_ray
    module, _ = _module_on_sys_path(tmp_path, monkeypatch)
    config = dm.load_config({
        "name": "paths",
        "dataset": {"name": "digits", "limit_train": 60, "limit_test": 10, "eval_train": False},
        "model": {"factory": f"{module}:make"},
        "train": {"epochs": 1, "batch_size": 30},
        "plans": [{"name": "train", "alpha": 0.5, "count": 2}],
        "resources": {"trainer": "sequential", "models_per_task": 2},  # one task
    })
    try:
        dm.train(config, str(tmp_path / "run"), show_progress=False)
        assert ray.is_initialized()  # trained on the local cluster train started
    finally:
        sys.modules.pop(module, None)
    assert len(dm.Run(str(tmp_path / "run")).model_ids()) == 2
