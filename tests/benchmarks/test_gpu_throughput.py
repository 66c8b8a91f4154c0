"""benchmarks/gpu_throughput.py on the CPU: the ``--processes`` mode trains the same models as
one process does, and the nvidia-smi sampler and the MPS start/stop speak the tools' protocol
(checked against stand-in executables on ``PATH``)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
TINY = ["--device", "cpu", "--n-train", "64", "--n-test", "32", "--size", "16", "--width", "4",
        "--epochs", "2", "--batch-size", "32", "--airbench", "0"]


def load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import each other by name
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows[1:]]


def fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_two_processes_train_the_masks_of_one_process_and_report_them():
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", *TINY, "--models", "4", "--ks", "1",
         "--processes", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table(done.stdout)
    assert len(rows) == 2, done.stdout
    one, two = rows
    assert re.fullmatch(r"datamodels fastnet auto, 2 processes, (no MPS|MPS off|MPS on)", two[0])
    assert one[1] == two[1] == "1" and one[2] == two[2] == "4"  # K, models
    accuracy = re.fullmatch(r"([\d.]+) ± ([\d.]+)", two[5])
    assert accuracy and 0 <= float(accuracy[1]) <= 100, two
    # a model is its mask and seed: the same accuracies whichever process trains it
    assert two[5] == one[5]
    assert float(two[3]) > 0 and two[7:] == one[7:] == ["n/a", "n/a", "n/a"]  # no GPU here


def test_the_sampler_reads_utilisation_and_memory_from_nvidia_smi(tmp_path, monkeypatch):
    processes = load("gpu_processes", monkeypatch)
    fake_tool(tmp_path, "nvidia-smi",
              'test "$1" = "--query-gpu=utilization.gpu,memory.used" && echo "57, 2048" '
              '&& echo "3, 10"')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with processes.Sampler("cuda", interval=0.01) as sampler:
        while len(sampler.samples) < 2:
            pass
    assert sampler.utilisation() == "57" and sampler.memory_used() == "2.00"  # first GPU
    with processes.Sampler("cpu") as cpu:
        pass
    assert (cpu.utilisation(), cpu.memory_used()) == ("n/a", "n/a")


def test_mps_is_noted_started_and_stopped(tmp_path, monkeypatch):
    processes = load("gpu_processes", monkeypatch)
    monkeypatch.setattr(processes, "MPS_SETTLE", 0.0)
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    if (Path("/tmp/nvidia-mps") / "control").exists():
        pytest.skip("an MPS daemon runs on this machine")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert processes.mps_state() == "no MPS"
    calls = tmp_path / "calls"
    fake_tool(tmp_path, "nvidia-cuda-mps-control",
              f'echo "args:$*" >> {calls}; while read -r line; do echo "$line" >> {calls}; done')
    assert processes.mps_state() == "MPS off"
    handler = signal.getsignal(signal.SIGTERM)
    with processes.mps_daemon():
        assert calls.read_text().splitlines() == ["args:-d"]
        assert signal.getsignal(signal.SIGTERM) is not handler  # a time limit stops it too
    assert calls.read_text().splitlines() == ["args:-d", "args:", "quit"]
    assert signal.getsignal(signal.SIGTERM) is handler
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert processes.mps_state() == "MPS on"
