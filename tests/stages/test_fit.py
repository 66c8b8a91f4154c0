"""The fit and evaluate stages on synthetic runs with planted linear datamodels."""

import shutil

import numpy as np
import pandas as pd
import pytest

from datamodels.api import evaluate, fit
from datamodels.config import config_from_dict
from datamodels.errors import FitError
from datamodels.store import Run, models_table

N_TRAIN, N_TEST = 30, 8


def _synthetic_run(path, n_fit=400, n_eval=60, noise=0.05, seed=0, edit=None):
    """A run whose margins are an exact sparse linear function of the mask plus noise."""
    rng = np.random.default_rng(seed)
    config = config_from_dict(
        {
            "dataset": {"eval_train": False},
            "plans": [{"name": "train", "count": n_fit}, {"name": "eval", "count": n_eval}],
            "fit": {"targets_per_block": 3},
        }
    )
    run = Run(str(path))
    run.write_config(config.to_yaml())
    split = ["train"] * N_TRAIN + ["test"] * N_TEST
    run.write_examples(
        pd.DataFrame(
            {
                "index": np.arange(N_TRAIN + N_TEST),
                "split": split,
                "label": np.zeros(N_TRAIN + N_TEST, dtype=np.int64),
                "original_label": np.zeros(N_TRAIN + N_TEST, dtype=np.int64),
                "eval_position": pd.array([None] * N_TRAIN + list(range(N_TEST)), dtype="Int64"),
                "train_position": pd.array(list(range(N_TRAIN)) + [None] * N_TEST, dtype="Int64"),
            }
        )
    )
    magnitude = rng.uniform(0.5, 1.5, size=(N_TEST, N_TRAIN)) * rng.choice(
        [-1, 1], size=(N_TEST, N_TRAIN)
    )
    weights = magnitude * (rng.random((N_TEST, N_TRAIN)) < 0.2)
    m = n_fit + n_eval
    masks = rng.random((m, N_TRAIN)) < 0.5
    margins = (masks @ weights.T + 0.3 + noise * rng.normal(size=(m, N_TEST))).astype(np.float32)
    if edit:
        masks, margins = edit(masks, margins)
    plans = np.array(["train"] * n_fit + ["eval"] * n_eval)
    for lo in range(0, m, 100):
        sl = slice(lo, min(m, lo + 100))
        run.write_models(
            models_table(
                model_ids=np.arange(m)[sl],
                plan=plans[sl],
                alphas=0.5,
                seeds=np.arange(m)[sl],
                masks=masks[sl],
                margins=margins[sl],
                train_loss=0.0,
                eval_accuracy=1.0,
                seconds=0.1,
                attempt=1,
                worker="test",
            ),
            config_hash=config.hash,  # its masks are not the plan's: the shard says whose it is
        )
    return config, run, weights


def test_fit_recovers_planted_weights_and_lds(tmp_path):
    config, run, planted = _synthetic_run(tmp_path / "run")
    assert fit(config, run, show_progress=False)
    targets = run.targets()
    assert targets["target"].tolist() == list(range(N_TEST))
    assert np.isfinite(targets[["bias", "lam", "val_mse", "val_spearman"]].to_numpy(float)).all()
    weights = run.weights()
    dense = np.zeros_like(planted)
    dense[weights["target"], weights["train_position"]] = weights["weight"]
    support = planted != 0
    # every planted weight found with its sign; validation-chosen lambda lets in only tiny extras
    assert (np.sign(dense[support]) == np.sign(planted[support])).all()
    np.testing.assert_allclose(dense[support], planted[support], atol=0.05)
    assert np.abs(dense[~support]).max() < 0.05
    np.testing.assert_allclose(targets["bias"], 0.3, atol=0.05)  # raw-mask units
    ids, scores = run.scores("datamodels")
    np.testing.assert_array_equal(scores, dense.astype(np.float32))
    assert targets["nnz"].tolist() == (dense != 0).sum(1).tolist()
    frame = evaluate(config, run)
    row = frame.set_index("method").loc["datamodels"]
    assert row["metric"] == "lds" and row["value"] > 0.9 and row["n_targets"] == N_TEST
    assert run.evaluation()["method"].tolist() == ["datamodels"]
    assert not fit(config, run, show_progress=False)  # complete: nothing to do


