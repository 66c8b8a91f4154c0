"""Checkpoints in training and the gradient estimators as Ray tasks, end to end on small runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from datamodels.api import estimate, train
from datamodels.cli import app
from datamodels.config import config_from_dict
from datamodels.errors import CheckpointError, EstimateError
from datamodels.gradients import (
    Exact,
    influence_scores,
    representer_scores,
    tracin_scores,
    trak_scores,
)
from datamodels.gradients.checkpointed import functional_model
from datamodels.gradients.grads import per_example_outputs
from datamodels.orchestrate.context import Context, context
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.plans import masks_for, plan_models
from datamodels.stages.estimate import GRADIENT_METHODS, EstimateStage
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index
from datamodels.store.positions import eval_positions
from datamodels.trainers.orders import interval_lr

pytestmark = pytest.mark.usefixtures("array_store")  # runs hold data/examples.npy
MLP = {
    "name": "mlp_tiny",
    "dataset": {"name": "digits", "limit_train": 240, "limit_test": 40},
    "model": {"arch": "mlp", "hidden": 12},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.1},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 10},
        {"name": "eval", "alpha": 0.5, "count": 6},
    ],
    "resources": {"models_per_task": 4},
}
CHECKPOINTS = ["checkpoints.plan=train", "checkpoints.models=3", "checkpoints.epochs=[2]"]
LOGREG = {
    "name": "logreg_tiny",
    "dataset": {"name": "digits", "limit_train": 60, "limit_test": 100},
    "model": {"arch": "logreg"},
    "train": {"weight_decay": 0.05, "tolerance": 1e-8, "max_iter": 2000},
    "plans": [
        {"name": "full", "alpha": 1.0, "count": 1},
        {"name": "train", "alpha": 0.5, "count": 4},
        {"name": "eval", "alpha": 0.5, "count": 4},
    ],
    "checkpoints": {"plan": "train"},
    "resources": {"models_per_task": 4},
}


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, ray_local):
    """A trained run whose checkpoints were added afterwards: (config, uri, summaries)."""
    uri = str(tmp_path_factory.mktemp("mlp") / "run")
    plain = train(config_from_dict(MLP), uri, show_progress=False)
    shards = {p.name: p.read_bytes() for p in (Path(uri) / "models").glob("*.parquet")}
    config = config_from_dict(MLP, CHECKPOINTS)
    later = train(config, uri, show_progress=False)
    return config, uri, plain, later, shards


@pytest.fixture(scope="module")
def logreg_run(tmp_path_factory):
    """A logreg run trained in-process (its tests check what the stage computes, not how the
    tasks are spread; the tasks through Ray: `mlp_run` and the sharded runs)."""
    config = config_from_dict(LOGREG)
    uri = str(tmp_path_factory.mktemp("logreg") / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    return config, uri


def _final_margins(config, uri, model_id, epoch):
    run = Run(uri)
    data = Context().data(run, config)
    layers = load_checkpoint(run.fs, f"checkpoints/{model_id}/epoch_{epoch}.pt")["layers"]
    model = functional_model(config, data, layers)
    return per_example_outputs(model, data.eval_x, data.eval_y, "margin").numpy()


def test_checkpoints_added_later_retrain_only_to_save_them(mlp_run):
    config, uri, plain, later, shards = mlp_run
    run = Run(uri)
    assert plain.trained == 16 and plain.checkpointed == 0
    assert later.trained == 0 and later.checkpointed == 3  # the first 3 models of plan 'train'
    assert {
        p.name: p.read_bytes() for p in (Path(uri) / "models").glob("*.parquet")
    } == shards  # rows untouched
    index = read_checkpoint_index(run.fs)
    assert sorted(zip(index.model_id, index.epoch, strict=True)) == [
        (m, e) for m in (0, 1, 2) for e in (2, 4)
    ]
    masks = run.masks(plan="train")
    for row in index.itertuples():
        steps = -(-int(masks[row.model_id].sum()) // 32)
        first = 0 if row.epoch == 2 else 2
        assert row.lr == pytest.approx(interval_lr("linear", 0.1, steps, 4, first, row.epoch - 1))
    # the final checkpoint is the stored model: same seed, same subset, same margins
    stored = run.margins(plan="train")
    for model_id in (0, 1, 2):
        np.testing.assert_allclose(
            _final_margins(config, uri, model_id, 4), stored[model_id], atol=2e-4
        )
    # done means done: a further train call has nothing to retrain
    again = train(config, uri, show_progress=False)
    assert again.trained == 0 and again.checkpointed == 0
    status = CliRunner().invoke(app, ["status", uri])
    assert "checkpoints: 3 models (epochs 2, 4), 6 files" in status.output


def test_missing_or_corrupt_checkpoint_is_named_and_train_recreates_it(mlp_run, tmp_path):
    config, uri, *_ = mlp_run
    copy = tmp_path / "run"
    shutil.copytree(uri, copy)
    run = Run(str(copy))
    three = config_from_dict(MLP, CHECKPOINTS + ["gradients.models=3"])
    (copy / "checkpoints/1/epoch_4.pt").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoints/1/epoch_4\.pt is missing"):
        load_checkpoint(run.fs, "checkpoints/1/epoch_4.pt")
    with pytest.raises(CheckpointError, match=r"checkpoints/1/epoch_4\.pt \(model 1\) is missing"):
        estimate(three, str(copy), "tracin", show_progress=False)
    summary = train(config, str(copy), show_progress=False)
    assert summary.trained == 0 and summary.checkpointed == 1
    np.testing.assert_allclose(
        _final_margins(config, str(copy), 1, 4), run.margins(plan="train")[1], atol=2e-4
    )
    (copy / "checkpoints/2/epoch_2.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoints/2/epoch_2\.pt is corrupt"):
        estimate(three, str(copy), "tracin", show_progress=False)


def test_without_checkpoints_the_error_says_how_to_add_them(tmp_path):
    config = config_from_dict(MLP, ["plans.train.count=2", "plans.eval.count=2"])
    uri = str(tmp_path / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    with pytest.raises(EstimateError, match="checkpoints.plan=train"):
        estimate(config, uri, "influence", executor=SerialExecutor(), show_progress=False)


def _scores_and_self(uri, method):
    run = Run(uri)
    return run.scores(method)[1], run.self_scores()[method]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_sharded_and_unsharded_runs_agree(mlp_run, tmp_path, method):
    config, uri, *_ = mlp_run
    copy = str(tmp_path / "run")
    shutil.copytree(uri, copy)
    common = ["gradients.models=2", "gradients.trak_models=3", "gradients.proj_dim=64"]
    sharded = config_from_dict(
        # 2 blocks of targets (25 + 15) and of training points (130 + 110) per model
        MLP,
        CHECKPOINTS + common + ["gradients.targets_per_task=25", "gradients.train_per_task=130"],
    )
    whole = config_from_dict(
        MLP,
        CHECKPOINTS + common + ["gradients.targets_per_task=1000", "gradients.train_per_task=1000"],
    )
    assert len(EstimateStage(sharded, Run(uri), method).units()) > len(
        EstimateStage(whole, Run(uri), method).units()
    )
    written = estimate(sharded, uri, method, show_progress=False)
    assert written["models"] == (3 if method == "trak" else 2)
    estimate(whole, copy, method, show_progress=False)
    (a, a_self), (b, b_self) = _scores_and_self(uri, method), _scores_and_self(copy, method)
    assert a.shape == (40, 240) and a_self.shape == (240,)
    assert np.abs(a).max() > 0 and np.abs(a_self).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())
    np.testing.assert_allclose(a_self, b_self, rtol=1e-4, atol=1e-6 * np.abs(b_self).max())
    parts = Path(uri) / "_parts"
    assert not [
        p.name for p in parts.iterdir() if p.name.startswith(f"estimate-{method}-")
    ]  # parts removed
    assert (Path(uri) / "_stages" / f"estimate-{method}.json").is_file()
    # finished: the same settings again (sharded differently, too) change nothing
    stamp = (Path(uri) / "scores" / f"{method}.parquet").stat().st_mtime_ns
    estimate(whole, uri, method, show_progress=False)
    assert (Path(uri) / "scores" / f"{method}.parquet").stat().st_mtime_ns == stamp


def test_the_newest_index_row_of_a_checkpoint_wins(tmp_path):
    import os

    from datamodels.store.checkpoints import write_checkpoints

    fs = Run(str(tmp_path)).fs
    layers = [torch.zeros(2, 2)]
    write_checkpoints(fs, "mlp", [(0, 4, 0.5, layers), (1, 4, 0.5, layers)])
    first = sorted((tmp_path / "checkpoints/index").iterdir())[0]
    os.utime(first, ns=(1, 1))  # written long ago
    write_checkpoints(
        fs, "mlp", [(0, 4, 0.25, layers)]
    )  # the same checkpoint saved again, another lr
    index = read_checkpoint_index(fs)
    assert index[["model_id", "epoch", "lr"]].values.tolist() == [[0, 4, 0.25], [1, 4, 0.5]]


def _models(config, uri, ids):
    run = Run(uri)
    data = Context().data(run, config)
    index = read_checkpoint_index(run.fs)
    paths = [index[index.model_id == m].path.iloc[-1] for m in ids]
    return (
        data,
        [functional_model(config, data, load_checkpoint(run.fs, p)["layers"]) for p in paths],
        index,
    )


def test_stage_equals_the_estimator_functions(logreg_run):
    """Each stage table is the pure estimator on the checkpointed models
    (wiring, subsets, averaging)."""
    config, uri = logreg_run
    run = Run(uri)
    planned = plan_models(config, run.n_train)
    ids = planned.model_id[planned.plan == "train"][:2].tolist()
    data, models, index = _models(config, uri, ids)
    targets = torch.from_numpy(eval_positions(run, "test"))
    tx, ty = data.eval_x[targets], data.eval_y[targets]
    x, y = data.train_x, data.train_y
    masks = masks_for(config, planned.select_ids(np.array(ids)), run.n_train)
    settings = config_from_dict(
        LOGREG,
        [
            "gradients.models=2",
            "gradients.trak_models=2",
            "gradients.proj_dim=200",
            "gradients.trak_damping=0.0",  # the plain trak_scores below: undamped
            "gradients.damping=0.0",
        ],
    )
    expected = {
        "influence": np.mean(
            [
                influence_scores(
                    m, x[mk], y[mk], tx, ty, solver=Exact(), points_x=x, points_y=y
                ).numpy()
                for m, mk in zip(models, torch.from_numpy(masks), strict=True)
            ],
            axis=0,
        ),
        "representer": np.mean(
            [
                representer_scores(m, x, y, tx, ty, n_train=int(mk.sum())).numpy()
                for m, mk in zip(models, masks, strict=True)
            ],
            axis=0,
        ),
        "tracin": np.mean(
            [
                tracin_scores(
                    m,
                    [(m.params, float(index[index.model_id == i].lr.iloc[0]))],
                    x,
                    y,
                    tx,
                    ty,
                    utility="margin",
                ).numpy()
                for m, i in zip(models, ids, strict=True)
            ],
            axis=0,
        ),
        "trak": trak_scores(models, x, y, tx, ty, proj_dim=200, seed=config.seed).numpy(),
    }
    for method, want in expected.items():
        estimate(settings, uri, method, executor=SerialExecutor(), show_progress=False)
        got = run.scores(method)[1]
        np.testing.assert_allclose(
            got, want, rtol=2e-3, atol=1e-5 * np.abs(want).max(), err_msg=method
        )
    # the solver is a setting: conjugate gradients through the stage gives the exact answer too
    cg = config_from_dict(
        LOGREG,
        [
            "gradients.models=2",
            "gradients.solver=cg",
            "gradients.damping=0.0",
            "gradients.cg_tol=1e-10",
            "gradients.cg_max_iter=2000",
        ],
    )
    estimate(cg, uri, "influence", executor=SerialExecutor(), show_progress=False)
    want = expected["influence"]
    np.testing.assert_allclose(
        run.scores("influence")[1], want, rtol=1e-3, atol=1e-5 * np.abs(want).max()
    )


def test_finished_parts_are_reused_on_resume(logreg_run, tmp_path):
    config, uri = logreg_run
    copy = str(tmp_path / "run")
    shutil.copytree(uri, copy)
    settings = config_from_dict(LOGREG, ["gradients.models=1", "gradients.train_per_task=20"])
    run = Run(copy)
    stage = EstimateStage(settings, run, "representer")
    first_self = next(u for u in stage.units() if u.payload[0] == "self")
    _, _, _, start, stop = first_self.payload
    # a task that finished before the driver died: its part is on disk (here, recognisable values)
    stage.compute(context(), first_self)
    marker = np.full(stop - start, 123.0)
    import io

    buffer = io.BytesIO()
    np.save(buffer, marker)
    run.fs.write_bytes_atomic(stage.part_path(first_self), buffer.getvalue())
    estimate(settings, copy, "representer", executor=SerialExecutor(), show_progress=False)
    self_scores = run.self_scores()["representer"]
    np.testing.assert_array_equal(self_scores[start:stop], 123.0)
    assert not np.any(self_scores[stop:] == 123.0)


def test_attack_command_flips_a_retrained_logreg(tmp_path):
    config = config_from_dict(LOGREG, ["checkpoints.plan=full"])
    uri = str(tmp_path / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    run = Run(uri)
    margins = run.margins(plan="full")[0][
        : run.n_eval - run.n_train
    ]  # test targets of the full-data model
    target = int(np.where(margins > 0.5, margins, np.inf).argmin())
    result = CliRunner().invoke(app, ["attack", uri, "--target", str(target), "--budget", "1.0"])
    assert result.exit_code == 0, result.output
    assert "flipped" in result.output and "not flipped" not in result.output
    table = run.read_table(f"attacks/target_{target}.parquet").to_pylist()[0]
    assert table["flipped"] and table["margins"][0] > 0 > table["margins"][-1]
    assert max(abs(v) for v in table["delta"]) <= 1.0 + 1e-6
    assert run.table_versions(f"attacks/target_{target}.parquet") == {
        "attack.influence_pert": 1, "method.influence_pert": 1, "trainer.lbfgs": 1}
    bad = CliRunner().invoke(
        app, ["attack", uri, "--target", str(run.n_eval + 5), "--budget", "1.0"]
    )
    assert bad.exit_code == 2 and "not an eval position" in bad.output


def test_gradient_self_scores_find_flipped_labels(tmp_path):
    """Every gradient method's self scores rank flipped training labels far above chance."""
    from datamodels.metrics.mislabel import mislabel_detection

    config = config_from_dict(
        LOGREG, ["dataset.flip_fraction=0.2", "checkpoints.plan=full", "gradients.proj_dim=100"]
    )
    uri = str(tmp_path / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    run = Run(uri)
    rows = run.examples().dropna(subset=["train_position"]).sort_values("train_position")
    flipped = (rows["label"] != rows["original_label"]).to_numpy()
    assert flipped.sum() == 12
    found = {}
    for method in ("influence", "tracin", "representer", "trak"):
        estimate(config, uri, method, executor=SerialExecutor(), show_progress=False)
        found[method] = mislabel_detection(run.self_scores()[method], flipped).found_at(0.2)
    print(found)
    assert min(found.values()) >= 0.5, found  # chance: 0.2


# -- conv nets: resnet9 at width 4 on 8×8 images, through the same stage ------------------

RESNET = {
    "name": "resnet_tiny",
    "model": {"arch": "resnet9", "width": 4},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "weight_decay": 5e-3},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 2},
        {"name": "eval", "alpha": 0.5, "count": 2},
    ],
    "checkpoints": {"plan": "train", "epochs": [1]},
    "resources": {"models_per_task": 4},
}
RESNET_GRADIENTS = [
    "gradients.models=2",
    "gradients.trak_models=2",
    "gradients.proj_dim=24",
    "gradients.trak_damping=0.0",  # the plain trak_scores of the last checkpoint
    "gradients.trak_checkpoints=1",
    "gradients.chunk_size=16",
    "gradients.targets_per_task=6",
    "gradients.train_per_task=25",
]


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """32 train + 8 test CIFAR-shaped 8×8 images, 2 resnet9 models with 2 checkpoints each."""
    root = tmp_path_factory.mktemp("resnet")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    images[..., 0] = images[..., 0] // 2 + 60 * labels[:, None, None]  # learnable
    split = np.array(["train"] * 32 + ["test"] * 8)
    np.savez(root / "images.npz", X=images, y=labels, split=split)
    data = {"dataset": {"name": "arrays", "path": str(root / "images.npz")}}
    uri = str(root / "run")
    train(config_from_dict(RESNET | data), uri, executor=SerialExecutor(), show_progress=False)
    return RESNET | data, uri


