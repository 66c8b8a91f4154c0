"""More than one node: a head (no CPUs) and two worker nodes on this machine
(``ray.cluster_utils.Cluster``, one CPU each, so tasks must spread). A run uses both nodes;
a run started on two nodes resumes on one; losing a node mid-run still stores every planned
model exactly once with a clean ``verify``. The node-loss test asserts that promise, not the
timing: whether the node goes in the middle of a task or between two, the result is the same.
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from datamodels import api
from datamodels.config import config_from_dict
from datamodels.stages import train as train_stage
from datamodels.store import Run, verify

pytestmark = pytest.mark.usefixtures("array_store")  # runs hold data/examples.npy
SMALL = {
    "name": "digits_multinode",
    "dataset": {"name": "digits", "limit_train": 300, "limit_test": 60},
    "model": {"arch": "mlp", "hidden": 16},
    "train": {"epochs": 3, "batch_size": 32},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 20},
        {"name": "eval", "alpha": 0.5, "count": 4},
    ],
    "resources": {"models_per_task": 3, "num_cpus": 1},
}
PLANNED = 24


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=nodes.address, include_dashboard=False, logging_level="WARNING")
    nodes.wait_for_nodes()
    yield nodes, workers
    ray.shutdown()
    nodes.shutdown()


def raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


@pytest.fixture
def task_nodes(monkeypatch):
    """The raylet pid of the node of every task whose result reached the driver (a worker
    process is its node's raylet's child; it is alive when its result arrives)."""
    seen: list[int] = []
    original = train_stage.TrainStage.on_result

    def on_result(self, unit, receipt, progress):
        seen.append(psutil.Process(int(receipt.worker.rsplit(":", 1)[1])).ppid())
        return original(self, unit, receipt, progress)

    monkeypatch.setattr(train_stage.TrainStage, "on_result", on_result)
    return seen


def _assert_every_model_once(out: str) -> None:
    run = Run(out)
    assert verify(run) == []
    assert run.model_ids().tolist() == list(range(PLANNED))


def test_a_run_spreads_over_the_nodes(cluster, task_nodes, tmp_path):
    _, workers = cluster
    out = str(tmp_path / "run")
    assert api.train(config_from_dict(SMALL), out, show_progress=False).trained == PLANNED
    _assert_every_model_once(out)
    assert set(task_nodes) == {raylet_pid(w) for w in workers}  # both nodes, never the head


def test_a_run_started_on_two_nodes_resumes_on_one(cluster, task_nodes, tmp_path, monkeypatch):
    nodes, workers = cluster
    out = str(tmp_path / "run")
    original = train_stage.TrainStage.on_result

    def driver_dies_after_two(self, unit, receipt, progress):
        if len(task_nodes) > 2:
            raise KeyboardInterrupt("driver stopped")
        return original(self, unit, receipt, progress)

    monkeypatch.setattr(train_stage.TrainStage, "on_result", driver_dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        api.train(config_from_dict(SMALL), out, show_progress=False)
    monkeypatch.setattr(train_stage.TrainStage, "on_result", original)
    partial = len(Run(out).model_ids())
    assert 0 < partial < PLANNED

    nodes.remove_node(workers.pop())
    task_nodes.clear()
    summary = api.train(config_from_dict(SMALL), out, show_progress=False)
    # a task cancelled with the driver may still have stored its shard after we counted
    assert summary.already_done >= partial
    assert summary.already_done + summary.trained == PLANNED
    _assert_every_model_once(out)
    assert set(task_nodes) == {raylet_pid(workers[0])}  # the rest ran on the one node left
    workers.append(nodes.add_node(num_cpus=1))  # two worker nodes again for the next test


def test_losing_a_node_mid_run_stores_every_model_once(cluster, tmp_path):
    nodes, workers = cluster
    out = str(tmp_path / "run")
    config = config_from_dict(SMALL, ["seed=7"])
    errors: list[BaseException] = []

    def train() -> None:
        try:
            api.train(config, out, show_progress=False)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    driver = threading.Thread(target=train)
    driver.start()
    deadline = time.monotonic() + 120
    while driver.is_alive() and not Run(out).shard_files() and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first shard is written
    nodes.remove_node(workers.pop())  # whatever it was running is retried on the other node
    driver.join(timeout=300)
    assert not driver.is_alive() and errors == []
    _assert_every_model_once(out)
    workers.append(nodes.add_node(num_cpus=1))
