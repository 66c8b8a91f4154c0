"""benchmarks/device_check.sh: its commands parse with the scripts' own argument parsers (GPU
and CPU sizes), it measures every mode docs/gpu.md lists, and it runs whole on the CPU."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.test_gpu_throughput import BENCH, REPO, load, table

SCRIPT = BENCH / "device_check.sh"


def commands(tmp_path: Path, **env: str) -> list[list[str]]:
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=os.environ | {"DRY_RUN": "1", "PYTHON": sys.executable} | env,
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line)[2:] for line in done.stdout.splitlines() if line.startswith("$ ")]


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_command_parses_with_its_script(device, tmp_path, monkeypatch):
    parsers = {name: load(name, monkeypatch).build_parser()
               for name in ("gpu_pipeline", "gpu_throughput")}
    steps = commands(tmp_path, DEVICE=device)
    assert [Path(step[0]).name for step in steps] == (
        ["gpu_pipeline.py", "gpu_throughput.py", "gpu_throughput.py"] if device == "cuda"
        else ["gpu_pipeline.py", "gpu_throughput.py"]
    )
    parsed = [parsers[Path(step[0]).stem].parse_args(step[1:]) for step in steps]
    assert all(args.device == device for args in parsed)
    if device == "cuda":
        pipeline, modes, compiled = parsed
        assert not pipeline.tiny and pipeline.models == 200
        assert modes.ks == "1,16" and modes.processes == "2,4" and modes.mps
        assert modes.streams == "4,8,16" and not modes.compile
        assert modes.n_train == 50_000 and modes.epochs == 10  # the figures' sizes
        assert compiled.compile and compiled.airbench == 0


def test_airbench_is_left_out_in_one_line_where_it_is_not_importable(tmp_path):
    fake = tmp_path / "python3"  # a python whose every import of airbench fails
    fake.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 1\nexit 0\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env=os.environ | {"DRY_RUN": "1", "PYTHON": str(fake)})
    lines = done.stdout.splitlines()
    assert lines[0] == "airbench: not importable here, so its row is left out"
    assert "--airbench 0" in lines[2]


@pytest.mark.slow
def test_the_script_runs_whole_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = os.environ | {"DEVICE": "cpu", "OUT": str(out), "RUNS": str(tmp_path / "runs"),
                        "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                        "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    log = (out / "device_check.log").read_text()
    assert log == done.stdout
    assert re.search(r"train --shard 0/1: 30 models \(0 already done, 0 failed", log), log
    assert re.search(r"^trak\s+lds\s+-?[\d.]+\s+24$", log, re.M), log
    names = [(re.sub(r"(no MPS|MPS off)$", "MPS", row[0]), row[1], row[2]) for row in table(log)]
    assert names == [("datamodels fastnet auto", "1", "4"), ("datamodels fastnet auto", "4", "4"),
                     ("datamodels fastnet auto, 2 processes, MPS", "1", "4"),
                     ("datamodels fastnet auto streams", "2", "4")], log
    assert "stopped at its limit" not in log and "exit status" not in log
