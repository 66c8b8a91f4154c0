"""The KubeRay manifests (cluster/kuberay/) are valid for the KubeRay release they name: its
RayCluster and RayJob schemas (the subset in schemas/kuberay-v1.7.0.yaml, and the full CRDs
when ``KUBERAY_CRD_DIR`` names a folder holding them), and the rules the operator checks
beyond the schema (a RayJob on an existing cluster takes no backoffLimit; token
authentication needs Ray >= 2.52)."""

from __future__ import annotations

import copy
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from packaging.version import Version

CLUSTER = Path(__file__).parents[2] / "cluster"
SCHEMAS = yaml.safe_load((Path(__file__).parent / "schemas" / "kuberay-v1.7.0.yaml").read_text())
PINNED = "v1.7.0"
TOKEN_AUTH_MIN_RAY = Version("2.52.0")


def _manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


def _errors(kind: str, manifest: dict) -> list[str]:
    schema = {**SCHEMAS[kind], "$defs": SCHEMAS["$defs"]}
    validator = Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(manifest)]


def operator_rules(job: dict, cluster: dict) -> list[str]:
    """What the KubeRay operator refuses beyond the schema, for the fields these manifests
    use: a RayJob needs a cluster spec or a selector naming a cluster; a selector excludes
    backoffLimit > 0 (and SidecarMode); token authentication needs a rayVersion >= 2.52."""
    problems = []
    spec = job["spec"]
    selector = spec.get("clusterSelector") or {}
    if not selector and "rayClusterSpec" not in spec:
        problems.append("one of rayClusterSpec or clusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            problems.append("clusterSelector must name the cluster (ray.io/cluster)")
        if (spec.get("backoffLimit") or 0) > 0:
            problems.append("backoffLimit is incompatible with clusterSelector")
        if spec.get("submissionMode") == "SidecarMode":
            problems.append("clusterSelector is not supported in SidecarMode")
    for cluster_spec in (cluster["spec"], spec.get("rayClusterSpec") or {}):
        mode = (cluster_spec.get("authOptions") or {}).get("mode")
        if mode == "token":
            version = cluster_spec.get("rayVersion")
            if not version or Version(version) < TOKEN_AUTH_MIN_RAY:
                problems.append(f"authOptions.mode token needs rayVersion >= 2.52, got {version}")
    return problems


def test_manifests_name_the_pinned_kuberay_release_and_the_token_auth_minimum():
    for name in ("raycluster.yaml", "rayjob.yaml"):
        header = (CLUSTER / "kuberay" / name).read_text().split("apiVersion:")[0]
        assert f"KubeRay {PINNED}" in header
    header = (CLUSTER / "kuberay" / "raycluster.yaml").read_text().split("apiVersion:")[0]
    assert "Ray >= 2.52" in header and "KubeRay >= 1.5.1" in header


def test_raycluster_and_rayjob_match_the_release_schema():
    assert _errors("RayCluster", _manifest("raycluster.yaml")) == []
    assert _errors("RayJob", _manifest("rayjob.yaml")) == []


def test_the_schema_refuses_what_kuberay_would():
    cluster = _manifest("raycluster.yaml")
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["authOption"] = wrong["spec"].pop("authOptions")  # misspelt
    assert any("'authOption' was unexpected" in e for e in _errors("RayCluster", wrong))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["authOptions"]["mode"] = "tokens"
    assert any("'tokens' is not one of" in e for e in _errors("RayCluster", wrong))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["workerGroupSpecs"][0]["replicas"] = "2"
    assert any("'2' is not of type 'integer'" in e for e in _errors("RayCluster", wrong))


def test_operator_rules_hold_and_catch_backoff_with_a_selector():
    cluster, job = _manifest("raycluster.yaml"), _manifest("rayjob.yaml")
    assert operator_rules(job, cluster) == []
    retried = copy.deepcopy(job)
    retried["spec"]["backoffLimit"] = 2
    assert operator_rules(retried, cluster) == [
        "backoffLimit is incompatible with clusterSelector"
    ]
    old_ray = copy.deepcopy(cluster)
    old_ray["spec"]["rayVersion"] = "2.49.0"
    assert operator_rules(job, old_ray) == [
        "authOptions.mode token needs rayVersion >= 2.52, got 2.49.0"
    ]


def test_token_auth_is_the_operators_not_hand_written_env():
    cluster, job = _manifest("raycluster.yaml"), _manifest("rayjob.yaml")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    pods = [cluster["spec"]["headGroupSpec"]["template"], job["spec"]["submitterPodTemplate"]]
    pods += [group["template"] for group in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            names = {item["name"] for item in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, container["name"]


def test_the_jobs_data_is_reachable_where_its_driver_runs():
    """The entrypoint's dataset.path lies under a volume the head (where the job's driver
    runs and the data is prepared) mounts; the run goes to an object store."""
    cluster, job = _manifest("raycluster.yaml"), _manifest("rayjob.yaml")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["datamodels", "run"] and (CLUSTER.parent / words[2]).is_file()
    assert words[words.index("--out") + 1].startswith("s3://")
    sets = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--set")
    path = sets["dataset.path"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for c in head["containers"]
              for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in head["volumes"]}
    holding = [name for name, mount in mounts.items() if path.startswith(mount.rstrip("/") + "/")]
    assert holding and "persistentVolumeClaim" in volumes[holding[0]]


def _strict(node):
    """The CRD schema as `kubectl apply` with strict field validation reads it: an object
    with ``properties`` and no other rule for unknown keys refuses them."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@pytest.mark.skipif(not os.environ.get("KUBERAY_CRD_DIR"),
                    reason="KUBERAY_CRD_DIR names no folder of the release's CRDs")
def test_manifests_match_the_releases_full_crds():
    folder = Path(os.environ["KUBERAY_CRD_DIR"])
    for manifest, crd in (("raycluster.yaml", "ray.io_rayclusters.yaml"),
                          ("rayjob.yaml", "ray.io_rayjobs.yaml")):
        definition = yaml.safe_load((folder / crd).read_text())
        (version,) = [v for v in definition["spec"]["versions"] if v["name"] == "v1"]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"type": "object"}
        errors = list(Draft202012Validator(schema).iter_errors(_manifest(manifest)))
        assert errors == [], [re.sub(r"\s+", " ", e.message)[:200] for e in errors]
