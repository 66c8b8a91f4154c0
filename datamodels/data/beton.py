"""FFCV ``.beton`` files: write a dataset once, read it back two ways.

* ``decode_resident``: decode the whole file once per worker process into arrays that every
  model in that worker samples from (small datasets; the fast path).
* ``subset_loader``: one FFCV ``Loader`` per model over ``indices=`` its subset, shuffled with
  its own seed (datasets larger than memory).

Fields: ``x`` (``NDArrayField``: float32 features or uint8 HWC images) and ``y`` (label).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from datamodels.data.sources import ArrayDataset
from datamodels.errors import DataError

BETON_NAME = "examples.beton"


class _Indexed:
    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.features[i], int(self.labels[i])


def write_beton(ds: ArrayDataset, path: str | Path, num_workers: int = 2) -> None:
    """Write every example (in index order) to ``path``; atomic (temp file + rename)."""
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    features = np.ascontiguousarray(ds.features)
    fields = {"x": NDArrayField(dtype=features.dtype, shape=features.shape[1:]), "y": IntField()}
    needed = features.nbytes + 64 * len(features) + (8 << 20)  # data, per-sample metadata, pages
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise DataError(
            f"{path.parent} has {free / 2**20:,.0f} MiB free; writing {path.name} needs "
            f"about {needed / 2**20:,.0f} MiB; free space and rerun prepare"
        )
    writer = DatasetWriter(str(tmp), fields, num_workers=num_workers)
    try:
        _watched(lambda: writer.from_indexed_dataset(_Indexed(features, ds.labels)), path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        shared = getattr(writer, "metadata_sm", None)  # FFCV frees it only when it finishes
        if shared is not None:
            shared.close()
            shared.unlink()
        raise
    os.replace(tmp, path)


class _WritersDied(Exception):
    """Raised in the main thread by the watcher of FFCV's writer processes."""


def _watched(write, path: Path, grace_s: float = 2.0) -> None:
    """Run FFCV's writer, whose parent loop waits forever for samples from worker processes
    that may have died (a full disk, the OOM killer): a watcher thread signals the main
    thread when a worker exited abnormally ``grace_s`` seconds ago, and the write fails with
    one line. The writer stays in the main thread (it forks, which is unsafe from other
    threads); the signal is SIGUSR2 with a handler of ours, since SIGINT may be ignored (a
    background job). Off the main thread no handler can be installed: the write runs as is."""
    import multiprocessing
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        write()
        return
    stop, fired = threading.Event(), threading.Event()

    def raise_in_main(signum, frame):
        raise _WritersDied

    def watch() -> None:
        died_since = None
        while not stop.wait(0.2):
            # multiprocessing's own registry of this process's children: a worker that exited
            # with a non-zero code (or a signal) will never report its samples
            children = list(multiprocessing.process._children)  # noqa: SLF001
            if not any(p.exitcode not in (None, 0) for p in children):
                continue
            died_since = died_since or time.monotonic()
            if time.monotonic() - died_since > grace_s:
                fired.set()
                os.kill(os.getpid(), signal.SIGUSR2)
                return

    previous = signal.signal(signal.SIGUSR2, raise_in_main)
    watcher = threading.Thread(target=watch, name="beton-writer-watch", daemon=True)
    watcher.start()
    try:
        write()
    except _WritersDied:
        raise DataError(
            f"writing {path.name} failed: FFCV's writer processes exited before finishing "
            "(disk full or out of memory?); free resources and rerun prepare"
        ) from None
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGUSR2, previous)


def _pipelines() -> dict:
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
    from ffcv.transforms import ToTensor

    return {"x": [NDArrayDecoder(), ToTensor()], "y": [IntDecoder(), ToTensor()]}


def _check(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FFCV file not found: {path}; run `datamodels prepare` for this run first")
    return path


def decode_resident(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode the whole beton: (features [N, ...], labels int64[N]). Tasks keep the result in
    their process's context (``orchestrate.context``), so a worker decodes it once."""
    from ffcv.loader import Loader, OrderOption

    loader = Loader(
        str(_check(path)),
        batch_size=4096,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines=_pipelines(),
    )
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.numpy().copy())
        ys.append(y.numpy().reshape(-1).astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def subset_loader(
    path: str | Path, indices: np.ndarray, batch_size: int, seed: int, num_workers: int = 1
):
    """An FFCV ``Loader`` over ``indices`` (example indices), reshuffled each epoch with ``seed``.

    Yields (features, labels int64[b]) torch tensors; the last batch may be short."""
    from ffcv.loader import Loader, OrderOption

    path = _check(path)
    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.RANDOM,
        seed=int(seed) % (2**31),
        indices=np.asarray(indices, dtype=np.int64),
        drop_last=False,
        pipelines=_pipelines(),
    )