def _resnet_estimate(spec, uri, method, overrides=()):
    config = config_from_dict(spec, RESNET_GRADIENTS + list(overrides))
    estimate(config, uri, method, executor=SerialExecutor(), show_progress=False)
    scores, own = _scores_and_self(uri, method)
    assert scores.shape == (8, 32) and own.shape == (32,)
    assert np.isfinite(scores).all() and np.isfinite(own).all() and np.abs(scores).max() > 0
    return config, scores


def test_conv_net_through_every_gradient_estimator(resnet_run):
    """influence (CG, LiSSA), tracin, representer and trak on resnet9 via functional_call:
    each stage table is the pure estimator on the checkpointed modules."""
    from datamodels.gradients import ConjugateGradient, Lissa

    spec, uri = resnet_run
    run = Run(uri)
    config, _ = _resnet_estimate(spec, uri, "tracin")  # settle the models the others use
    ids = sorted(read_checkpoint_index(run.fs).model_id.unique().tolist())[:2]
    data, models, index = _models(config, uri, ids)
    assert models[0].num_params == 26_116 and models[0].params.dtype == torch.float32
    x, y = data.train_x, data.train_y
    targets = torch.from_numpy(eval_positions(run, "test"))
    tx, ty = data.eval_x[targets], data.eval_y[targets]
    masks = torch.from_numpy(run.masks_of(np.array(ids)))

    def mean(values):
        return np.mean([v.numpy() for v in values], axis=0)

    def history(m):
        rows = index[index.model_id == m].sort_values("epoch")
        return [
            (functional_model(config, data, load_checkpoint(run.fs, p)["layers"]).params, lr)
            for p, lr in zip(rows.path, rows.lr, strict=True)
        ]

    cg = ["gradients.solver=cg", "gradients.cg_max_iter=2", "gradients.damping=0.1"]
    lissa = ["gradients.solver=lissa", "gradients.lissa_depth=2", "gradients.damping=0.1"]
    lissa += ["gradients.lissa_scale=50"]
    expected = {
        "tracin": mean(
            tracin_scores(m, history(i), x, y, tx, ty, utility="margin")
            for m, i in zip(models, ids, strict=True)
        ),
        "representer": mean(
            representer_scores(m, x, y, tx, ty, n_train=int(mk.sum()))
            for m, mk in zip(models, masks, strict=True)
        ),
        "trak": trak_scores(models, x, y, tx, ty, proj_dim=24, seed=config.seed).numpy(),
    }
    solvers = {
        "cg": (cg, ConjugateGradient(damping=0.1, tol=1e-8, max_iter=2, hvp_chunk=16)),
        "lissa": (lissa, Lissa(damping=0.1, scale=50.0, depth=2, seed=config.seed, hvp_chunk=16)),
    }
    for name, (_, solver) in solvers.items():
        expected[f"influence-{name}"] = mean(
            influence_scores(m, x[mk], y[mk], tx, ty, solver=solver, points_x=x, points_y=y)
            for m, mk in zip(models, masks, strict=True)
        )
    for key, want in expected.items():
        method, _, solver = key.partition("-")
        overrides = solvers[solver][0] if solver else []
        _, got = _resnet_estimate(spec, uri, method, overrides)
        np.testing.assert_allclose(
            got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max(), err_msg=key
        )


