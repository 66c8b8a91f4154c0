"""The cluster definitions parse, fit together (one image, one Ray version, the token on every
pod), do not expose the dashboard or talk plain HTTP, and the scripts build the right commands
(run here with stub ``srun``/``ray``/``datamodels`` on PATH)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import yaml
from packaging.requirements import Requirement

CLUSTER = Path(__file__).parents[2] / "cluster"


def test_template_binds_the_dashboard_to_loopback():
    template = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    head_start = " ".join(template["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert template["head_node_type"] in template["available_node_types"]


def test_submit_refuses_plain_http_to_a_remote_address():
    result = subprocess.run(
        [
            "bash",
            str(CLUSTER / "submit.sh"),
            "http://head.example.invalid:8265",
            "c.yaml",
            "s3://b/r",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "SSH tunnel" in result.stderr


# -- helpers -------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined."""
    text = (CLUSTER / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(current)
            current = ""
    return [(entry.split(None, 1)[0].upper(), entry.split(None, 1)[1]) for entry in logical]


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _record_args(bin_dir: Path, name: str, log: Path) -> None:
    """A stub ``name`` that appends its command line to ``log`` and succeeds."""
    _stub(bin_dir, name, f'echo "{name} $*" >> {log}\n')


def _ray_version_pins() -> tuple[str, set[str]]:
    docker_args = dict(
        arg.split("=", 1) for kind, arg in _dockerfile() if kind == "ARG" and "=" in arg
    )
    manifests = {
        yaml.safe_load((CLUSTER / "kuberay" / name).read_text())["spec"].get("rayVersion")
        for name in ("raycluster.yaml",)
    }
    return docker_args["RAY_VERSION"], manifests


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_builds_cuda_torch_ffcv_ray_and_this_package():
    instructions = _dockerfile()
    kinds = [kind for kind, _ in instructions]
    args = dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)
    assert kinds.count("FROM") == 1
    base = next(arg for kind, arg in instructions if kind == "FROM")
    assert base == "${BASE_IMAGE}" and "cuda" in args["BASE_IMAGE"]
    assert args["BASE_IMAGE"].startswith("pytorch/pytorch:")  # torch comes with the base
    runs = [arg for kind, arg in instructions if kind == "RUN"]
    apt = next(run for run in runs if "apt-get install" in run)
    makefile = (CLUSTER.parent / "Makefile").read_text()
    ffcv_packages = re.search(r"APT_PKGS := (.+)", makefile).group(1).split()
    assert all(package in apt.split() for package in ffcv_packages)
    pip = next(run for run in runs if "pip install" in run)
    assert '"ray[default]==${RAY_VERSION}"' in pip and "pip install ." in pip
    assert pip.index("ray[default]") < pip.index("pip install .")  # ray pinned first
    copies = [arg.split()[0] for kind, arg in instructions if kind == "COPY"]
    assert {"pyproject.toml", "datamodels", "configs"} <= set(copies)
    assert kinds.index("COPY") < kinds.index("RUN", kinds.index("COPY"))


def test_ray_version_is_one_pin_that_pyproject_allows():
    docker, manifests = _ray_version_pins()
    assert manifests == {docker}
    pyproject = (CLUSTER.parent / "pyproject.toml").read_text()
    ray_requirement = Requirement(re.search(r'"(ray\[default\][^"]*)"', pyproject).group(1))
    assert ray_requirement.specifier.contains(docker)


# -- KubeRay ---------------------------------------------------------------------------------


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _env(container: dict) -> dict:
    return {item["name"]: item for item in container.get("env", [])}


def test_kuberay_raycluster_and_rayjob_fit_together():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    workers = spec["workerGroupSpecs"]
    containers = _containers(head["template"]) + [
        c for group in workers for c in _containers(group["template"])
    ]
    submitter = _containers(job["spec"]["submitterPodTemplate"])
    images = {c["image"] for c in containers + submitter}
    assert len(images) == 1 and not images.pop().endswith(":latest")
    # the Jobs API stays inside the cluster network and asks for the token, which the
    # operator creates and hands to every pod (tests/cluster/test_kuberay_schema.py)
    assert head["serviceType"] == "ClusterIP"
    assert spec["authOptions"]["mode"] == "token"
    for container in containers:
        assert "secretKeyRef" in _env(container)["AWS_SECRET_ACCESS_KEY"]["valueFrom"]
    assert head["rayStartParams"]["num-gpus"] == "0"  # the driver's node trains nothing
    for group in workers:
        (worker,) = _containers(group["template"])
        gpus = worker["resources"]["limits"]["nvidia.com/gpu"]
        assert group["rayStartParams"]["num-gpus"] == str(gpus)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # the job runs on that cluster, and writes where every pod can read
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["datamodels", "run"]
    assert words[words.index("--out") + 1].startswith("s3://")
    assert (CLUSTER.parent / words[2]).is_file()  # the config ships in the image
    assert "backoffLimit" not in job["spec"]  # the operator refuses it with clusterSelector


