"""Training throughput of the digits MLP: models per minute and GFLOP/s, optionally beside a
baseline commit measured in the same run.

On the digits default (configs/digits.yaml: MLP, alpha = 0.5, its default epochs):

* default: through the real Ray driver and run store, batched vs one-at-a-time, one after
  the other on the same local Ray cluster, each in its own run directory; also the
  end-to-end figure including Ray start-up.
* ``--trainer-only``: ``train_mlp_batched`` alone on the resident data (no Ray, no store),
  ``--procs`` processes of ``--threads`` threads each (default 2 x 1: how Ray runs it on
  2 cores), each training ``--models`` models in calls of ``resources.models_per_task``;
  the rate is all models over the span from the first start to the last finish (wall
  clock), and beside it the sum of each process's models over its own CPU time: the rate
  of an otherwise idle machine, less disturbed when others share the cores.

GFLOP/s counts the matmul FLOPs of the work asked for, honestly: for every real training
example of every step a model takes, 2·Σ in·out (forward) + 2·Σ in·out (weight gradients)
+ 2·Σ in·out over all layers but the first (input gradients), plus 2·Σ in·out per
evaluation example for the margins (digits: 20,224 per training example, 9,472 per
evaluation example, about 0.16 GFLOP a model). Padding rows, biases and elementwise work are
not counted.

``--baseline REV`` checks commit REV out in a git worktree (under the system temp folder,
kept for the next run) and measures its trainer the same way in child processes that
import ``datamodels`` from there, alternating new and baseline ``--repeats`` times; printed:
every run, the medians and their ratio.

    python benchmarks/train_throughput.py                 # 2,000 batched vs 100 one-at-a-time
    python benchmarks/train_throughput.py --batched 4000 --sequential 200
    python benchmarks/train_throughput.py --trainer-only --baseline af7adc9 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_NAME = "configs/digits.yaml"
RESULT_TAG = "RESULT "


def flops_per_model(masks, sizes: list[int], epochs: int, n_eval: int):
    """float[K]: matmul FLOPs of training each model on its subset (masks: bool[K, n_train])
    for ``epochs`` and computing its margins on ``n_eval`` examples (module docstring)."""
    products = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    forward = 2 * sum(products)
    per_example = 2 * forward + 2 * sum(products[1:])
    return masks.sum(1).astype(float) * epochs * per_example + n_eval * forward


def _digits_config(count: int, extra: list[str]):
    from datamodels.config import load_config

    overrides = [f"plans.train.count={count}", "plans.eval.count=1", *extra]
    return load_config(ROOT / CONFIG_NAME, overrides)


def _planned_masks(config, n_train: int):
    """bool[count, n_train]: the masks of the ``train`` plan, and the planned models."""
    import numpy as np

    from datamodels.plans import masks_for, plan_models

    count = next(p.count for p in config.plans if p.name == "train")
    planned = plan_models(config, n_train).take(np.arange(count))
    return masks_for(config, planned, n_train), planned


def _planned_flops(config, data) -> float:
    from datamodels.models.mlp import layer_sizes

    masks, _ = _planned_masks(config, data.n_train)  # FLOPs per trained model: their mean
    sizes = layer_sizes(data.in_dim, config.model.hidden, config.model.depth, data.num_classes)
    return float(flops_per_model(masks, sizes, config.train.epochs, len(data.eval_y)).mean())


def _run_data(config, out: Path):
    import importlib

    import datamodels
    from datamodels.api import prepare
    from datamodels.orchestrate.context import local_beton, num_classes
    from datamodels.store.run import Run

    trainers = "trainers" if (Path(datamodels.__file__).parent / "trainers").is_dir() else "train"
    load_train_data = importlib.import_module(f"datamodels.{trainers}.data").load_train_data

    prepare(config, str(out))
    run = Run(str(out))
    examples = run.examples()
    return load_train_data(local_beton(run, config.hash), examples, num_classes(examples))


# ---- one measurement, in this process (imports whichever ``datamodels`` is on the path) ----


def measure_ray(batched: int, sequential: int, extra: list[str]) -> dict:
    from datamodels.api import train
    from datamodels.orchestrate.executor import init_ray

    wall_start = time.perf_counter()
    init_ray("local")  # a fresh cluster of this machine's cores, never one already running
    ray_start = time.perf_counter() - wall_start
    import ray

    # the workers must import the same ``datamodels`` as this process
    where = ray.get(ray.remote(lambda: __import__("datamodels").__file__).remote())
    if where != __import__("datamodels").__file__:
        raise SystemExit(f"Ray workers import {where}, not {__import__('datamodels').__file__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for trainer, count in (("sequential", sequential), ("batched", batched)):
            if count <= 0:
                continue
            config = _digits_config(count, [f"resources.trainer={trainer}", *extra])
            out = Path(tmp) / trainer
            data = _run_data(config, out)  # not timed: the beton is written once per run
            start = time.perf_counter()
            summary = train(config, str(out), show_progress=False)
            seconds = time.perf_counter() - start
            flops = _planned_flops(config, data) * summary.trained
            results[trainer] = {"models": summary.trained, "seconds": seconds, "flops": flops}
    cpus = ray.cluster_resources().get("CPU", 0)
    return {"ray_start": ray_start, "cpus": cpus, "trainers": results,
            "total": time.perf_counter() - wall_start}


def measure_trainer_process(spec_path: str, rows: list[int], threads: int) -> dict:
    """Train models ``rows`` of the spec's masks with ``train_mlp_batched``, timed after a
    warm-up call."""
    import importlib

    import torch

    import datamodels

    # trees before the rename of train/ to trainers/ keep the trainer under its old name
    package = Path(datamodels.__file__).parent
    trainers = "trainers" if (package / "trainers").is_dir() else "train"
    train_mlp_batched = importlib.import_module(f"datamodels.{trainers}.batched").train_mlp_batched
    TrainData = importlib.import_module(f"datamodels.{trainers}.data").TrainData

    torch.set_num_threads(threads)
    spec = torch.load(spec_path, weights_only=False)
    data = TrainData(**spec["data"])
    config = _digits_config(len(spec["masks"]), spec["extra"])
    masks, seeds = spec["masks"][rows[0] : rows[1]], spec["seeds"][rows[0] : rows[1]]
    per_call = config.resources.models_per_task
    train_mlp_batched(data, masks[:8], seeds[:8], config.model, config.train)  # warm-up
    start_wall, start, start_cpu = time.time(), time.perf_counter(), time.process_time()
    for first in range(0, len(seeds), per_call):
        train_mlp_batched(
            data, masks[first : first + per_call], seeds[first : first + per_call],
            config.model, config.train,
        )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return {"models": len(seeds), "start": start_wall, "end": start_wall + seconds,
            "seconds": seconds, "cpu_seconds": cpu_seconds,
            "trainer": __import__("datamodels").__file__}


# ---- the parent: children per source tree, alternated ----


def _child(source: Path, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(source))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(source), *args]
    return subprocess.Popen(command, cwd=source, env=env, stdout=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"child failed ({process.returncode}): {process.args}")
    lines = [line for line in out.splitlines() if line.startswith(RESULT_TAG)]
    return json.loads(lines[-1][len(RESULT_TAG) :])


def trainer_round(source: Path, spec: str, models: int, procs: int, threads: int) -> dict:
    children = [
        _child(source, ["trainer", spec, str(i * models), str((i + 1) * models), str(threads)])
        for i in range(procs)
    ]
    parts = [_result(c) for c in children]
    span = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    # each process alone on its core: the rate an idle machine would give
    cpu_rate = sum(p["models"] / p["cpu_seconds"] for p in parts)
    return {"models": sum(p["models"] for p in parts), "seconds": span,
            "cpu_models_per_s": cpu_rate, "trainer": parts[0]["trainer"]}


def worktree(rev: str) -> Path:
    """A checkout of ``rev`` under the temp folder (created once, reused)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
        capture_output=True, text=True,
    ).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"datamodels-baseline-{commit}"
    if not (path / "datamodels").exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
            check=True,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batched", type=int, default=2000, help="models for the batched trainer")
    parser.add_argument(
        "--sequential", type=int, default=100, help="models for the one-at-a-time trainer"
    )
    parser.add_argument("--set", action="append", default=[], help="extra config override")
    parser.add_argument("--trainer-only", action="store_true", help="train_mlp_batched alone")
    parser.add_argument("--models", type=int, default=1000, help="--trainer-only: per process")
    parser.add_argument("--procs", type=int, default=2, help="--trainer-only: processes")
    parser.add_argument("--threads", type=int, default=1, help="--trainer-only: threads each")
    parser.add_argument("--baseline", help="commit to measure beside this tree (git worktree)")
    parser.add_argument(
        "--repeats", type=int, help="runs of each tree (default: 3 with --baseline, else 1)"
    )
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return

    sources = {"new": ROOT}
    if args.baseline:
        sources[f"baseline {args.baseline}"] = worktree(args.baseline)
    repeats = args.repeats or (3 if args.baseline else 1)
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    with tempfile.TemporaryDirectory() as tmp:
        if args.trainer_only:
            spec, flops_each = _trainer_spec(Path(tmp), args.models * args.procs, args.set)
        for repeat in range(repeats):
            for name, source in sources.items():
                if args.trainer_only:
                    result = trainer_round(source, spec, args.models, args.procs, args.threads)
                    result["flops"] = flops_each * result["models"]
                else:
                    child = _child(source, ["ray", str(args.batched), str(args.sequential),
                                            json.dumps(args.set)])
                    result = _result(child)
                runs[name].append(result)
                print(f"run {repeat + 1} {name}: {_summary(result)}", flush=True)
    if args.trainer_only:
        _report_trainer(runs, args)
    else:
        _report_ray(runs)


