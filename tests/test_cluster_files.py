"""The cluster definitions parse, and do not expose the dashboard or talk plain HTTP."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

CLUSTER = Path(__file__).parents[1] / "cluster"


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