def test_dockerfile_installs_the_users_packages_with_ray_kept_at_its_pin(tmp_path):
    instructions = _dockerfile()
    args = dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)
    assert args["EXTRA_PIP"] == '""'
    assert ("COPY", "cluster/user-packages ./user-packages") in instructions
    assert (CLUSTER / "user-packages" / "README.md").is_file()
    run = next(arg for kind, arg in instructions if kind == "RUN" and "user-packages" in arg)
    # run the step with a pip that records its arguments, in a folder holding two packages
    work, log = tmp_path / "work", tmp_path / "pip.log"
    for entry in ("README.md", "mypkg", "other-1.0-py3-none-any.whl"):
        (work / "user-packages" / entry).parent.mkdir(parents=True, exist_ok=True)
        (work / "user-packages" / entry).write_text("") if "." in entry else (
            work / "user-packages" / entry).mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _record_args(bin_dir, "pip", log)
    _stub(bin_dir, "python", "exit 0\n")
    script = f'RAY_VERSION={args["RAY_VERSION"]}; EXTRA_PIP="einops"; {run}'
    result = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=30)
    assert result.returncode == 0, result.stderr
    pin = f"ray[default]=={args['RAY_VERSION']}"
    assert log.read_text().splitlines() == [
        f"pip install ./user-packages/mypkg {pin}",
        f"pip install ./user-packages/other-1.0-py3-none-any.whl {pin}",
        f"pip install einops {pin}",
    ]


# -- SLURM -----------------------------------------------------------------------------------


def test_slurm_scripts_parse():
    for name in ("ray.sbatch", "array.sbatch"):
        script = CLUSTER / "slurm" / name
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
        lines = script.read_text().splitlines()
        directives = [line for line in lines if line.startswith("#SBATCH")]
        assert directives and all(re.fullmatch(r"#SBATCH --[a-z-]+=\S+", d) for d in directives)


def test_array_task_trains_its_shard_without_ray(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _record_args(bin_dir, "datamodels", log)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_MIN": "2",
        "SLURM_ARRAY_TASK_COUNT": "8",
    }
    script = str(CLUSTER / "slurm" / "array.sbatch")
    result = subprocess.run(
        ["bash", script, "c.yaml", "s3://b/run", "--set", "train.epochs=2"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "datamodels train c.yaml --out s3://b/run --shard 3/8 --set train.epochs=2"
    ]
    relative = subprocess.run(
        ["bash", script, "c.yaml", "runs/x"], env=env, capture_output=True, text=True, timeout=30
    )
    assert relative.returncode == 2 and "absolute path" in relative.stderr


def _ray_sbatch(tmp_path: Path, addresses: str, gpus: str = "4") -> tuple[list[str], str]:
    """Run ray.sbatch over three stub nodes whose head answers ``hostname --ip-address`` with
    ``addresses``; returns (the calls made, in order, stderr)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(parents=True)
    _stub(bin_dir, "scontrol", "printf 'node1\\nnode2\\nnode3\\n'\n")
    # srun: note its step options, run the command "on" the node named by -w
    _stub(
        bin_dir,
        "srun",
        f"""node= opts=
while [ $# -gt 0 ]; do
  case "$1" in -w) node=$2; shift 2 ;; --overlap|--nodes=*|--ntasks=*) shift ;;
  -*) opts="$opts $1"; shift ;; *) break ;; esac
