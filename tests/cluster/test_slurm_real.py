"""cluster/slurm/array.sbatch submitted for real to a one-node SLURM cluster (``slurmctld``
and ``slurmd`` on 127.0.0.1, with their own ``munged``) that this test starts and stops.
Needs Debian's ``slurmctld slurmd slurm-client munge`` packages and root; slow."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from datamodels.store import Run

pytestmark = pytest.mark.slow
CLUSTER = Path(__file__).parents[2] / "cluster"
DAEMONS = ("munged", "slurmctld", "slurmd")
KEY = Path("/etc/munge/munge.key")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _daemon(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name,) if p.exists()), None
    )


@pytest.fixture
def slurm():
    """(environment with SLURM_CONF, folder) of a running one-node SLURM cluster."""
    paths = {name: _daemon(name) for name in DAEMONS}
    if os.geteuid() != 0 or not all(paths.values()) or not shutil.which("sbatch"):
        pytest.skip("needs root and slurmctld, slurmd, munged, sbatch (apt-get install "
                    "slurmctld slurmd slurm-client munge)")
    if not KEY.is_file():
        pytest.skip(f"no munge key at {KEY}")
    base = Path(tempfile.mkdtemp(prefix="dmslurm", dir="/tmp"))  # short: holds a unix socket
    for sub in ("state", "spool", "log"):
        (base / sub).mkdir(exist_ok=True)
    munge_socket = base / "munge.socket"
    conf = base / "slurm.conf"
    conf.write_text(f"""ClusterName=dmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    (base / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = [
        subprocess.Popen([paths["munged"], "--foreground", "--force", "-S", str(munge_socket),
                          "--key-file", str(KEY), "--pid-file", str(base / "munged.pid"),
                          "--log-file", str(base / "log/munged.log"),
                          "--seed-file", str(base / "munged.seed")],
                         env=env, start_new_session=True),
    ]
    try:
        deadline = time.monotonic() + 20
        while not munge_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in ("slurmctld", "slurmd"):
            started.append(subprocess.Popen([paths[name], "-D", "-f", str(conf)], env=env,
                                            start_new_session=True))
            time.sleep(2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            pytest.fail(f"slurmd did not come up: {(base / 'log/slurmd.log').read_text()[-2000:]}")
        yield env, base
    finally:
        for proc in reversed(started):  # only the daemons started here
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def test_array_sbatch_trains_every_shard_under_slurm(slurm, tmp_path):
    env, base = slurm
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny",
        "dataset": {"name": "digits", "limit_train": 60, "limit_test": 20},
        "model": {"arch": "null"},
        "plans": [{"name": "train", "alpha": 0.5, "count": 20},
                  {"name": "eval", "alpha": 0.5, "count": 4}],
    }))
    run = tmp_path / "run"
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    # this machine has no GPU and 2 CPUs: the command line overrides the script's requests
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--gpus=0",
         "--time=00:10:00", f"--output={base}/shard-%A_%a.log",
         str(CLUSTER / "slurm" / "array.sbatch"), str(config), str(run)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True,
                                text=True).stdout.strip()
        if not queued:
            break
        time.sleep(2)
    logs = {p.name: p.read_text() for p in base.glob("shard-*.log")}
    assert sorted(logs) == [f"shard-{job}_0.log", f"shard-{job}_1.log"]
    for text in logs.values():
        assert "train models: 12 new" in text, text[-2000:]
    assert len(Run(str(run)).model_ids()) == 24  # 20 + 4 models, half by each task
