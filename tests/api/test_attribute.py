"""``dm.attribute``: the gradient estimators on a CNN the test trains itself (a plain torch
loop on the run's digits), checked against the same scores computed independently, then
evaluated against held-out retrained models and shown by the report."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import datamodels as dm
from datamodels import api
from datamodels.config import config_from_dict
from datamodels.errors import CheckpointError, EstimateError
from datamodels.gradients.checkpointed import solver_for
from datamodels.gradients.influence import influence_scores
from datamodels.gradients.module import module_model
from datamodels.gradients.trak import (
    kernel_inverse,
    model_projection,
    one_minus_p,
    trak_attribution,
    trak_features,
)
from datamodels.orchestrate.context import Context
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run
from datamodels.store.positions import eval_positions
from tests.custom_models import make_cnn

CONFIG = {
    "name": "attribute_cnn",
    "dataset": {"factory": "tests.custom_models:digit_images", "kwargs": {"limit": 120}},
    "model": {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 4}},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "weight_decay": 1e-3},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 2},
        {"name": "eval", "alpha": 0.5, "count": 5},
    ],
    "gradients": {"proj_dim": 32, "targets_per_task": 10, "train_per_task": 40,
                  "solver": "cg", "cg_max_iter": 10, "damping": 0.1,
                  # TRAK on the last checkpoint, undamped: the kernel the test builds by hand
                  # (its checkpoint ensemble is tests/gradients/test_trak_ensemble.py's)
                  "trak_checkpoints": 1, "trak_damping": 0.0},
}
LRS = (0.1, 0.05)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(data, epochs: int, seed: int = 0):
    """A plain SGD loop on the run's (standardised) training images; the state after each
    epoch in ``epochs``."""
    torch.manual_seed(seed)
    module = make_cnn(data.num_classes, tuple(data.train_x.shape[1:]), width=4)
    opt = torch.optim.SGD(module.parameters(), lr=LRS[0])
    states, order = [], torch.Generator().manual_seed(seed)
    for epoch in range(1, max(epochs) + 1):
        for batch in torch.randperm(data.n_train, generator=order).split(16):
            opt.zero_grad()
            F.cross_entropy(module(data.train_x[batch]), data.train_y[batch]).backward()
            opt.step()
        if epoch in epochs:
            states.append({k: v.clone() for k, v in module.state_dict().items()})
    return module, states


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, run dir, TrainData, saved checkpoint files) of a CNN trained here."""
    config = config_from_dict(CONFIG, [])
    root = tmp_path_factory.mktemp("attribute")
    out = str(root / "run")
    api.prepare(config, out)
    data = Context().data(Run(out), config)
    _, states = _train(data, (1, 3))
    files = []
    for i, state in enumerate(states):
        files.append(str(root / f"epoch_{i}.pt"))
        torch.save(state, files[-1])
    return config, out, data, files


def _functional(config, data, state):
    module = make_cnn(data.num_classes, tuple(data.train_x.shape[1:]), width=4)
    module.load_state_dict(state)
    return module, module_model(module, data.num_classes, config.train.weight_decay)


def _gradients(data, state, targets):
    """(∇ℓ_i [n, P], ∇m_t [T, P]) at ``state``, float64, by torch.func; margins by hand."""
    module = make_cnn(data.num_classes, tuple(data.train_x.shape[1:]), width=4).double().eval()
    params = {k: v.double() for k, v in state.items()}

    def logits(p, x):
        return functional_call(module, p, (x.double().unsqueeze(0),))[0]

    def loss(p, x, y):
        return F.cross_entropy(logits(p, x).unsqueeze(0), y.unsqueeze(0))

    def margin(p, x, y):
        z = logits(p, x)
        own = torch.arange(len(z)) == y
        return (z * own).sum() - z.masked_fill(own, -torch.inf).max()

    def flat(g):
        return torch.cat([g[k].reshape(len(g[k]), -1) for k in params], 1)

    g_train = flat(vmap(grad(loss), (None, 0, 0))(params, data.train_x, data.train_y))
    tx, ty = data.eval_x[targets], data.eval_y[targets]
    return g_train, flat(vmap(grad(margin), (None, 0, 0))(params, tx, ty))


def _hand_tracin(data, states, targets):
    """−Σ_k η_k ∇m_t(θ_k)·∇ℓ_i(θ_k)."""
    total = 0
    for state, lr in zip(states, LRS, strict=True):
        g_train, g_target = _gradients(data, state, targets)
        total = total - lr * (g_target @ g_train.T)
    return total.numpy()


