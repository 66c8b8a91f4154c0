"""FFCV ``.beton`` files: write a dataset once, read it back two ways.

* ``decode_resident``: decode the whole file once per worker process into arrays that every
  model in that worker samples from (small datasets; the fast path).
* ``subset_loader``: one FFCV ``Loader`` per model over ``indices=`` its subset, shuffled with
  its own seed (datasets larger than memory).

Fields: ``x`` (``NDArrayField``: float32 features or uint8 HWC images) and ``y`` (label).
"""

from __future__ import annotations

import os
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
    writer = DatasetWriter(str(tmp), fields, num_workers=num_workers)
    writer.from_indexed_dataset(_Indexed(features, ds.labels))
    os.replace(tmp, path)


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
        str(_check(path)), batch_size=4096, num_workers=1, order=OrderOption.SEQUENTIAL,
        drop_last=False, pipelines=_pipelines(),
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
        str(path), batch_size=batch_size, num_workers=num_workers, order=OrderOption.RANDOM,
        seed=int(seed) % (2**31), indices=np.asarray(indices, dtype=np.int64), drop_last=False,
        pipelines=_pipelines(),
    )
