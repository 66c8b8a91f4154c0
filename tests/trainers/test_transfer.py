"""Transfer-learning datamodels: class-level plans, the transfer trainer, fit over source
classes, the transfer report with its counterfactual, config refusals, the CIFAR-100 reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from datamodels import api
from datamodels.config import DatasetConfig, config_from_dict, load_config
from datamodels.data.sources import load_dataset
from datamodels.errors import ConfigError, DatamodelsError
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.plans import masks_for, plan_models
from datamodels.store import Run, models_table
from tests.conftest import write_tar

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _transfer_config(**overrides) -> dict:
    """A small digits transfer config: 12 source classes (upright digits, 2 mixed)."""
    tree = {
        "name": "transfer_small",
        "dataset": {
            "factory": "datamodels.data.transfer:digits_target",
            "kwargs": {"train_per_class": 5},
        },
        "transfer": {
            "source": {
                "factory": "datamodels.data.transfer:digits_source",
                "kwargs": {"transforms": ["upright"], "mixed": 2},
            },
        },
        "model": {"arch": "mlp", "hidden": 8},
        "train": {"epochs": 2, "batch_size": 64},
        "plans": [
            {"name": "train", "kind": "classes", "alpha": 0.5, "count": 24},
            {"name": "eval", "kind": "classes", "alpha": 0.5, "count": 4},
            {"name": "without", "kind": "stored", "count": 2, "seeds": 2},
        ],
        "fit": {"n_lambdas": 5},
        "resources": {"models_per_task": 32},
    }
    tree.update(overrides)
    return tree


def test_class_masks_are_deterministic_fixed_size_and_independent_of_batching():
    config = config_from_dict(_transfer_config())
    planned = plan_models(config, 34)
    assert (planned.plan == "without").sum() == 4  # stored: its masks are read after fit
    planned = planned.take(np.flatnonzero(planned.plan != "without"))
    masks = masks_for(config, planned, 34)
    classes = planned.plan == "train"
    assert (masks[classes].sum(1) == 17).all()  # exactly round(0.5 * 34) source classes
    assert len({m.tobytes() for m in masks[classes]}) == classes.sum()
    again = masks_for(config, planned.take(np.arange(len(planned))[::-1]), 34)[::-1]
    np.testing.assert_array_equal(masks, again)
    other_seed = masks_for(config_from_dict(_transfer_config(seed=1)), planned, 34)
    assert not np.array_equal(masks[classes], other_seed[classes])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The small transfer config prepared and trained (its removal plan still waiting)."""
    config = load_config(_transfer_config())
    run = Run(str(tmp_path_factory.mktemp("transfer") / "run"))
    summary = api.train(config, run, executor=SerialExecutor(), show_progress=False)
    return config, run, summary


def test_transfer_model_ignores_the_data_of_excluded_source_classes(small_run):
    """Scrambling every source example of the classes a mask leaves out changes nothing the
    model records; scrambling an included class does. (Inputs are standardised with the
    target's train split, so the source data reaches a model only through its classes.)"""
    from datamodels.orchestrate.context import local_beton
    from datamodels.trainers.transfer import load_transfer_data, train_transfer

    config, run, _ = small_run
    mask = masks_for(config, plan_models(config, 12).take(np.array([0])), 12)
    seeds = np.array([123])

    def margins(scramble: np.ndarray | None) -> np.ndarray:
        data = load_transfer_data(local_beton(run, config.hash), run.examples())
        if scramble is not None:
            rows = torch.from_numpy(np.isin(data.class_of, scramble))
            noise = torch.randn(int(rows.sum()), data.source.train_x.shape[1],
                                generator=torch.Generator().manual_seed(0))
            data.source.train_x[rows] = noise
        return train_transfer(mask, seeds, data, config)[0]

    plain = margins(None)
    np.testing.assert_array_equal(plain, margins(np.flatnonzero(~mask[0])))
    assert not np.allclose(plain, margins(np.flatnonzero(mask[0])), atol=1e-3)
    # the stored model 0 is this model (same mask, its own seed): trained the same way
    stored = run.masks_and_margins(plan="train")
    np.testing.assert_array_equal(stored[0][0], mask[0])


def _conv_config(model: dict) -> dict:
    """The small transfer config on 8×8×1 digit images with a conv net ``model``."""
    images = {"factory": "datamodels.data.transfer:digits_target",
              "kwargs": {"train_per_class": 5, "images": True}}
    source = {"factory": "datamodels.data.transfer:digits_source",
              "kwargs": {"transforms": ["upright"], "mixed": 2, "images": True}}
    return _transfer_config(
        dataset=images, transfer={"source": source}, model=model,
        train={"epochs": 2, "batch_size": 64, "lr": 0.05},
        plans=[
            {"name": "train", "kind": "classes", "alpha": 0.5, "count": 24},
            {"name": "eval", "kind": "classes", "alpha": 0.5, "count": 4},
        ],
    )


