"""The elastic-net multinomial path (``regress.glm``): optimality against an independent
reference, the λ_max boundary, the path's density, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

from datamodels.regress.glm import glm_path

# one thread: the machine is shared, and thread contention slows small products tenfold
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(n=240, d=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    true = rng.normal(size=(d, classes)) * (rng.random((d, classes)) < 0.3)
    y = (x @ true + rng.gumbel(size=(n, classes))).argmax(1)
    return x, y


def _objective(s, onehot, w, b, lam, alpha):
    z = s @ w + b
    ce = (logsumexp(z, axis=1) - (z * onehot).sum(1)).mean()
    return ce + lam * (alpha * np.abs(w).sum() + 0.5 * (1 - alpha) * (w * w).sum())


def _reference(s, onehot, lam, alpha):
    """L-BFGS-B on the smooth split W = P − N (P, N ≥ 0), to a tight projected gradient: an
    independent solver of the same objective (at its optimum min(P, N) = 0)."""
    n, d = s.shape
    c = onehot.shape[1]

    def fun(v):
        p, q, b = v[: d * c].reshape(d, c), v[d * c : 2 * d * c].reshape(d, c), v[2 * d * c :]
        w = p - q
        z = s @ w + b
        lse = logsumexp(z, axis=1, keepdims=True)
        r = (np.exp(z - lse) - onehot) / n
        gw = s.T @ r
        l1, l2 = lam * alpha, lam * (1 - alpha)
        value = (lse[:, 0] - (z * onehot).sum(1)).mean() + l1 * (p + q).sum()
        value += 0.5 * l2 * ((p * p).sum() + (q * q).sum())
        grad = np.concatenate([(gw + l1 + l2 * p).ravel(), (-gw + l1 + l2 * q).ravel(), r.sum(0)])
        return value, grad

    bounds = [(0, None)] * (2 * d * c) + [(None, None)] * c
    res = minimize(
        fun,
        np.zeros(2 * d * c + c),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-11, "maxcor": 30},
    )
    return res.fun


def test_path_meets_kkt_and_matches_an_independent_reference():
    x, y = _problem()
    alpha = 0.8
    path = glm_path(x, y, alpha=alpha, n_lambdas=8, eps=0.02, tol=1e-8)
    s = (x - x.mean(0)) / x.std(0, ddof=1)
    onehot = np.eye(4)[y]
    assert path.converged.all()
    for k in range(1, len(path.lams)):
        lam, w, b = path.lams[k], path.coef[k], path.intercept[k]
        mine = _objective(s, onehot, w, b, lam, alpha)
        assert mine == pytest.approx(path.objective[k], rel=1e-10)
        ref = _reference(s, onehot, lam, alpha)
        assert abs(mine - ref) <= 1e-7 * ref, (k, mine, ref)
        # KKT by hand: stationarity in b, and in W with the elastic-net subgradient
        z = s @ w + b
        p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        g = s.T @ (p - onehot) / len(y) + lam * (1 - alpha) * w
        assert np.abs((p - onehot).mean(0)).max() < 1e-6
        on = w != 0
        assert np.abs(g[on] + lam * alpha * np.sign(w[on])).max() < 1e-6
        assert (np.abs(g[~on]) <= lam * alpha + 1e-6).all()


def test_lambda_max_is_the_edge_of_the_zero_solution():
    x, y = _problem(seed=1)
    top = glm_path(x, y, alpha=0.5, n_lambdas=1).lam_max
    path = glm_path(x, y, alpha=0.5, lams=np.array([top, 0.98 * top]))
    assert np.count_nonzero(path.coef[0]) == 0
    # at λ_max the bias alone fits the class frequencies
    freq = np.bincount(y, minlength=4) / len(y)
    assert np.allclose(np.exp(path.intercept[0]) / np.exp(path.intercept[0]).sum(), freq)
    assert np.count_nonzero(path.coef[1]) >= 1


def test_density_grows_along_the_path_and_stop_features_cuts_it():
    x, y = _problem(n=400, d=30, classes=5, seed=2)
    path = glm_path(x, y, alpha=0.99, n_lambdas=25, eps=1e-2)
    total = path.features_per_class().sum(1)
    assert total[0] == 0 and total[-1] > total[5] > 0
    assert (np.diff(total) >= 0).all(), total
    assert (np.diff(path.objective) < 0).all()  # smaller λ, smaller optimum
    cut = glm_path(x, y, alpha=0.99, n_lambdas=25, eps=1e-2, stop_features=3)
    per_class = cut.features_per_class()
    assert len(cut.lams) < len(path.lams)
    assert (per_class[-1] > 3).any() and not (per_class[-2] > 3).any()
    np.testing.assert_allclose(cut.coef, path.coef[: len(cut.lams)], atol=1e-5)


def test_bad_inputs_are_refused_in_one_line():
    x, y = _problem()
    with pytest.raises(ValueError, match="alpha"):
        glm_path(x, y, alpha=0.0)
    with pytest.raises(ValueError, match="labels"):
        glm_path(x, y, num_classes=2)
    with pytest.raises(ValueError, match="lams"):
        glm_path(x, y, lams=np.array([1.0, -1.0]))
