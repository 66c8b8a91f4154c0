"""The ``models/`` table of a run: its shards read as one sorted table, bad shards set aside.

A mixin of `Run` (it uses the run's ``fs``, ``sizes``, ``_require`` and
``recorded_config_hash``). Readers never mix in a torn, corrupt, wrong-schema, foreign or
duplicated shard: they raise `StoreError` naming the file. Every page read is checked against
its CRC when the shard has them (shards written before checksums read as before), and a shard
recording another ``config_hash`` than config.yaml is refused from its footer alone.
"""

from __future__ import annotations

import hashlib
import posixpath
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from datamodels.errors import StoreError
from datamodels.store.guards import refuse_interrupted
from datamodels.store.problems import UNUSABLE_KINDS, Problem, first_line, format_problems
from datamodels.store.provenance import foreign_problems
from datamodels.store.schemas import INVALID_DIR, MODELS_DIR, models_written_schema
from datamodels.store.shards import fixed_size_list_to_numpy, write_model_shard
from datamodels.store.verify import (
    scan_shards,
    shard_schema_problems,
    valid_shards,
)

_ARRAY_DTYPES = {"mask": np.bool_, "margins": np.float32}


def _as_list(plan: str | list[str] | None) -> list[str] | None:
    return [plan] if isinstance(plan, str) else (None if plan is None else list(plan))


