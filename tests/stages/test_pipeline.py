"""The pipeline as declared data (`stages.pipeline`), checked at run time: a small digits run
through ``api.run`` holds only files some stage declares, the contract's markers and parts,
or the store's own; a second ``run`` recomputes nothing; per-stage states follow a changed
input; an unknown stage name is one line naming the choices."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

import datamodels as dm
from datamodels import api
from datamodels.errors import DatamodelsError
from datamodels.stages.pipeline import (
    PIPELINE,
    declared_paths,
    default_stages,
    spec,
)
from tests.conftest import SMALL_DIGITS


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple:
    from datamodels.orchestrate.executor import SerialExecutor

    out = str(tmp_path_factory.mktemp("pipeline") / "run")
    config = dm.load_config(SMALL_DIGITS)
    dm.run(config, out, executor=SerialExecutor(), show_progress=False)
    return config, out


def _files(root: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_every_file_of_a_run_is_declared(small_run):
    _, out = small_run
    patterns = declared_paths()
    stray = [f for f in _files(out) if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not stray, f"files no stage, contract or store declares: {stray}"


def test_run_walks_the_declared_defaults_in_order():
    assert default_stages() == [
        "prepare", "train", "fit", "estimate", "removal_sets", "removal", "evaluate",
    ]
    names = [s.name for s in PIPELINE]
    for entry in PIPELINE:  # a stage reads only stages declared before it
        assert all(names.index(up) < names.index(entry.name) for up in entry.reads), entry.name


def test_a_second_run_does_nothing_and_states_are_done(small_run):
    from datamodels.orchestrate.executor import SerialExecutor

    config, out = small_run
    markers = {p: p.stat().st_mtime_ns for p in Path(out, "_stages").iterdir()}
    dm.run(config, out, executor=SerialExecutor(), show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in Path(out, "_stages").iterdir()} == markers
    states = api.stage_states(out).set_index("stage")["state"]
    assert {states[n] for n in ("prepare", "train", "fit", "estimate", "evaluate")} == {"done"}
    assert states["removal"] == "-" and states["alpha_effect"] == "-"  # no plan; never asked


def test_a_changed_input_makes_its_stage_and_the_readers_stale(small_run, tmp_path):
    import shutil

    _, out = small_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    marker = copy / "_stages" / "fit.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps(record | {"digest": "0" * 12}))  # fit's inputs "changed"
    states = api.stage_states(str(copy)).set_index("stage")["state"]
    assert states["fit"] == "stale" and states["evaluate"] == "stale"
    assert states["train"] == "done"
    (copy / "evaluation.parquet").unlink()
    assert api.stage_states(str(copy)).set_index("stage")["state"]["evaluate"] == "missing"


def test_unknown_stage_is_one_line_with_the_choices():
    with pytest.raises(DatamodelsError, match="unknown stage 'nope'; choose from: prepare, "):
        spec("nope")