def test_attribute_equals_the_estimators_in_process_and_is_evaluated(trained):
    config, out, data, files = trained
    methods = ["tracin", "trak", "influence", "representer"]
    written = dm.attribute(config, files, out, methods=methods, lr=list(LRS),
                           executor=SerialExecutor(), show_progress=False)
    run = Run(out)
    targets = eval_positions(run, "test")
    assert {m: w["scores"] for m, w in written.items()} == {m: len(targets) for m in methods}
    states = [torch.load(f, weights_only=True) for f in files]

    # TracIn: by hand over both checkpoints
    got_targets, tracin = run.scores("tracin")
    np.testing.assert_array_equal(got_targets, targets)
    np.testing.assert_allclose(tracin, _hand_tracin(data, states, targets), rtol=2e-3,
                               atol=2e-3 * np.abs(tracin).max())

    # the others read the last checkpoint: the gradients/ functions called directly
    _, model = _functional(config, data, states[-1])
    tx, ty = data.eval_x[targets], data.eval_y[targets]
    g = config.gradients
    projection = model_projection(model, g.proj_dim, config.seed, precision="fp32")
    phi = trak_features(model, data.train_x, data.train_y, projection, "trak", g.chunk_size)
    trak = trak_attribution(model, phi, tx, ty, projection, chunk_size=g.chunk_size,
                            kernel=kernel_inverse(phi, g.trak_damping))
    trak = trak * one_minus_p(model, data.train_x, data.train_y, g.chunk_size)
    np.testing.assert_allclose(run.scores("trak")[1], trak.numpy(), rtol=1e-3,
                               atol=1e-4 * float(trak.abs().max()))
    influence = influence_scores(model, data.train_x, data.train_y, tx, ty,
                                 solver=solver_for(config), chunk_size=g.chunk_size)
    np.testing.assert_allclose(run.scores("influence")[1], influence.numpy(), rtol=1e-3,
                               atol=1e-4 * float(influence.abs().max()))

    # current: nothing recomputed; the status table knows the stage
    again = dm.attribute(config, files, out, methods=["tracin"], lr=list(LRS),
                         executor=SerialExecutor(), show_progress=False)
    assert again == {"tracin": {}}
    states_table = api.stage_states(out).set_index("stage")
    assert states_table.loc["attribute", "state"] == "done", states_table

    # held-out retrained models: evaluate scores every attributed table; the report shows them
    api.train(config, out, executor=SerialExecutor(), show_progress=False)
    evaluation = api.evaluate(config, out)
    lds = evaluation[evaluation.metric == "lds"].set_index("method")["value"]
    assert set(lds.index) == set(methods)
    assert np.isfinite(lds.to_numpy()).all()
    from datamodels.report.html import build_report

    page = build_report(out).read_text()
    for method in methods:  # each attributed table: its targets and top training examples
        assert f"<h3>{method}</h3>" in page

    # every file of the run is one a stage, the contract or the store declares
    from datamodels.stages.pipeline import declared_paths

    files = [str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file()]
    assert any(f.startswith("imported/") for f in files)
    stray = [f for f in files if f != "report.html"
             and not any(fnmatch.fnmatch(f, p) for p in declared_paths())]
    assert not stray, stray


def test_a_new_checkpoint_content_recomputes_and_a_module_is_accepted(trained, tmp_path):
    config, out, data, files = trained
    module, _ = _train(data, (2,), seed=1)
    first = dm.attribute(config, module, out, methods="representer",
                         executor=SerialExecutor(), show_progress=False)
    assert first["representer"]["models"] == 1
    before = Run(out).scores("representer")[1]
    torch.save(module.state_dict(), tmp_path / "same.pt")
    assert dm.attribute(config, str(tmp_path / "same.pt"), out, methods="representer",
                        executor=SerialExecutor(), show_progress=False) == {"representer": {}}
    with torch.no_grad():
        module.head.bias += 1.0
    changed = dm.attribute(config, module, out, methods="representer",
                           executor=SerialExecutor(), show_progress=False)
    assert changed["representer"]["models"] == 1
    assert not np.array_equal(before, Run(out).scores("representer")[1])


def test_bad_inputs_are_one_line(trained, tmp_path):
    config, out, data, files = trained
    with pytest.raises(EstimateError, match="datamodels.*not a gradient method"):
        dm.attribute(config, files, out, methods="datamodels", executor=SerialExecutor())
    with pytest.raises(CheckpointError, match="nope.pt not found"):
        dm.attribute(config, str(tmp_path / "nope.pt"), out, executor=SerialExecutor())
    wrong = make_cnn(data.num_classes, tuple(data.train_x.shape[1:]), width=6)
    with pytest.raises(CheckpointError, match="has shape"):
        dm.attribute(config, wrong, out, methods="representer", executor=SerialExecutor(),
                     show_progress=False)


def test_command_line_refuses_a_missing_file_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from datamodels.cli import app

    config = tmp_path / "c.yaml"
    config.write_text("name: c\ndataset: {name: digits}\nmodel: {factory: "
                      "'tests.custom_models:make_cnn'}\n")
    result = CliRunner().invoke(app, ["attribute", str(config), "-c", str(tmp_path / "a.pt"),
                                      "--out", str(tmp_path / "run"), "-m", "tracin"])
    assert result.exit_code == 2
    assert "a.pt not found" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
