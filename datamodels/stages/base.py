"""The stage contract: every stage of a run is a `Stage`, and `run_stage` runs any of them.

A stage is a pure description of work over one run directory::

    fingerprint()      what changes its results: settings and the inputs it reads (a dict)
    units()            the pieces of work (pure; the same run and settings give the same units)
    done(unit)         is this unit's part already written?  (default: its part file exists)
    compute(ctx, unit) do one unit inside a task and write its part atomically
    finish()           reduce the parts into the stage's tables (in the driver)

`run_stage` applies one rule to every stage: if the stage's marker ``_stages/<name>.json``
holds the current fingerprint and its outputs exist, nothing runs; otherwise the units that
are not ``done`` go to an executor (`datamodels.orchestrate`: Ray tasks, or in-process for
tests and small reductions), then ``finish`` runs and the marker is written with the
fingerprint as it stands after finishing. A crash at any point loses at most the units in
flight: their parts are written by temp name and rename, so a rerun computes only the rest.

Parts live in ``_parts/<name>-<digest>/``: a change of settings gets a new folder, so parts of
different settings never mix; ``finish`` removes the folders of the stage's earlier settings.

**Code versions.** ``versions()`` names the code that produces a stage's tables and its
version (``trainer.lbfgs``: ``trainers.versions``; ``method.shapley``: ``Method.version``;
``metric.lds``...: `datamodels.stages.versions` names each producer once, for every stage that
depends on it). The marker records them under ``versions``, and so does every table the stage
writes (Parquet key-value metadata ``datamodels.versions``, `Stage.write_table`). Every
version above 1 is part of the digest, so bumping a producer's version makes its stage stale
and the next run recomputes it. Version 1 adds nothing to the digest: markers written before
versions were recorded stay current (what they were made with counts as version 1).

Adding a stage: subclass `Stage`, set ``name``, implement the four methods (``done`` only if
its parts are not files in `part_dir`), and call ``run_stage(MyStage(config, run), executor)``.
Stages that need several units to share one expensive object (a model's Hessian) name it in
``Unit.shared`` and implement ``compute_shared``; the executor computes it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from datamodels.config import Config
from datamodels.orchestrate.progress import Progress, log_console
from datamodels.plans import plan_models
from datamodels.store import Run
from datamodels.trainers.versions import FIRST_VERSION

PARTS_DIR = "_parts"
MARKERS_DIR = "_stages"


@dataclass(frozen=True)
class Unit:
    """One piece of a stage's work. ``name`` is unique within the stage and names its part;
    ``payload`` is whatever the stage needs to find the work (small, picklable); ``shared``
    names an object several units take (computed once by ``Stage.compute_shared``)."""

    name: str
    payload: Any = None
    shared: Any = None
    size: int = 1  # how much of the progress bar the unit is (models for training)


@dataclass(frozen=True)
class TaskResources:
    """What one task of the stage asks the executor for."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    retries: int = 3  # re-runs after a worker process dies (infrastructure, not the unit's fault)
    max_in_flight: int | None = None


