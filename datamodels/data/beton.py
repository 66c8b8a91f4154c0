"""FFCV ``.beton`` files: write a dataset once, read it back two ways.

* ``decode_resident``: decode the whole file once per worker process into arrays that every
  model in that worker samples from (small datasets; the fast path); read from the file's
  pages by ``beton_file`` (no FFCV needed).
* ``subset_loader``: one FFCV ``Loader`` per model over ``indices=`` its subset, shuffled with
  its own seed (datasets larger than memory).

Fields: ``x`` (``NDArrayField``: float32 features or uint8 HWC images) and ``y`` (label).

FFCV is optional (the ``ffcv`` extra). Without it ``prepare`` writes the array store instead
(``data.array_store``: ``examples.npy`` and its checksum), and both readers above take either
file: a path ending in ``.npy`` is read by NumPy. `data_format` says which one ``prepare``
writes: the beton when FFCV imports, else the array store; ``DATAMODELS_DATA_FORMAT=arrays``
(or ``beton``) chooses.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from datamodels.data.array_store import ARRAYS_NAME, ArrayLoader, decode_arrays, write_arrays
from datamodels.data.beton_file import read_beton
from datamodels.data.sources import ArrayDataset
from datamodels.errors import ConfigError, DataError, MissingDependencyError

BETON_NAME = "examples.beton"
FORMAT_ENV = "DATAMODELS_DATA_FORMAT"
FORMATS = {"beton": BETON_NAME, "arrays": ARRAYS_NAME}


def ffcv_installed() -> bool:
    """Whether FFCV is installed here (an optional dependency); found, not imported (its
    import is slow, and the beton writer imports it in a process of its own)."""
    try:
        return importlib.util.find_spec("ffcv") is not None
    except (ImportError, ValueError):
        return False


def _require_ffcv(what: str) -> None:
    if not ffcv_installed():
        raise MissingDependencyError(
            "FFCV", what,
            "pip install 'datamodels[ffcv]', or prepare the run where FFCV is not installed "
            f"(or with {FORMAT_ENV}=arrays) so that it is written as data/{ARRAYS_NAME}",
        )


def data_format() -> str:
    """What ``prepare`` writes here: ``$DATAMODELS_DATA_FORMAT`` if set, else ``beton`` when
    FFCV imports and ``arrays`` when it does not."""
    chosen = os.environ.get(FORMAT_ENV, "").strip().lower()
    if chosen and chosen not in FORMATS:
        raise ConfigError(f"{FORMAT_ENV}={chosen!r}: choose beton or arrays (or leave it unset)")
    return chosen or ("beton" if ffcv_installed() else "arrays")


def is_arrays(path: str | Path) -> bool:
    """Whether ``path`` is an array store (read with NumPy) rather than a beton."""
    return str(path).endswith(".npy")


def write_examples(ds: ArrayDataset, path: str | Path) -> None:
    """Write ``ds`` as the file ``path`` names: an array store (``.npy``) or a beton."""
    if is_arrays(path):
        write_arrays(ds, path)
    else:
        _require_ffcv(f"writing {Path(path).name}")
        write_beton(ds, path)


class _Indexed:
    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.features[i], int(self.labels[i])


def write_beton(ds: ArrayDataset, path: str | Path, num_workers: int = 2) -> None:
    """Write every example (in index order) to ``path``; atomic (temp file + rename).

    FFCV's writer runs in a child process of its own: its parent loop waits forever for
    samples from worker processes that died (a full disk, the OOM killer), and its queues
    then keep the interpreter from exiting. The child watches its workers and gives up with
    one line; this process only waits for the child, so it is never stuck."""
    import multiprocessing

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    features = np.ascontiguousarray(ds.features)
    needed = features.nbytes + 64 * len(features) + (8 << 20)  # data, per-sample metadata, pages
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise DataError(
            f"{path.parent} has {free / 2**20:,.0f} MiB free; writing {path.name} needs "
            f"about {needed / 2**20:,.0f} MiB; free space and rerun prepare"
        )
    # imported here, before the fork: a child inherits it, where importing it in each child
    # would compile FFCV's numba code again each time (4.7 s of CPU; once per process now)
    import ffcv.fields  # noqa: F401
    import ffcv.writer  # noqa: F401

    context = multiprocessing.get_context("fork")
    reader, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_write_child,
        args=(features, ds.labels, str(tmp), num_workers, sender),
        name="beton-writer",
    )
    child.start()
    sender.close()
    child.join()
    if child.exitcode != 0:
        try:
            reason = reader.recv() if reader.poll() else None
        except EOFError:
            reason = None
        tmp.unlink(missing_ok=True)
        reason = reason or f"the writer process exited with code {child.exitcode}"
        raise DataError(f"writing {path.name} failed: {reason}; rerun prepare")
    os.replace(tmp, path)


def _write_child(
    features: np.ndarray,
    labels: np.ndarray,
    tmp: str,
    num_workers: int,
    sender,
    grace_s: float = 2.0,
) -> None:
    """In the writer process: run FFCV, and leave with a reason when one of its workers
    exited abnormally (it will never report its samples)."""
    import multiprocessing
    import threading

    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    def watch() -> None:
        died_since = None
        while True:
            time.sleep(0.2)
            # multiprocessing's own registry of this process's children, read without
            # cleaning it (active_children() would drop the dead ones we look for)
            children = list(multiprocessing.process._children)  # noqa: SLF001
            if not any(p.exitcode not in (None, 0) for p in children):
                continue
            died_since = died_since or time.monotonic()
            if time.monotonic() - died_since > grace_s:
                sender.send(
                    "FFCV's writer processes exited before finishing (disk full or out "
                    "of memory?); free resources"
                )
                for process in multiprocessing.active_children():
                    process.kill()
                os._exit(3)  # FFCV's queues would wait for the dead workers forever

    threading.Thread(target=watch, name="beton-writer-watch", daemon=True).start()
    fields = {"x": NDArrayField(dtype=features.dtype, shape=features.shape[1:]), "y": IntField()}
    try:
        DatasetWriter(tmp, fields, num_workers=num_workers).from_indexed_dataset(
            _Indexed(features, labels)
        )
    except BaseException as err:  # noqa: BLE001 - reported to the parent in one line
        sender.send(f"{type(err).__name__}: {err}")
        os._exit(1)


def _pipelines() -> dict:
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
    from ffcv.transforms import ToTensor

    return {"x": [NDArrayDecoder(), ToTensor()], "y": [IntDecoder(), ToTensor()]}


def _check(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FFCV file not found: {path}; run `datamodels prepare` for this run first")
    _require_ffcv(f"reading {path}")
    return path


def decode_resident(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode the whole beton: (features [N, ...], labels int64[N]). Tasks keep the result in
    their process's context (``orchestrate.context``), so a worker decodes it once. An array
    store (``.npy``) is read by NumPy instead. The beton is read from its pages
    (`beton_file.read_beton`: no FFCV import, no pipeline compile), so this needs no FFCV."""
    if is_arrays(path):
        return decode_arrays(path)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FFCV file not found: {path}; run `datamodels prepare` for this run first")
    return read_beton(path)


def subset_loader(
    path: str | Path, indices: np.ndarray, batch_size: int, seed: int, num_workers: int = 1
):
    """An FFCV ``Loader`` over ``indices`` (example indices), reshuffled each epoch with ``seed``.

    Yields (features, labels int64[b]) torch tensors; the last batch may be short. An array
    store (``.npy``) is read by an `ArrayLoader` (same batches' sizes, its own order)."""
    if is_arrays(path):
        return ArrayLoader(path, indices, batch_size, seed)
    path = _check(path)
    from ffcv.loader import Loader, OrderOption

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
