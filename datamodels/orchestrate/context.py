"""The per-process context that every task of every stage shares: data, device and caches.

A worker process (Ray keeps them alive between tasks) decodes the run's beton once and keeps
the tensors, loaded checkpoints, factored Hessians and other costly objects across tasks.
Keys name the run, the config hash and the beton file (its cached copy's content hash on an
object store, size and modification time on a disk), so a process that serves two runs, or a
run directory made again under the same name, never mixes them.
No Ray import here: the serial executor and tests use the same context in-process.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from datamodels.config import Config
from datamodels.data.resident import load_train_data, load_transfer_data
from datamodels.errors import ConfigError
from datamodels.store import Run
from datamodels.store.beton import BETON_PATH, local_beton
from datamodels.trainers.unit_progress import reporting_to

__all__ = [  # BETON_PATH and local_beton live in the store; read here by older importers
    "BETON_PATH",
    "Context",
    "check_device",
    "context",
    "local_beton",
    "num_classes",
    "unit_reporting",
    "worker_name",
]


def check_device(device: str, num_gpus: float, cluster: str | None) -> None:
    """Refuse ``device: cuda`` where no task could get a GPU: on this machine without CUDA
    (no ``cluster`` address), or on a cluster with ``num_gpus`` 0 (tasks land on CPU nodes)."""
    if device != "cuda":
        return
    if cluster and num_gpus == 0:
        raise ConfigError(
            "resources.device=cuda needs resources.num_gpus > 0, so that tasks run "
            "where a GPU is; or use device: auto"
        )
    if not cluster and not torch.cuda.is_available():
        raise ConfigError(
            "resources.device=cuda but this machine has no CUDA device "
            "(torch.cuda.is_available() is False); use device: auto or cpu, or "
            "--address a Ray cluster with GPUs"
        )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def num_classes(examples) -> int:
    return int(max(examples["label"].max(), examples["original_label"].max())) + 1


class Context:
    """Caches of one process, bounded (least recently used entries are dropped first)."""

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._data: tuple[tuple, Any] | None = None  # one decoded dataset, never evicted by others

    def cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = make()
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def data(self, run: Run, config: Config, device: str = "cpu"):
        """The run's ``TrainData`` on ``device`` (decoded once per process)."""

        beton = local_beton(run, config.hash)

        def load():
            examples = run.examples()
            if config.transfer is not None:  # source classes and target (train.transfer)
                return load_transfer_data(beton, examples, device)
            return load_train_data(beton, examples, num_classes(examples), device)

        # the beton's identity too: a run directory made again under the same name (a
        # regenerated dataset) is decoded again by a worker that outlived the first one
        stat = os.stat(beton)
        key = (run.uri, config.hash, device, beton, stat.st_size, stat.st_mtime_ns)
        if self._data is None or self._data[0] != key:
            self._data = None  # free the previous run's tensors before decoding the next
            self._data = (key, load())
        return self._data[1]

    def clear(self) -> None:
        self._entries.clear()
        self._data = None


_CONTEXT = Context()


def context() -> Context:
    """This process's context."""
    return _CONTEXT


# -- progress within a unit ------------------------------------------------------------------

PartialSink = Callable[[Any, "float | None", float], None]  # (unit key, fraction, size)


@contextmanager
def unit_reporting(stage_name: str, unit: Any, sink: PartialSink | None) -> Iterator[None]:
    """While a unit computes: the reports of its loops (`trainers.unit_progress.report`) go to
    ``sink`` as (key, fraction, size), key = (stage name, unit name); when it ends, one
    (key, None, size). ``sink`` is ``Progress.partial`` in this process, a channel's ``put``
    in a Ray task (`orchestrate.channel`), or None (nothing reported). Whatever executor runs
    the unit wraps its ``compute`` in this."""
    if sink is None:
        yield
        return
    key, size = (stage_name, getattr(unit, "name", str(unit))), getattr(unit, "size", 1)
    with reporting_to(lambda fraction: sink(key, fraction, size)):
        try:
            yield
        finally:
            sink(key, None, size)
