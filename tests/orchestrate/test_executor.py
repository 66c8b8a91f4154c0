"""The Ray executor against the serial one: the same stage gives the same result."""

from __future__ import annotations

import uuid

import numpy as np

from datamodels.api import train
from datamodels.config import config_from_dict
from datamodels.orchestrate.executor import RayExecutor, SerialExecutor
from datamodels.stages.base import Unit, run_stage
from datamodels.store import Run
from tests.conftest import SMALL_DIGITS
from tests.stages.test_base import CONFIG, Squares


class SharedOnRay(Squares):
    """Units 0..7 in pairs sharing one object; each shared computation leaves a file, so the
    driver can count them after the tasks ran in other processes."""

    def units(self):
        return [Unit(f"{i}.npy", i, shared=i // 2) for i in range(self.n)]

    def compute_shared(self, ctx, key):
        self.run.fs.write_bytes_atomic(f"made/{key}-{uuid.uuid4().hex}", b"")
        return 100 * key

    def compute(self, ctx, unit, shared=None):
        assert shared == 100 * (unit.payload // 2)
        return super().compute(ctx, unit, shared)


def test_ray_executor_computes_each_shared_input_once(tmp_path, ray_local):
    run = Run(str(tmp_path / "run"))
    assert run_stage(SharedOnRay(CONFIG, run, n=8), RayExecutor(), show_progress=False) == 140
    made = sorted(name.split("-")[0] for name in run.fs.entries("made"))
    assert made == ["0", "1", "2", "3"]


def test_serial_and_ray_training_store_the_same_models(tmp_path, ray_local):
    config = config_from_dict(
        SMALL_DIGITS, ["plans.train.count=12", "plans.eval.count=4", "resources.models_per_task=8"]
    )
    train(config, str(tmp_path / "serial"), executor=SerialExecutor(), show_progress=False)
    train(config, str(tmp_path / "ray"), executor=RayExecutor(), show_progress=False)
    serial, on_ray = Run(str(tmp_path / "serial")), Run(str(tmp_path / "ray"))
    assert serial.model_ids().tolist() == on_ray.model_ids().tolist() == list(range(16))
    np.testing.assert_array_equal(serial.masks(), on_ray.masks())
    # batch composition may differ (Ray spreads 16 models over its slots); models do not
    np.testing.assert_allclose(serial.margins(), on_ray.margins(), atol=2e-3)
