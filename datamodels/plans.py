"""Which models to train: the plan table, and masks as a pure function of (seed, plan, id).

Model ids are assigned in config order: each plan owns a contiguous block of ids. Within a
plan, model ``j`` trains on mask number ``j // seeds`` with replicate ``j % seeds``; the mask
depends only on ``(config seed, plan name, mask number)`` and the training seed additionally
on the replicate — never on scheduling order, batch composition or attempt.

Mask numbers by plan kind (n = n_train):
* ``alpha``: ``count`` masks ~ Ber(alpha).
* ``alpha_grid``: ``levels * count`` masks, level ``mask // count`` at Gauss-Legendre node
  α_level; or (levels 0) ``count`` masks with α ~ U(0, 1) each.
* ``loo``: mask 0 is the full set, mask ``k >= 1`` leaves out point ``points[k - 1]``.
* ``tmc``: mask ``p * (n + 1) + k`` is the first k points of permutation p (k = 0..n); a
  walk trains a prefix of these and stops (truncation), so not every id is trained.
* ``single_model``: mask 0 is the full set; mask ``1 + level * count + k`` drops
  round(drops[level]·n) points drawn at random. Every model of a replicate has the *same*
  training seed (the seed of mask 0), and trains over the full set's batch order with the
  dropped points weighted 0 (``training_weights``).
* ``classes`` (transfer runs, n = number of source classes): ``count`` masks, each exactly
  round(alpha·n) positions drawn uniformly without replacement.
* ``stored`` / ``removal`` (stored-mask plans): masks that depend on results (scores, classes)
  exist only after the config. The plan fixes how many masks there are (``n_masks``: model ids
  stay a pure function of the config); the masks themselves are read from
  ``plan_masks/<plan>.parquet``, a table written once (`Run.write_plan_masks`): mask j is the
  full training set minus row j's ``removed`` positions. ``masks_for`` takes those rows as
  ``stored``; ``train`` skips such a plan until its table exists, and ``verify`` checks stored
  models against it. A ``removal`` plan has 1 + targets × methods × (len(ks) + brittle)
  masks, laid out by `removal_layout`; its table is written by the ``removal`` stage.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from datamodels.config import Config, PlanConfig
from datamodels.store.schemas import PLAN_MASKS_DIR


@dataclass(frozen=True)
class PlannedModels:
    """Planned models (one entry per model), arrays of length m sorted by ``model_id``."""

    model_id: np.ndarray  # int64[m]
    plan: np.ndarray  # str[m] plan names (a fixed-width unicode array: no per-model objects)
    alpha: np.ndarray  # float64[m] inclusion probability the mask was drawn with
    seed: np.ndarray  # int64[m] training seed
    mask_index: np.ndarray  # int64[m] index of the mask within its plan

    def __len__(self) -> int:
        return len(self.model_id)

    def take(self, positions: np.ndarray) -> PlannedModels:
        return PlannedModels(*(getattr(self, f)[positions] for f in self.__dataclass_fields__))

    def select_ids(self, model_ids: np.ndarray) -> PlannedModels:
        positions = np.searchsorted(self.model_id, np.asarray(model_ids, dtype=np.int64))
        return self.take(positions)


def _plan_key(name: str) -> int:
    return zlib.crc32(name.encode())


def training_seed(config_seed: int, plan: str, mask_index: int, replicate: int) -> int:
    seq = np.random.SeedSequence([config_seed, _plan_key(plan), mask_index, replicate, 1])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


# numpy's SeedSequence (O'Neill's seed_seq hash, pool of 4 words), vectorised over models: a
# Python loop of SeedSequence objects costs ~7 µs a model, 2 s for a 300,000-model plan.
_POOL, _XSHIFT = 4, np.uint32(16)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = np.uint32(0xCA01F9DD), np.uint32(0x4973F715)


def seed_sequence_words(entropy: list[np.ndarray]) -> np.ndarray:
    """uint32[m]: ``SeedSequence(entropy[:, r]).generate_state(1)[0]`` for every column r, where
    ``entropy`` is a list of uint32[m] words (each entropy value below 2**32)."""
    hash_const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & 0xFFFFFFFF
        value = value * np.uint32(hash_const)
        return value ^ (value >> _XSHIFT)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = _MIX_L * x - _MIX_R * y
        return result ^ (result >> _XSHIFT)

    zero = np.zeros_like(entropy[0])
    mixer = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                mixer[dst] = mix(mixer[dst], hashmix(mixer[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            mixer[dst] = mix(mixer[dst], hashmix(entropy[src]))
    value = mixer[0] ^ np.uint32(_INIT_B)
    value = value * np.uint32((_INIT_B * _MULT_B) & 0xFFFFFFFF)
    return value ^ (value >> _XSHIFT)


def training_seeds(
    config_seed: int, plan: str, mask_index: np.ndarray, replicate: np.ndarray
) -> np.ndarray:
    """int64[m]: `training_seed` of every (mask_index, replicate) pair, vectorised."""
    mask_index, replicate = np.asarray(mask_index, np.int64), np.asarray(replicate, np.int64)
    if not 0 <= config_seed < 2**32 or (len(mask_index) and mask_index.max() >= 2**32):
        return np.array(
            [
                training_seed(config_seed, plan, int(j), int(r))
                for j, r in zip(mask_index, replicate, strict=True)
            ],
            dtype=np.int64,
        )
    words = [
        np.full(len(mask_index), value, dtype=np.uint32) for value in (config_seed, _plan_key(plan))
    ]
    words += [
        mask_index.astype(np.uint32),
        replicate.astype(np.uint32),
        np.ones(len(mask_index), np.uint32),
    ]
    with np.errstate(over="ignore"):
        return seed_sequence_words(words).astype(np.int64)


def grid_nodes(levels: int) -> np.ndarray:
    """float64[levels]: Gauss-Legendre nodes on (0, 1) (the Owen quadrature levels)."""
    from datamodels.estimators import owen_grid

    return owen_grid(levels)[0]


def loo_points(plan: PlanConfig, n_train: int) -> np.ndarray:
    points = np.arange(n_train) if plan.points is None else np.asarray(plan.points, dtype=np.int64)
    if len(points) and points.max() >= n_train:
        from datamodels.errors import ConfigError

        raise ConfigError(
            f"plans.{plan.name}.points: position {points.max()} is outside the "
            f"{n_train} training points"
        )
    return points


STORED_KINDS = ("stored", "removal")


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


def n_masks(plan: PlanConfig, n_train: int) -> int:
    if plan.kind == "removal":
        return len(removal_layout(plan))
    if plan.kind == "stored":
        return int(plan.count)
    if plan.kind == "alpha":
        return int(plan.count)
    if plan.kind == "alpha_grid":
        return int(plan.count) * max(plan.levels, 1)
    if plan.kind == "loo":
        return 1 + len(loo_points(plan, n_train))
    if plan.kind == "single_model":
        return 1 + int(plan.count) * len(plan.drops)
    if plan.kind == "classes":
        return int(plan.count)
    return int(plan.count) * (n_train + 1)  # tmc


def drop_fractions(plan: PlanConfig, mask_index: np.ndarray) -> np.ndarray:
    """float64[k]: the fraction of points a ``single_model`` mask drops (0 for mask 0)."""
    mask_index = np.asarray(mask_index, dtype=np.int64)
    level = np.maximum(mask_index - 1, 0) // int(plan.count)
    return np.where(mask_index == 0, 0.0, np.asarray(plan.drops, np.float64)[level])


def mask_alpha(
    config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
) -> np.ndarray:
    """float64[k]: the inclusion probability (or included fraction) of each mask."""
    mask_index = np.asarray(mask_index, dtype=np.int64)
    if plan.kind == "alpha":
        return np.full(len(mask_index), plan.alpha)
    if plan.kind in STORED_KINDS:  # nominal: the stored row records its mask's own fraction
        return np.ones(len(mask_index))
    if plan.kind == "alpha_grid":
        if plan.levels == 0:
            key = _plan_key(plan.name)
            return np.array(
                [np.random.default_rng([config_seed, key, int(j), 1]).random() for j in mask_index]
            )
        return grid_nodes(plan.levels)[mask_index // plan.count]
    if plan.kind == "loo":
        return np.where(mask_index == 0, 1.0, (n_train - 1) / max(n_train, 1))
    if plan.kind == "single_model":
        dropped = np.round(drop_fractions(plan, mask_index) * n_train)
        return 1.0 - dropped / max(n_train, 1)
    if plan.kind == "classes":
        return np.full(len(mask_index), class_count(plan, n_train) / max(n_train, 1))
    return (mask_index % (n_train + 1)) / max(n_train, 1)  # tmc: prefix fraction


def class_count(plan: PlanConfig, n_train: int) -> int:
    """How many of the n_train source classes a ``classes`` mask includes (at least one)."""
    return min(n_train, max(1, int(round(plan.alpha * n_train))))


def plan_mask(
    config_seed: int,
    plan: PlanConfig,
    mask_index: int,
    n_train: int,
    stored: dict[str, list[np.ndarray]] | None = None,
) -> np.ndarray:
    """bool[n_train]: mask number ``mask_index`` of ``plan`` (a stored-mask plan's from
    ``stored[plan.name]``, its rows of removed positions)."""
    if plan.kind in STORED_KINDS:
        rows = (stored or {}).get(plan.name)
        if rows is None:
            from datamodels.errors import StoreError

            raise StoreError(
                f"plan {plan.name!r} ({plan.kind}): its masks ({PLAN_MASKS_DIR}/{plan.name}"
                ".parquet) are not written yet; "
                + (
                    "run `datamodels removal RUN`"
                    if plan.kind == "removal"
                    else "write them with Run.write_plan_masks"
                )
            )
        if mask_index >= len(rows):
            from datamodels.errors import StoreError

            raise StoreError(
                f"{PLAN_MASKS_DIR}/{plan.name}.parquet has {len(rows)} masks; plan "
                f"{plan.name!r} needs {mask_index + 1} or more (plans.{plan.name}.count)"
            )
        mask = np.ones(n_train, dtype=bool)
        mask[rows[mask_index]] = False
        return mask
    if plan.kind == "loo":
        mask = np.ones(n_train, dtype=bool)
        if mask_index > 0:
            mask[loo_points(plan, n_train)[mask_index - 1]] = False
        return mask
    if plan.kind == "tmc":
        from datamodels.estimators import tmc_permutation

        perm, step = divmod(int(mask_index), n_train + 1)
        mask = np.zeros(n_train, dtype=bool)
        mask[tmc_permutation(config_seed, perm, n_train)[:step]] = True
        return mask
    if plan.kind == "single_model":
        mask = np.ones(n_train, dtype=bool)
        dropped = int(round(float(drop_fractions(plan, np.array([mask_index]))[0]) * n_train))
        rng = np.random.default_rng([config_seed, _plan_key(plan.name), mask_index, 0])
        mask[rng.permutation(n_train)[:dropped]] = False
        return mask
    if plan.kind == "classes":
        rng = np.random.default_rng([config_seed, _plan_key(plan.name), mask_index, 0])
        mask = np.zeros(n_train, dtype=bool)
        mask[rng.permutation(n_train)[: class_count(plan, n_train)]] = True
        return mask
    alpha = float(mask_alpha(config_seed, plan, np.array([mask_index]), n_train)[0])
    rng = np.random.default_rng([config_seed, _plan_key(plan.name), mask_index, 0])
    return rng.random(n_train) < alpha


def plan_models(config: Config, n_train: int) -> PlannedModels:
    """Every model the config asks for, in ``model_id`` order."""
    ids, plans, alphas, seeds, mask_idx = [], [], [], [], []
    offset = 0
    for plan in config.plans:
        n = n_masks(plan, n_train) * plan.seeds
        local = np.arange(n, dtype=np.int64)
        masks_of = local // plan.seeds
        ids.append(offset + local)
        plans.append(np.full(n, plan.name))
        alphas.append(mask_alpha(config.seed, plan, masks_of, n_train))
        mask_idx.append(masks_of)
        # single_model: one seed (mask 0's) for every mask of a replicate
        seed_masks = masks_of if plan.kind != "single_model" else np.zeros_like(masks_of)
        seeds.append(training_seeds(config.seed, plan.name, seed_masks, local % plan.seeds))
        offset += n
    return PlannedModels(
        model_id=np.concatenate(ids),
        plan=np.concatenate(plans),
        alpha=np.concatenate(alphas),
        seed=np.concatenate(seeds),
        mask_index=np.concatenate(mask_idx),
    )


def masks_for(
    config: Config,
    planned: PlannedModels,
    n_train: int,
    stored: dict[str, list[np.ndarray]] | None = None,
) -> np.ndarray:
    """bool[K, n_train]: the masks of the given planned models (``stored``: the rows of the
    stored-mask plans, `stored_masks`)."""
    by_name = {p.name: p for p in config.plans}
    out = np.empty((len(planned), n_train), dtype=bool)
    for row, (name, mask_index) in enumerate(zip(planned.plan, planned.mask_index, strict=True)):
        out[row] = plan_mask(config.seed, by_name[name], int(mask_index), n_train, stored)
    return out


def stored_plans(config: Config) -> list[str]:
    return [p.name for p in config.plans if p.kind in STORED_KINDS]


def stored_masks(config: Config, run) -> dict[str, list[np.ndarray]]:
    """plan name -> rows of removed positions, for the config's stored-mask plans whose
    ``plan_masks/<plan>.parquet`` exists (a plan without one is left out)."""
    out = {}
    for name in stored_plans(config):
        rows = run.plan_masks(name)
        if rows is not None:
            out[name] = rows
    return out


def training_weights(
    config: Config, planned: PlannedModels, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the trainer gets for these models: (order masks bool[K, n_train], example weights
    float32[K, n_train] or None). A ``single_model`` model draws its batches from the full
    set and weights its dropped points 0; every other model trains on its mask (None)."""
    kinds = {p.name: p.kind for p in config.plans}
    single = np.array([kinds[name] == "single_model" for name in planned.plan], dtype=bool)
    if not single.any():
        return masks, None
    order = masks.copy()
    order[single] = True
    return order, masks.astype(np.float32)


