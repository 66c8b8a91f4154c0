"""FFCV, Ray and DuckDB are optional: the whole pipeline runs in an environment without them
and gives the scores the FFCV + Ray path gives on the same config.

The environment without them is a real virtual environment (``venv`` without pip) whose
``site-packages`` holds one ``.pth`` naming a folder of symbolic links to exactly the
distributions a base install needs, found as the requirement closure of a few roots in this
environment's package metadata. Ray, FFCV, DuckDB, Starlette, uvicorn, pillow, numba and
matplotlib are not on its path at all, so importing one fails as on a machine where it was
never installed; building it takes well under a second (links, no copies).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from datamodels.errors import ConfigError, MissingDependencyError

REPO = Path(__file__).resolve().parents[2]
# the base install's packages the pipeline needs (duckdb, matplotlib, pillow: only query,
# report and serve use them, so they are left out to show the pipeline does without)
BASE = ("torch", "numpy", "pyarrow", "pandas", "scikit-learn", "scipy", "threadpoolctl",
        "pydantic", "typer", "rich", "pyyaml", "pathspec")
# what a bare GPU image has, plus pydantic: what benchmarks/gpu_pipeline.py says it needs
GPU_IMAGE = ("torch", "numpy", "pyarrow", "pandas", "scikit-learn", "pyyaml", "rich", "pydantic")
ABSENT = ("ray", "ffcv", "duckdb", "starlette", "uvicorn", "PIL", "numba", "matplotlib")

SMALL = {
    "name": "optional_deps",
    "seed": 0,
    "dataset": {"name": "digits", "limit_train": 200, "limit_test": 30},
    "model": {"arch": "mlp", "hidden": 8},
    "train": {"epochs": 2, "batch_size": 64},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 24},  # fit needs 22 at least
        {"name": "eval", "alpha": 0.5, "count": 6},
    ],
    "checkpoints": {"plan": "train", "models": 2, "epochs": [2]},
    "gradients": {"models": 1, "trak_models": 2, "proj_dim": 32},
    "fit": {"n_lambdas": 4},
    "resources": {"models_per_task": 15},
}
METHODS = ("datamodels", "trak", "tracin")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need (their requirements without extras, whose
    environment markers hold here), found in this environment's metadata."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if _key(name) in seen:
            continue
        dist = metadata.distribution(name)
        seen[_key(name)] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def make_env(root: Path, roots: tuple[str, ...]) -> Path:
    """A virtual environment at ``root`` holding the closure of ``roots`` (symbolic links)
    and nothing else; returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    shared = root / "linked"
    shared.mkdir()
    for dist in _closure(roots):
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (shared / top).exists() and not top.endswith(".pth"):
                (shared / top).symlink_to(source)
    site = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    (site / "site-packages" / "linked.pth").write_text(f"{shared}\n{REPO}\n")
    return root / "bin" / "python"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DATAMODELS_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONPATH": str(REPO), "COLUMNS": "200"}


def run_in(python: Path, *args: str, check: bool = True, **env) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), *args], capture_output=True, text=True, timeout=400,
                          env={**_env(), **env}, cwd=REPO)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def slim(tmp_path_factory) -> Path:
    return make_env(tmp_path_factory.mktemp("slim") / "venv", BASE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, slim, ray_local):
    """(the FFCV + Ray run, the run made in the environment without them) of one config."""
    import ray

    from datamodels import api
    from datamodels.config import config_from_dict

    folder = tmp_path_factory.mktemp("optional")
    config_path = folder / "small.yaml"
    config_path.write_text(yaml.safe_dump(SMALL))
    reference, without = str(folder / "ffcv_ray"), str(folder / "without")

    config = config_from_dict(SMALL)
    assert ray.is_initialized()  # the stages below run as Ray tasks on this local cluster
    api.train(config, reference, show_progress=False)
    api.fit(config, reference, show_progress=False)
    api.estimate_many(config, reference, ["trak", "tracin"], show_progress=False)
    api.evaluate(config, reference)

    run_in(slim, "-m", "datamodels.cli", "run", str(config_path), "--out", without,
           "--methods", "trak,tracin", "--quiet")
    return Path(reference), Path(without)


