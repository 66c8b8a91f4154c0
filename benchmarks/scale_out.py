"""Scale-out of the driver and the store with the ``null`` trainer: planning, scheduling and
writing up to 10^6 models on a simulated multi-node cluster, then the readers over the result.

The target shape is 1,000,000 models x 50,000 training points x 10,000 eval margins. On one
machine that is ~46 GB of shards (6.25 KB of mask bits + 40 KB of margins a model) and hours
of writing, so the run is split in two honest parts, each printed with what was scaled:

* **driver** (``--models``, default 1,000,000, at ``--driver-shape``, default 64 x 16): the
  full model count, a tiny row. What it measures depends on the number of models, not on
  the row: driver CPU per model, driver peak memory (at two model counts, to show it flat),
  shards written, and ``status`` / ``verify`` / the DuckDB ``mask[i]`` / ``margins[j]`` query
  over the result, before and after ``datamodels compact``.
* **shape** (``--shape-models``, default 4,000, at 50,000 x 10,000): the full row, as many
  models as fit the time and disk here: worker throughput, bytes per model, and the same
  readers; the 10^6-model disk size is extrapolated from it (and printed as such).

The cluster is ``ray.cluster_utils.Cluster``: a head with no CPUs and ``--nodes`` worker
nodes of ``--cpus-per-node`` CPUs. The driver runs in a child process of its own, so its
CPU time (``getrusage``) and peak RSS (``VmHWM``) are the driver's alone (Ray's driver
threads included); its RSS before ``train`` (imports done, cluster joined) is printed beside.

    python benchmarks/scale_out.py                          # the full table, ~10 min on 2 cores
    python benchmarks/scale_out.py --models 100000 --shape-models 1000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_dataset(path: Path, n_train: int, n_eval: int) -> None:
    """An .npz of n_train train rows and n_eval test rows, one feature each (never decoded)."""
    n = n_train + n_eval
    np.savez(
        path,
        X=np.zeros((n, 1), np.float32),
        y=(np.arange(n) % 2).astype(np.int64),
        split=np.array(["train"] * n_train + ["test"] * n_eval),
    )


def make_config(npz: Path, models: int, models_per_task: int) -> dict:
    return {
        "name": "scale_out",
        "dataset": {"name": "arrays", "path": str(npz), "eval_train": False},
        "model": {"arch": "null"},
        "plans": [{"name": "train", "alpha": 0.5, "count": models}],
        "resources": {"models_per_task": models_per_task, "num_cpus": 1},
    }


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (per address space; ``ru_maxrss`` is not, on Linux
    it keeps the parent's peak across fork + exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def drive(config_json: str, out: str, address: str) -> None:
    """Child process: join the cluster, train, print the driver's own figures as JSON."""
    import psutil
    import ray

    import datamodels.stages.train  # noqa: F401 - its imports (torch) belong to the baseline
    from datamodels import api
    from datamodels.config import config_from_dict

    config = config_from_dict(json.loads(config_json))
    ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    rss_before = psutil.Process().memory_info().rss
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    summary = api.train(config, out, show_progress=False)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "trained": summary.trained,
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
                "rss_before_mb": rss_before / 2**20,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def cli(*args: str) -> float:
    """Seconds of ``datamodels ARGS`` in a fresh process (start-up included)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "datamodels.cli", *args],
        check=True, stdout=subprocess.DEVNULL, cwd=REPO,
    )
    return time.perf_counter() - start


def duckdb_query(out: str, n_train: int, n_eval: int) -> float:
    import duckdb

    i, j = min(43, n_train), min(18, n_eval)
    sql = (
        f"SELECT mask[{i}] AS included, avg(margins[{j}]) AS mean_margin, count(*) AS models "
        f"FROM '{out}/models/*.parquet' GROUP BY 1 ORDER BY 1"
    )
    start = time.perf_counter()
    rows = duckdb.connect().execute(sql).fetchall()
    seconds = time.perf_counter() - start
    print(f"    duckdb: {sql}\n    -> {rows}")
    return seconds


def readers(out: str, n_train: int, n_eval: int, verify_too: bool = True) -> dict:
    """Times of status (in process and CLI), verify and the DuckDB query over ``out``."""
    from datamodels.stages.prepare import load_run_config
    from datamodels.stages.status import plan_status
    from datamodels.store import Run, verify

    run = Run(out)
    frame, status_s = timed(plan_status, load_run_config(run), run)
    result = {
        "shards": len(run.shard_files()),
        "status_s": status_s,
        "status_cli_s": cli("status", out),
        "done": int(frame["done"].sum()),
        "query_s": duckdb_query(out, n_train, n_eval),
    }
    if verify_too:
        problems, result["verify_s"] = timed(verify, Run(out))
        result["verify_problems"] = len(problems)
    return result


def one_run(args, root: Path, address: str, models: int, n_train: int, n_eval: int,
            models_per_task: int, compact: bool) -> dict:
    from datamodels import api
    from datamodels.config import config_from_dict

    npz = root / f"data-{n_train}x{n_eval}.npz"
    if not npz.exists():
        write_dataset(npz, n_train, n_eval)
    config = make_config(npz, models, models_per_task)
    out = str(root / f"run-{models}-{n_train}x{n_eval}")
    _, prepare_s = timed(api.prepare, config_from_dict(config), out)
    child = subprocess.run(
        [sys.executable, __file__, "--drive", json.dumps(config), out, address],
        check=True, capture_output=True, text=True, cwd=REPO,
    )
    driver = json.loads(child.stdout.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in Path(out, "models").glob("*.parquet"))
    row = {"models": models, "n_train": n_train, "n_eval": n_eval, "prepare_s": prepare_s,
           **driver, "bytes": size}
    print(f"  trained {driver['trained']:,} models in {driver['wall_s']:.1f}s", flush=True)
    row["before"] = readers(out, n_train, n_eval)
    if compact:
        summary, row["compact_s"] = timed(api.compact, out)
        print(f"  compact: {summary.shards_before} -> {summary.shards_after} shards", flush=True)
        row["after"] = readers(out, n_train, n_eval)
    if not args.keep:
        shutil.rmtree(out)
    return row


def print_table(rows: list[dict]) -> None:
    print("\n| models | shape (train x eval) | driver CPU / model | driver RSS before -> peak |"
          " models/s | shards | status (fn / CLI) | verify | DuckDB query | compact |")
    print("|---:|---|---:|---|---:|---|---|---|---|---|")
    for r in rows:
        b, a = r["before"], r.get("after")
        shards = f"{b['shards']:,}" + (f" -> {a['shards']:,}" if a else "")
        status = f"{b['status_s']:.2f} / {b['status_cli_s']:.1f} s" + (
            f" -> {a['status_s']:.2f} / {a['status_cli_s']:.1f} s" if a else "")
        verify = f"{b['verify_s']:.1f} s" + (f" -> {a['verify_s']:.1f} s" if a else "")
        query = f"{b['query_s']:.2f} s" + (f" -> {a['query_s']:.2f} s" if a else "")
        print(
            f"| {r['models']:,} | {r['n_train']:,} x {r['n_eval']:,} "
            f"| {1000 * r['cpu_s'] / r['models']:.3f} ms "
            f"| {r['rss_before_mb']:.0f} -> {r['peak_rss_mb']:.0f} MB "
            f"| {r['trained'] / r['wall_s']:,.0f} | {shards} | {status} | {verify} | {query} "
            f"| {r.get('compact_s', float('nan')):.1f} s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="100000,1000000",
                        help="model counts of the driver part, comma-separated")
    parser.add_argument("--driver-shape", default="64x16", help="train x eval of the driver part")
    parser.add_argument("--shape-models", type=int, default=4000)
    parser.add_argument("--shape", default="50000x10000", help="train x eval of the shape part")
    parser.add_argument("--models-per-task", type=int, default=1000)
    parser.add_argument("--shape-models-per-task", type=int, default=250)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--root", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument("--drive", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(*args.drive)
        return

    import ray
    from ray.cluster_utils import Cluster

    root = Path(args.root or tempfile.mkdtemp(prefix="scale-out-"))
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    n_train, n_eval = map(int, args.shape.split("x"))
    per_model = n_train / 8 + 4 * n_eval + 64  # mask bits + float32 margins (incompressible)
    fits = int(0.4 * free / per_model)
    shape_models = min(args.shape_models, fits)
    print(f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM, "  # noqa: E501
          f"{free / 2**30:.0f} GiB free disk at {root}")
    print(f"target: 1,000,000 x {n_train:,} x {n_eval:,} = {1e6 * per_model / 2**30:,.0f} GiB "
          "of shards; scaled to:")
    d_train, d_eval = map(int, args.driver_shape.split("x"))
    counts = [int(m) for m in args.models.split(",")]
    print(f"  driver part: {', '.join(f'{m:,}' for m in counts)} models x {d_train} x {d_eval}")
    print(f"  shape part:  {shape_models:,} models x {n_train:,} x {n_eval:,}"
          + (f" (disk allows {fits:,})" if fits < args.shape_models else ""))

    print(f"cluster: head (0 CPUs) + {args.nodes} worker nodes x {args.cpus_per_node} CPU, "
          "a fresh one per run (a driver's figures never include an earlier run's)", flush=True)
    runs = [(m, d_train, d_eval, args.models_per_task) for m in counts]
    if shape_models:
        runs.append((shape_models, n_train, n_eval, args.shape_models_per_task))
    rows = []
    for models, train_size, eval_size, per_task in runs:
        print(f"run: {models:,} models x {train_size:,} x {eval_size:,}", flush=True)
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            for _ in range(args.nodes):
                cluster.add_node(num_cpus=args.cpus_per_node)
            cluster.wait_for_nodes()
            rows.append(one_run(args, root, cluster.address, models, train_size, eval_size,
                                per_task, compact=True))
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    print_table(rows)
    shape = rows[-1]
    if shape_models and shape["n_train"] == n_train:
        per = shape["bytes"] / shape["models"]
        print(f"\nshape part: {per / 1024:.1f} KiB a model on disk -> 10^6 models = "
              f"{1e6 * per / 2**30:,.0f} GiB (extrapolated, not run)")
    print("\n" + json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
