"""Training seeds as a pure function of (config seed, plan name, mask number, replicate).

`training_seed` is numpy's ``SeedSequence`` of those four numbers; `training_seeds` computes
the same value for many models at once (a vectorised copy of the hash), so a plan of 300,000
models gets its seeds without a Python object per model.
"""

from __future__ import annotations

import zlib

import numpy as np


def plan_key(name: str) -> int:
    """The 32-bit key of a plan name that every mask and seed of the plan is drawn from."""
    return zlib.crc32(name.encode())


def training_seed(config_seed: int, plan: str, mask_index: int, replicate: int) -> int:
    seq = np.random.SeedSequence([config_seed, plan_key(plan), mask_index, replicate, 1])
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
        np.full(len(mask_index), value, dtype=np.uint32) for value in (config_seed, plan_key(plan))
    ]
    words += [
        mask_index.astype(np.uint32),
        replicate.astype(np.uint32),
        np.ones(len(mask_index), np.uint32),
    ]
    with np.errstate(over="ignore"):
        return seed_sequence_words(words).astype(np.int64)