SMALL_CNN = {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 4}}


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    """A transfer run whose models are a small CNN (``model.factory``, vmapped) trained."""
    config = load_config(_conv_config(SMALL_CNN))
    run = Run(str(tmp_path_factory.mktemp("transfer_conv") / "run"))
    summary = api.train(config, run, executor=SerialExecutor(), show_progress=False)
    return config, run, summary


def test_conv_transfer_run_trains_and_fits(conv_run):
    """A conv net pre-trained on source classes by the project's trainer, then probed on its
    last linear layer's input features: every model records finite margins on the target's
    test images, well above chance, and fit gives one weight per source class."""
    config, run, summary = conv_run
    assert summary.trained == 28 and summary.failed == 0
    masks, margins = run.masks_and_margins(plan="train")
    assert masks.shape == (24, 12) and margins.shape == (24, run.n_eval)
    assert np.isfinite(margins).all() and (margins > 0).mean() > 0.4  # 10 classes: chance 0.1
    api.fit(config, run, show_progress=False)
    _, scores = run.scores("datamodels")
    assert scores.shape == (run.n_eval, 12) and np.isfinite(scores).all()


@pytest.mark.parametrize("model", [{"arch": "resnet9", "width": 4}, SMALL_CNN],
                         ids=["resnet9", "factory"])
def test_conv_transfer_model_ignores_the_data_of_excluded_source_classes(conv_run, model):
    """The conv paths (resnet9 one at a time with BatchNorm and augmentation; a vmapped
    factory CNN): scrambling the images of excluded source classes leaves the recorded
    margins bit-identical; scrambling an included class changes them."""
    from datamodels.orchestrate.context import local_beton
    from datamodels.trainers.transfer import load_transfer_data, train_transfer

    base, run, _ = conv_run
    config = config_from_dict(_conv_config(model), ["train.epochs=1"])  # one epoch shows it
    mask = masks_for(base, plan_models(base, 12).take(np.array([0])), 12)
    seeds = np.array([7])

    def margins(scramble: np.ndarray | None) -> np.ndarray:
        data = load_transfer_data(local_beton(run, base.hash), run.examples())
        assert data.source.is_image
        if scramble is not None:
            rows = torch.from_numpy(np.isin(data.class_of, scramble))
            shape = data.source.train_x[rows].shape
            data.source.train_x[rows] = torch.randn(
                shape, generator=torch.Generator().manual_seed(0)
            )
        return train_transfer(mask, seeds, data, config)[0]

    plain = margins(None)
    np.testing.assert_array_equal(plain, margins(np.flatnonzero(~mask[0])))
    assert not np.allclose(plain, margins(np.flatnonzero(mask[0])), atol=1e-3)


def _planted_run(path: Path, n_classes=20, n_test=6, seed=0) -> tuple[Run, np.ndarray]:
    """A transfer-layout run whose margins are a sparse linear function of the class masks
    of its ``classes`` plans (the masks the planner draws), plus noise."""
    rng = np.random.default_rng(seed)
    tree = _transfer_config(
        plans=[
            {"name": "train", "kind": "classes", "alpha": 0.5, "count": 300},
            {"name": "eval", "kind": "classes", "alpha": 0.5, "count": 40},
        ],
        fit={"targets_per_block": 4},
    )
    config = config_from_dict(tree)
    run = Run(str(path), trust_code=True)  # written here by hand, not by `prepare`
    run.write_config(config.to_yaml())
    per_class = 3
    n_source = n_classes * per_class
    n = n_source + n_test
    run.write_examples(
        pd.DataFrame(
            {
                "index": np.arange(n),
                "split": ["source"] * n_source + ["test"] * n_test,
                "label": np.r_[np.repeat(np.arange(n_classes), per_class), np.zeros(n_test)],
                "original_label": np.r_[
                    np.repeat(np.arange(n_classes), per_class), np.zeros(n_test)
                ],
                "eval_position": pd.array([None] * n_source + list(range(n_test)), dtype="Int64"),
                "train_position": pd.array(
                    list(np.repeat(np.arange(n_classes), per_class)) + [None] * n_test,
                    dtype="Int64",
                ),
            }
        ).astype({"label": np.int64, "original_label": np.int64})
    )
    assert run.n_train == n_classes
    truth = rng.uniform(0.5, 1.5, (n_test, n_classes)) * rng.choice([-1, 1], (n_test, n_classes))
    truth *= rng.random((n_test, n_classes)) < 0.25
    planned = plan_models(config, n_classes)
    masks = masks_for(config, planned, n_classes)
    margins = masks @ truth.T + 0.2 + 0.05 * rng.normal(size=(len(planned), n_test))
    run.write_models(
        models_table(
            model_ids=planned.model_id, plan=planned.plan, alphas=planned.alpha,
            seeds=planned.seed, masks=masks, margins=margins.astype(np.float32),
            train_loss=np.zeros(len(planned), np.float32),
            eval_accuracy=np.zeros(len(planned), np.float32),
            seconds=np.zeros(len(planned), np.float32), attempt=np.ones(len(planned), np.int32),
            worker="test",
        ),
        config_hash=config.hash,
    )
    return run, truth


