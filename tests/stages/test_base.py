"""The stage contract on a toy stage: one rule for done, resume after a crash, markers,
settings that change, and the serial executor's callbacks."""

from __future__ import annotations

import io

import numpy as np
import pytest

from datamodels.config import config_from_dict
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.stages.base import PARTS_DIR, Stage, Unit, run_stage
from datamodels.store import Run


class Squares(Stage):
    """Units write i² as parts; finish sums them into ``total.npy``."""

    name = "squares"

    def __init__(self, config, run, n=6, power=2, crash_at=None):
        super().__init__(config, run)
        self.n, self.power, self.crash_at, self.computed = n, power, crash_at, []

    def fingerprint(self):
        return {"n": self.n, "power": self.power}

    def outputs(self):
        return ["total.npy"]

    def units(self):
        return [Unit(f"{i}.npy", i) for i in range(self.n)]

    def compute(self, ctx, unit, shared=None):
        if unit.payload == self.crash_at:
            raise KeyboardInterrupt  # the process dies here: not a failure the stage can handle
        self.computed.append(unit.payload)
        buffer = io.BytesIO()
        np.save(buffer, np.array(unit.payload**self.power))
        self.run.fs.write_bytes_atomic(self.part_path(unit), buffer.getvalue())

    def finish(self):
        total = sum(
            int(np.load(io.BytesIO(self.run.fs.read_bytes(self.part_path(u)))))
            for u in self.units()
        )
        buffer = io.BytesIO()
        np.save(buffer, np.array(total))
        self.run.fs.write_bytes_atomic("total.npy", buffer.getvalue())
        self.remove_old_parts()
        return total

    def up_to_date(self):
        return "up to date"


@pytest.fixture
def run(tmp_path):
    return Run(str(tmp_path / "run"))


CONFIG = config_from_dict({})


def test_resume_after_a_crash_computes_only_the_missing_units(run):
    with pytest.raises(KeyboardInterrupt):
        run_stage(Squares(CONFIG, run, crash_at=4), show_progress=False)
    stage = Squares(CONFIG, run)
    assert sorted(p for p in run.fs.listdir(stage.part_dir, ".npy")) == [
        "0.npy",
        "1.npy",
        "2.npy",
        "3.npy",
    ]
    assert run_stage(stage, show_progress=False) == sum(i * i for i in range(6))
    assert stage.computed == [4, 5]
    assert not run.fs.entries(PARTS_DIR)  # parts are gone once reduced


def test_a_finished_stage_does_nothing_until_its_settings_or_outputs_change(run):
    assert run_stage(Squares(CONFIG, run), show_progress=False) == 55
    again = Squares(CONFIG, run)
    assert run_stage(again, show_progress=False) == "up to date" and again.computed == []
    cubes = Squares(
        CONFIG, run, power=3
    )  # another setting: a new fingerprint, everything recomputed
    assert run_stage(cubes, show_progress=False) == sum(i**3 for i in range(6))
    assert cubes.computed == list(range(6))
    run.fs.filesystem.delete_file(run.fs.join("total.npy"))  # an output lost: the stage runs again
    lost = Squares(CONFIG, run, power=3)
    assert run_stage(lost, show_progress=False) == 225 and lost.computed == list(range(6))


def test_parts_of_other_settings_are_never_mixed_in(run):
    with pytest.raises(KeyboardInterrupt):
        run_stage(Squares(CONFIG, run, power=3, crash_at=3), show_progress=False)
    stage = Squares(CONFIG, run, power=2)
    assert run_stage(stage, show_progress=False) == 55 and stage.computed == list(range(6))
    assert not run.fs.entries(PARTS_DIR)  # the cubes' partial folder is removed too


class Flaky(Squares):
    """Unit 2 raises once; the stage retries it on failure."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = []

    def compute(self, ctx, unit, shared=None):
        if unit.payload == 2 and not self.failures:
            raise RuntimeError("worker lost its GPU")
        return super().compute(ctx, unit, shared)

    def on_failure(self, unit, error, progress):
        self.failures.append((unit.name, type(error).__name__, str(error)))
        return [unit]


def test_failures_go_to_the_stage_which_may_retry(run):
    stage = Flaky(CONFIG, run)
    assert run_stage(stage, SerialExecutor(), show_progress=False) == 55
    assert stage.failures == [("2.npy", "RuntimeError", "worker lost its GPU")]
    assert sorted(stage.computed) == list(range(6))


def test_the_default_failure_raises_the_units_error_and_keeps_finished_parts(run):
    class Broken(Squares):
        def compute(self, ctx, unit, shared=None):
            if unit.payload == 3:
                raise ValueError("bad block")
            return super().compute(ctx, unit, shared)

    with pytest.raises(ValueError, match="bad block"):  # the unit's own error, not a wrapper
        run_stage(Broken(CONFIG, run), show_progress=False)
    stage = Squares(CONFIG, run)
    assert len(run.fs.listdir(stage.part_dir, ".npy")) == 3
    assert run_stage(stage, show_progress=False) == 55 and stage.computed == [3, 4, 5]


class Shared(Squares):
    """Every unit takes a shared object keyed by its parity, computed once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared_made = []

    def units(self):
        return [Unit(f"{i}.npy", i, shared=i % 2) for i in range(self.n)]

    def compute_shared(self, ctx, key):
        self.shared_made.append(key)
        return 100 * key

    def compute(self, ctx, unit, shared=None):
        assert shared == 100 * (unit.payload % 2)
        return super().compute(ctx, unit, shared)


def test_shared_inputs_are_computed_once_per_run_of_units(run):
    stage = Shared(CONFIG, run)
    run_stage(stage, SerialExecutor(), show_progress=False)
    assert stage.shared_made == [0, 1, 0, 1, 0, 1]  # in-process: one held at a time
    ordered = Shared(CONFIG, run, n=4, power=3)
    ordered.units = lambda: [Unit(f"{i}.npy", i, shared=i // 2) for i in range(4)]  # 0,0,1,1
    ordered.compute = lambda ctx, unit, shared=None: Squares.compute(ordered, ctx, unit, shared)
    run_stage(ordered, SerialExecutor(), show_progress=False)
    assert ordered.shared_made == [0, 1]