def digest(value: Any) -> str:
    """A short stable hash of a JSON-serialisable value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def versioned(fingerprint: dict, versions: dict[str, int]) -> dict:
    """``fingerprint`` with the producers' versions above the first (what the digest hashes:
    version 1 leaves a fingerprint as it was before versions were recorded)."""
    bumped = {name: v for name, v in sorted(versions.items()) if v != FIRST_VERSION}
    return fingerprint | {"versions": bumped} if bumped else fingerprint


class Stage:
    """Base of every stage; see the module docstring for the contract."""

    name: str = "stage"
    what: str = "units"  # what the progress bar counts

    def __init__(self, config: Config, run: Run) -> None:
        self.config = config
        self.run = run
        self._digest: str | None = None
        self._planned = None
        self._present: set[str] | None = None

    # -- the contract --------------------------------------------------------------------

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def units(self) -> list[Unit]:
        raise NotImplementedError

    def versions(self) -> dict[str, int]:
        """Code versions of what produces the stage's tables (``"method.shapley": 2``); see
        the module docstring. Default: none."""
        return {}

    def compute(self, ctx: Any, unit: Unit, shared: Any = None) -> Any:
        raise NotImplementedError

    def finish(self) -> Any:
        raise NotImplementedError

    def write_table(self, rel_path: str, table: Any, schema: Any) -> int:
        """``run.write_table`` with the stage's `versions` recorded in the table's metadata
        (``datamodels.versions``): every table a stage computes says what computed it."""
        return self.run.write_table(rel_path, table, schema, self.versions())

    def done(self, unit: Unit) -> bool:
        if self._present is None:  # one listing of the part folder, not one request per part
            self._present = set(self.run.fs.listdir(self.part_dir, ""))
        return unit.name in self._present

    # -- optional hooks ------------------------------------------------------------------

    def outputs(self) -> list[str]:
        """Run-relative files that must exist for the stage to count as complete."""
        return []

    def start(self) -> None:
        """Called once before ``units`` when the stage has work to do (repairs, driver state)."""

    def nothing_to_do(self) -> str:
        """The line printed when the stage finds its outputs current."""
        return f"{self.name}: up to date with these settings; nothing to do"

    def idle_message(self) -> str | None:
        """The line printed when no unit is left but the stage still finishes (None: silent)."""
        return None

    def resources(self) -> TaskResources:
        return TaskResources(
            retries=self.config.resources.task_retries,
            max_in_flight=self.config.resources.max_in_flight,
        )

    def spread(self, units: list[Unit], slots: int) -> list[Unit]:
        """The units re-cut for an executor with ``slots`` parallel task slots."""
        return units

    def compute_shared(self, ctx: Any, key: Any) -> Any:
        raise NotImplementedError(f"{self.name} has no shared inputs")

    def on_result(self, unit: Unit, result: Any, progress: Any) -> list[Unit]:
        """Called in the driver with a unit's return value; returns units to run again."""
        progress.advance(unit.size)
        return []

    def on_failure(self, unit: Unit, error: BaseException, progress: Any) -> list[Unit]:
        """Called in the driver when a unit raised (after the executor's own retries); returns
        units to run again. By default the error stops the stage: the unit's own exception
        (as raised in the task) is raised again here; finished parts stay for a rerun."""
        cause = getattr(error, "cause", None)
        raise (cause if isinstance(cause, BaseException) else error)

    def progress_counts(self, units: list[Unit], todo: list[Unit]) -> tuple[int, int]:
        """(total, already done) for the progress bar."""
        total = sum(u.size for u in units)
        return total, total - sum(u.size for u in todo)

    def up_to_date(self) -> Any:
        """What the stage returns when it finds its outputs complete (it runs nothing)."""
        return None

    @property
    def planned(self):
        """The run's plan table (`plans.PlannedModels`), built once per stage; tasks receive it
        with the stage."""
        if self._planned is None:
            self._planned = plan_models(self.config, self.run.n_train)
        return self._planned

    # -- parts and the marker --------------------------------------------------------------

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = digest(versioned(self.fingerprint(), self.versions()))
        return self._digest

    @property
    def part_dir(self) -> str:
        return f"{PARTS_DIR}/{self.name}-{self.digest}"

    def part_path(self, unit: Unit) -> str:
        return f"{self.part_dir}/{unit.name}"

    @property
    def marker_path(self) -> str:
        return f"{MARKERS_DIR}/{self.name}.json"

    def marker(self) -> dict | None:
        """The stage's marker record (stage, digest, fingerprint, versions), or None before
        its first completion."""
        return read_marker(self.run, self.name)

    def is_complete(self) -> bool:
        fs = self.run.fs
        if not fs.isfile(self.marker_path) or not all(fs.isfile(p) for p in self.outputs()):
            return False
        return json.loads(fs.read_bytes(self.marker_path)).get("digest") == self.digest

    # train's outputs are its inputs: its marker records them as they are after finishing;
    # the other stages record the inputs they started from
    refingerprint_after_finish = False

    def write_marker(self) -> None:
        if self.refingerprint_after_finish:
            self._digest = None
        record = {"stage": self.name, "digest": self.digest, "fingerprint": self.fingerprint(),
                  "versions": self.versions()}
        self.run.fs.write_bytes_atomic(self.marker_path, json.dumps(record, default=str).encode())

    def remove_old_parts(self) -> None:
        """Delete this stage's part folders, of these settings and of earlier ones."""
        for entry in self.run.fs.entries(PARTS_DIR):
            if entry.startswith(f"{self.name}-"):
                self.run.fs.delete_dir(f"{PARTS_DIR}/{entry}")
        self._present = None


def read_marker(run: Run, name: str) -> dict | None:
    """The marker record ``_stages/<name>.json`` of a run, or None when there is none."""
    path = f"{MARKERS_DIR}/{name}.json"
    return json.loads(run.fs.read_bytes(path)) if run.fs.isfile(path) else None


def recorded_settings(run: Run, name: str) -> dict:
    """The ``settings`` a stage with its own parameters (alpha effect's ``k``, the LDS
    curve's counts...) recorded in its marker; empty before its first completion. Status
    and the report judge such a stage by the settings it was last run with."""
    record = read_marker(run, name) or {}
    return dict(record.get("fingerprint", {}).get("settings") or {})


def run_stage(
    stage: Stage, executor: Any = None, show_progress: bool = True, console: Console | None = None
) -> Any:
    """Run ``stage`` to completion with ``executor`` (default: in-process); returns what its
    ``finish`` returns, or ``up_to_date()`` when nothing needed doing."""
    # torch: the executor module imports it; a stage that finds itself current needs none
    from datamodels.orchestrate.executor import SerialExecutor

    console = console or log_console()
    if stage.is_complete():
        if show_progress:
            console.print(stage.nothing_to_do(), highlight=False)
        return stage.up_to_date()
    stage.start()
    units = stage.units()
    stage._present = None
    todo = [u for u in units if not stage.done(u)]
    if todo:
        total, already = stage.progress_counts(units, todo)
        with Progress(total, already, enabled=show_progress, console=console,
                      what=f"{stage.name} {stage.what}") as progress:
            (executor or SerialExecutor()).run(stage, todo, progress)
    elif show_progress and stage.idle_message():
        console.print(stage.idle_message(), highlight=False)
    stage._present = None
    result = stage.finish()
    stage.write_marker()
    stage.remove_old_parts()  # after the marker: a crash in between keeps the parts
    return result
