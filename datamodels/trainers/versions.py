"""The code version of each trainer: which numbers a stored model came from.

Every shard of ``models/`` records, in its ``trainer`` column, the trainer label of the code
that trained its models (`trainer_label`: ``lbfgs@1``, ``vmapped@1+sequential@1``,
``transfer@1+batched_mlp@1``): each part a trainer path of ``trainers.paths.TRAINERS`` (or
``custom``, ``transfer``) and its version below. ``train`` refuses to add models of one label
to a plan whose stored models carry another, and the ``train`` stage's fingerprint holds the
versions, so a bumped trainer makes a finished run's ``train`` stale.

**When to bump.** A change that can move any number a trainer returns for the same masks,
seeds and config (margins, loss, accuracy, checkpoints): a new objective, optimiser step,
initialisation, batch order or default, or a fixed bug. A change that leaves every number as
it was (speed, memory, messages) keeps the version. ``tests/trainers/test_versions.py`` pins
a small output of each trainer per version and fails naming the constant to bump.

Version 1 is each trainer as it stood when versions began to be recorded; a shard written
before that (no ``trainer`` column, schema_version 2 or earlier) counts as version 1 of the
run's trainer (`FIRST_VERSION`).
"""

from __future__ import annotations

FIRST_VERSION = 1

# path -> version; the comment names the modules whose numbers the version covers
TRAINER_VERSIONS: dict[str, int] = {
    "batched_mlp": 1,  # batched.py (train_mlp_batched), batches.py, outcome.py
    "lbfgs": 1,  # logreg.py, batched.py (logreg_objective, train_logreg_batched)
    "grouped": 1,  # grouped.py, group_net.py (fastnet)
    "vmapped": 1,  # vmapped.py
    "sequential": 1,  # sequential.py, orders.py (one nn.Module at a time)
    "custom": 1,  # custom.py (the loop around a train.recipe)
    "null": 1,  # null.py (pseudo-margins)
    "transfer": 1,  # transfer.py (pre-training on source classes, probe or fine-tune)
}


def trainer_label(parts: dict[str, int]) -> str:
    """``name@version`` of each part, joined by ``+`` (the outer trainer first)."""
    return "+".join(f"{name}@{version}" for name, version in parts.items())


def first_versions(parts: dict[str, int]) -> dict[str, int]:
    """``parts`` with every version at `FIRST_VERSION`: what a shard that records no trainer
    counts as."""
    return dict.fromkeys(parts, FIRST_VERSION)


def mixed_trainers(found: dict[str, dict[str | None, int]], parts: dict[str, int]) -> str | None:
    """Why training with ``parts`` would mix trainer versions in a plan, or None.
    ``found``: plan -> {stored trainer label (None: not recorded, counted as version 1):
    models}."""
    current, legacy = trainer_label(parts), trainer_label(first_versions(parts))
    for plan, counts in sorted(found.items()):
        other: dict[str, int] = {}
        for label, n in counts.items():
            label = legacy if label is None else label
            if label != current:
                other[label] = other.get(label, 0) + n
        if other:
            label = sorted(other)[0]
            return (
                f"plan '{plan}' has {other[label]} models made by trainer {label}, but this "
                f"datamodels trains with {current}; one plan cannot mix trainer versions"
            )
    return None
