"""What ``datamodels submit`` uploads (`datamodels.orchestrate.upload`): the project's code
and configs, never run directories, environments, caches, large files or ignored paths; and
Ray's own packaging, given the `excludes` it builds, leaves out exactly the same paths."""

from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from datamodels import jobs
from datamodels.cli import app
from datamodels.errors import JobError
from datamodels.orchestrate.upload import plan_upload


def _file(root: Path, rel: str, text: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    _file(root, "tiny.yaml", yaml.safe_dump({"name": "tiny"}))
    _file(root, "odd[1].txt")
    _file(root, "mypkg/__init__.py", "")
    _file(root, "mypkg/nets.py", "def make(): ...\n")
    _file(root, "mypkg/generated.py")  # mypkg/.gitignore names it
    _file(root, "mypkg/.gitignore", "generated.py\n")
    _file(root, "mypkg/__pycache__/nets.cpython-311.pyc")
    _file(root, "runs/digits/config.yaml")  # the default --out folder
    _file(root, "experiments/notes.md")
    _file(root, "experiments/r1/config.yaml")  # a run directory: config.yaml + models/
    _file(root, "experiments/r1/models/part-0.parquet")
    _file(root, "run [2]/config.yaml")  # another, whose name has gitignore's special characters
    _file(root, "run [2]/models/part-0.parquet")
    _file(root, "prepared/config.yaml")  # prepared, not trained: config.yaml + examples
    _file(root, "prepared/examples.parquet")
    _file(root, ".venv/pyvenv.cfg")
    _file(root, "env2/pyvenv.cfg")  # a virtual environment by its marker, whatever its name
    _file(root, "env2/lib/site.py")
    _file(root, ".git/HEAD")
    _file(root, "data/cache.beton")
    _file(root, "scratch/tmp.npy")
    _file(root, "a.tmp")
    _file(root, "secret.txt")
    _file(root, ".datamodelsignore", "# scratch space\nscratch/\n*.tmp\n")
    _file(root, ".gitignore", "secret.txt\n")
    with open(root / "big.dat", "wb") as f:  # 60 MB, sparse: over the 50 MB default
        f.truncate(60_000_000)
    return root


EXPECTED_FILES = [
    ".datamodelsignore", ".gitignore", "experiments/notes.md", "mypkg/.gitignore",
    "mypkg/__init__.py", "mypkg/nets.py", "odd[1].txt", "tiny.yaml",
]
EXPECTED_LEFT_OUT = {
    ".git": "version control",
    ".venv": "virtual environment",
    "a.tmp": ".datamodelsignore",
    "big.dat": "60.0 MB, over 50 MB",
    "data/cache.beton": "FFCV data",
    "env2": "virtual environment",
    "experiments/r1": "run directory",
    "mypkg/__pycache__": "cache",
    "mypkg/generated.py": ".gitignore",
    "prepared": "run directory",
    "run [2]": "run directory",
    "runs": "the default --out folder",
    "scratch": ".datamodelsignore",
    "secret.txt": ".gitignore",
}


def test_the_upload_leaves_out_runs_environments_caches_large_and_ignored_files(project):
    upload = plan_upload(project)
    assert upload.files == EXPECTED_FILES
    assert dict(upload.left_out) == EXPECTED_LEFT_OUT
    assert upload.size == sum((project / f).stat().st_size for f in EXPECTED_FILES)
    bigger = plan_upload(project, max_file_mb=100)  # the limit is a setting
    assert "big.dat" in bigger.files and bigger.size == upload.size + 60_000_000


def test_rays_packaging_sends_exactly_the_planned_files(project, tmp_path):
    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    spec = jobs.runtime_env(project, environ={})
    assert spec["working_dir"] == str(project.resolve())
    archive = tmp_path / "pkg.zip"
    packaging._zip_files(str(project), spec["excludes"], str(archive), include_gitignore=True)
    with zipfile.ZipFile(archive) as zipped:
        sent = sorted(n for n in zipped.namelist() if not n.endswith("/"))
    assert sent == EXPECTED_FILES


def test_a_config_inside_a_left_out_folder_is_refused(project):
    upload = plan_upload(project)
    assert jobs.config_in_working_dir(project / "tiny.yaml", project, upload) == "tiny.yaml"
    with pytest.raises(JobError, match=r"experiments/r1/config.yaml is not uploaded with the "
                       r"job \(experiments/r1: run directory\)"):
        jobs.config_in_working_dir(project / "experiments/r1/config.yaml", project, upload)


def test_submit_prints_what_it_leaves_out_and_the_size_before_sending(project, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    monkeypatch.chdir(project)
    # submit turns token authentication on in its process when a token file exists; keep
    # that out of the tests that start a local cluster after this one
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    result = CliRunner().invoke(
        app, ["submit", "tiny.yaml", "--out", "s3://bucket/run", "--address", nowhere]
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and "cannot reach the Ray Jobs API" in lines[-1]
    assert lines[:-1] == [
        *(f"upload: left out {path} ({why})" for path, why in EXPECTED_LEFT_OUT.items()),
        f"upload: 8 files, {plan_upload(project).size / 1e6:,.2f} MB from {os.getcwd()}",
    ]
