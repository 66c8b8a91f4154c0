"""Models per minute through the real Ray driver and run store, batched vs one-at-a-time.

Both trainers run in the same process, on the same local Ray cluster, one after the other,
on the digits default (configs/digits.yaml: MLP, alpha = 0.5, its default epochs); each
writes its own run directory. Printed: models, seconds and models/minute of each, the
ratio, and the end-to-end figure including Ray start-up and `prepare`.

    python benchmarks/train_throughput.py                 # 2,000 batched vs 100 one-at-a-time
    python benchmarks/train_throughput.py --batched 4000 --sequential 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from datamodels.api import prepare, train
from datamodels.config import load_config
from datamodels.orchestrate.executor import init_ray

CONFIG = Path(__file__).parents[1] / "configs" / "digits.yaml"


def timed_train(trainer: str, count: int, root: Path, extra: list[str]) -> tuple[float, int]:
    overrides = [
        f"plans.train.count={count}",
        "plans.eval.count=1",
        f"resources.trainer={trainer}",
        *extra,
    ]
    config = load_config(CONFIG, overrides)
    out = str(root / trainer)
    prepare(config, out)  # not timed: the beton is written once per run
    start = time.perf_counter()
    summary = train(config, out, show_progress=False)
    return time.perf_counter() - start, summary.trained


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batched", type=int, default=2000, help="models for the batched trainer")
    parser.add_argument(
        "--sequential", type=int, default=100, help="models for the one-at-a-time trainer"
    )
    parser.add_argument("--set", action="append", default=[], help="extra config override")
    args = parser.parse_args()

    wall_start = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - wall_start
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {}
        for trainer, count in (("sequential", args.sequential), ("batched", args.batched)):
            seconds, trained = timed_train(trainer, count, root, args.set)
            results[trainer] = (seconds, trained, 60 * trained / seconds)
    total = time.perf_counter() - wall_start

    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    print(
        f"digits MLP, alpha=0.5, config {CONFIG.name} defaults; "
        f"local Ray with {cpus:g} CPUs (start-up {ray_start:.1f}s)"
    )
    print(f"{'trainer':<12}{'models':>8}{'seconds':>10}{'models/min':>12}")
    for trainer, (seconds, trained, rate) in results.items():
        print(f"{trainer:<12}{trained:>8}{seconds:>10.1f}{rate:>12,.0f}")
    ratio = results["batched"][2] / results["sequential"][2]
    print(f"batched / one-at-a-time: {ratio:.1f}x")
    seconds, trained, _ = results["batched"]
    end_to_end = 60 * trained / (seconds + ray_start)
    print(
        f"batched end to end incl. Ray start-up: {end_to_end:,.0f} models/min; "
        f"whole benchmark {total:.0f}s"
    )


if __name__ == "__main__":
    main()
