"""The ``prepare`` stage, and the one place where a config meets a run directory.

``open_run`` accepts a new run or one made from the same config hash, and refuses anything
else without touching it. The ``prepare`` stage writes the examples file (the FFCV beton
``data/examples.beton``, or where FFCV is not installed the array store ``data/examples.npy``
and its checksum: ``store.beton.data_path``), ``examples.parquet`` and then ``config.yaml``
(`record_config`: a new run's, or the latest stage settings of the same models; the stage is
not complete while the recorded text differs from the config's).

A config that names user code (``model.factory``, ``train.recipe``, a ``train.output``
function) has it checked here, on two training examples, before anything is written and
every time prepare runs (``train`` runs it first): a bad import path, a factory that raises
or a module whose output does not fit the labels is one line before any model trains, and
nothing in the run directory is removed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from datamodels.config import HASHED_SECTIONS, Config, config_from_yaml_text
from datamodels.config.trust import check_trusted
from datamodels.data.beton import subset_loader, write_examples
from datamodels.data.examples import examples_frame, train_and_eval_index
from datamodels.data.sources import load_dataset
from datamodels.data.transfer import source_classes_frame, transfer_dataset, transfer_examples
from datamodels.errors import RunMismatchError, StoreError
from datamodels.orchestrate.context import local_beton, num_classes
from datamodels.stages.base import Stage, Unit
from datamodels.store import EXAMPLES_PATH, SOURCE_CLASSES_PATH, SOURCE_CLASSES_SCHEMA, Run
from datamodels.store.beton import data_paths
from datamodels.store.schemas import EXAMPLES_SOURCE_COLUMNS, EXAMPLES_WRITTEN_SCHEMA
from datamodels.trainers.custom import (
    check_combination,
    check_user_code,
    probe_data,
    uses_user_code,
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()
        }
    if isinstance(tree, list) and tree and all(isinstance(x, dict) and "name" in x for x in tree):
        return {k: v for x in tree for k, v in _flatten(x, f"{prefix}{x['name']}.").items()}
    return {prefix.rstrip("."): tree}


def differing_fields(saved: dict, config: Config) -> list[str]:
    """Dotted names of the hashed fields whose values differ between a saved config.yaml and
    ``config`` (plans addressed by name, as ``--set`` does)."""
    mine = _flatten(config.model_dump(mode="json", include=set(HASHED_SECTIONS)))
    theirs = _flatten({k: v for k, v in saved.items() if k in HASHED_SECTIONS})
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def check_run(config: Config, run: Run) -> str | None:
    """Refuse a run made from another config (naming the fields that differ); returns the saved
    config.yaml text (None for a run without one)."""
    if not run.has_config():
        return None
    text = run.read_config_text()
    saved = yaml.safe_load(text) or {}
    if saved.get("config_hash") != config.hash:
        fields = differing_fields(saved, config)
        shown = ", ".join(fields[:4]) + (f" and {len(fields) - 4} more" if len(fields) > 4 else "")
        raise RunMismatchError(
            f"{run.uri} holds a run of config hash {saved.get('config_hash')} "
            f"('{saved.get('name')}') but this config hashes to {config.hash} "
            f"(differs in {shown or 'its hashed fields'}); "
            f"choose a new --out directory, or resume with the run's own config: "
            f"datamodels train {run.uri}/config.yaml --out {run.uri}"
        )
    return text


# what a prepare that failed half-way may leave behind: not somebody else's files
_OWN_ENTRIES = ("data", "examples.parquet")


def open_run(config: Config, uri: str | Run) -> Run:
    """The run at ``uri`` for ``config``: refused if made from another config or if the
    directory holds something else. Writes nothing: ``record_config`` does, once the run's
    data is prepared."""
    run = uri if isinstance(uri, Run) else Run(uri)
    if check_run(config, run) is not None:
        return run
    existing = [
        name for name in run.fs.entries("")
        if not name.startswith((".", "_")) and name not in _OWN_ENTRIES
    ]
    if existing:
        raise RunMismatchError(
            f"{run.uri} is not empty and holds no config.yaml ({', '.join(existing[:3])}...); "
            "choose a new or empty --out directory"
        )
    return run


@contextmanager
def nothing_left_if_refused(uri: str | Run) -> Iterator[None]:
    """Around a command that may create the run directory: when the block fails (a refused
    config, a dataset that does not load) and the directory did not exist before it, the
    directory is removed again if it holds only bookkeeping (the lock files, ``_``/``.``
    names), so a refused config leaves nothing behind."""
    run = uri if isinstance(uri, Run) else Run(uri)
    existed = run.fs.exists("")
    try:
        yield
    except BaseException:
        if not existed and run.fs.exists("") and all(
            name.startswith(("_", ".")) for name in run.fs.entries("")
        ):
            run.fs.delete_dir("")
        raise


def record_config(config: Config, run: Run) -> None:
    """Write ``config.yaml`` (a new run, or the latest stage settings of the same models)."""
    text = config.to_yaml()
    if not run.has_config() or run.read_config_text() != text:
        run.write_config(text)


def load_run_config(run: Run, imports_code: bool = True) -> Config:
    if not run.has_config():
        raise StoreError(
            f"{run.uri}: no config.yaml; is this a run directory? "
            "(create one with datamodels prepare)"
        )
    config = config_from_yaml_text(run.read_config_text())
    if not imports_code:  # the caller only reads tables
        return config
    return check_trusted(config, run.uri, getattr(run, "trust_code", False))


class PrepareStage(Stage):
    """One unit: decode the dataset, write the examples file (beton or array store) and then
    ``examples.parquet``."""

    name = "prepare"
    what = "datasets"

    def fingerprint(self) -> dict:
        return {"dataset": self.config.dataset.model_dump(mode="json"), "config": self.config.hash}

    def outputs(self) -> list[str]:
        """The data files (`done` checks these); ``config.yaml`` is checked in `is_complete`."""
        if self.config.transfer is not None:
            return [EXAMPLES_PATH, *data_paths(self.run), SOURCE_CLASSES_PATH]
        return [EXAMPLES_PATH, *data_paths(self.run)]

    def units(self) -> list[Unit]:
        return [Unit("examples")]

    def done(self, unit: Unit) -> bool:
        return all(self.run.fs.isfile(path) for path in self.outputs())

    def is_complete(self) -> bool:
        check_combination(self.config)
        if uses_user_code(self.config) and self.done(Unit("examples")):
            self.check_user_code_on_beton()  # the user's code may have changed since
        recorded = self.run.has_config() and self.run.read_config_text() == self.config.to_yaml()
        return recorded and super().is_complete()

    def check_user_code_on_beton(self) -> None:
        """``check_user_code`` on the first two training examples of the written examples file."""
        examples = self.run.examples()
        train_index = train_and_eval_index(examples)[0][:2]
        path = local_beton(self.run, self.config.hash)
        features, labels = next(iter(subset_loader(path, train_index, len(train_index), 0)))
        check_user_code(
            self.config,
            probe_data(features.numpy(), labels.numpy().reshape(-1), num_classes(examples)),
        )

    def compute(self, ctx, unit: Unit, shared=None) -> None:
        dataset = load_dataset(self.config.dataset)
        classes = None
        if self.config.transfer is not None:  # source train split + target: one beton
            source = load_dataset(self.config.transfer.source)
            dataset, n_source = transfer_dataset(source, dataset)
            examples = transfer_examples(dataset, n_source)
            classes = source_classes_frame(source)
        else:
            examples = examples_frame(dataset, eval_train=self.config.dataset.eval_train)
        if uses_user_code(self.config):  # before anything is written
            first = np.flatnonzero(~dataset.is_test)[:2]
            check_user_code(
                self.config,
                probe_data(dataset.features[first], dataset.labels[first], num_classes(examples)),
            )
        paths = data_paths(self.run)  # the file, and the array store's checksum after it
        local = self.run.local_path(paths[0])
        if local is not None:
            write_examples(dataset, local)
        else:  # object store: write locally, then one PUT per file (the checksum last)
            with tempfile.TemporaryDirectory() as tmp:
                write_examples(dataset, Path(tmp) / Path(paths[0]).name)
                for rel_path in paths:
                    data = (Path(tmp) / Path(rel_path).name).read_bytes()
                    self.run.fs.write_bytes_atomic(rel_path, data)
        if classes is not None:
            self.run.write_table(SOURCE_CLASSES_PATH, classes, SOURCE_CLASSES_SCHEMA)
        table = pa.Table.from_pandas(examples, preserve_index=False)
        if any(name in table.column_names for name in EXAMPLES_SOURCE_COLUMNS):
            self.run.write_table(EXAMPLES_PATH, table, EXAMPLES_WRITTEN_SCHEMA)
        else:
            self.run.write_examples(table)

    def on_result(self, unit: Unit, result, progress) -> list[Unit]:
        self.wrote = True
        return super().on_result(unit, result, progress)

    def finish(self) -> bool:
        """Record ``config.yaml`` (last: a run's config means its data is prepared); True when
        this call wrote the data files."""
        record_config(self.config, self.run)
        return getattr(self, "wrote", False)

    def up_to_date(self) -> bool:
        return False