def test_the_slim_environment_lacks_ray_ffcv_and_duckdb_yet_imports_the_package(slim):
    probe = (
        "import importlib.util, sys, datamodels, datamodels.cli\n"
        f"print([m for m in {ABSENT!r} if importlib.util.find_spec(m)])\n"
        f"print(sorted(m for m in {ABSENT!r} if m in sys.modules))"
    )
    found, loaded = run_in(slim, "-c", probe).stdout.splitlines()
    assert found == "[]" and loaded == "[]"


def test_the_pipeline_without_them_gives_the_scores_of_the_ffcv_and_ray_path(runs):
    import datamodels as dm
    from datamodels.data.beton import decode_resident

    reference, without = runs
    assert (reference / "data" / "examples.beton").is_file()
    assert not (reference / "data" / "examples.npy").exists()
    store = without / "data" / "examples.npy"
    assert sorted(p.name for p in store.parent.iterdir()) == [store.name, f"{store.name}.sha256"]
    digest = hashlib.sha256(store.read_bytes()).hexdigest()
    assert (without / "data" / "examples.npy.sha256").read_text().split()[0] == digest
    # the same examples: the array store holds what the beton decodes to
    beton = decode_resident(reference / "data" / "examples.beton")
    for got, want in zip(decode_resident(store), beton, strict=True):
        np.testing.assert_array_equal(got, want)

    ref, slim_run = dm.Run(str(reference)), dm.Run(str(without))
    # Ray trained the reference (worker processes), the other run trained in one process
    workers = lambda run: set(pd.read_parquet(run / "models")["worker"])  # noqa: E731
    assert all(not w.endswith(f":{os.getpid()}") for w in workers(reference))
    assert len(workers(without)) == 1
    for plan in ("train", "eval"):
        np.testing.assert_array_equal(slim_run.masks(plan), ref.masks(plan))
        np.testing.assert_allclose(
            slim_run.margins(plan), ref.margins(plan), rtol=1e-5, atol=1e-5
        )
    for method in METHODS:
        (targets, scores), (ref_targets, ref_scores) = slim_run.scores(method), ref.scores(method)
        np.testing.assert_array_equal(targets, ref_targets)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-6)
    evaluation = pd.read_parquet(without / "evaluation.parquet").set_index(["method", "metric"])
    expected = pd.read_parquet(reference / "evaluation.parquet").set_index(["method", "metric"])
    assert set(METHODS) <= set(evaluation.index.get_level_values("method"))
    np.testing.assert_allclose(
        evaluation.loc[expected.index, "value"], expected["value"], atol=1e-6
    )


# Runs the CLI once per case in one process of the slim environment (one start-up, not one
# per command): argv[1] is JSON [[environment, args], ...]; prints JSON [[exit code, what
# the command wrote to file descriptor 2], ...] after what importing the CLI wrote there.
CASES_SCRIPT = """
import json, os, sys, tempfile

def captured(call):
    with tempfile.TemporaryFile(mode="w+") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            code = call()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        return code, err.read()

def cli(args):
    try:
        app(args=args, prog_name="datamodels")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return 0

def load():
    global app
    from datamodels.cli import app

results = [captured(load)]
for env, args in json.loads(sys.argv[1]):
    os.environ.update(env)
    results.append(captured(lambda: cli(args)))
    for name in env:
        del os.environ[name]
print(json.dumps(results))
"""