def test_fit_resumes_from_finished_blocks(tmp_path, monkeypatch):
    from datamodels.orchestrate.context import context
    from datamodels.stages.fit import FitStage

    config, run, _ = _synthetic_run(tmp_path / "run")
    fit(config, run, show_progress=False)
    first = run.weights()
    fresh = Run(str(tmp_path / "again"))
    shutil.copytree(tmp_path / "run" / "models", tmp_path / "again" / "models")
    shutil.copy(tmp_path / "run" / "examples.parquet", tmp_path / "again" / "examples.parquet")
    stage = FitStage(config, fresh)
    units = stage.units()
    assert len(units) > 2
    for unit in units[:2]:  # what finished before the process was killed
        stage.compute(context(), unit)
    computed = []
    real = FitStage.compute
    monkeypatch.setattr(
        FitStage,
        "compute",
        lambda self, ctx, unit, shared=None: (
            computed.append(unit.name),
            real(self, ctx, unit, shared),
        )[1],
    )
    assert fit(config, fresh, show_progress=False)
    assert computed == [u.name for u in units[2:]]  # only the missing blocks
    pd.testing.assert_frame_equal(fresh.weights(), first)
    assert not (tmp_path / "again" / "_parts").exists() or not any(
        (tmp_path / "again" / "_parts").iterdir()
    )


def test_too_few_models(tmp_path):
    config, run, _ = _synthetic_run(tmp_path / "run", n_fit=12, n_eval=5)
    with pytest.raises(FitError, match="at least 22 models in plan 'train'"):
        fit(config, run, show_progress=False)


def test_constant_target_and_always_included_point(tmp_path):
    def edit(masks, margins):
        margins[:, 2] = 1.5  # a target no subset changes
        masks[:, 4] = True  # a training point in every subset
        return masks, margins

    config, run, _ = _synthetic_run(tmp_path / "run", edit=edit)
    fit(config, run, show_progress=False)
    targets = run.targets().set_index("target")
    assert targets.loc[2, "nnz"] == 0 and targets.loc[2, "lam"] == 0.0
    assert targets.loc[2, "bias"] == pytest.approx(1.5)
    assert np.isfinite(targets.to_numpy(float)).all()
    weights = run.weights()
    assert not (weights["train_position"] == 4).any()
    frame = evaluate(config, run)
    assert frame.loc[0, "n_targets"] == N_TEST - 1  # the constant target has no ranking


def test_the_api_refuses_a_config_the_run_was_not_made_from(tmp_path):
    from datamodels.errors import RunMismatchError

    config, run, _ = _synthetic_run(tmp_path / "run")
    other = config_from_dict(config.model_dump(mode="json"), ["seed=7"])
    with pytest.raises(RunMismatchError, match="differs in seed"):
        fit(other, run, show_progress=False)


def test_blocks_of_another_size_are_not_mixed_in(tmp_path):
    from datamodels.orchestrate.context import context
    from datamodels.stages.fit import FitStage

    config, run, _ = _synthetic_run(tmp_path / "run")
    threes = FitStage(config, run)
    threes.compute(context(), threes.units()[0])  # killed after one block of 3 targets
    twos = config_from_dict(config.model_dump(mode="json"), ["fit.targets_per_block=2"])
    assert fit(twos, run, show_progress=False)
    assert run.targets()["target"].tolist() == list(range(N_TEST))


def test_fit_counts_targets_short_of_tol_in_one_line_not_a_python_warning(
    tmp_path, monkeypatch, capsys
):
    """A fit whose solver cannot meet its tolerance (1e-9 within 2 iterations): no Python
    warning; one counted line on stderr, recorded in the fit marker (and read back by
    `shortfall_line`); a converged fit prints no such line."""
    import warnings

    import datamodels.regress.select as select
    from datamodels.stages.fit import shortfall_line

    config, run, _ = _synthetic_run(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any Python warning fails the fit
        fit(config, run, show_progress=False)
    assert "stopped at the solver's iteration limit" not in capsys.readouterr().err
    assert shortfall_line(run) is None

    config, short, _ = _synthetic_run(tmp_path / "short")
    solve = select.lasso_select
    monkeypatch.setattr(select, "lasso_select",
                        lambda *a, **k: solve(*a, **{**k, "tol": 1e-9, "max_iter": 2}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(config, short, show_progress=False)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "iteration limit" in x]
    assert len(lines) == 1, err
    assert lines[0].startswith("fit: ") and f"of {N_TEST} targets" in lines[0]
    assert "docs/estimators/datamodels.md" in lines[0]
    assert shortfall_line(short) == lines[0]
