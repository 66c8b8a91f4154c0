"""The effect of subset size α, and LDS against the number of models (Ilyas et al. 2022, §3).

**α effect.** A *level* is a set of models trained on subsets of one size: one α of an
``alpha_grid`` plan (``levels > 0``), or one ``alpha`` plan other than the held-out
evaluation plan. Every level gets the same number of models (the smallest level's, or
``models_per_level``; the first ones by model id) so that only α changes. Within a level a
seeded fraction ``holdout`` of those models is set aside; datamodels are fitted on the rest
with the fit stage's regression (`datamodels.regress.select.fit_datamodels`: same λ path, same
validation rule), and

* ``lds_level``: per target, the Spearman correlation between the held-out models' margins
  and the datamodel's prediction on their masks (held out *within the level*: LDS at the
  level's own α; never a fitted model);
* ``lds_eval``: the same on the run's evaluation plan (``evaluate.plan``, usually α = ½);
* ``top_helpful``: the k training positions with the largest positive weights;
  ``top_overlap``: the fraction of the reference's top-k that is also in this level's;
  ``sign_agreement``: the fraction of the reference's top-k whose weight here is positive;
  ``weight_correlation``: Pearson correlation of the whole weight vector with the
  reference's; ``l1`` and ``nnz`` of the weights.

The reference (column ``reference``) is the run's own datamodels (``scores/datamodels.parquet``,
fitted on the whole fitting plan: the best-determined weights the run has) when they cover the
targets, else the level with the largest α. Datamodels fitted at α near 1 see each training
example left out rarely and are the noisiest for a given number of models, so the largest
level is a poor reference unless it has many models.

**LDS against m.** Datamodels fitted on the first m models of the fitting plan (``fit.plan``)
for m on a grid, LDS on the evaluation plan: the curve of how many models a datamodel needs.

Both are pure functions over arrays (`alpha_effect`, `lds_curve`) with ``*_from_run`` readers;
the stages `stages.alpha_effect` and `stages.lds_curve` (`datamodels alpha-effect RUN`,
`datamodels lds-curve RUN`) write them to ``applications/alpha_effect.parquet`` and
``applications/lds_curve.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from datamodels.config import Config, FitConfig, config_from_yaml_text
from datamodels.errors import DatamodelsError
from datamodels.metrics.lds import average_replicates, lds
from datamodels.orchestrate.progress import log_console
from datamodels.regress.lasso import split_rows
from datamodels.regress.select import fit_datamodels, min_models
from datamodels.store import Run
from datamodels.store.positions import eval_positions

# The code versions of the two tables (``application.alpha_effect``, ``application.lds_curve``,
# recorded by their stages beside ``fit.datamodels`` and ``metric.lds``): `alpha_effect` /
# `lds_curve` and their readers; bump with any change that can move a number it computes for the
# same inputs.
ALPHA_EFFECT_VERSION = 1
LDS_CURVE_VERSION = 1


class _Fits:
    """The fit stage's regression, many times over: the targets that stopped short of
    ``fit.tol`` are counted and said once, in one line (`warn`), not once per α level or
    model count."""

    def __init__(self, fit: FitConfig) -> None:
        self.fit, self.short, self.total = fit, 0, 0

    def __call__(self, masks: np.ndarray, margins: np.ndarray):
        selection = fit_datamodels(masks, margins, self.fit)
        self.short += selection.n_short
        self.total += int(np.asarray(selection.converged).size)
        return selection

    def warn(self, what: str) -> None:
        """One line on stderr (not a Python warning) when some fits stopped short."""
        if self.short:
            log_console().print(
                f"{what}: {self.short:,} of {self.total:,} fitted datamodels stopped at the "
                f"solver's iteration limit before fit.tol={self.fit.tol:g} (their last iterate "
                "is used; see docs/estimators/datamodels.md)",
                highlight=False,
            )


DEFAULT_COUNTS = (100, 200, 500, 1000, 2000)


@dataclass(frozen=True)
class Level:
    """The models of one subset size: ``masks`` bool[m, n_train], ``margins`` float[m, n_eval]
    (model-id order)."""

    plan: str
    alpha: float
    masks: np.ndarray
    margins: np.ndarray


def _top(weights: np.ndarray, k: int) -> np.ndarray:
    """int64[≤k]: the positions of the k largest positive weights, largest first."""
    order = np.argsort(-weights, kind="stable")[:k]
    return order[weights[order] > 0].astype(np.int64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _held_out_lds(weights: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """float64[T] per-target LDS of ``weights`` on held-out masks/margins (replicates
    averaged); nan where undefined."""
    subsets, true_margins = average_replicates(masks, margins)
    if len(subsets) < 3:
        return np.full(weights.shape[0], np.nan)
    return lds(weights, subsets, true_margins).per_target


def alpha_effect(
    levels: list[Level],
    targets: np.ndarray,
    fit: FitConfig,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    k: int = 10,
    holdout: float = 0.2,
    models_per_level: int | None = None,
    seed: int = 0,
    reference: tuple[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per (level, target) with the columns of ``ALPHA_EFFECT_SCHEMA``.

    targets: int64[T] eval positions (columns of each level's margins); eval_set: the
    evaluation plan's (masks, margins) or None; holdout: the fraction of each level's models
    set aside for ``lds_level`` (rows ``split_rows(m, holdout, seed)[1]``); reference:
    (name, float[T, n_train] weights of the targets) to compare with, default the largest-α
    level's datamodels."""
    if not levels:
        raise DatamodelsError("alpha_effect: no α levels (an alpha_grid plan or alpha plans)")
    if not 0 < holdout < 1:
        raise DatamodelsError(f"alpha_effect: holdout must be in (0, 1), got {holdout}")
    targets = np.asarray(targets, dtype=np.int64)
    m = min(len(level.masks) for level in levels)
    m = m if models_per_level is None else min(m, models_per_level)
    fitted_rows, held_rows = split_rows(m, holdout, seed)
    if len(fitted_rows) < min_models(fit) or len(held_rows) < 3:
        raise DatamodelsError(
            f"alpha_effect: {m} models per level leave {len(fitted_rows)} to fit and "
            f"{len(held_rows)} held out; need at least {min_models(fit)} and 3. Train more "
            "models per level (plans.<name>.count) or lower --holdout"
        )
    if eval_set is not None:
        eval_subsets, eval_margins = average_replicates(*eval_set)
        eval_margins = eval_margins[:, targets]
    order = sorted(range(len(levels)), key=lambda i: (levels[i].alpha, levels[i].plan))
    fitted = []
    fits = _Fits(fit)
    for i in order:
        level = levels[i]
        margins = level.margins[:m][:, targets]
        selection = fits(level.masks[:m][fitted_rows], margins[fitted_rows])
        weights = np.asarray(selection.weights, dtype=np.float64)
        level_lds = _held_out_lds(weights, level.masks[:m][held_rows], margins[held_rows])
        eval_lds = (
            lds(weights, eval_subsets, eval_margins).per_target
            if eval_set is not None and len(eval_subsets) >= 3
            else np.full(len(targets), np.nan)
        )
        fitted.append((level, weights, level_lds, eval_lds))
    fits.warn("alpha_effect")
    if reference is None:
        name, reference = f"alpha={fitted[-1][0].alpha:.3g}", fitted[-1][1]  # the largest α
    else:
        name, reference = reference[0], np.asarray(reference[1], dtype=np.float64)
    rows = []
    for level, weights, level_lds, eval_lds in fitted:
        for t, target in enumerate(targets):
            mine, ref_top = weights[t], _top(reference[t], k)
            top = _top(mine, k)
            rows.append(
                {
                    "plan": level.plan,
                    "alpha": float(level.alpha),
                    "target": int(target),
                    "n_models": len(fitted_rows),
                    "n_heldout": len(held_rows),
                    "k": k,
                    "reference": name,
                    "top_helpful": top.tolist(),
                    "top_overlap": len(np.intersect1d(top, ref_top)) / len(ref_top)
                    if len(ref_top)
                    else np.nan,
                    "sign_agreement": float((mine[ref_top] > 0).mean()) if len(ref_top) else np.nan,
                    "weight_correlation": _pearson(mine, reference[t]),
                    "l1": float(np.abs(mine).sum()),
                    "nnz": int(np.count_nonzero(mine)),
                    "lds_level": float(level_lds[t]),
                    "lds_eval": float(eval_lds[t]),
                }
            )
    return pd.DataFrame(rows)