def test_conv_net_refusals_are_one_line(resnet_run, monkeypatch):
    from datamodels.models.archs.resnet9 import ResNet9
    from datamodels.trainers import sequential

    spec, uri = resnet_run
    # solver: exact; a representer setting of its own, so that its table is not up to date
    config = config_from_dict(spec, RESNET_GRADIENTS + ["gradients.representer_output=true_class"])
    with pytest.raises(EstimateError) as exact:
        estimate(config, uri, "influence", executor=SerialExecutor(), show_progress=False)
    assert "above gradients.max_exact_params=20000" in str(exact.value)
    assert "gradients.solver=cg (or lissa)" in str(exact.value)

    class Head(torch.nn.Module):  # the same tensor as resnet9's last layer, not an nn.Linear
        def __init__(self, linear):
            super().__init__()
            self.weight = linear.weight

        def forward(self, features):
            return features @ self.weight.T

    def without_linear(self, model, data, seed):
        net = sequential.build_resnet9(seed, data.num_classes, model.width)
        net.net[-1] = Head(net.net[-1])
        return net

    monkeypatch.setattr(ResNet9, "build_module", without_linear)
    with pytest.raises(EstimateError) as refused:
        estimate(config, uri, "representer", executor=SerialExecutor(), show_progress=False)
    message = str(refused.value)
    assert message.startswith(
        "representer: model.arch='resnet9' has no usable last linear layer (the module has "
        "no nn.Linear layer"
    )
    assert "use tracin or trak" in message and "\n" not in message


