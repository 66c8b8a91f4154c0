"""Checking a run directory: every problem reported by file name, none silently mixed in.

`verify` reads each file on its own (the whole file, every page checked against its CRC
where the writer recorded one) so one bad file never hides another, and returns a list of
`Problem`:

- ``missing``   ``config.yaml`` or ``examples.parquet`` is absent;
- ``config``    ``config.yaml`` is not readable, or its ``config_hash`` does not match its content;
- ``torn``      a file is not readable Parquet (truncated, a partial copy, ...);
- ``corrupt``   the footer reads but a data page does not (a page checksum fails: bytes changed
                after the file was written);
- ``schema``    wrong columns / types, or a schema_version this release cannot read;
- ``length``    a shard's ``mask`` length differs from n_train or its ``margins`` length from
                n_eval (both from ``examples.parquet``; read from the schema, not the data);
- ``foreign``   a shard records another ``config_hash`` than ``config.yaml`` (copied from
                another run);
- ``plan``      a shard's model ids are not in the run's plan, or their masks (or plan names)
                are not what the plan gives them (checked when ``config.yaml`` is a full config:
                masks are a pure function of (config seed, plan, model_id));
- ``duplicate`` a model_id in two shards (both named) or twice in one;
- ``interrupted`` a ``datamodels compact`` stopped half way (its shards wait in
                ``models/_compacting/``; `compact` or `train` finishes or undoes it).

Page checksums and ``config_hash`` are metadata added with schema_version 1 unchanged: files
written before them carry neither, and are accepted (nothing to verify, nothing to compare).

`valid_shards` / `scan_shards` are what the readers and the driver use: which shards they can
trust and what the driver should quarantine. They read footers and the ``model_id`` column,
and verify what `verify` would name, once per change of a file (`datamodels.store.guards`:
the plan check of a shard without a config hash, and for `valid_shards` every page); while an
interrupted compaction hides models they refuse, naming ``datamodels compact``.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

import pyarrow as pa

from datamodels.errors import StoreError
from datamodels.plans import stored_masks
from datamodels.store.fs import RunFS
from datamodels.store.guards import check_trust, hidden_by_compaction, refuse_interrupted
from datamodels.store.positions import train_size
from datamodels.store.problems import UNUSABLE_KINDS, Problem, format_problems
from datamodels.store.provenance import PlanCheck, read_config_hash, run_config
from datamodels.store.schemas import (
    COMPACTING_DIR,
    EVALUATION_PATH,
    EVALUATION_SCHEMA,
    EXAMPLES_PATH,
    EXAMPLES_SCHEMA,
    FAILURES_PATH,
    FAILURES_SCHEMA,
    MODELS_DIR,
    PLAN_MASKS_DIR,
    REMOVAL_RESULTS_PATH,
    REMOVAL_RESULTS_SCHEMA,
    REMOVAL_SETS_PATH,
    REMOVAL_SETS_SCHEMA,
    SCORES_DIR,
    TARGETS_PATH,
    TARGETS_SCHEMA,
    WEIGHTS_PATH,
    WEIGHTS_SCHEMA,
    scores_schema,
)
from datamodels.store.shard_checks import (  # re-exported: the readers import them from here
    ShardInfo,
    _length_problem,
    _list_size,
    _map_threads,
    _schema_problems,
    corrupt_problem,
    duplicate_problems,
    inspect_shard,
    read_checked,
    shard_schema_problems,
)

if TYPE_CHECKING:
    from datamodels.store.run import Run

__all__ = [
    "ShardInfo",
    "corrupt_problem",
    "duplicate_problems",
    "inspect_shard",
    "read_checked",
    "refuse_unusable_shards",
    "run_sizes",
    "scan_shards",
    "shard_schema_problems",
    "valid_shards",
    "verify",
]


def run_sizes(run: Run, full: bool = False) -> tuple[int | None, int | None, list[Problem]]:
    """(n_train, n_eval, problems of examples.parquet); sizes are None when it is unusable.

    Reads the two position columns, or (``full``) the whole file, so every page is checked.
    """
    if not run.fs.isfile(EXAMPLES_PATH):
        message = f"{EXAMPLES_PATH} is absent; run `datamodels prepare` to write it"
        return None, None, [Problem(EXAMPLES_PATH, "missing", message)]
    positions, problems = read_checked(
        run.fs,
        EXAMPLES_PATH,
        lambda schema: _schema_problems(EXAMPLES_PATH, schema, EXAMPLES_SCHEMA),
        None if full else ["train_position", "eval_position"],
    )
    if positions is None:
        return None, None, problems
    n_train = train_size(positions.column("train_position"))
    n_eval = len(positions) - positions.column("eval_position").null_count
    return n_train, n_eval, []


def scan_shards(
    run: Run,
    n_train: int | None = None,
    n_eval: int | None = None,
    config_hash: str | None = None,
    full: bool = False,
    plan: PlanCheck | None = None,
    pages: bool = False,
    reader: bool = True,
) -> tuple[list[ShardInfo], list[Problem]]:
    """Inspect every shard in ``models/``: per-shard infos and all shard problems (duplicates too).

    ``n_train``/``n_eval`` default to the sizes in ``examples.parquet`` (length checks are
    skipped when it is unusable; `verify` reports that separately), ``config_hash`` to the one
    recorded in ``config.yaml``. ``full`` and ``plan``: see `inspect_shard`.

    As a ``reader`` (the default; `verify` is not one) it refuses while an interrupted
    compaction hides models, and it trusts a shard only once verified (`guards.check_trust`:
    the plan check of a shard without a config hash; with ``pages`` every page too).
    """
    if reader:
        refuse_interrupted(run)
    if n_train is None and n_eval is None:
        n_train, n_eval, _ = run_sizes(run)
    if config_hash is None:
        config_hash = read_config_hash(run)
    names = run.shard_files()
    infos = _map_threads(
        lambda name: inspect_shard(
            run.fs, name, n_train, n_eval, config_hash=config_hash, full=full, plan=plan
        ),
        names,
    )
    if reader and not full and plan is None:
        infos = check_trust(run, infos, n_train, n_eval, config_hash, pages)
    problems = [problem for info in infos for problem in info.problems]
    problems.extend(duplicate_problems([info for info in infos if info.usable]))
    return infos, problems


def valid_shards(run: Run, pages: bool = True) -> tuple[list[str], list[Problem]]:
    """(names of usable shards, all shard problems); raises only while an interrupted
    compaction hides models (`guards.refuse_interrupted`).

    Usable means readable, every page matching its checksum (verified once per change of the
    file, `guards.check_trust`; not with ``pages=False``), right schema and lengths, and (for
    a shard without a config hash) masks from the plan. A shard with a ``duplicate`` problem
    is still usable (its rows are fine); the problem names both files for a human.
    """
    infos, problems = scan_shards(run, pages=pages)
    return [info.name for info in infos if info.usable], problems


def refuse_unusable_shards(run: Run, pages: bool = False) -> None:
    """`StoreError` naming every shard a reader must not use (torn, corrupt, wrong schema or
    length, foreign, or ``plan``: a shard without a config hash whose masks are not the
    plan's), and while an interrupted compaction hides models. ``train`` sets such shards
    aside and trains their models again."""
    _, problems = scan_shards(run, pages=pages)
    unusable = [problem for problem in problems if problem.kind in UNUSABLE_KINDS]
    if unusable:
        raise StoreError(
            f"{run.fs.display(MODELS_DIR)} has shards that must not be used; `datamodels "
            "train` sets them aside and trains their models again:\n"
            + format_problems(unusable)
        )


def _table_problems(runfs: RunFS, rel_path: str, expected: pa.Schema) -> list[Problem]:
    return read_checked(
        runfs, rel_path, lambda schema: _schema_problems(rel_path, schema, expected)
    )[1]


def _scores_problems(runfs: RunFS, rel_path: str, n_train: int | None) -> list[Problem]:
    def schema_problems(schema: pa.Schema) -> list[Problem]:
        size = _list_size(schema, "scores")
        expected = scores_schema(size if size is not None else 0)
        problems = _schema_problems(rel_path, schema, expected)
        return problems or _length_problem(rel_path, "scores", size, n_train, "n_train")

    return read_checked(runfs, rel_path, schema_problems)[1]


def interrupted_problems(run: Run) -> list[Problem]:
    """One ``interrupted`` problem per group an interrupted compaction left behind; those
    whose stashed shards are missing from ``models/`` say so (the readers refuse them)."""
    hiding = dict(hidden_by_compaction(run.fs))
    problems = []
    for entry in run.fs.entries(COMPACTING_DIR):
        path = f"{COMPACTING_DIR}/{entry}"
        hidden = (
            f"its {hiding[path]} stashed shard(s) are missing from models/ and readers refuse "
            "the run until then; "
            if path in hiding
            else ""
        )
        message = (
            f"an interrupted `datamodels compact` left this folder; {hidden}run `datamodels "
            f"compact {run.fs.display_root}` (or `train`) to finish or undo it"
        )
        problems.append(Problem(path, "interrupted", message))
    return problems


def verify(run: Run) -> list[Problem]:
    """Every problem in the run directory, each naming its file (empty list: all good).

    Reads every file whole, checking each page against its checksum, and (when config.yaml
    is a full config) every shard's masks against the plan.
    """
    config_hash, config, problems = run_config(run)
    n_train, n_eval, example_problems = run_sizes(run, full=True)
    problems.extend(example_problems)
    plan = None
    if config is not None and n_train is not None:
        try:
            stored = stored_masks(config, run)
        except StoreError as exc:
            problems.append(Problem(PLAN_MASKS_DIR, "schema", str(exc)))
            stored = {}
        plan = PlanCheck.of(config, n_train, stored)
    problems.extend(
        scan_shards(
            run, n_train, n_eval, config_hash=config_hash, full=True, plan=plan, reader=False
        )[1]
    )
    problems.extend(interrupted_problems(run))
    for rel_path, expected in (
        (FAILURES_PATH, FAILURES_SCHEMA),
        (WEIGHTS_PATH, WEIGHTS_SCHEMA),
        (TARGETS_PATH, TARGETS_SCHEMA),
        (EVALUATION_PATH, EVALUATION_SCHEMA),
        (REMOVAL_SETS_PATH, REMOVAL_SETS_SCHEMA),
        (REMOVAL_RESULTS_PATH, REMOVAL_RESULTS_SCHEMA),
    ):
        if run.fs.isfile(rel_path):
            problems.extend(_table_problems(run.fs, rel_path, expected))
    for name in run.fs.listdir(SCORES_DIR):
        problems.extend(_scores_problems(run.fs, posixpath.join(SCORES_DIR, name), n_train))
    return problems