def alpha_effect_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per level (plan, α): LDS (mean over targets where defined) held out within the level
    and on the evaluation plan, mean top-k overlap / sign agreement / weight correlation with
    the largest-α level, mean l1 and nnz."""
    grouped = frame.groupby(["plan", "alpha"], sort=False)
    summary = grouped.agg(
        n_models=("n_models", "first"),
        n_heldout=("n_heldout", "first"),
        k=("k", "first"),
        reference=("reference", "first"),
        lds_level=("lds_level", "mean"),
        lds_eval=("lds_eval", "mean"),
        top_overlap=("top_overlap", "mean"),
        sign_agreement=("sign_agreement", "mean"),
        weight_correlation=("weight_correlation", "mean"),
        l1=("l1", "mean"),
        nnz=("nnz", "mean"),
        n_targets=("target", "size"),
    )
    return summary.reset_index().sort_values("alpha", kind="stable").reset_index(drop=True)


def lds_curve(
    masks: np.ndarray,
    margins: np.ndarray,
    eval_masks: np.ndarray,
    eval_margins: np.ndarray,
    fit: FitConfig,
    counts: tuple[int, ...] = DEFAULT_COUNTS,
) -> pd.DataFrame:
    """LDS of datamodels fitted on the first m rows of (masks, margins) for each m in
    ``counts`` between the fit's minimum and the rows available, and for all the rows, on
    the held-out (eval_masks, eval_margins) of the same targets (columns). One row per m:
    n_models, lds, stderr (over targets), n_targets."""
    available = len(masks)
    chosen = sorted({c for c in counts if min_models(fit) <= c < available})
    if available >= min_models(fit):
        chosen.append(available)  # the curve ends at the whole plan: the fit stage's datamodels
    if not chosen:
        raise DatamodelsError(
            f"lds_curve: {available} models; a fit needs at least {min_models(fit)}"
        )
    subsets, true_margins = average_replicates(eval_masks, eval_margins)
    rows = []
    fits = _Fits(fit)
    for count in chosen:
        selection = fits(masks[:count], margins[:count])
        result = lds(selection.weights, subsets, true_margins)
        defined = result.per_target[np.isfinite(result.per_target)]
        rows.append(
            {
                "n_models": int(count),
                "lds": result.value,
                "stderr": float(defined.std(ddof=1) / np.sqrt(len(defined)))
                if len(defined) > 1
                else np.nan,
                "n_targets": result.n_targets,
            }
        )
    fits.warn("lds_curve")
    return pd.DataFrame(rows)


# -- reading a run ------------------------------------------------------------------------------


def _config(run: Run) -> Config:
    """The run's recorded ``config.yaml``."""
    if not run.has_config():
        raise DatamodelsError(f"{run.uri}: no config.yaml; is this a run directory?")
    return config_from_yaml_text(run.read_config_text())


