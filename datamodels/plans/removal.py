"""``removal``: a stored kind whose table the ``removal`` stage writes from the score tables.

For each target (``count`` of them, or the eval positions ``targets``), each of ``methods``
and each k in ``ks`` (plus, with ``brittle``, the method's predicted smallest flipping k), the
k most helpful training points are removed; mask 0 keeps every point (the baseline). The plan
has 1 + targets × methods × (len(ks) + brittle) masks, laid out by `removal_layout`.
"""

from __future__ import annotations

from datamodels.plans.base import PlanConfig
from datamodels.plans.stored import Stored


def removal_layout(plan: PlanConfig) -> list[tuple[int, str | None, int, str, int]]:
    """The masks of a ``removal`` plan: (mask_index, method, target number, kind, k index)
    for mask 0 (``baseline``) and, per method, target number and k, a ``grid`` mask (k index
    into ``ks``) then, with ``brittle``, one ``brittle`` mask (k index -1)."""
    n_targets = len(plan.targets) if plan.targets is not None else int(plan.count)
    rows: list[tuple[int, str | None, int, str, int]] = [(0, None, -1, "baseline", -1)]
    for method in plan.methods:
        for target in range(n_targets):
            for k_index in range(len(plan.ks)):
                rows.append((len(rows), method, target, "grid", k_index))
            if plan.brittle:
                rows.append((len(rows), method, target, "brittle", -1))
    return rows


class Removal(Stored):
    name = "removal"
    writes_masks = "run `datamodels removal RUN`"
    in_transfer = False
    one_per_config = True  # its tables are removals/sets.parquet and removals/results.parquet
    requires_count = False

    def validate(self, plan: PlanConfig) -> None:
        if plan.targets is None and plan.count is None:
            raise ValueError(
                f"plans.{plan.name}: a removal plan needs count (how many test targets) "
                "or targets (their eval positions)"
            )
        if not plan.ks or any(k < 1 for k in plan.ks):
            raise ValueError(f"plans.{plan.name}.ks must be positive counts, e.g. [10, 50]")
        if not plan.methods:
            raise ValueError(f"plans.{plan.name}.methods must name score tables")

    def n_masks(self, plan: PlanConfig, n_train: int) -> int:
        return len(removal_layout(plan))
