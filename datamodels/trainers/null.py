"""The ``null`` trainer (``model.arch: null``): pseudo-margins at no cost, with a planted
datamodel, so the driver, the store and every reader can be exercised at full scale on a CPU.

For model k with subset mask ``M_k`` and training seed ``s_k``, and eval position j::

    margins[k, j] = b_j + Σ_r W[j, r] · M_k[P[j, r]] + σ · ε_{k, j},   ε_{k, ·} ~ N(0, 1) from s_k

``P: int64[n_eval, S]`` (S = min(8, n_train) train positions per target), ``W`` and ``b`` are
a fixed random sparse linear function of the mask, drawn from (config seed, n_train, n_eval)
only (`planted_datamodel`), and σ = ``NOISE``. A margin is thus a pure function of (config
seed, model seed, mask): retraining gives the same row, and a datamodel fit on a null run
should recover ``W`` (`planted_weights` writes it as a dense ``float32[n_eval, n_train]``).
Nothing is decoded: the trainer needs only the sizes (`NullData`), never the beton.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

PER_TARGET = 8  # train positions each target's margin depends on
NOISE = 0.1  # σ: standard deviation of the per-model noise


@dataclass(frozen=True)
class NullData:
    """What the null trainer needs of the data: the sizes, from ``examples.parquet``."""

    n_train: int
    n_eval: int


@functools.lru_cache(maxsize=4)
def planted_datamodel(
    config_seed: int, n_train: int, n_eval: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions int64[n_eval, S], weights float32[n_eval, S], bias float32[n_eval])."""
    rng = np.random.default_rng([config_seed, n_train, n_eval, 0x6E756C6C])
    per_target = min(PER_TARGET, n_train)
    positions = rng.integers(0, max(n_train, 1), size=(n_eval, per_target), dtype=np.int64)
    weights = rng.standard_normal((n_eval, per_target), dtype=np.float32)
    bias = rng.standard_normal(n_eval, dtype=np.float32)
    return positions, weights, bias


def planted_weights(config_seed: int, n_train: int, n_eval: int) -> np.ndarray:
    """``float32[n_eval, n_train]``: the planted datamodel ``W`` as a dense matrix (a position
    drawn twice for one target adds up). For tests and small runs."""
    positions, weights, _ = planted_datamodel(config_seed, n_train, n_eval)
    dense = np.zeros((n_eval, n_train), dtype=np.float32)
    rows = np.repeat(np.arange(n_eval), positions.shape[1])
    np.add.at(dense, (rows, positions.reshape(-1)), weights.reshape(-1))
    return dense


def null_margins(
    masks: np.ndarray, seeds: np.ndarray, n_eval: int, config_seed: int
) -> np.ndarray:
    """masks: bool[K, n_train], seeds: int64[K] -> margins float32[K, n_eval] (see module)."""
    masks = np.asarray(masks, dtype=bool)
    n_train = masks.shape[1]
    margins = np.empty((len(masks), n_eval), dtype=np.float32)
    if n_train == 0:
        positions = np.zeros((n_eval, 0), np.int64)
        weights, bias = np.zeros((n_eval, 0), np.float32), np.zeros(n_eval, np.float32)
    else:
        positions, weights, bias = planted_datamodel(config_seed, n_train, n_eval)
    for row, (mask, seed) in enumerate(zip(masks, seeds, strict=True)):
        included = mask[positions]  # bool[n_eval, S]: one gather, never the full n_train
        noise = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF).standard_normal(
            n_eval, dtype=np.float32
        )
        margins[row] = bias + (weights * included).sum(1) + np.float32(NOISE) * noise
    return margins


def train_null(masks: np.ndarray, seeds: np.ndarray, data, config) -> tuple:
    """The trainer contract's tuple (margins, train_loss, eval_accuracy, snapshots) of the
    null trainer; ``data`` needs ``n_eval`` (`NullData`) or ``eval_y`` (`TrainData`)."""
    n_eval = int(data.n_eval) if hasattr(data, "n_eval") else len(data.eval_y)
    margins = null_margins(masks, seeds, n_eval, config.seed)
    loss = np.zeros(len(masks), dtype=np.float32)
    accuracy = (margins > 0).mean(1).astype(np.float32) if n_eval else loss.copy()
    return margins, loss, accuracy, []
