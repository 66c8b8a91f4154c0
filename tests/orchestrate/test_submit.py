"""`datamodels submit` and `datamodels jobs` against a real Ray head (``ray start --head``, its
dashboard and Jobs API on 127.0.0.1, token authentication on), started and stopped here."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from datamodels.cli import app
from datamodels.store import Run, verify

BIN = Path(sys.executable).parent
TINY = {
    "name": "tiny",
    "dataset": {"name": "digits", "limit_train": 60, "limit_test": 20},
    "model": {"arch": "null"},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 30},
        {"name": "eval", "alpha": 0.5, "count": 6},
    ],
    "resources": {"models_per_task": 40},  # one train task: one worker decodes the data
}
SUBMISSION_ID = re.compile(r"raysubmit_\w+")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Stop only this head: ``ray start --block`` shuts its processes down on SIGTERM; what is
    left (named by this head's own temp dir) is killed. Never ``ray stop``: it would stop
    every Ray cluster of this user on the machine."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


@pytest.fixture(scope="module")
def ray_head():
    """(Jobs API address, environment with the cluster's token) of a one-node Ray cluster."""
    temp_dir = tempfile.mkdtemp(prefix="dmhead", dir="/tmp")  # short: it holds unix sockets
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        DATAMODELS_PROGRESS_INTERVAL="0.2",  # passed on by submit: lines even in a short job
    )
    dashboard = _free_port()
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dashboard,
        "--ray-client-server-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
    }
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--disable-usage-stats",
    ]
    command += [f"{flag}={port}" for flag, port in ports.items()]
    log = open(os.path.join(temp_dir, "head.log"), "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    request = urllib.request.Request(
        f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "the Ray head's Jobs API did not come up on 127.0.0.1:"
                    f"{dashboard}:\n{Path(temp_dir, 'head.log').read_text()[-3000:]}"
                )
            time.sleep(1)
        yield address, env
    finally:
        _stop_head(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _cli(env: dict, cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "datamodels"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Runs `datamodels` once per argument list in one process (one start-up for several
# commands): argv[1] is JSON [args, ...]; prints JSON [[exit code, stdout], ...].
MANY_SCRIPT = """
import io, json, sys
from contextlib import redirect_stdout
from datamodels.cli import app
from datamodels.cli.common import out_console

results = []
for args in json.loads(sys.argv[1]):
    out = io.StringIO()
    out_console.file = out
    with redirect_stdout(out):
        try:
            app(args=args, prog_name="datamodels")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    results.append([code, out.getvalue().strip()])
print(json.dumps(results))
"""


def _cli_many(env: dict, cwd: Path, *commands: list[str]) -> list[tuple[int, str]]:
    """(exit code, stdout stripped) of each command, run in one process."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", MANY_SCRIPT, json.dumps(commands)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(result) for result in json.loads(done.stdout.strip().splitlines()[-1])]


def _project(tmp_path: Path, config: dict) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "tiny.yaml").write_text(yaml.safe_dump(config))
    (project / "runs").mkdir()  # never uploaded
    (project / "runs" / "big.bin").write_bytes(b"\0" * 1024)
    return project


def test_an_out_the_workers_cannot_see_is_refused_before_submitting(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    nowhere = f"http://127.0.0.1:{_free_port()}"  # nothing listens: the check comes first
    cases = {
        "runs/a": "relative",
        str(tmp_path / "run"): "--shared-fs",
        f"file://{tmp_path}/run": "--shared-fs",
    }
    for out, why in cases.items():
        result = CliRunner().invoke(
            app, ["submit", str(config), "--out", out, "--address", nowhere]
        )
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and why in text and "cannot" in text, (out, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    unreachable = CliRunner().invoke(
        app,
        [
            "submit",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--shared-fs",
            "--working-dir",
            str(tmp_path),
            "--address",
            nowhere,
        ],
    )
    assert unreachable.exit_code == 2 and "cannot reach the Ray Jobs API" in unreachable.output
    (tmp_path / "elsewhere").mkdir()
    outside = CliRunner().invoke(
        app,
        [
            "submit",
            str(config),
            "--out",
            "s3://b/run",
            "--working-dir",
            str(tmp_path / "elsewhere"),
            "--address",
            nowhere,
        ],
    )
    assert outside.exit_code == 2 and "outside the working directory" in outside.output


def test_submit_follows_the_job_to_its_end(ray_head, tmp_path):
    address, env = ray_head
    project = _project(tmp_path, TINY)
    out = tmp_path / "shared" / "run"
    result = _cli(
        env,
        project,
        "submit",
        "tiny.yaml",
        "--address",
        address,
        "--out",
        str(out),
        "--shared-fs",
        "--set",
        "plans.eval.count=5",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = result.stdout.splitlines()[0].strip()
    assert SUBMISSION_ID.fullmatch(job_id)
    # the job's log, followed live: plain progress lines, then the evaluation table
    assert re.search(r"train models \d+/35 \(\d+%\) [\d,]+/min ETA \S+ failed 0", result.stdout)
    assert "evaluation (" in result.stdout and "knn_shapley" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == f"job {job_id} SUCCEEDED"
    run = Run(str(out))
    assert len(run.model_ids()) == 35 and verify(run) == []
    assert set(run.evaluation().method) >= {"datamodels", "downsampling", "knn_shapley"}

    status, listed, logs = _cli_many(
        env, project, ["jobs", "status", job_id, "--address", address],
        ["jobs", "list", "--address", address], ["jobs", "logs", job_id, "--address", address],
    )  # fmt: skip
    assert status == (0, f"job {job_id} SUCCEEDED"), status
    assert listed[0] == 0 and job_id in listed[1] and "SUCCEEDED" in listed[1]
    assert logs[0] == 0 and "evaluation (" in logs[1]
    assert "runs/big.bin" not in logs[1]


@pytest.mark.slow  # two more jobs on the head; the default suite follows one job to its end
def test_a_failed_job_exits_1_and_a_stopped_one_says_so(ray_head, tmp_path):
    address, env = ray_head
    project = _project(tmp_path, TINY)
    failed = _cli(
        env,
        project,
        "submit",
        "tiny.yaml",
        "--address",
        address,
        "--out",
        "/proc/datamodels-cannot-write-here",
        "--shared-fs",
    )
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert re.search(r"job raysubmit_\w+ FAILED", failed.stderr)

    slow = dict(TINY, model={"arch": "mlp"}, train={"epochs": 500})
    (project / "slow.yaml").write_text(yaml.safe_dump(slow))
    submitted = _cli(
        env,
        project,
        "submit",
        "slow.yaml",
        "--address",
        address,
        "--out",
        str(tmp_path / "slow"),
        "--shared-fs",
        "--no-wait",
    )
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip()
    assert SUBMISSION_ID.fullmatch(job_id)  # the id alone on stdout: `id=$(datamodels submit)`
    stopped = _cli(env, project, "jobs", "stop", job_id, "--address", address)
    assert stopped.returncode == 0 and f"job {job_id} STOPPED" in stopped.stdout
    unknown = _cli(env, project, "jobs", "status", "raysubmit_nope", "--address", address)
    assert unknown.returncode == 2 and "raysubmit_nope" in unknown.stderr
    assert "Traceback" not in unknown.stderr


@pytest.mark.slow  # a third job on the head; what is uploaded is tests/cluster/test_upload.py's
def test_a_second_submit_from_the_same_folder_leaves_the_first_run_out(ray_head, tmp_path):
    """A run directory inside the working directory (here 110 MB of incompressible model
    shards, over the Jobs API's 100 MiB request limit) is not uploaded again."""
    address, env = ray_head
    project = _project(tmp_path, TINY)
    first = project / "shared" / "first"
    (first / "models").mkdir(parents=True)
    (first / "config.yaml").write_text(yaml.safe_dump(TINY))
    (first / "models" / "part-0.parquet").write_bytes(os.urandom(110 * 1024**2))
    out = project / "shared" / "second"
    result = _cli(env, project, "submit", "tiny.yaml", "--address", address, "--out",
                  str(out), "--shared-fs", "--quiet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "upload: left out shared/first (run directory)" in result.stderr
    assert re.search(r"upload: 1 file, 0\.\d\d MB from ", result.stderr)
    assert result.stderr.strip().splitlines()[-1].endswith("SUCCEEDED")
    assert len(Run(str(out)).model_ids()) == 36


def test_jobs_list_keeps_ids_whole_on_a_narrow_console(monkeypatch):
    """The ids are what a user copies into `jobs logs` or `jobs stop`: never cut or wrapped,
    even at 60 columns; the entrypoint wraps instead."""
    from datamodels import jobs
    from datamodels.cli.common import out_console

    ids = ["raysubmit_" + "A1b2C3d4E5f6G7h8"[: 16 - i] for i in range(3)]
    rows = [
        jobs.JobRow(i, "SUCCEEDED", "datamodels run c.yaml " * 4, "", 1_700_000_000_000, None)
        for i in ids
    ]
    monkeypatch.setattr(jobs, "list_jobs", lambda client: rows)
    monkeypatch.setattr(jobs, "client", lambda address: None)
    monkeypatch.setattr(out_console, "width", 60)
    result = CliRunner().invoke(app, ["jobs", "list"])
    assert result.exit_code == 0, result.output
    for i in ids:
        assert f" {i} " in result.stdout  # one piece, on one line
    assert "SUCCEEDED" in result.stdout
