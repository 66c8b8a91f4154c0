"""Saved model parameters for the gradient estimators: ``checkpoints/`` in the run.

* ``checkpoints/<model_id>/epoch_<epoch>.pt``: ``torch.save`` of a plain dict
  ``{"model_id", "epoch", "lr", "arch", "layers": [tensors]}`` (``layers`` in the
  architecture's own order: ``[W1 [d, h], b1, ..., Wout, bout]`` for ``mlp``, ``[W (d×C), b]``
  for ``logreg``, the ``state_dict`` tensors for ``resnet9``), written atomically.
* ``checkpoints/index/<shard>.parquet``: one row per checkpoint, ``model_id`` int64,
  ``epoch`` int32, ``lr`` float64 (mean step size since the previous checkpoint), ``path``
  (relative to the run). Each training task writes its own index shard after its files, so
  an index row always points at a complete file. DuckDB:
  ``SELECT * FROM 'run/checkpoints/index/*.parquet'``.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only,
never arbitrary pickled objects. A missing or unreadable file raises ``CheckpointError``
naming the file, the model and the fix.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from datamodels.errors import CheckpointError
from datamodels.store.fs import RunFS
from datamodels.store.identifiers import check_checkpoint_path
from datamodels.store.schemas import CHECKPOINT_INDEX_DIR, CHECKPOINT_INDEX_SCHEMA, CHECKPOINTS_DIR
from datamodels.store.shards import shard_name, write_table_atomic


def checkpoint_path(model_id: int, epoch: int) -> str:
    return f"{CHECKPOINTS_DIR}/{int(model_id)}/epoch_{int(epoch)}.pt"


def write_checkpoints(
    fs: RunFS, arch: str, entries: Sequence[tuple[int, int, float, list[torch.Tensor]]]
) -> str | None:
    """Write ``(model_id, epoch, lr, layers)`` checkpoints and then their index shard; returns
    the index shard's relative path (None when there is nothing to write)."""
    if not entries:
        return None
    rows = []
    for model_id, epoch, lr, layers in entries:
        buffer = io.BytesIO()
        payload = {
            "model_id": int(model_id),
            "epoch": int(epoch),
            "lr": float(lr),
            "arch": arch,
            "layers": [t.detach().cpu().contiguous() for t in layers],
        }
        torch.save(payload, buffer)
        path = checkpoint_path(model_id, epoch)
        fs.write_bytes_atomic(path, buffer.getvalue())
        rows.append({"model_id": int(model_id), "epoch": int(epoch), "lr": float(lr), "path": path})
    frame = pd.DataFrame(rows)
    keys = frame["model_id"].to_numpy() * 1_000_003 + frame["epoch"].to_numpy()  # unique per entry
    index_path = f"{CHECKPOINT_INDEX_DIR}/{shard_name(keys)}"
    write_table_atomic(fs, index_path, frame, CHECKPOINT_INDEX_SCHEMA)
    return index_path


def read_checkpoint_index(fs: RunFS) -> pd.DataFrame:
    """Every index row (model_id, epoch, lr, path), one per (model_id, epoch), sorted."""
    frames = []
    names = [n for n in fs.listdir(CHECKPOINT_INDEX_DIR) if not n.startswith((".", "_"))]
    # oldest first, so that for a (model_id, epoch) saved twice the newer row (its lr) wins
    names.sort(
        key=lambda n: fs.filesystem.get_file_info(fs.join(CHECKPOINT_INDEX_DIR, n)).mtime_ns or 0
    )
    for name in names:
        rel = f"{CHECKPOINT_INDEX_DIR}/{name}"
        try:
            with fs.open_input_file(rel) as handle:
                table = pq.ParquetFile(handle).read()
        except (pa.ArrowException, OSError) as exc:
            raise CheckpointError(
                f"{fs.display(rel)} is not readable Parquet (torn?): {exc}; delete it and "
                "rerun `datamodels train` to recreate its checkpoints"
            ) from exc
        frames.append(table.to_pandas())
    if not frames:
        return CHECKPOINT_INDEX_SCHEMA.empty_table().to_pandas()
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.drop_duplicates(["model_id", "epoch"], keep="last")
    return frame.sort_values(["model_id", "epoch"], ignore_index=True)


def load_checkpoint(fs: RunFS, path: str, device: str | torch.device = "cpu") -> dict:
    """The checkpoint dict at ``path`` (relative to the run), loaded with ``weights_only=True``."""
    display = fs.display(path)
    check_checkpoint_path(path, fs.display(CHECKPOINT_INDEX_DIR))  # read from the index
    if not fs.isfile(path):
        raise CheckpointError(
            f"checkpoint {display} is missing; rerun `datamodels train` on this run to "
            "recreate it (models are retrained with the same seeds)"
        )
    try:
        payload = torch.load(
            io.BytesIO(fs.read_bytes(path)), map_location=device, weights_only=True
        )
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"checkpoint {display} is corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it and rerun "
            "`datamodels train` to recreate it"
        ) from None
    if not isinstance(payload, dict) or "layers" not in payload:
        raise CheckpointError(
            f"checkpoint {display} is corrupt (no 'layers' entry); delete it and rerun "
            "`datamodels train` to recreate it"
        )
    return payload


def complete_models(fs: RunFS, model_ids: np.ndarray, epochs: Sequence[int]) -> set[int]:
    """The ``model_ids`` whose checkpoints at every one of ``epochs`` are indexed and present."""
    index = read_checkpoint_index(fs)
    want = set(int(e) for e in epochs)
    have: dict[int, set[int]] = {}
    for row in index.itertuples(index=False):
        if int(row.epoch) in want and fs.isfile(
            check_checkpoint_path(row.path, fs.display(CHECKPOINT_INDEX_DIR))
        ):
            have.setdefault(int(row.model_id), set()).add(int(row.epoch))
    return {int(m) for m in model_ids if have.get(int(m), set()) >= want}
