"""The commands of the applications on a finished run: ``attack``, ``sparse-layer``,
``alpha-effect`` and ``lds-curve``."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer

from datamodels import api
from datamodels.cli.common import (
    RunArg,
    SetOpt,
    TrustOpt,
    err_console,
    existing_run,
    out_console,
    run_config,
    user_errors,
)
from datamodels.errors import ConfigError


@user_errors
def attack(
    run: RunArg,
    target: Annotated[
        int, typer.Option("--target", "-t", help="eval position of the target to misclassify")
    ],
    budget: Annotated[
        float,
        typer.Option(
            "--budget", "-b", help="L∞ radius of the perturbation (normalised input units)"
        ),
    ],
    point: Annotated[
        int | None,
        typer.Option("--point", help="train position to perturb (default: the most influential)"),
    ] = None,
    max_iter: Annotated[int, typer.Option("--max-iter", help="perturb-and-retrain rounds")] = 20,
    set_: SetOpt = None,
    trust_code: TrustOpt = False,
) -> None:
    """Training-set attack (Koh & Liang §5.2): perturb one training input so that the retrained
    model misclassifies the target; writes attacks/target_<target>.parquet."""
    row = api.attack(
        run_config(run, set_, trust_code), run, target, budget, point, max_iter, console=err_console
    )
    trail = " -> ".join(f"{m:.3f}" for m in row["margins"])
    verdict = "flipped" if row["flipped"] else "not flipped"
    out_console.print(
        f"attack on target {target} (model {row['model_id']}): "
        f"perturbed train position {row['train_position']}, "
        f"|delta|_inf = {max(abs(v) for v in row['delta']):.4g} <= {budget:g}; "
        f"margin {trail}: {verdict}"
    )
    out_console.print(f"wrote {run}/attacks/target_{target}.parquet")


@user_errors
def sparse_layer(run: RunArg, set_: SetOpt = None, trust_code: TrustOpt = False) -> None:
    """Sparse decision layer (Wong et al. 2021): an elastic-net multinomial path on a
    checkpointed model's penultimate features, λ chosen on held-out training rows at
    sparse_layer.max_features per class; writes sparse_layer/*.parquet."""
    row = api.sparse_layer(run_config(run, set_, trust_code), run, console=err_console)
    out_console.print(
        f"sparse layer of model {row['model_id']}: λ #{row['chosen_lam_index']} "
        f"({row['chosen_lam']:.4g}), at most {row['chosen_max_features_per_class']} of "
        f"{row['num_features']} features per class; test accuracy "
        f"{row['sparse_test_accuracy']:.4f} (dense layer {row['dense_test_accuracy']:.4f})",
        highlight=False,
    )
    out_console.print(f"wrote {run}/sparse_layer/", highlight=False)


@user_errors
def alpha_effect(
    run: RunArg,
    k: Annotated[int, typer.Option("--k", help="top-k helpful examples compared")] = 10,
    holdout: Annotated[
        float, typer.Option("--holdout", help="fraction of each level held out for its LDS")
    ] = 0.2,
    models_per_level: Annotated[
        int | None, typer.Option("--models-per-level", help="default: the smallest level's")
    ] = None,
) -> None:
    """Datamodels per subset size α (alpha_grid levels, alpha plans): LDS and top-k agreement
    with the run's datamodels -> applications/alpha_effect.parquet."""
    from datamodels.applications.alpha_effect import alpha_effect_summary  # pulls in torch

    frame = api.alpha_effect(existing_run(run), k=k, holdout=holdout,
                             models_per_level=models_per_level)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(alpha_effect_summary(frame).to_string(index=False, float_format="{:.3f}".format))
    out_console.print(f"alpha-effect: {run}/applications/alpha_effect.parquet", highlight=False,
                      soft_wrap=True)


@user_errors
def lds_curve(
    run: RunArg,
    counts: Annotated[
        str, typer.Option("--counts", help="model counts, comma-separated (capped by the plan)")
    ] = "100,200,500,1000,2000",
) -> None:
    """LDS of datamodels fitted on the first m models of the fitting plan, for m on a grid
    (LDS on the evaluation plan) -> applications/lds_curve.parquet."""
    try:
        grid = tuple(int(c) for c in counts.split(",") if c.strip())
    except ValueError:
        raise ConfigError(
            f"--counts: {counts!r} is not a comma-separated list of integers, e.g. 100,500"
        ) from None
    frame = api.lds_curve(existing_run(run), grid)
    print(frame.to_string(index=False, float_format="{:.4f}".format))
    out_console.print(f"lds-curve: {run}/applications/lds_curve.parquet", highlight=False,
                      soft_wrap=True)