def tmc_walk(
    config: Config, plan: PlanConfig, perm: int, n_train: int, planned: PlannedModels
) -> PlannedModels:
    """The planned models of permutation ``perm`` of a tmc plan, in step order (0..n)."""
    rows = np.flatnonzero(planned.plan == plan.name)
    lo = perm * (n_train + 1) * plan.seeds
    return planned.take(rows[lo : lo + (n_train + 1) * plan.seeds])


def tmc_layout(planned: PlannedModels, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(perm_id int64[m], step int64[m]) of tmc models from their mask indices."""
    perm, step = np.divmod(planned.mask_index, n_train + 1)
    return perm.astype(np.int64), step.astype(np.int64)


def tmc_walk_state(
    config: Config, planned: PlannedModels, n_train: int, done: set[int]
) -> dict[tuple[str, int], tuple[int, bool]]:
    """(plan, perm) -> (representative model id, walk present) for every tmc walk."""
    state = {}
    for plan in config.plans:
        if plan.kind != "tmc":
            continue
        ids = planned.model_id[planned.plan == plan.name]
        per_walk = (n_train + 1) * plan.seeds
        for perm in range(int(plan.count)):
            walk_ids = ids[perm * per_walk : (perm + 1) * per_walk]
            state[(plan.name, perm)] = (
                int(walk_ids[0]),
                bool(done.intersection(walk_ids.tolist())),
            )
    return state


def checkpoint_ids(config: Config, planned: PlannedModels) -> np.ndarray:
    """int64 ids of the models that save checkpoints (``config.checkpoints``): the first
    ``models`` ids of ``checkpoints.plan`` (all of them when ``models`` is null)."""
    spec = config.checkpoints
    if spec.plan is None:
        return np.zeros(0, dtype=np.int64)
    ids = np.sort(planned.model_id[planned.plan == spec.plan])
    return ids if spec.models is None else ids[: spec.models]


def checkpoint_epochs(config: Config) -> tuple[int, ...]:
    """The epochs each checkpointed model saves, always including the last (the trained
    model itself); ``(1,)`` for ``logreg`` (its solution)."""
    if config.model.arch == "logreg":
        return (1,)
    return tuple(
        sorted(
            {e for e in config.checkpoints.epochs if e <= config.train.epochs}
            | {config.train.epochs}
        )
    )
