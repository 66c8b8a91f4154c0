"""Tests for the batched LASSO path solver against scikit-learn and planted ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from datamodels.regress import DatamodelRegressor, lasso_path, lasso_select, split_rows


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # These problems are tiny: thread hand-offs dominate (3x the CPU time, far worse on a
    # shared machine), so this module runs single-threaded and restores the setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _objective(masks: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, lam: float) -> float:
    """1/(2m) ||y - b - M w||² + λ ||w||_1 in float64."""
    r = y - b - masks.astype(np.float64) @ w
    return float(r @ r / (2 * len(y)) + lam * np.abs(w).sum())


def _correlation(masks: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Xc^T (yc - Xc w) / m: minus the gradient of the smooth part."""
    xc = masks.astype(np.float64) - masks.mean(0)
    yc = y - y.mean()
    return xc.T @ (yc - xc @ w) / len(y)


def _random_problem(m: int, n: int, t: int, seed: int, density: float = 0.2):
    rng = np.random.default_rng(seed)
    masks = rng.random((m, n)) < 0.5
    true_w = rng.normal(size=(n, t)) * (rng.random((n, t)) < density)
    margins = masks @ true_w + rng.normal(size=(m, t)) + 3.0
    return masks, margins


@pytest.fixture(scope="module")
def small_path():
    masks, margins = _random_problem(400, 60, 5, seed=0)
    path = lasso_path(masks, margins, n_lambdas=12, eps=1e-2, tol=1e-10, dtype=torch.float64)
    return masks, margins, path


@pytest.mark.parametrize("k", [1, 4, 8, 11])
def test_path_matches_sklearn_objective(small_path, k):
    # Our solution's objective equals scikit-learn's within 1e-4 relative at every target.
    masks, margins, path = small_path
    assert path.converged.all()
    for t in range(margins.shape[1]):
        lam = float(path.lams[t, k])
        ref = Lasso(alpha=lam, tol=1e-10, max_iter=100_000).fit(
            masks.astype(np.float64), margins[:, t]
        )
        ours = _objective(masks, margins[:, t], path.coef[k, t], path.intercept[k, t], lam)
        theirs = _objective(masks, margins[:, t], ref.coef_, ref.intercept_, lam)
        assert abs(ours - theirs) <= 1e-4 * theirs


@pytest.mark.parametrize("k", [2, 6, 11])
def test_path_kkt_conditions(small_path, k):
    # |corr_j| <= λ(1 + 1e-5) where w_j = 0 and corr_j = λ sign(w_j) within 1e-5·λ elsewhere.
    masks, margins, path = small_path
    for t in range(margins.shape[1]):
        lam, w = float(path.lams[t, k]), path.coef[k, t]
        corr = _correlation(masks, margins[:, t], w)
        zero = w == 0
        assert np.all(np.abs(corr[zero]) <= lam * (1 + 1e-5))
        assert np.allclose(corr[~zero], lam * np.sign(w[~zero]), rtol=0, atol=1e-5 * lam)
        assert np.isclose(path.intercept[k, t], margins[:, t].mean() - masks.mean(0) @ w)


def test_path_starts_at_lambda_max_with_zero_weights(small_path):
    masks, margins, path = small_path
    assert np.all(path.coef[0] == 0)
    # just below λ_max some weight is nonzero, so λ_max is the smallest all-zero λ
    below = lasso_path(
        masks, margins, lams=path.lams[:, :1] * (1 - 1e-6), tol=1e-10, dtype=torch.float64
    )
    assert np.all(np.abs(below.coef[0]).sum(1) > 0)
    assert np.allclose(path.lams[:, -1] / path.lams[:, 0], 1e-2)


def test_float32_default_close_to_float64(small_path):
    # Default float32 at tol=1e-6: objective within 1e-4 relative of the float64 solution.
    masks, margins, path = small_path
    path32 = lasso_path(masks, margins, n_lambdas=12, eps=1e-2, tol=1e-6)
    assert path32.coef.dtype == np.float32
    for k in (3, 11):
        for t in range(margins.shape[1]):
            lam = float(path.lams[t, k])
            ref = _objective(masks, margins[:, t], path.coef[k, t], path.intercept[k, t], lam)
            ours = _objective(
                masks,
                margins[:, t],
                path32.coef[k, t].astype(np.float64),
                path32.intercept[k, t],
                lam,
            )
            assert abs(ours - ref) <= 1e-4 * ref


def test_chunked_equals_unchunked_and_input_kinds(tmp_path):
    masks, margins = _random_problem(300, 40, 3, seed=1)
    kwargs = dict(n_lambdas=6, eps=1e-2, tol=1e-12, dtype=torch.float64)
    whole = lasso_path(masks, margins, chunk_rows=10_000, **kwargs)
    chunked = lasso_path(masks, margins, chunk_rows=37, **kwargs)
    as_torch = lasso_path(
        torch.from_numpy(masks), torch.from_numpy(margins), chunk_rows=64, **kwargs
    )
    mm = np.lib.format.open_memmap(
        tmp_path / "masks.npy", mode="w+", dtype=np.bool_, shape=masks.shape
    )
    mm[:] = masks
    mm.flush()
    memmap = lasso_path(
        np.load(tmp_path / "masks.npy", mmap_mode="r"), margins, chunk_rows=50, **kwargs
    )
    for other in (chunked, as_torch, memmap):
        np.testing.assert_allclose(other.coef, whole.coef, atol=1e-9)
        np.testing.assert_allclose(other.intercept, whole.intercept, atol=1e-9)