def test_fit_over_source_classes_recovers_planted_class_weights(tmp_path):
    run, truth = _planted_run(tmp_path / "planted")
    api.fit(run, show_progress=False)
    targets, scores = run.scores("datamodels")
    assert scores.shape == truth.shape
    np.testing.assert_allclose(scores[np.argsort(targets)], truth, atol=0.1)
    lds = api.evaluate(run).set_index(["method", "metric"]).loc[("datamodels", "lds"), "value"]
    assert lds > 0.9


def test_transfer_run_end_to_end_report_and_counterfactual(small_run):
    """prepare → train → fit over source classes → the counterfactual retrained through the
    driver (its stages) → the transfer report reads it; verify passes on the finished run."""
    from datamodels.report.transfer import (
        build_transfer_report,
        class_effects,
        counterfactual,
        read_counterfactual,
    )
    from datamodels.store import verify

    config, run, summary = small_run
    assert summary.planned == 28  # the removal plan waits for its table
    examples = run.examples()
    assert run.n_train == 12 and run.n_eval == int((examples["split"] == "test").sum())
    assert set(examples["split"]) == {"source", "train", "test"}
    api.fit(config, run, show_progress=False)
    effects = class_effects(run)
    assert list(effects["target class"]) == list(range(10))
    page = build_transfer_report(run).read_text()  # the report only reads: no table yet
    assert "transfer/counterfactual_models.parquet is missing; run `datamodels " in page
    with pytest.raises(DatamodelsError, match="counterfactual_models.parquet is missing; run"):
        build_transfer_report(run, counterfactual=True)
    assert run.plan_masks("without") is None  # nothing trained or written by the report
    result = api.transfer_counterfactual(config, run, k=2, executor=SerialExecutor())
    markers = sorted(p.name for p in Path(run.uri, "_stages").iterdir())
    assert {"transfer_masks.json", "transfer_counterfactual.json"} <= set(markers)
    again = api.transfer_counterfactual(config, run, k=2, executor=SerialExecutor())
    pd.testing.assert_frame_equal(again.per_model, result.per_model)  # current: nothing redone
    pd.testing.assert_frame_equal(read_counterfactual(run).summary, result.summary)
    removed = run.plan_masks("without")[1]
    assert len(removed) == 2 and removed.tolist() == result.removed["train_position"].tolist()
    masks, _ = run.masks_and_margins(plan="without")
    assert masks.shape == (4, 12) and masks[:2].all() and not masks[2:, removed].any()
    assert masks[2:].sum(1).tolist() == [10, 10]
    assert set(result.summary["setting"]) == {"all source classes", "without removed"}
    page = build_transfer_report(run, source_class="upright 3", counterfactual=True).read_text()
    for text in ("most helpful", "Counterfactual", "upright 3", "data:image/png;base64"):
        assert text in page
    assert page.count("<img") >= 2
    assert verify(run) == []
    with pytest.raises(DatamodelsError, match="neither a source class name"):
        build_transfer_report(run, source_class="no such class")
    with pytest.raises(DatamodelsError, match="already removes source classes"):
        api.transfer_counterfactual(config, run, k=3, executor=SerialExecutor())
    with pytest.raises(DatamodelsError, match="is stale for --k 3; run `datamodels transfer-c"):
        counterfactual(config, run, k=3)  # the report's reader: never trains
    assert counterfactual(config, run, k=2).removed.equals(result.removed)
    # the run-wide report: its example-level sections point to the transfer report
    from datamodels.report import build_report

    assert "a transfer run: its training points are source classes" in (
        build_report(run).read_text()
    )
    with pytest.raises(DatamodelsError, match="is a transfer run"):
        run.inputs("train")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transfer": None}, "kind classes samples source classes; add a transfer section"),
        ({"model": {"arch": "logreg"}}, "transfer runs pre-train a network whose body is kept"),
        (
            {"model": {"arch": "resnet9"}, "transfer": {"recipe": "finetune"}},
            "transfer.recipe finetune trains mlp models only; .* linear_probe",
        ),
        (
            {"plans": [{"name": "t", "kind": "tmc", "count": 2}]},
            "plans t: a transfer run's masks are over source classes",
        ),
        (
            {"checkpoints": {"plan": "train"}},
            "transfer runs save no checkpoints",
        ),
        ({"transfer": {"recipe": "probe"}}, "transfer.recipe"),
    ],
)
def test_transfer_config_refusals_are_one_line(change, message):
    tree = _transfer_config()
    tree.update(change)
    if change.get("transfer", {}) and "source" not in (change["transfer"] or {}):
        tree["transfer"] = {**_transfer_config()["transfer"], **change["transfer"]}
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(tree)
    assert "\n" not in str(err.value)