def _trainer_spec(tmp: Path, models: int, extra: list[str]) -> tuple[str, float]:
    """Data, masks and seeds for the children (so every tree trains the same models), and
    the mean FLOPs per model."""
    import dataclasses

    import torch

    from datamodels.models.mlp import layer_sizes

    config = _digits_config(models, extra)
    data = _run_data(config, tmp / "run")
    masks, planned = _planned_masks(config, data.n_train)
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    path = str(tmp / "spec.pt")
    torch.save({"data": fields, "masks": masks, "seeds": planned.seed, "extra": extra}, path)
    sizes = layer_sizes(data.in_dim, config.model.hidden, config.model.depth, data.num_classes)
    flops = flops_per_model(masks, sizes, config.train.epochs, len(data.eval_y))
    return path, float(flops.mean())


def child_main(argv: list[str]) -> None:
    source, kind, *rest = argv
    sys.path.insert(0, source)
    import datamodels

    if not datamodels.__file__.startswith(source):
        raise SystemExit(f"imported {datamodels.__file__}, not the tree at {source}")
    if kind == "ray":
        result = measure_ray(int(rest[0]), int(rest[1]), json.loads(rest[2]))
    else:
        spec, first, last, threads = rest
        result = measure_trainer_process(spec, [int(first), int(last)], int(threads))
    print(RESULT_TAG + json.dumps(result), flush=True)


