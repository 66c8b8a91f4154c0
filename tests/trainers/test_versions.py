"""Each trainer's output is pinned per code version (``datamodels.trainers.versions``): a
change of its numbers without a bump of its version fails here (see ``tests/pinned.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.config import config_from_dict
from datamodels.trainers.api import train_batch, trainer_versions
from datamodels.trainers.versions import TRAINER_VERSIONS, mixed_trainers, trainer_label
from tests.pinned import check_pinned, output_hash
from tests.trainers.digits_arrays import digits_data
from tests.trainers.test_fastnet import _config as fastnet_config
from tests.trainers.test_fastnet import _data as image_data

MLP = {"arch": "mlp", "hidden": 8}
SGD = {"epochs": 2, "batch_size": 16}
LOGREG = {"weight_decay": 0.05, "tolerance": 1e-4}
CASES = {  # case -> config tree on the flat digits data
    "null": {"model": {"arch": "null"}},
    "logreg-batched": {"model": {"arch": "logreg"}, "train": LOGREG},
    "logreg-sequential": {
        "model": {"arch": "logreg"}, "train": LOGREG,
        "resources": {"trainer": "sequential"},
    },
    "mlp-batched": {"model": MLP, "train": SGD},
    "mlp-sequential": {"model": MLP, "train": SGD, "resources": {"trainer": "sequential"}},
    "factory-fallback": {  # dropout cannot be vmapped: one at a time
        "model": {"factory": "tests.custom_models:make_dropout_mlp"}, "train": SGD,
    },
    "recipe": {"model": MLP, "train": SGD | {"recipe": "tests.custom_models:builtin_steps"}},
}
EXPECTED_PATHS = {  # what each case must exercise: every trainer but transfer is covered here
    "null": "null@1", "logreg-batched": "lbfgs@1", "logreg-sequential": "lbfgs@1",
    "mlp-batched": "batched_mlp@1", "mlp-sequential": "sequential@1",
    "factory-fallback": "vmapped@1+sequential@1", "recipe": "sequential@1+custom@1",
}


@pytest.fixture(scope="module")
def flat():
    return digits_data(40, 10, 3)


def _masks(n_train: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((k, n_train)) < 0.6, np.arange(k, dtype=np.int64) + 11


def _check(case: str, config, data, loader: str = "resident") -> None:
    parts = trainer_versions(config, loader)
    masks, seeds = _masks(data.n_train)
    outcome = train_batch(masks, seeds, data, config, loader=loader)
    assert not outcome.failed.any(), case
    value = output_hash(outcome.margins, outcome.train_loss, outcome.eval_accuracy)
    names = " or ".join(f"TRAINER_VERSIONS[{n!r}]" for n in parts)
    check_pinned(
        f"trainer:{case}", trainer_label(parts), value,
        f"{names} in datamodels/trainers/versions.py",
    )


def test_the_cases_exercise_the_trainers_they_name():
    """Known answers: the paths the architecture declarations select for each case (all at
    version 1 until one is bumped)."""
    if any(v != 1 for v in TRAINER_VERSIONS.values()):
        pytest.skip("a trainer was bumped: the labels below name version 1")
    for case, tree in CASES.items():
        label = trainer_label(trainer_versions(config_from_dict(tree), "resident"))
        assert label == EXPECTED_PATHS[case], case
    grouped = trainer_versions(fastnet_config(), "resident")
    assert trainer_label(grouped) == "grouped@1"
    transfer = config_from_dict({
        "dataset": {"factory": "datamodels.data.transfer:digits_target"},
        "transfer": {"source": {"factory": "datamodels.data.transfer:digits_source"}},
        "model": MLP, "plans": [{"name": "train", "kind": "classes", "alpha": 0.5, "count": 2}],
    })
    assert trainer_label(trainer_versions(transfer, "per_model")) == "transfer@1+batched_mlp@1"


@pytest.mark.filterwarnings("ignore:model.factory.*one model at a time")
@pytest.mark.parametrize("case", list(CASES))
def test_trainer_output_is_pinned(case, flat, one_torch_thread):
    _check(case, config_from_dict(CASES[case]), flat)


@pytest.fixture(scope="module")
def images():
    return image_data(n_train=32, n_eval=8, size=16)


def test_grouped_trainer_output_is_pinned(images, one_torch_thread):
    _check("fastnet-grouped", fastnet_config(epochs=1), images)


def test_vmapped_trainer_output_is_pinned(images, one_torch_thread):
    tree = {"model": {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 4}},
            "train": SGD}
    _check("factory-vmapped", config_from_dict(tree), images)


def test_transfer_trainer_output_is_pinned(one_torch_thread):
    """Pre-training on source digit classes 0-4 (the mask's columns), a probe on 0-2."""
    from datamodels.data.resident import TransferData

    config = config_from_dict({
        "dataset": {"factory": "datamodels.data.transfer:digits_target"},
        "transfer": {"source": {"factory": "datamodels.data.transfer:digits_source"}},
        "model": MLP, "train": {"epochs": 1, "batch_size": 32},
        "plans": [{"name": "train", "kind": "classes", "alpha": 0.5, "count": 3}],
    })
    source, target = digits_data(80, 10, 5), digits_data(30, 10, 3)
    data = TransferData(
        source=source, class_of=source.train_y.numpy(), n_classes=5,
        target_train_x=target.train_x, target_train_y=target.train_y,
        eval_x=target.eval_x, eval_y=target.eval_y, target_classes=3,
    )
    _check("transfer-mlp", config, data)


def test_mixed_trainers_names_the_plan_and_both_versions():
    """Shards without a label count as version 1 of the current trainer's parts."""
    assert mixed_trainers({"train": {None: 5, "lbfgs@1": 2}}, {"lbfgs": 1}) is None
    assert mixed_trainers({}, {"lbfgs": 2}) is None
    assert mixed_trainers({"train": {None: 5}}, {"lbfgs": 2}) == (
        "plan 'train' has 5 models made by trainer lbfgs@1, but this datamodels trains with "
        "lbfgs@2; one plan cannot mix trainer versions"
    )
    mixed = mixed_trainers({"a": {"lbfgs@2": 4}, "b": {"lbfgs@1": 3, "lbfgs@2": 1}},
                           {"lbfgs": 2})
    assert mixed.startswith("plan 'b' has 3 models made by trainer lbfgs@1,")
    wrapped = {"transfer": 1, "batched_mlp": 2}
    assert "trainer transfer@1+batched_mlp@1" in mixed_trainers({"t": {None: 2}}, wrapped)
    assert "with transfer@1+batched_mlp@2" in mixed_trainers({"t": {None: 2}}, wrapped)


def test_a_changed_output_under_the_same_version_names_the_version_to_bump(tmp_path, monkeypatch):
    """The check itself: a pin that differs fails and names the constant."""
    import tests.pinned as pinned

    monkeypatch.setattr(pinned, "PINS", tmp_path / "pins.json")
    monkeypatch.setattr(pinned, "RECORD", False)
    pinned.record("trainer:x lbfgs@1", "0" * 16)
    with pytest.raises(pytest.fail.Exception, match=r"bump TRAINER_VERSIONS\['lbfgs'\]"):
        check_pinned("trainer:x", "lbfgs@1", "1" * 16, "TRAINER_VERSIONS['lbfgs']")
    with pytest.raises(pytest.fail.Exception, match="no pinned output for trainer:x lbfgs@2"):
        check_pinned("trainer:x", "lbfgs@2", "1" * 16, "TRAINER_VERSIONS['lbfgs']")
    check_pinned("trainer:x", "lbfgs@1", "0" * 16, "TRAINER_VERSIONS['lbfgs']")  # the same: ok