def test_configs_without_transfer_keep_their_hash():
    digits = load_config(CONFIGS / "digits.yaml")
    assert digits.transfer is None
    assert digits.hash == load_config(CONFIGS / "digits.yaml", ["fit.n_lambdas=20"]).hash
    assert "transfer" not in digits.model_dump(mode="json", exclude_defaults=True)


def test_shipped_transfer_configs_validate():
    digits = load_config(CONFIGS / "transfer_digits.yaml")
    assert digits.transfer.recipe == "linear_probe"
    assert {p.kind for p in digits.plans} == {"classes", "stored"}
    cifar = load_config(CONFIGS / "transfer_cifar.yaml")
    assert cifar.transfer.source.name == "cifar100" and cifar.dataset.name == "cifar10"
    assert cifar.resources.num_gpus > 0
    assert cifar.model.arch in ("resnet9", "fastnet") and cifar.transfer.recipe == "linear_probe"


def write_cifar100_archive(path: Path, n_train: int = 12, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    payloads = {}
    for name, n in (("train", n_train), ("test", n_test)):
        payloads[name] = pickle.dumps(
            {
                b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                b"fine_labels": rng.integers(0, 100, size=n).tolist(),
                b"coarse_labels": rng.integers(0, 20, size=n).tolist(),
            }
        )
    payloads["meta"] = pickle.dumps(
        {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    )
    write_tar(path, "cifar-100-python", payloads)
    return payloads


def test_cifar100_archive_reader(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    payloads = write_cifar100_archive(path)
    ds = load_dataset(DatasetConfig(name="cifar100", path=str(path)))
    raw = pickle.loads(payloads["train"], encoding="bytes")
    assert ds.features.shape == (17, 32, 32, 3) and ds.num_classes == 100
    assert ds.is_test.sum() == 5 and not ds.is_test[:12].any()
    assert ds.labels[:12].tolist() == raw[b"fine_labels"]
    assert ds.features[0, 0, 0, 2] == raw[b"data"][0, 2048]  # planes R, G, B
    assert ds.class_names[:2] == ["c0", "c1"]
    with pytest.raises(DatamodelsError, match="CIFAR-100 archive not found"):
        load_dataset(DatasetConfig(name="cifar100", path=str(tmp_path / "none.tar.gz")))


def test_transfer_report_command(small_run):
    """``datamodels transfer-report RUN --no-counterfactual`` writes the page; a source
    class it does not know is one line with exit code 2."""
    from typer.testing import CliRunner

    from datamodels.cli import app

    config, run, _ = small_run
    api.fit(config, run, show_progress=False)
    out = Path(run.uri) / "cli_report.html"
    result = CliRunner().invoke(
        app, ["transfer-report", run.uri, "--no-counterfactual", "--source-class", "mixed 0",
              "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    import html

    assert "most influenced by source class 'mixed 0'" in html.unescape(out.read_text())
    bad = CliRunner().invoke(app, ["transfer-report", run.uri, "--no-counterfactual",
                                   "--source-class", "nope"])
    assert bad.exit_code == 2 and "neither a source class name" in bad.output
    # the counterfactual is its own command (current here: computed above, nothing retrained)
    made = CliRunner().invoke(app, ["transfer-counterfactual", run.uri, "--k", "2", "--quiet"])
    assert made.exit_code == 0, made.output
    assert "accuracy change:" in made.output and "removed source class" in made.output
    shown = CliRunner().invoke(app, ["transfer-report", run.uri, "--out", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "Counterfactual" in out.read_text()


def test_transfer_report_refuses_a_run_that_is_not_a_transfer_run(tmp_path):
    from typer.testing import CliRunner

    from datamodels.cli import app

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(load_config(CONFIGS / "digits.yaml").to_yaml())
    result = CliRunner().invoke(app, ["transfer-report", str(out)])
    assert result.exit_code == 2 and "is not a transfer run" in result.output
    assert not (out / "transfer_report.html").exists() and not (out / "plan_masks").exists()