done
if [ "$1" = hostname ]; then echo "{addresses}"; exit 0; fi
echo "on $node [${{opts# }}]: $*" >> {log}
""",
    )
    _record_args(bin_dir, "ray", log)
    _record_args(bin_dir, "datamodels", log)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_JOB_NODELIST": "node[1-3]",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_ON_NODE": gpus,
    }
    result = subprocess.run(
        ["bash", str(CLUSTER / "slurm" / "ray.sbatch"), "c.yaml", "/shared/run"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10  # the srun's run in the background: let them write
    while log.read_text().count("ray start") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return log.read_text().splitlines(), result.stderr


def test_ray_sbatch_steps_ask_for_their_cpus_and_gpus_and_bracket_ipv6(tmp_path):
    calls, _ = _ray_sbatch(tmp_path / "v6", "fd00::1 10.0.0.1")
    starts = [call for call in calls if "ray start" in call]
    assert len(starts) == 3
    assert all(call.split(": ray")[0].endswith("[--cpus-per-task=16 --gpus-per-task=4]")
               for call in starts)
    head = next(call for call in starts if "--head" in call)
    assert "--node-ip-address=fd00::1" in head
    assert sum("--address=[fd00::1]:6379" in call for call in starts) == 2
    drivers = [call for call in calls if call.startswith("datamodels")]
    assert drivers == ["datamodels run c.yaml --out /shared/run --address [fd00::1]:6379"]
    cpu_only, _ = _ray_sbatch(tmp_path / "cpu", "10.0.0.1", gpus="0")
    assert all("gpus-per-task" not in call for call in cpu_only)
    assert all("[--cpus-per-task=16]" in call for call in cpu_only if "ray start" in call)


def test_sbatch_examples_request_what_their_config_asks():
    """The example in each script's header: its config's GPU tasks get GPUs, and one task's
    CPUs fit in what a SLURM task is given."""
    for name in ("ray.sbatch", "array.sbatch"):
        text = (CLUSTER / "slurm" / name).read_text()
        example = re.search(r"# e\.g\. sbatch .*? (configs/\S+)", text).group(1)
        resources = yaml.safe_load((CLUSTER.parent / example).read_text())["resources"]
        directives = dict(re.findall(r"#SBATCH --([a-z-]+)=(\S+)", text))
        gpus = float(directives.get("gpus-per-node") or directives.get("gpus") or 0)
        assert resources["device"] != "cuda" or gpus >= 1, name
        assert gpus >= resources.get("num_gpus", 0), name
        assert int(directives["cpus-per-task"]) >= resources["num_cpus"], name


def test_ray_sbatch_starts_a_head_and_workers_then_the_driver(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", "printf 'node1\\nnode2\\nnode3\\n'\n")
    # srun: drop its own options, run the command "on" the node named by -w
    _stub(
        bin_dir,
        "srun",
        f"""node=
while [ $# -gt 0 ]; do
  case "$1" in -w) node=$2; shift 2 ;; -*) shift ;; *) break ;; esac
done
if [ "$1" = hostname ]; then echo 10.0.0.1; exit 0; fi
echo "on $node: $*" >> {log}
""",
    )
    _record_args(bin_dir, "ray", log)
    _record_args(bin_dir, "datamodels", log)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_JOB_NODELIST": "node[1-3]",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_ON_NODE": "4",
    }
    result = subprocess.run(
        ["bash", str(CLUSTER / "slurm" / "ray.sbatch"), "c.yaml", "/shared/run", "--set", "a=1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10  # the srun's run in the background: let them write
    while log.read_text().count("ray start") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    calls = log.read_text().splitlines()
    head = next(call for call in calls if call.startswith("on node1: ray start --head"))
    assert "--dashboard-host=127.0.0.1" in head and "--port=6379" in head
    assert "--num-cpus=16" in head and "--num-gpus=4" in head
    joined = sorted(call.split(":")[0] for call in calls if "--address=10.0.0.1:6379" in call)
    assert joined == ["on node2", "on node3"]
    drivers = [call for call in calls if call.startswith("datamodels")]  # srun's run in background
    assert drivers == ["datamodels run c.yaml --out /shared/run --address 10.0.0.1:6379 --set a=1"]


def test_submit_sh_calls_the_cli(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _record_args(bin_dir, "datamodels", log)
    result = subprocess.run(
        ["bash", str(CLUSTER / "submit.sh"), "http://127.0.0.1:8265", "c.yaml", "s3://b/r",
         "--no-wait"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "datamodels submit c.yaml --address http://127.0.0.1:8265 --out s3://b/r --no-wait"
    ]