def test_commands_that_need_what_is_missing_say_so_in_one_line(runs, slim, tmp_path):
    import json

    _, without = runs
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    cases = {
        "DuckDB": ["query", str(without), "SELECT 1"],
        "Starlette": ["serve", str(without), "--port", "0"],
        "Ray": ["submit", "configs/digits.yaml", "--address", "http://127.0.0.1:1", "--out",
                str(tmp_path / "job"), "--shared-fs", "--no-wait"],
        "submit and jobs needs Ray": ["jobs", "list", "--address", "http://127.0.0.1:1"],
        "cluster at 127.0.0.1:1": ["train", str(config), "--out", str(without),
                                   "--address", "127.0.0.1:1"],
    }
    # the last: asked for Ray where it is missing
    estimate = ["estimate", str(without), "-m", "trak"]
    todo = [[{}, args] for args in cases.values()] + [[{"DATAMODELS_EXECUTOR": "ray"}, estimate]]
    done = run_in(slim, "-c", CASES_SCRIPT, json.dumps(todo))
    (_, imported), *results = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == "" and len(results) == len(todo), (imported, done.stdout[-2000:])
    for (needed, args), (code, stderr) in zip(cases.items(), results, strict=False):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1, (args, stderr[-2000:])
        assert needed in lines[0] and "pip install" in lines[0], lines[0]
    code, stderr = results[-1]
    assert code == 2 and "datamodels[ray]" in stderr.strip().splitlines()[-1], stderr[-2000:]


def test_gpu_pipeline_runs_on_cpu_with_only_what_a_bare_gpu_image_has(tmp_path):
    python = make_env(tmp_path / "venv", GPU_IMAGE)
    gone = ("import importlib.util; print([m for m in ('typer', 'ray', 'ffcv', 'duckdb') "
            "if importlib.util.find_spec(m)])")
    assert run_in(python, "-c", gone).stdout.strip() == "[]"
    out = tmp_path / "run"
    common = ["benchmarks/gpu_pipeline.py", "--tiny", "--models", "24", "--out", str(out)]
    prepared = run_in(python, *common, "--prepare-only", "--device", "cpu").stdout
    assert "prepared" in prepared and not (out / "models").exists()
    assert (out / "data" / "examples.npy").is_file() and (out / "config.yaml").is_file()
    text = run_in(python, *common, "--device", "cpu").stdout
    assert re.search(r"train --shard 0/1: 30 models \(0 already done, 0 failed", text), text
    assert "a second train call trained 0 models (30 already done)" in text
    assert re.search(r"fit: [\d.]+ s", text) and re.search(r"estimate trak: [\d.]+ s", text)
    # the printed LDS table is the run's evaluation.parquet
    evaluation = pd.read_parquet(out / "evaluation.parquet")
    for row in evaluation.itertuples(index=False):
        assert re.search(rf"^{row.method}\s+{row.metric}\s+{row.value:.4f}\s+{row.n_targets}$",
                         text, re.M), (row, text)
    assert {"datamodels", "trak", "tracin"} <= set(evaluation["method"])
    models = pd.read_parquet(out / "models")
    assert len(models) == 30 and models["model_id"].is_unique


def test_the_executor_is_ray_where_installed_else_this_process(monkeypatch):
    import datamodels.orchestrate.executor as executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(executor.EXECUTOR_ENV, raising=False)
    assert isinstance(executor.default_executor(), executor.RayExecutor)  # Ray is installed here
    monkeypatch.setenv(executor.EXECUTOR_ENV, "local")
    assert isinstance(executor.default_executor(), executor.SerialExecutor)
    with pytest.raises(ConfigError, match="drop one of them"):
        executor.default_executor("10.0.0.1:6379")
    monkeypatch.setenv(executor.EXECUTOR_ENV, "dask")
    with pytest.raises(ConfigError, match="choose local or ray"):
        executor.default_executor()
    monkeypatch.delenv(executor.EXECUTOR_ENV)
    monkeypatch.setattr(executor, "ray_installed", lambda: False)
    assert isinstance(executor.default_executor(), executor.SerialExecutor)
    with pytest.raises(MissingDependencyError, match=r"at 10.0.0.1:6379.*datamodels\[ray\]"):
        executor.default_executor("10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    with pytest.raises(MissingDependencyError, match="10.0.0.2"):
        executor.default_executor()