def test_row_subset_equals_sliced_input():
    masks, margins = _random_problem(200, 30, 2, seed=2)
    rows = np.random.default_rng(0).permutation(200)[:150]
    kwargs = dict(n_lambdas=5, eps=1e-2, tol=1e-12, dtype=torch.float64, chunk_rows=40)
    sub = lasso_path(masks, margins, rows=rows, **kwargs)
    ref = lasso_path(masks[rows], margins[rows], **kwargs)
    np.testing.assert_allclose(sub.coef, ref.coef, atol=1e-9)


def test_constant_target_and_degenerate_columns():
    # Constant target: w = 0, bias = the constant, lam = 0. Always-true / always-false
    # columns: weight exactly 0. No NaN anywhere.
    masks, margins = _random_problem(240, 20, 3, seed=3, density=0.5)
    masks[:, 0] = True
    masks[:, 1] = False
    margins[:, 1] = 0.7
    margins[:, 2] += 5.0 * masks[:, 0]  # lands in the bias, not in the constant column
    fit = lasso_select(
        masks, margins, split_rows(240, 0.25, seed=0), n_lambdas=8, eps=1e-2, dtype=torch.float64
    )
    for field in ("weights", "bias", "lam", "val_mse", "val_spearman"):
        assert np.all(np.isfinite(getattr(fit, field))), field
    assert np.all(fit.weights[:, :2] == 0)
    assert np.all(fit.weights[1] == 0) and fit.nnz[1] == 0
    assert fit.bias[1] == pytest.approx(0.7) and fit.lam[1] == 0 and fit.val_spearman[1] == 0
    assert fit.val_mse[1] == pytest.approx(0.0, abs=1e-12)
    path = lasso_path(masks, margins, n_lambdas=5, eps=1e-2, dtype=torch.float64)
    assert (
        np.all(np.isfinite(path.coef))
        and np.all(path.coef[:, 1] == 0)
        and np.all(path.lams[1] == 0)
    )
    assert np.allclose(path.intercept[:, 1], 0.7)


def test_planted_sparse_support_recovery():
    # n = 200, 10 nonzeros per target with |w| in [1, 2], m = 2000, noise std 1, T = 4.
    # Criterion: every true nonzero is selected with the right sign, and the largest spurious
    # |w| is below a quarter of the smallest true |w|.
    rng = np.random.default_rng(4)
    m, n, t, k = 2000, 200, 4, 10
    masks = rng.random((m, n)) < 0.5
    true_w = np.zeros((t, n))
    for target in range(t):
        cols = rng.choice(n, k, replace=False)
        true_w[target, cols] = rng.choice([-1.0, 1.0], k) * rng.uniform(1.0, 2.0, k)
    margins = masks @ true_w.T + rng.normal(0.0, 1.0, (m, t)) + rng.normal(size=t)
    fit = lasso_select(masks, margins, split_rows(m, 0.2, seed=1), n_lambdas=20, patience=3)
    assert fit.converged.all()
    truth = true_w != 0
    assert np.all(np.sign(fit.weights[truth]) == np.sign(true_w[truth]))
    spurious = np.abs(np.where(truth, 0.0, fit.weights)).max(1)
    smallest = np.abs(np.where(truth, fit.weights, np.inf)).min(1)
    assert np.all(spurious < 0.25 * smallest)
    assert np.all(fit.val_spearman > 0.8)
    assert fit.weights.dtype == np.float32 and fit.nnz.dtype == np.int64


def test_selection_picks_best_lambda_and_refits_on_all_rows():
    masks, margins = _random_problem(500, 40, 4, seed=5, density=0.3)
    train, val = split_rows(500, 0.3, seed=2)
    fit = lasso_select(
        masks,
        margins,
        (train, val),
        n_lambdas=15,
        eps=1e-3,
        patience=2,
        tol=1e-10,
        dtype=torch.float64,
    )
    best = np.argmin(fit.val_mse_path, axis=1)
    np.testing.assert_allclose(fit.lam, fit.lams[np.arange(4), best], rtol=1e-6)
    np.testing.assert_allclose(fit.val_mse, fit.val_mse_path.min(1), rtol=1e-6)
    # early stopping: nothing evaluated more than `patience` steps past the best
    evaluated = np.isfinite(fit.val_mse_path)
    last = evaluated.shape[1] - 1 - np.argmax(evaluated[:, ::-1], axis=1)
    assert np.all(last <= best + 2)
    # the refit is the LASSO optimum on train + val at the chosen λ
    rows = np.concatenate([train, val])
    for target in range(4):
        lam = float(fit.lam[target])
        ref = Lasso(alpha=lam, tol=1e-10, max_iter=100_000).fit(
            masks[rows].astype(np.float64), margins[rows, target]
        )
        ours = _objective(
            masks[rows],
            margins[rows, target],
            fit.weights[target].astype(np.float64),
            float(fit.bias[target]),
            lam,
        )
        theirs = _objective(masks[rows], margins[rows, target], ref.coef_, ref.intercept_, lam)
        assert abs(ours - theirs) <= 1e-4 * theirs


