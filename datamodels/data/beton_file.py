"""Read a whole ``.beton`` written by `datamodels.data.beton` straight from its pages.

A beton is a header (format version, field count, page size, sample count, where the
allocation table starts), one 1,041-byte descriptor per field (type id, name, arguments), one
metadata record per sample (an ``int64`` per ``IntField``; the file offset of the sample's
bytes per ``NDArrayField``), the data pages, then the allocation table. The files
``prepare`` writes hold two fields, ``x`` (``NDArrayField``: its dtype and shape in the
descriptor's arguments) and ``y`` (``IntField``), so decoding all of it is reading each
sample's fixed-size bytes at its offset.

Why not FFCV's ``Loader`` for this: importing ``ffcv`` compiles numba code (4.7 s of CPU per
process, measured with ``python -c "import ffcv"``) and each ``Loader`` compiles its pipeline
again, in every worker that decodes the file, for a read that takes milliseconds. The
``Loader`` stays the reader of per-model subsets (``beton.subset_loader``); the test
``tests/data/test_beton.py`` checks both readers give the same arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from datamodels.errors import DataError

VERSION = 2  # the beton format version this reads (FFCV 1.0's)
HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
     ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")],
    align=True,
)  # fmt: skip
FIELD = np.dtype(
    [("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True
)
NDARRAY_ARGS = np.dtype([("shape", "<u8", 32), ("type_length", "<u8")])
INT_FIELD, NDARRAY_FIELD = 1, 4


def _ndarray_field(arguments: np.ndarray) -> tuple[np.dtype, tuple[int, ...]]:
    head = arguments[: NDARRAY_ARGS.itemsize].view(NDARRAY_ARGS)[0]
    descr = json.loads(
        arguments[NDARRAY_ARGS.itemsize :][: int(head["type_length"])].tobytes().decode("ascii")
    )
    dtype = np.dtype([tuple(item) for item in descr])["f0"]
    shape = [int(s) for s in head["shape"]]
    while shape and shape[-1] == 0:
        shape.pop()
    return dtype, tuple(shape)


def read_beton(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, ...], labels int64[N]) of a beton with an ``NDArrayField`` ``x`` and an
    ``IntField`` ``y``; a `DataError` naming the file for anything else."""
    path = Path(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size < HEADER.itemsize:
        raise DataError(f"{path} is not a beton (too short); run `datamodels prepare` again")
    header = raw[: HEADER.itemsize].view(HEADER)[0]
    if int(header["version"]) != VERSION:
        raise DataError(f"{path}: beton format {int(header['version'])}, expected {VERSION}")
    n, n_fields = int(header["num_samples"]), int(header["num_fields"])
    start = HEADER.itemsize
    fields = raw[start : start + n_fields * FIELD.itemsize].view(FIELD)
    names = [bytes(f["name"]).split(b"\0", 1)[0].decode("ascii") for f in fields]
    kinds = {name: int(f["type_id"]) for name, f in zip(names, fields, strict=True)}
    if kinds != {"x": NDARRAY_FIELD, "y": INT_FIELD}:
        raise DataError(f"{path}: fields {kinds}, expected x (NDArray) and y (Int)")
    dtype, shape = _ndarray_field(fields[names.index("x")]["arguments"])
    record = np.dtype([(name, "<u8" if name == "x" else "<i8") for name in names], align=True)
    start += fields.nbytes
    metadata = raw[start : start + n * record.itemsize].view(record)
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    offsets = metadata["x"].astype(np.int64)
    if n and (offsets.min() < start or offsets.max() + size > raw.size):
        raise DataError(f"{path} is truncated or damaged; run `datamodels prepare` again")
    out = np.empty((n, size), dtype=np.uint8)
    # samples lie in order inside each page; a run of neighbours is one copy
    breaks = np.flatnonzero(np.diff(offsets) != size) + 1
    for first, stop in zip(np.r_[0, breaks], np.r_[breaks, n], strict=True):
        begin = offsets[first]
        out[first:stop] = raw[begin : begin + (stop - first) * size].reshape(stop - first, size)
    features = out.view(dtype).reshape((n, *shape))
    return features, metadata["y"].astype(np.int64)