def _rate(result: dict) -> tuple[float, float]:
    """(models/min, GFLOP/s) over wall-clock time."""
    return 60 * result["models"] / result["seconds"], result["flops"] / result["seconds"] / 1e9


def _cpu_rate(result: dict) -> tuple[float, float]:
    """(models/min, GFLOP/s) over each process's CPU time (``--trainer-only``)."""
    per_s = result["cpu_models_per_s"]
    return 60 * per_s, per_s * result["flops"] / result["models"] / 1e9


def _summary(result: dict) -> str:
    if "trainers" in result:
        return "; ".join(
            f"{t} {r['models']} models {r['seconds']:.1f}s {_rate(r)[0]:,.0f}/min "
            f"{_rate(r)[1]:.1f} GFLOP/s" for t, r in result["trainers"].items()
        )
    rate, gflops = _rate(result)
    cpu_rate, cpu_gflops = _cpu_rate(result)
    models, seconds = result["models"], result["seconds"]
    return (
        f"{models} models {seconds:.1f}s {rate:,.0f}/min {gflops:.1f} GFLOP/s; "
        f"by CPU time {cpu_rate:,.0f}/min {cpu_gflops:.1f} GFLOP/s"
    )


def _report_trainer(runs: dict[str, list[dict]], args) -> None:
    print(
        f"train_mlp_batched alone, digits MLP ({CONFIG_NAME} defaults), {args.procs} processes"
        f" x {args.threads} threads, {args.models} models each; median of {len(runs['new'])}"
    )
    print(f"{'':<22}{'wall clock':>22}{'CPU time (idle machine)':>26}")
    print(f"{'tree':<22}{'models/min':>12}{'GFLOP/s':>10}{'models/min':>16}{'GFLOP/s':>10}")
    medians = {}
    for name, results in runs.items():
        figures = [
            statistics.median(rate(r)[i] for r in results)
            for rate in (_rate, _cpu_rate) for i in (0, 1)
        ]
        medians[name] = figures
        print(f"{name:<22}{figures[0]:>12,.0f}{figures[1]:>10.1f}{figures[2]:>16,.0f}"
              f"{figures[3]:>10.1f}")
    if len(medians) == 2:
        new, base = medians.values()
        print(f"new / baseline: {new[0] / base[0]:.2f}x wall clock, "
              f"{new[2] / base[2]:.2f}x CPU time")


def _report_ray(runs: dict[str, list[dict]]) -> None:
    first = runs["new"][0]
    print(
        f"digits MLP, alpha=0.5, {CONFIG_NAME} defaults; local Ray with {first['cpus']:g} CPUs"
        f" (start-up {first['ray_start']:.1f}s); median of {len(runs['new'])}"
    )
    print(f"{'tree':<22}{'trainer':<12}{'models':>8}{'seconds':>10}{'models/min':>12}"
          f"{'GFLOP/s':>10}")
    batched = {}
    for name, results in runs.items():
        sequential = 0.0
        for trainer in results[0]["trainers"]:
            rows = [r["trainers"][trainer] for r in results]
            seconds = statistics.median(r["seconds"] for r in rows)
            rate = statistics.median(_rate(r)[0] for r in rows)
            gflops = statistics.median(_rate(r)[1] for r in rows)
            print(f"{name:<22}{trainer:<12}{rows[0]['models']:>8}{seconds:>10.1f}{rate:>12,.0f}"
                  f"{gflops:>10.1f}")
            if trainer == "batched":
                batched[name] = rate
            else:
                sequential = rate
        if "sequential" in results[0]["trainers"] and name in batched and sequential:
            end_to_end = statistics.median(
                60 * r["trainers"]["batched"]["models"]
                / (r["trainers"]["batched"]["seconds"] + r["ray_start"])
                for r in results
            )
            print(f"{name}: batched / one-at-a-time {batched[name] / sequential:.1f}x; batched "
                  f"end to end incl. Ray start-up {end_to_end:,.0f} models/min")
    if len(batched) == 2:
        new, base = batched.values()
        print(f"batched, new / baseline: {new / base:.2f}x")


if __name__ == "__main__":
    main()
