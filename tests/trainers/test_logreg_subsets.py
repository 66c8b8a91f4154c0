"""``logreg`` has one optimum on every subset, including those that miss a class.

Without a bias penalty, a subset missing class c has no minimiser (the CE falls as b_c → −∞;
on a single-class subset also as the present class's bias → +∞), so its margins were
wherever the solver stopped: 6.6 to 11.4 margin units apart between tolerances 1e-6 and
1e-8 on the subsets below, and 0.9 to 7.9 apart between the batched and the sequential
solver at 1e-8 (which failed to converge on one of them); biases reached ±21.
The centred-bias penalty (``datamodels.trainers.batched``) makes the margins a function of
the subset, to what the stopping tolerance leaves on an ordinary multi-class fit.
"""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.trainers.api import train_batch
from datamodels.trainers.batched import logreg_bias_decay
from datamodels.trainers.outcome import CheckpointRequest
from tests.trainers.digits_arrays import digits_data, logreg_config

WEIGHT_DECAY = 0.05


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case():
    data = digits_data(30, 40, 3)
    labels = data.train_y.numpy()
    masks = []
    for c in range(3):
        masks.append(labels == c)  # every example of class c: single-class
        two = np.zeros_like(masks[-1])
        two[np.flatnonzero(labels == c)[:2]] = True  # two examples of class c: single-class
        masks.append(two)
        masks.append(labels != c)  # class c missing
    masks.append(np.ones(len(labels), dtype=bool))  # all three classes: the ordinary case
    return data, np.array(masks)


def _margins(data, masks, tolerance, **resources):
    seeds = np.zeros(len(masks), dtype=np.int64)
    outcome = train_batch(masks, seeds, data, logreg_config(WEIGHT_DECAY, tolerance, **resources))
    assert not outcome.failed.any()
    return outcome.margins.astype(np.float64)


def test_single_class_subsets_have_one_optimum(case):
    data, masks = case
    loose = _margins(data, masks, 1e-6)
    tight = _margins(data, masks, 1e-8)
    # Two stopping tolerances: 1.9e-3 at most observed (the full fit 1.9e-5); before: >= 6.6.
    assert np.abs(loose - tight).max(1).max() < 5e-3
    assert np.abs(_margins(data, masks, 1e-7) - tight).max() < 1e-4  # observed 3e-5
    # A different solver (torch.optim.LBFGS, strong Wolfe) on the same objective reaches the
    # same optimum: observed 3e-6 (float32 margins of size ~9); before: 0.9 to 7.9.
    sequential = _margins(data, masks, 1e-8, trainer="sequential")
    assert np.abs(sequential - tight).max() < 2e-5
    # Finite optimum: margins of an ordinary size (full fit 6.1; observed <= 8.9; before 34).
    assert np.abs(tight).max() < 15.0


def test_bias_penalty_is_centred_and_tied_to_weight_decay(case):
    """The penalty acts on b − mean(b) only, so the bias sum stays at its start (0) and the
    common shift stays a null direction; λ_b = 1e-3·λ_wd, and λ_wd = 0 penalises nothing."""
    assert logreg_bias_decay(WEIGHT_DECAY) == pytest.approx(1e-3 * WEIGHT_DECAY)
    assert logreg_bias_decay(0.0) == 0.0
    data, masks = case
    config = logreg_config(WEIGHT_DECAY, 1e-8)
    rows = tuple(range(len(masks)))
    outcome = train_batch(
        masks, np.zeros(len(masks), dtype=np.int64), data, config,
        checkpoints=CheckpointRequest(rows, (1,)),
    )
    for snapshot in outcome.snapshots:
        bias = snapshot.params[1]
        assert abs(float(bias.sum())) < 1e-9
        assert float(bias.abs().max()) < 10.0  # observed <= 5.8; before: 19 to 21
