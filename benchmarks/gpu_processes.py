"""P training processes sharing one device, for ``benchmarks/gpu_throughput.py --processes``.

Each of P worker processes (``multiprocessing`` spawn) loads the same images from a file the
parent wrote, builds the same trainer config, trains a warm-up pass, then waits at a barrier
shared with the parent; once all are ready they train their share (``models / P``) of the same
masks together. The wall time runs from the barrier's release to the last worker's finish
(``time.perf_counter``: the system-wide monotonic clock on Linux, comparable across processes),
so per-model seconds = wall / models. On CUDA each worker reports its peak allocated memory
(``torch.cuda.max_memory_allocated``) and the parent samples the GPU's utilisation and memory
in use with ``nvidia-smi`` in a background thread while the workers train ("n/a" without it).

CUDA MPS (one GPU context shared by the processes, their kernels scheduled together) is noted
in each row: on where ``CUDA_MPS_PIPE_DIRECTORY`` is set or the MPS daemon's control pipe
exists, off where ``nvidia-cuda-mps-control`` is installed but no daemon runs, absent else.
``--mps`` measures every P both without and with a daemon this script starts and stops.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queues
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

SMI = ("nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits")
MPS_CONTROL = "nvidia-cuda-mps-control"
START_TIMEOUT = 1800.0  # seconds for every worker to load its data and train its warm-up
GiB = 2**30
MPS_SETTLE = 1.0  # seconds the MPS daemon is given to start and to stop


class Sampler:
    """``nvidia-smi`` polled every ``interval`` seconds in a thread while the block runs: the
    mean utilisation (%) and the most memory in use (MiB) of the first GPU it lists."""

    def __init__(self, device: str, interval: float = 0.2) -> None:
        self.enabled = device == "cuda" and shutil.which(SMI[0]) is not None
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def _loop(self) -> None:
        while True:
            try:
                out = subprocess.run(SMI, capture_output=True, text=True, timeout=5).stdout
                util, used = out.splitlines()[0].split(",")[:2]
                self.samples.append((float(util), float(used)))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            if self._stop.wait(self.interval):
                return

    def utilisation(self) -> str:
        return f"{np.mean([u for u, _ in self.samples]):.0f}" if self.samples else "n/a"

    def memory_used(self) -> str:
        return f"{max(m for _, m in self.samples) / 1024:.2f}" if self.samples else "n/a"


def gib(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / GiB:.2f}"


def mps_state() -> str:
    """'MPS on', 'MPS off' (the control binary is installed, no daemon runs) or 'no MPS'."""
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
    if pipe or (Path("/tmp/nvidia-mps") / "control").exists():
        return "MPS on"
    return "MPS off" if shutil.which(MPS_CONTROL) else "no MPS"


@contextmanager
def mps_daemon():
    """Starts the MPS control daemon (``nvidia-cuda-mps-control -d``) and stops it after."""
    started = subprocess.run([MPS_CONTROL, "-d"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=30)
    if started.returncode:
        raise RuntimeError(f"{MPS_CONTROL} -d failed: {started.stderr.strip() or started.stdout}")
    time.sleep(MPS_SETTLE)  # the control pipe appears once the daemon is up
    # a time limit's SIGTERM then unwinds through the ``finally`` below: the daemon is stopped
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        try:
            subprocess.run([MPS_CONTROL], input="quit\n", text=True, capture_output=True,
                           timeout=60)
        except subprocess.SubprocessError as err:
            print(f"--mps: stopping the daemon failed ({err}); stop it with "
                  f"'echo quit | {MPS_CONTROL}'", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        time.sleep(MPS_SETTLE)


def _worker(rank, parts, path, masks, seeds, options, K, barrier, results) -> None:
    """One process: load, warm up, wait for the others, train its share, report."""
    try:
        import torch
        from gpu_throughput import config, sync, train_data  # benchmarks/ is on sys.path

        from datamodels.trainers.api import train_batch

        args = argparse.Namespace(**options)
        if args.device == "cuda":
            torch.backends.cudnn.benchmark = True
        else:  # the CPU's threads shared out, not oversubscribed
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // parts))
        with np.load(path) as arrays:
            data = train_data(arrays["xtr"], arrays["ytr"], arrays["xte"], arrays["yte"],
                              args.device)
        cfg = config(args, K, pass_mode="grouped")
        train_batch(masks[:K], seeds[:K] + 10**6, data, cfg)  # warm-up (autotune, graphs)
        sync(args.device)
        barrier.wait(timeout=START_TIMEOUT)
        start = time.perf_counter()
        outcome = train_batch(masks, seeds, data, cfg)
        sync(args.device)
        end = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
        results.put((rank, start, end, outcome.eval_accuracy, int(outcome.failed.sum()), peak,
                     None))
    except BaseException as err:  # noqa: BLE001 - reported by the parent in one line
        barrier.abort()
        results.put((rank, None, None, None, 0, None, f"{type(err).__name__}: {err}"))


def run_processes(arrays, masks, seeds, args, P: int, K: int):
    """P processes, each training ``len(masks) / P`` of the masks K at a time -> (per-model
    seconds, accuracies, peak GiB per process, GPU utilisation %, GPU memory used GiB)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(P + 1), ctx.Queue()
    options = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool))}
    shares = np.array_split(np.arange(len(masks)), P)
    with tempfile.TemporaryDirectory(prefix="gpu-processes-") as tmp:
        path = Path(tmp) / "images.npz"
        np.savez(path, **dict(zip(("xtr", "ytr", "xte", "yte"), arrays, strict=True)))
        workers = [
            ctx.Process(target=_worker, args=(rank, P, str(path), masks[rows], seeds[rows],
                                              options, K, barrier, results))
            for rank, rows in enumerate(shares)
        ]
        for worker in workers:
            worker.start()
        _start_together(barrier, workers)
        with Sampler(args.device) as sampler:
            reports = [_collect(results, workers) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
    errors = [r[6] for r in reports if r[6]]
    if errors:
        raise RuntimeError(f"{len(errors)} of {P} processes failed: {errors[0]}")
    failed = sum(r[4] for r in reports)
    if failed:
        print(f"  P={P}: {failed} models failed", file=sys.stderr)
    wall = max(r[2] for r in reports) - min(r[1] for r in reports)
    accuracy = np.concatenate([r[3] for r in sorted(reports, key=lambda r: r[0])])
    peak = max((r[5] for r in reports if r[5] is not None), default=None)
    return wall / len(masks), accuracy, gib(peak), sampler.utilisation(), sampler.memory_used()


def _start_together(barrier, workers) -> None:
    """Waits at the barrier with the workers; breaks it if one dies before reaching it."""

    def wait() -> None:
        try:
            barrier.wait(timeout=START_TIMEOUT)
        except threading.BrokenBarrierError:
            pass  # a worker failed before the start: its report says why

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    while waiter.is_alive():
        waiter.join(timeout=1.0)
        if any(w.exitcode not in (None, 0) for w in workers):
            barrier.abort()


def _collect(results, workers):
    """The next worker's report; an error report if every worker is gone without one."""
    while True:
        try:
            return results.get(timeout=5)
        except queues.Empty:
            if not any(w.is_alive() for w in workers):
                try:
                    return results.get(timeout=5)
                except queues.Empty:
                    return (-1, None, None, None, 0, None, "a process exited without a report")


def process_rows(arrays, masks, seeds, args, name: str) -> list[tuple]:
    """The ``--processes`` rows (each P; with ``--mps`` each P without and with a daemon)."""
    counts = [int(p) for p in args.processes.split(",") if p]
    K = args.process_k
    settings = [False]
    if args.mps:
        if args.device != "cuda":
            print("--mps: MPS shares a CUDA device; measuring without it on the CPU")
        elif not shutil.which(MPS_CONTROL):
            print(f"--mps: {MPS_CONTROL} is not installed here; measuring without MPS only")
        elif mps_state() == "MPS on":
            print("--mps: an MPS daemon already runs here; measuring with it only")
        else:
            settings = [False, True]
    rows = []
    for with_mps in settings:
        for P in counts:
            try:
                if with_mps:
                    with mps_daemon():
                        label = f"{name}, {P} processes, MPS on (started)"
                        measured = run_processes(arrays, masks, seeds, args, P, K)
                else:
                    label = f"{name}, {P} processes, {mps_state()}"
                    measured = run_processes(arrays, masks, seeds, args, P, K)
            except RuntimeError as err:
                print(f"  {P} processes{' with MPS' if with_mps else ''}: {err}", flush=True)
                continue
            per_model, acc, peak, util, used = measured
            print(f"  {label} K={K}: {per_model:.3f} s/model, accuracy {acc.mean():.4f}, "
                  f"peak {peak} GiB/process, GPU util {util}%", flush=True)
            rows.append((label, str(K), per_model, acc, peak, util, used))
    return rows