def test_split_forms_agree_and_bad_inputs_raise():
    masks, margins = _random_problem(120, 15, 2, seed=6)
    is_val = np.zeros(120, dtype=bool)
    is_val[::4] = True
    a = lasso_select(masks, margins, is_val, n_lambdas=5, dtype=torch.float64)
    b = lasso_select(
        masks, margins, (~is_val, np.flatnonzero(is_val)), n_lambdas=5, dtype=torch.float64
    )
    np.testing.assert_allclose(a.weights, b.weights)
    with pytest.raises(ValueError, match="at least 2 rows"):
        lasso_path(masks[:1], margins[:1])
    with pytest.raises(ValueError, match="at least 2 training and 2 validation rows"):
        lasso_select(masks, margins, (np.arange(119), np.array([119])))
    with pytest.raises(ValueError, match="overlap"):
        lasso_select(masks, margins, (np.arange(100), np.arange(90, 120)))
    with pytest.raises(ValueError, match="boolean"):
        lasso_path(masks.astype(np.float32), margins)
    with pytest.raises(ValueError, match="one per mask row"):
        lasso_path(masks, margins[:-1])
    bad = margins.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        lasso_path(masks, bad)


def test_working_set_cap_flags_targets_and_stays_finite():
    # A target whose working set would pass max_features keeps its last solution, is flagged
    # not converged (counted in n_short, no Python warning), and nothing is NaN.
    import warnings

    masks, margins = _random_problem(300, 200, 3, seed=9, density=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = lasso_path(masks, margins, n_lambdas=10, eps=1e-3, max_features=20)
    assert path.n_short == 3
    assert np.all(np.isfinite(path.coef)) and np.all(np.isfinite(path.intercept))
    assert not path.converged[-1].any() and path.converged[0].all()
    assert np.all((path.coef[-1] != 0).sum(1) <= 20)
    np.testing.assert_array_equal(path.coef[-1], path.coef[-2])


def test_regressor_predict_matches_weights():
    masks, margins = _random_problem(300, 25, 3, seed=7)
    model = DatamodelRegressor(n_lambdas=8, patience=2).fit(masks, margins)
    pred = model.predict(masks[:50])
    np.testing.assert_allclose(
        pred, masks[:50] @ model.coef_.T + model.intercept_, rtol=1e-5, atol=1e-5
    )
    assert model.coef_.shape == (3, 25) and model.lam_.shape == (3,)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    masks, margins = _random_problem(400, 60, 5, seed=8)
    split = split_rows(400, 0.2, seed=0)
    cpu = lasso_select(masks, margins, split, n_lambdas=10, tol=1e-10, dtype=torch.float64)
    gpu = lasso_select(
        torch.from_numpy(masks).cuda(),
        margins,
        split,
        n_lambdas=10,
        tol=1e-10,
        dtype=torch.float64,
        device="cuda",
    )
    np.testing.assert_allclose(gpu.weights, cpu.weights, atol=1e-6)


def test_cached_gram_matches_chunked_passes(monkeypatch):
    """The cached Gram matrix (upper panels mirrored, refit Gram summed from train + val)
    is exact, and a selection through it matches one that reads the masks every pass."""
    from datamodels.regress import design

    masks, margins = _random_problem(200, 300, 4, seed=11, density=0.05)
    train, val = split_rows(200, 0.2, seed=1)
    dev = torch.device("cpu")
    part_a = design.MaskRows(masks, train, device=dev, dtype=torch.float64, chunk_rows=64)
    part_b = design.MaskRows(masks, val, device=dev, dtype=torch.float64, chunk_rows=64)
    pooled = design.MaskRows(masks, None, device=dev, dtype=torch.float64)
    pooled.adopt_gram(part_a, part_b)
    x = masks.astype(np.float64)
    np.testing.assert_array_equal(part_a.raw_gram().numpy(), x[train].T @ x[train])
    np.testing.assert_array_equal(pooled.raw_gram().numpy(), x.T @ x)

    kwargs = dict(n_lambdas=8, eps=1e-2, tol=1e-8, dtype=torch.float64)
    cached = lasso_select(masks, margins, (train, val), **kwargs)
    monkeypatch.setattr(design, "GRAM_BYTES_CACHED", 0)
    passes = lasso_select(masks, margins, (train, val), **kwargs)
    np.testing.assert_allclose(cached.weights, passes.weights, atol=1e-5)
    np.testing.assert_allclose(cached.val_mse_path, passes.val_mse_path, rtol=1e-6)
