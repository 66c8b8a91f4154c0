"""The stated memory bound of the metagradient on the digits MLP (configs/digits.yaml's model
and recipe, the full training split): the replay keeps every iterate, steps × parameters
float64 = 230 × 4,810 × 8 B ≈ 8.9 MB, and 100 targets through every step stay under 1.5 GB
of peak resident memory for the whole process (torch itself included). Under a 2 MB bound
the checkpointed replay keeps its checkpoints and one recomputed segment within it and gives
the same scores. Measured in a child process so the bound is this computation's, not the
test session's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys


def peak_rss_bytes():
    # this program's own peak: VmHWM belongs to the address space exec made; ru_maxrss would
    # also count the parent's (the test session's) resident set from before exec
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

import numpy as np, torch
from sklearn.datasets import load_digits
sys.path.insert(0, sys.argv[1])
from datamodels.config import load_config
from datamodels.gradients.metagradient import metagradient_scores, replay_mlp
torch.set_num_threads(1)
config = load_config(sys.argv[2])
digits = load_digits()
x = torch.from_numpy(digits.data / 16.0)
x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
y = torch.from_numpy(digits.target).long()
n = int(0.8 * len(y))
run = replay_mlp(x[:n], y[:n], np.ones(n, bool), 0, config.model, config.train, 10)
scores = metagradient_scores(run, x[:n], y[:n], x[n:n + 100], y[n:n + 100])
bounded = replay_mlp(
    x[:n], y[:n], np.ones(n, bool), 0, config.model, config.train, 10, memory_bytes=2e6
)
saved = bounded.saved.numel() * bounded.saved.element_size()
segment = bounded.segment(0, bounded.every)
few = (x[:n], y[:n], x[n:n + 10], y[n:n + 10])
print(json.dumps({
    "bounded_kept_bytes": saved + segment.numel() * segment.element_size(),
    "bounded_stored_bytes": bounded.stored_bytes, "bounded_every": bounded.every,
    "bounded_equal": bool(torch.equal(
        metagradient_scores(bounded, *few), metagradient_scores(run, *few)
    )),
    "iterates_bytes": run.iterates.numel() * run.iterates.element_size(),
    "steps": int(run.iterates.shape[0]), "params": int(run.iterates.shape[1]),
    "scores": list(scores.shape), "finite": bool(torch.isfinite(scores).all()),
    "peak_rss_bytes": peak_rss_bytes(),
}))
"""


def test_metagradient_memory_on_the_digits_mlp():
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), str(repo / "configs" / "digits.yaml")],
        capture_output=True, text=True, timeout=600, check=True,
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["scores"] == [100, int(0.8 * 1797)] and facts["finite"]
    # every iterate kept: steps × parameters float64, about 9 MB for this model and recipe
    assert facts["iterates_bytes"] == facts["steps"] * facts["params"] * 8 <= 10 * 2**20
    assert facts["peak_rss_bytes"] < 1.5 * 2**30, facts
    # a 2 MB bound: (θ, v) every k steps plus one recomputed segment, the same scores
    assert facts["bounded_every"] > 1 and facts["bounded_equal"]
    assert facts["bounded_kept_bytes"] == facts["bounded_stored_bytes"] <= 2e6
