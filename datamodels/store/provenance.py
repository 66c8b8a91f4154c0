"""Whether a shard belongs to its run: the config hash it records, and its masks against the
run's plan (masks are a pure function of (config seed, plan, model_id))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import yaml

from datamodels.config import config_from_dict
from datamodels.errors import ConfigError, StoreError
from datamodels.plans import PlannedModels, masks_for, plan_models
from datamodels.store.identifiers import CONFIG_HASH
from datamodels.store.problems import QUARANTINE_FIX, Problem, first_line, shown
from datamodels.store.schemas import CONFIG_PATH
from datamodels.store.shards import CONFIG_HASH_KEY, fixed_size_list_to_numpy

if TYPE_CHECKING:
    from datamodels.config import Config
    from datamodels.store.run import Run


def recorded_config_hash(schema: pa.Schema) -> str | None:
    """The ``config_hash`` a shard was written with, or None (written before it was recorded)."""
    raw = (schema.metadata or {}).get(CONFIG_HASH_KEY)
    return None if raw is None else raw.decode("utf-8", errors="replace")


def foreign_problems(rel_path: str, schema: pa.Schema, config_hash: str | None) -> list[Problem]:
    """A ``foreign`` problem when the shard records another config hash than the run's
    (nothing when either is unknown: old shards and hand-written configs are accepted)."""
    recorded = recorded_config_hash(schema)
    if config_hash is None or recorded is None or recorded == config_hash:
        return []
    message = (
        f"written for config hash {recorded} but {CONFIG_PATH} has config_hash {config_hash}: "
        f"copied from another run; {QUARANTINE_FIX}"
    )
    return [Problem(rel_path, "foreign", message)]


@dataclass(frozen=True)
class PlanCheck:
    """Checks stored masks against the run's plan: masks are a pure function of
    (config seed, plan, model_id), so a shard's rows can be recomputed and compared."""

    config: Config
    planned: PlannedModels
    n_train: int
    stored: dict | None = None  # stored-mask plans: plan -> rows of removed positions

    @classmethod
    def of(cls, config: Config, n_train: int, stored: dict | None = None) -> PlanCheck:
        return cls(config, plan_models(config, n_train), n_train, stored)

    def problems(self, rel_path: str, table: pa.Table) -> list[Problem]:
        """``plan`` problems of one shard (``table`` has its model_id, plan and mask columns)."""
        ids = table.column("model_id").to_numpy().astype(np.int64, copy=False)
        planned_ids = self.planned.model_id
        positions = np.minimum(np.searchsorted(planned_ids, ids), max(planned_ids.size - 1, 0))
        known = planned_ids[positions] == ids if planned_ids.size else np.zeros(ids.size, bool)
        problems = []
        if not known.all():
            unknown = np.sort(ids[~known])
            message = (
                f"model_id(s) {shown(unknown)} are not in the plan of {CONFIG_PATH} "
                f"({planned_ids.size} models): not this run's; {QUARANTINE_FIX}"
            )
            problems.append(Problem(rel_path, "plan", message, tuple(unknown.tolist())))
        if known.any():
            planned = self.planned.take(positions[known])
            try:
                expected = masks_for(self.config, planned, self.n_train, self.stored)
            except StoreError as exc:  # a stored-mask plan's models without its masks table
                bad = np.sort(ids[known])
                return problems + [Problem(rel_path, "plan", str(exc), tuple(bad.tolist()))]
            stored = fixed_size_list_to_numpy(table.column("mask"), np.bool_)[known]
            plans = np.asarray(table.column("plan").to_pylist(), dtype=object)[known]
            wrong = (stored != expected).any(axis=1) | (plans != planned.plan)
            if wrong.any():
                bad = np.sort(ids[known][wrong])
                message = (
                    f"the masks (or plan names) of model_id(s) {shown(bad)} are not the ones "
                    f"{CONFIG_PATH} plans (seed {self.config.seed}): trained for another "
                    f"config; {QUARANTINE_FIX}"
                )
                problems.append(Problem(rel_path, "plan", message, tuple(bad.tolist())))
        return problems


def _config_tree(run: Run) -> tuple[dict | None, list[Problem]]:
    """config.yaml as a mapping (None when absent or unreadable, with the problem)."""
    if not run.fs.isfile(CONFIG_PATH):
        return None, [Problem(CONFIG_PATH, "missing", f"{CONFIG_PATH} is absent")]
    try:
        tree = yaml.safe_load(run.read_config_text())
    except (yaml.YAMLError, UnicodeDecodeError, StoreError, OSError) as exc:
        return None, [Problem(CONFIG_PATH, "config", f"not readable YAML: {first_line(exc)}")]
    if not isinstance(tree, dict):
        return None, [Problem(CONFIG_PATH, "config", "not a mapping of config sections")]
    return tree, []


def read_config_hash(run: Run) -> str | None:
    """The ``config_hash`` recorded in the run's config.yaml (None when absent or unreadable)."""
    tree, _ = _config_tree(run)
    value = None if tree is None else tree.get("config_hash")
    return None if value is None else str(value)


def run_config(run: Run) -> tuple[str | None, Config | None, list[Problem]]:
    """(recorded config_hash, the full config, problems) of the run's config.yaml.

    The config is None unless config.yaml is a full config this release reads whose content
    hashes to its recorded ``config_hash`` (as ``prepare`` writes it); shards are then
    checked against its plan. A config.yaml without ``config_hash`` checks nothing.
    """
    tree, problems = _config_tree(run)
    if tree is None or tree.get("config_hash") is None:
        return None, None, problems
    recorded = str(tree["config_hash"])
    if not CONFIG_HASH.fullmatch(recorded):  # it would name cache files: refused by readers
        message = f"config_hash {recorded[:80]!r} is not a config hash (16 hex digits)"
        return None, None, [Problem(CONFIG_PATH, "config", message)]
    try:
        config = config_from_dict(tree)
    except ConfigError:
        return recorded, None, []  # not a config of this release: compare hashes only
    if config.hash != recorded:
        message = (
            f"records config_hash {recorded} but its content hashes to {config.hash}: edited by "
            "hand? restore it (the hash decides which models belong to the run)"
        )
        return recorded, None, [Problem(CONFIG_PATH, "config", message)]
    return recorded, config, []