class ModelsTable:
    """Readers and writers of ``models/`` (mixed into `Run`)."""

    def shard_files(self) -> list[str]:
        """Sorted names of the shards in ``models/`` (hidden and ``_`` names excluded)."""
        return [
            name
            for name in self.fs.listdir(MODELS_DIR, ".parquet")
            if not name.startswith((".", "_"))
        ]

    def write_models(self, table: pa.Table, config_hash: str | None = None) -> str:
        """Write a `models_table` as its deterministic shard; return its relative path.

        ``config_hash`` (the run's `Config.hash`) is recorded in the shard's metadata so that
        `verify` and the readers can tell a shard copied from another run.
        """
        return write_model_shard(self.fs, table, config_hash=config_hash)[0]

    def _models_dataset(self) -> ds.Dataset | None:
        refuse_interrupted(self)  # a compaction stopped half way hides models: never a subset
        names = self.shard_files()
        if not names:
            return None
        n_train, n_eval = self.sizes()
        paths = [self.fs.join(MODELS_DIR, name) for name in names]
        # Every page read is checked against its CRC (pages written without one are not).
        checked = ds.ParquetFileFormat(
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(
                page_checksum_verification=True
            )
        )
        dataset = ds.dataset(
            paths,
            # shards written before ``trainer`` existed read it as null
            schema=models_written_schema(n_train, n_eval),
            format=checked,
            filesystem=self.fs.filesystem,
        )
        # The dataset would fill a missing column with nulls; check every footer first.
        config_hash = self.recorded_config_hash()
        problems: list[Problem] = []
        for fragment in dataset.get_fragments():
            rel_path = f"{MODELS_DIR}/{posixpath.basename(fragment.path)}"
            try:
                physical = fragment.physical_schema
            except (pa.ArrowException, OSError) as exc:
                problems.append(Problem(rel_path, "torn", f"not readable Parquet: {exc}"))
                continue
            problems.extend(
                shard_schema_problems(rel_path, physical, n_train, n_eval)
                or foreign_problems(rel_path, physical, config_hash)
            )
        if problems:
            raise StoreError(
                f"{self.fs.display(MODELS_DIR)} has bad shards:\n" + format_problems(problems)
            )
        return dataset

    def _scan(self, dataset: ds.Dataset, columns: list[str], row_filter) -> pa.Table:
        """``dataset.to_table``; a page that fails to read (its checksum, or its encoding) is
        a one-line `StoreError` naming the shard instead of an anonymous Arrow error."""
        try:
            return dataset.to_table(columns=columns, filter=row_filter)
        except (pa.ArrowException, OSError) as exc:
            # Rare path: find the shard by reading the same columns shard by shard.
            for fragment in dataset.get_fragments():
                try:
                    fragment.to_table(columns=columns, schema=dataset.schema)
                except (pa.ArrowException, OSError) as shard_exc:
                    rel_path = f"{MODELS_DIR}/{posixpath.basename(fragment.path)}"
                    raise StoreError(
                        f"{self.fs.display(rel_path)}: corrupt: a data page does not read "
                        f"({first_line(shard_exc)}); run `datamodels verify {self.uri}` and "
                        "quarantine the shard (its models are trained again on resume)"
                    ) from exc
            raise StoreError(
                f"reading {self.fs.display(MODELS_DIR)} failed: {first_line(exc)}"
            ) from exc

    def _check_unique(self, ids: np.ndarray) -> None:
        """Raise naming the shards when a model_id is stored twice (never pick one silently)."""
        if np.unique(ids).size != ids.size:
            problems = [p for p in scan_shards(self)[1] if p.kind == "duplicate"]
            raise StoreError("duplicate model_ids in models/:\n" + format_problems(problems))

    def _read_models(self, plan: str | list[str] | None, columns: list[str]) -> pa.Table:
        """Rows of the selected plans, ``columns`` (model_id first), in file order."""
        dataset = self._models_dataset()
        if dataset is None:
            return models_written_schema(*self.sizes()).empty_table().select(columns)
        plans = _as_list(plan)
        row_filter = None if plans is None else pc.field("plan").isin(plans)
        table = self._scan(dataset, columns, row_filter)
        self._check_unique(table.column("model_id").to_numpy())
        return table

    @staticmethod
    def _order(ids: np.ndarray) -> np.ndarray | None:
        """Permutation sorting ``ids``, or None when they are already sorted (the usual case)."""
        if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
            return None
        return np.argsort(ids, kind="stable")

    def models(
        self, plan: str | list[str] | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """The ``models/`` rows of ``plan`` (one name, several, or all), sorted by model_id."""
        names = models_written_schema(0, 0).names
        columns = list(columns) if columns is not None else names
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise StoreError(f"models has no column(s) {unknown}; its columns are {names}")
        read = columns if "model_id" in columns else ["model_id", *columns]
        table = self._read_models(plan, read)
        order = self._order(table.column("model_id").to_numpy())
        if order is not None:
            table = table.take(order)
        return table.select(columns)

    def _arrays(self, plan: str | list[str] | None, columns: list[str]) -> list[np.ndarray]:
        table = self._read_models(plan, ["model_id", *columns])
        ids = table.column("model_id").to_numpy()
        order = self._order(ids)
        arrays = [ids]
        for column in columns:
            array = fixed_size_list_to_numpy(table.column(column), _ARRAY_DTYPES[column])
            arrays.append(array if order is None else array[order])
        return arrays if order is None else [ids[order], *arrays[1:]]

    def model_ids(self, plan: str | list[str] | None = None) -> np.ndarray:
        """``int64[m]``: model ids of ``plan``, sorted."""
        return self._arrays(plan, [])[0]

    def masks(self, plan: str | list[str] | None = None) -> np.ndarray:
        """``bool[m, n_train]``: subset masks in model_id order."""
        return self._arrays(plan, ["mask"])[1]

    def margins(self, plan: str | list[str] | None = None) -> np.ndarray:
        """``float32[m, n_eval]``: eval margins in model_id order."""
        return self._arrays(plan, ["margins"])[1]

    def masks_and_margins(
        self, plan: str | list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(``bool[m, n_train]``, ``float32[m, n_eval]``) read in one pass, model_id order."""
        _, masks, margins = self._arrays(plan, ["mask", "margins"])
        return masks, margins

    def valid_shards(self) -> tuple[list[str], list[Problem]]:
        """(names of usable shards, shard problems); never raises. See `verify.valid_shards`."""
        return valid_shards(self)

    def done_model_ids(self) -> set[int]:
        """Model ids in usable shards (reads only each shard's footer and ``model_id`` column)."""
        infos, _ = scan_shards(self)
        done: set[int] = set()
        for info in infos:
            if info.usable and info.model_ids is not None:
                done.update(info.model_ids.tolist())
        return done

    def stored_model_ids(self) -> np.ndarray:
        """``int64[k]``: sorted unique model ids in usable shards (`done_model_ids` as one
        array: no Python object per model)."""
        infos, _ = scan_shards(self)
        arrays = [i.model_ids for i in infos if i.usable and i.model_ids is not None]
        return np.unique(np.concatenate(arrays)) if arrays else np.zeros(0, dtype=np.int64)

    def trainers_by_plan(self) -> dict[str, dict[str | None, int]]:
        """plan -> {trainer label: models}: which trainer code made the stored models of
        each plan (label None: a shard written before labels were recorded). A model stored
        twice counts twice (duplicates are `verify`'s to name; ``train`` trains around them)."""
        dataset = self._models_dataset()
        if dataset is None:
            return {}
        table = self._scan(dataset, ["model_id", "plan", "trainer"], None)
        counts = table.group_by(["plan", "trainer"], use_threads=False).aggregate(
            [("model_id", "count")]
        )
        found: dict[str, dict[str | None, int]] = {}
        for plan, trainer, count in zip(
            counts.column("plan").to_pylist(), counts.column("trainer").to_pylist(),
            counts.column("model_id_count").to_pylist(), strict=True,
        ):
            found.setdefault(plan, {})[trainer] = int(count)
        return found

    def plan_witness(self, plan: str | list[str] | None) -> str:
        """A short hash of the model ids stored for ``plan``: what a stage that reads those
        models depends on (a model's row is a pure function of its id)."""
        ids = self.model_ids(plan)
        return f"{len(ids)}:{hashlib.sha1(ids.tobytes()).hexdigest()[:16]}"

    def quarantine_bad_shards(self, pages: bool = True) -> list[Problem]:
        """Move torn, corrupt (every page checked, with ``pages``), wrong-schema, wrong-length,
        foreign and off-plan shards to ``models/_invalid/``; returns their problems (their
        models count as not done, so they are trained again)."""
        _, problems = valid_shards(self, pages=pages)
        moved = []
        for problem in problems:
            if problem.kind in UNUSABLE_KINDS and problem.file:
                self.quarantine(problem.file, f"{problem.kind}: {problem.message}")
                moved.append(problem)
        return moved

    def masks_of(self, model_ids: np.ndarray) -> np.ndarray:
        """``bool[k, n_train]``: the stored masks of ``model_ids``, in the order given."""
        model_ids = np.asarray(model_ids, dtype=np.int64)
        dataset = self._models_dataset()
        if dataset is None:
            raise StoreError(
                f"{self.fs.display(MODELS_DIR)} holds no models; run `datamodels train` first"
            )
        table = self._scan(dataset, ["model_id", "mask"], pc.field("model_id").isin(model_ids))
        ids = table.column("model_id").to_numpy()
        self._check_unique(ids)
        missing = sorted(set(model_ids.tolist()) - set(ids.tolist()))
        if missing:
            raise StoreError(
                f"model {missing[0]} is not in {self.fs.display(MODELS_DIR)}; "
                "run `datamodels train`"
            )
        masks = fixed_size_list_to_numpy(table.column("mask"), np.bool_)
        order = np.argsort(ids)
        return masks[order[np.searchsorted(ids, model_ids, sorter=order)]]

    def quarantine(self, shard_name: str, reason: str) -> str:
        """Move a bad shard to ``models/_invalid/`` (never deleted) with a ``.reason.txt``.

        Its models count as not done, so a resumed run retrains them. Returns the new path.
        """
        name = posixpath.basename(shard_name)
        source = f"{MODELS_DIR}/{name}"
        self._require(source, "nothing to quarantine")
        stem, extension = posixpath.splitext(name)
        target, copy = f"{INVALID_DIR}/{name}", 0
        while self.fs.exists(target):
            copy += 1
            target = f"{INVALID_DIR}/{stem}.{copy}{extension}"
        self.fs.move(source, target)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        note = f"quarantined {source} at {stamp}: {reason}\n"
        self.fs.write_bytes_atomic(f"{target}.reason.txt", note.encode("utf-8"))
        return target