def test_gradient_devices_are_checked_in_one_line():
    from datamodels.errors import ConfigError
    from datamodels.methods.devices import check_gradient_device, task_device

    with pytest.raises(ConfigError, match="gradients.device=cpu never uses"):
        config_from_dict(MLP, ["gradients.device=cpu", "gradients.num_gpus=1"])
    gpus = config_from_dict(MLP, ["gradients.num_gpus=0.5"]).gradients
    assert task_device(gpus) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert task_device(config_from_dict(MLP).gradients) == "cpu"
    if not torch.cuda.is_available():
        cuda = config_from_dict(MLP, ["gradients.device=cuda"]).gradients
        with pytest.raises(ConfigError, match="no CUDA device and gradients.num_gpus is 0"):
            check_gradient_device(cuda)
        with pytest.raises(EstimateError, match="sees no CUDA device"):
            task_device(cuda)


@pytest.mark.gpu
def test_conv_net_estimators_on_cuda_match_cpu(resnet_run, tmp_path, monkeypatch):
    """The stage's tasks on CUDA (``gradients.device=cuda``, on a copy of the run: the
    device is not part of a table's settings): the CPU tables within float32 round-off;
    TRAK draws its projection from the CUDA generator, so it is checked to run."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions
    spec, uri = resnet_run
    copy = str(tmp_path / "run")
    shutil.copytree(uri, copy)
    cg = ["gradients.solver=cg", "gradients.cg_max_iter=2", "gradients.damping=0.1"]
    for method, overrides in (("tracin", []), ("representer", []), ("influence", cg)):
        _, on_cpu = _resnet_estimate(spec, uri, method, overrides)
        _, on_gpu = _resnet_estimate(spec, copy, method, overrides + ["gradients.device=cuda"])
        np.testing.assert_allclose(
            on_gpu, on_cpu, rtol=1e-3, atol=1e-4 * np.abs(on_cpu).max(), err_msg=method
        )
    _resnet_estimate(spec, copy, "trak", ["gradients.device=cuda"])
