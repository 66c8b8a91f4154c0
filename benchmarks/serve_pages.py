"""Latency of every `datamodels serve` page on a large run, against the same pages of a small
run measured in the same invocation.

The large run: 10,000 test targets × 50,000 training points (the ``arrays`` dataset of
8×8-pixel random inputs, drawn as images), models from the ``null`` trainer (a fitting plan
and an evaluation plan), and two score tables of that size (2 GB each as float32): the
``datamodels`` one is the null trainer's planted datamodel (8 nonzero weights a target, with
its ``datamodels/weights.parquet`` and ``targets.parquet``), the ``downsampling`` one dense
(the planted weights plus noise), with self scores. Score tables are written with the store's
writers (``Run.write_scores``): fitting 10,000 LASSO paths is not what is measured here. Then
``evaluate`` and the browse index (``datamodels serve --index``). The small run is built the
same way at 500 × 1,000. Both are kept under ``--cache`` and reused.

Each run is served by ``datamodels serve`` in a child process (a warm server: every page is
requested once before timing); every page is then requested ``--repeat`` times, a different
example each time for the example pages, and p50 / max latency are printed per page with the
ratio of the large run's p50 to the small run's.

    python benchmarks/serve_pages.py                       # builds ~6 GB under the cache once
    python benchmarks/serve_pages.py --cache /tmp/serve-bench --repeat 7
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LARGE = (50_000, 10_000)  # (n_train, n_test)
SMALL = (1_000, 500)


def build(root: Path, n_train: int, n_test: int) -> str:
    """The run under ``root`` (built once; a finished one is reused)."""
    import pandas as pd

    import datamodels as dm
    from datamodels.api.serve import serve_index
    from datamodels.orchestrate.executor import SerialExecutor
    from datamodels.store import TARGETS_PATH, TARGETS_SCHEMA, WEIGHTS_PATH, WEIGHTS_SCHEMA, Run
    from datamodels.trainers.null import planted_datamodel

    out = root / "run"
    if (root / "built").is_file():
        return str(out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = n_train + n_test
    npz = root / "data.npz"
    np.savez(
        npz,
        X=rng.random((n, 64), dtype=np.float32),
        y=rng.integers(0, 10, n).astype(np.int64),
        split=np.array(["train"] * n_train + ["test"] * n_test),
    )
    config = dm.load_config(
        {
            "name": f"serve_bench_{n_train}",
            "dataset": {"name": "arrays", "path": str(npz), "eval_train": False},
            "model": {"arch": "null"},
            "plans": [
                {"name": "train", "alpha": 0.5, "count": 100},
                {"name": "eval", "alpha": 0.5, "count": 20},
            ],
            "resources": {"models_per_task": 60},
        }
    )
    t = time.perf_counter()
    dm.train(config, str(out), executor=SerialExecutor(), show_progress=False)
    print(f"  trained 120 null models: {time.perf_counter() - t:.0f} s", flush=True)
    run = Run(str(out))
    assert run.sizes() == (n_train, n_test), run.sizes()
    positions, weights, bias = planted_datamodel(config.seed, n_train, n_test)
    targets = np.arange(n_test, dtype=np.int64)
    t = time.perf_counter()
    dense = np.zeros((n_test, n_train), np.float32)
    np.add.at(dense, (np.repeat(targets, positions.shape[1]), positions.ravel()), weights.ravel())
    sparse = pd.DataFrame(
        {"target": np.repeat(targets, positions.shape[1]), "train_position": positions.ravel(),
         "weight": weights.ravel()}
    ).groupby(["target", "train_position"], as_index=False)["weight"].sum()
    run.write_table(WEIGHTS_PATH, sparse, WEIGHTS_SCHEMA)
    nnz = sparse.groupby("target").size().reindex(targets, fill_value=0).to_numpy()
    run.write_table(
        TARGETS_PATH,
        pd.DataFrame({"target": targets, "bias": bias, "lam": np.float32(0.01),
                      "val_mse": np.float32(0), "val_spearman": np.float32(0), "nnz": nnz}),
        TARGETS_SCHEMA,
    )
    run.write_scores("datamodels", targets, dense)
    for start in range(0, n_test, 1000):  # the noisy copy, in place, a block at a time
        block = dense[start : start + 1000]
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(0.05)
    run.write_scores("downsampling", targets, dense)
    del dense
    run.write_self_scores("downsampling", rng.random(n_train, dtype=np.float32))
    print(f"  wrote two {n_test} x {n_train} score tables: {time.perf_counter() - t:.0f} s",
          flush=True)
    t = time.perf_counter()
    dm.evaluate(str(out))
    print(f"  evaluate: {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    serve_index(str(out), show_progress=False)
    print(f"  browse index (datamodels serve --index): {time.perf_counter() - t:.0f} s",
          flush=True)
    (root / "built").write_text("ok\n")
    return str(out)


def serve(run: str) -> tuple[subprocess.Popen, str]:
    """``datamodels serve RUN --port 0`` in a child process; (process, its URL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "datamodels.cli", "serve", run, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    line = process.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
    if not match:
        process.kill()
        raise SystemExit(f"the server did not start: {line}")
    return process, match.group(1)


def pages(n_train: int, n_test: int, rep: int) -> dict[str, str]:
    """Page name -> path, a different example at each repetition."""
    target, position = (7919 * (rep + 1)) % n_test, (104729 * (rep + 1)) % n_train
    return {
        "grid": "tests",
        "grid sorted by LDS": "tests?sort=lds&order=desc",
        "grid LDS in [0.2, 0.8]": "tests?lds_min=0.2&lds_max=0.8",
        "grid page 20": "tests?page=20" if n_test > 4000 else "tests?page=1",
        "one test example": f"test/{target}",
        "one training example": f"train/{position}",
        "an image": f"image/test/{target}.png",
        "mislabel": "mislabel",
        "leakage": "leakage",
        "methods": "methods",
    }


def fetch(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        response.read()
        assert response.status == 200, (url, response.status)
    return time.perf_counter() - start


def measure(run: str, sizes: tuple[int, int], repeat: int) -> dict[str, list[float]]:
    process, url = serve(run)
    try:
        t = time.perf_counter()
        for path in pages(*sizes, -1).values():  # warm: the caches, the index, the inputs
            fetch(url + path)
        print(f"  first pass over every page (warm-up): {time.perf_counter() - t:.1f} s")
        times: dict[str, list[float]] = {}
        for rep in range(repeat):
            for name, path in pages(*sizes, rep).items():
                times.setdefault(name, []).append(fetch(url + path))
        return times
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp"))
                                                / "datamodels-serve-bench"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cache = Path(args.cache)
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    runs = {}
    for label, (n_train, n_test) in (("small", SMALL), ("large", LARGE)):
        print(f"{label} run ({n_test} targets x {n_train} training points):", flush=True)
        runs[label] = (build(cache / label, n_train, n_test), (n_train, n_test))
    results = {label: measure(run, sizes, args.repeat) for label, (run, sizes) in runs.items()}
    print(f"\nlatency per page, {args.repeat} requests each, warm server (ms)")
    print(f"{'page':26} {'small p50':>10} {'large p50':>10} {'large max':>10} {'ratio':>7}")
    for name in results["large"]:
        small, large = np.array(results["small"][name]), np.array(results["large"][name])
        ratio = np.median(large) / np.median(small)
        print(f"{name:26} {1e3 * np.median(small):10.1f} {1e3 * np.median(large):10.1f} "
              f"{1e3 * large.max():10.1f} {ratio:7.2f}")
    worst = max(max(v) for v in results["large"].values())
    print(f"\nslowest large-run request: {1e3 * worst:.0f} ms (goal: under 1000 ms)")


if __name__ == "__main__":
    main()
