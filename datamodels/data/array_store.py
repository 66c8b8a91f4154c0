"""The array store: a run's examples as one plain NumPy file, for machines without FFCV.

``data/examples.npy`` is a structured array of N records ``(x, y)`` in example-index order:
``x`` the features as the dataset gave them (float32 [d] or uint8 images [H, W, C]) and ``y``
the int64 label. NumPy reads it memory-mapped (``np.load(mmap_mode="r")``), so a per-model
loader touches only its batches. ``data/examples.npy.sha256`` holds the file's sha256 in
``sha256sum`` format (``cd data && sha256sum -c examples.npy.sha256`` checks it by hand);
readers check it once per process and refuse a file that does not match.

It holds the same arrays as the beton: training from either gives the same models.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datamodels.data.dataset import ArrayDataset
from datamodels.errors import DataError

ARRAYS_NAME = "examples.npy"
CHECKSUM_SUFFIX = ".sha256"
_CHUNK_ROWS = 8192
_VERIFIED: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) checked in this process


def checksum_path(path: str | Path) -> Path:
    """The checksum file beside an array store: ``examples.npy.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_dtype(features: np.ndarray) -> np.dtype:
    """One record: ``x`` a row of ``features`` (its dtype and shape), ``y`` an int64 label."""
    return np.dtype([("x", features.dtype, features.shape[1:]), ("y", "<i8")])


def write_arrays(ds: ArrayDataset, path: str | Path) -> None:
    """Write every example (in index order) to ``path`` and its checksum beside it; each
    file atomic (a temporary file renamed over it), the checksum last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = np.asarray(ds.features)
    labels = np.asarray(ds.labels, dtype=np.int64)
    dtype = record_dtype(features)
    needed = dtype.itemsize * len(labels) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise DataError(
            f"{path.parent} has {free / 2**20:,.0f} MiB free; writing {path.name} needs "
            f"about {needed / 2**20:,.0f} MiB; free space and rerun prepare"
        )
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(labels),))
        for start in range(0, len(labels), _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            out["x"][rows] = features[rows]
            out["y"][rows] = labels[rows]
        out.flush()
        del out
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    check = checksum_path(path)
    check_tmp = check.with_name(f".{check.name}.tmp-{uuid.uuid4().hex[:8]}")
    check_tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(check_tmp, check)


def verify(path: str | Path) -> Path:
    """``path``, once its bytes match ``examples.npy.sha256`` (hashed once per process per
    size and modification time); `DataError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array store not found: {path}; run `datamodels prepare` for this run")
    check = checksum_path(path)
    try:
        expected = check.read_text().split()[0].lower()
    except (OSError, IndexError):
        raise DataError(
            f"{check} is missing or empty: {path.name} cannot be checked; delete {path.parent} "
            "and rerun `datamodels prepare`"
        ) from None
    info = path.stat()
    if _VERIFIED.get(str(path)) != (info.st_size, info.st_mtime_ns):
        if file_sha256(path) != expected:
            raise DataError(
                f"{path} does not match its checksum {check.name} (altered or torn); delete "
                f"{path.parent} and rerun `datamodels prepare`"
            )
        _VERIFIED[str(path)] = (info.st_size, info.st_mtime_ns)
    return path


def open_arrays(path: str | Path) -> np.ndarray:
    """The verified store, memory-mapped read-only: a structured array of N ``(x, y)``."""
    path = verify(path)
    try:
        records = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{path} is not an array store ({err}); rerun prepare") from None
    if records.dtype.names != ("x", "y"):
        raise DataError(f"{path} holds no (x, y) records; delete it and rerun prepare")
    return records


def decode_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole store in memory: (features [N, ...], labels int64[N]), as ``decode_resident``
    gives them from a beton."""
    records = open_arrays(path)
    return np.ascontiguousarray(records["x"]), np.ascontiguousarray(records["y"], dtype=np.int64)


class ArrayLoader:
    """Batches of the examples ``indices`` from the memory-mapped store, in a new random order
    every epoch drawn from ``seed``; each iteration is one epoch. Yields (features, labels
    int64[b]) torch tensors; the last batch may be short (what ``subset_loader`` gives)."""

    def __init__(self, path: str | Path, indices: np.ndarray, batch_size: int, seed: int) -> None:
        self.records = open_arrays(path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(int(seed) % (2**31))

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator:
        import torch

        order = self.indices[self.rng.permutation(len(self.indices))]
        for start in range(0, len(order), self.batch_size):
            chosen = np.sort(order[start : start + self.batch_size])  # sequential reads
            batch = self.records[chosen]
            shuffle = self.rng.permutation(len(chosen))
            yield (
                torch.from_numpy(np.ascontiguousarray(batch["x"][shuffle])),
                torch.from_numpy(np.ascontiguousarray(batch["y"][shuffle], dtype=np.int64)),
            )
