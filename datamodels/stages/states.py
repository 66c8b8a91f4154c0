"""Per stage of the pipeline: done, stale or missing (what ``datamodels status`` shows).

A stage is **missing** before its marker exists (or when one of its outputs was removed),
**stale** when its marker's digest differs from the fingerprint it would have now (its inputs
or settings changed) or when a stage it reads is stale or missing (each fingerprint holds a
witness of the inputs it read, so an upstream rewritten since shows as a changed digest), and
**done** otherwise. A stage made of several (one per estimator, one per attack target) takes
the worst of them; one that does not apply to the run (no removal plan, never asked for)
is ``-``. ``changed`` names the producers whose code version differs from the one the
marker recorded (``method.shapley 1 -> 2``; a marker without versions counts as 1).
"""

from __future__ import annotations

import pandas as pd

from datamodels.config import Config
from datamodels.errors import StoreError
from datamodels.stages.base import Stage
from datamodels.stages.pipeline import PIPELINE, spec_of
from datamodels.store import Run
from datamodels.trainers.versions import FIRST_VERSION

DONE, STALE, MISSING, NOT_RUN = "done", "stale", "missing", "-"
_RANK = {NOT_RUN: 0, DONE: 1, STALE: 2, MISSING: 3}


def stage_state(stage: Stage) -> str:
    """done / stale / missing of one stage object, from its marker alone."""
    record = stage.marker()
    fs = stage.run.fs
    if record is None or not all(fs.isfile(p) for p in stage.outputs()):
        return MISSING
    return DONE if record.get("digest") == stage.digest else STALE


def version_changes(stage: Stage) -> list[str]:
    """``name recorded -> now`` for each producer whose code version differs from the one the
    stage's marker recorded (none before the stage's first completion)."""
    record = stage.marker()
    if record is None:
        return []
    recorded = record.get("versions") or {}
    return [
        f"{name} {recorded.get(name, FIRST_VERSION)} -> {version}"
        for name, version in sorted(stage.versions().items())
        if recorded.get(name, FIRST_VERSION) != version
    ]


def stage_states(config: Config, run: Run) -> pd.DataFrame:
    """One row per declared stage: ``stage``, ``state`` (module docstring), ``default``
    (walked by ``run``), ``reads``, ``command`` (what makes it) and ``changed`` (producer
    code versions changed since it ran, `version_changes`)."""
    states: dict[str, str] = {}
    rows = []
    for entry in PIPELINE:
        stages = entry.stages(config, run)
        found = [stage_state(s) for s in stages]
        changed = "; ".join(change for s in stages for change in version_changes(s))
        state = max(found, key=_RANK.__getitem__) if found else NOT_RUN
        if state == DONE and any(states.get(up) in (STALE, MISSING) for up in entry.reads):
            state = STALE
        states[entry.name] = state
        rows.append({"stage": entry.name, "state": state, "default": entry.default,
                     "reads": ", ".join(entry.reads), "command": f"datamodels {entry.command} RUN",
                     "changed": changed})
    return pd.DataFrame(rows)


def require_current(stage: Stage, what: str, path: str) -> None:
    """Stop in one line naming the command that makes ``path`` unless ``stage`` is done,
    e.g. "alpha effect: applications/alpha_effect.parquet is missing; run
    `datamodels alpha-effect RUN`"."""
    state = stage_state(stage)
    if state != DONE:
        raise StoreError(f"{what}: {path} is {state}; run {make_command(stage)}")


def make_command(stage: Stage) -> str:
    """The command line that makes ``stage``'s outputs on its run, in backquotes."""
    return f"`datamodels {spec_of(stage).command} {stage.run.uri}`"
