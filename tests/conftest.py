"""Shared fixtures: small generated datasets and prepared run directories."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest


def write_cifar_archive(
    path: Path, n_per_batch: int = 20, n_test: int = 20, seed: int = 0, as_dir: bool = False
) -> Path:
    """A CIFAR-10 python archive in the standard format with random images (labels 0..9)."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": n_per_batch for i in range(1, 6)} | {"test_batch": n_test}
    payloads = {}
    for name, n in batches.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        payloads[name] = pickle.dumps(
            {b"data": data, b"labels": labels, b"batch_label": name.encode()}
        )
    if as_dir:
        root = path / "cifar-10-batches-py"
        root.mkdir(parents=True)
        for name, raw in payloads.items():
            (root / name).write_bytes(raw)
        return path
    write_tar(path, "cifar-10-batches-py", payloads)
    return path


def write_tar(path: Path, folder: str, members: dict[str, bytes]) -> None:
    """A gzipped tar archive at ``path`` holding ``folder/<name>`` for each member."""
    with tarfile.open(path, "w:gz") as archive:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))


@pytest.fixture
def cifar_archive(tmp_path: Path) -> Path:
    return write_cifar_archive(tmp_path / "cifar-10-python.tar.gz")


def digits_default_core(directory: Path) -> Path:
    """configs/digits.yaml with only its ``train`` and ``eval`` plans, written to
    ``directory``: the shipped default's recipe for tests that count or fail its models."""
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "digits.yaml").read_text())
    config["plans"] = [p for p in config["plans"] if p["name"] in ("train", "eval")]
    path = directory / "digits_core.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


SMALL_DIGITS = {
    "name": "digits_small",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp", "hidden": 32},
    "train": {"epochs": 8, "batch_size": 32},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 40},
        {"name": "eval", "alpha": 0.5, "count": 8},
    ],
    "resources": {"models_per_task": 16},
}


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory):
    """(config, TrainData) for the full digits dataset, decoded from a real beton."""
    from datamodels import api
    from datamodels.config import config_from_dict
    from datamodels.orchestrate.context import Context
    from datamodels.store import Run

    config = config_from_dict(SMALL_DIGITS)
    out = str(tmp_path_factory.mktemp("digits_run") / "run")
    api.prepare(config, out)
    return config, Context().data(Run(out), config)


@pytest.fixture(scope="session")
def _local_ray_session():
    """Shuts the session's local Ray cluster down at the end (see `ray_local`)."""
    saved = os.environ.pop("RAY_ADDRESS", None)  # local, whatever the shell says
    yield
    import ray

    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def ray_local(_local_ray_session):
    """A local Ray cluster (on 127.0.0.1) shared by the whole test session: started on first
    use and left running, so tests that only need *a* cluster do not pay a start-up each. A
    test that shuts Ray down (to start one of its own) leaves the next module to start it
    again here."""
    from datamodels.orchestrate.executor import init_ray

    init_ray()  # nothing when one is running
    yield


@pytest.fixture(scope="session", autouse=True)
def _trust_record(tmp_path_factory):
    """The record of runs made here (`config/trust.py`) kept in the session's temporary
    folder, never in the home directory of whoever runs the tests."""
    os.environ.setdefault(
        "DATAMODELS_TRUST_FILE", str(tmp_path_factory.mktemp("state") / "trusted-runs.json")
    )
    yield


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (solver-tolerance comparisons repeat exactly)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_leaked_settings():
    """A test (or a module it imports) that leaves a ``DATAMODELS_*`` variable changed fails
    here, naming it: every later test in the process would run under it."""
    before = {k: v for k, v in os.environ.items() if k.startswith("DATAMODELS_")}
    yield
    after = {k: v for k, v in os.environ.items() if k.startswith("DATAMODELS_")}
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"the test left these settings changed: {changed}"