def alpha_levels(run: Run, config: Config | None = None) -> list[Level]:
    """The run's α levels: each α of every ``alpha_grid`` plan with ``levels > 0``, and every
    ``alpha`` plan except the evaluation plan (``evaluate.plan``), with its trained models."""
    config = config or _config(run)
    stored = set(run.models(columns=["plan"]).column("plan").unique().to_pylist())
    levels = []
    for plan in config.plans:
        if plan.name not in stored:
            continue
        if plan.kind == "alpha" and plan.name != config.evaluate.plan:
            masks, margins = run.masks_and_margins(plan=plan.name)
            levels.append(Level(plan.name, float(plan.alpha), masks, margins))
        elif plan.kind == "alpha_grid" and plan.levels > 0:
            masks, margins = run.masks_and_margins(plan=plan.name)
            alphas = run.models(plan=plan.name, columns=["alpha"]).column("alpha").to_numpy()
            for value in np.unique(alphas):
                rows = alphas == value
                levels.append(Level(plan.name, round(float(value), 6), masks[rows], margins[rows]))
    return levels


def _eval_set(run: Run, config: Config) -> tuple[np.ndarray, np.ndarray] | None:
    plan = config.evaluate.plan
    if plan not in {p.name for p in config.plans} or len(run.model_ids(plan=plan)) < 3:
        return None
    return run.masks_and_margins(plan=plan)


def alpha_effect_from_run(
    run: Run,
    k: int = 10,
    holdout: float = 0.2,
    models_per_level: int | None = None,
    config: Config | None = None,
) -> pd.DataFrame | None:
    """`alpha_effect` on the run's test targets; None when the run has fewer than two α
    levels (it needs an ``alpha_grid`` plan, or ``alpha`` plans at several α)."""
    config = config or _config(run)
    levels = alpha_levels(run, config)
    if len({level.alpha for level in levels}) < 2:
        return None
    targets = eval_positions(run, "test")
    return alpha_effect(
        levels,
        targets,
        config.fit,
        _eval_set(run, config),
        k=k,
        holdout=holdout,
        models_per_level=models_per_level,
        seed=config.fit.split_seed,
        reference=_fitted_reference(run, targets),
    )


def _fitted_reference(run: Run, targets: np.ndarray) -> tuple[str, np.ndarray] | None:
    """("datamodels", float[T, n_train]) from ``scores/datamodels.parquet`` when it has every
    target, else None."""
    if "datamodels" not in run.score_methods():
        return None
    have, scores = run.scores("datamodels")
    rows = np.searchsorted(have, targets)
    if not np.array_equal(have[np.minimum(rows, len(have) - 1)], targets):
        return None
    return "datamodels", scores[rows]


def lds_curve_from_run(
    run: Run, counts: tuple[int, ...] = DEFAULT_COUNTS, config: Config | None = None
) -> pd.DataFrame | None:
    """`lds_curve` of the fitting plan (``fit.plan``) on the run's test targets, LDS on the
    evaluation plan (column ``plan``); None without one (or too few models to fit)."""
    config = config or _config(run)
    eval_set = _eval_set(run, config)
    if eval_set is None or len(run.model_ids(plan=config.fit.plan)) < min_models(config.fit):
        return None
    masks, margins = run.masks_and_margins(plan=config.fit.plan)
    targets = eval_positions(run, "test")
    frame = lds_curve(
        masks, margins[:, targets], eval_set[0], eval_set[1][:, targets], config.fit, counts
    )
    frame["plan"] = config.evaluate.plan
    return frame
