"""Posteriors of scikit-learn's full-covariance ``GaussianMixture``, fitted by our own EM (private).

It reproduces ``GaussianMixture(n_components, covariance_type="full", random_state=seed)`` with its
defaults (k-means initialisation, n_init=1, max_iter=100, tol=1e-3, reg_covar=1e-6) step for step
(scikit-learn 1.9 ``sklearn/mixture/_base.py`` ``fit_predict`` and ``_gaussian_mixture.py``): the same
k-means labels (scikit-learn's ``KMeans`` with the same RandomState), the same M-step formulas, the same
Cholesky-of-precision parametrisation, the same lower-bound convergence test, and the final E-step whose
responsibilities ``predict_proba`` returns. The value differs from scikit-learn's only by the order of
floating-point sums; two exact shortcuts make it faster:

- M-step: a component's weighted mean and covariance are summed over the rows whose responsibility
  is not exactly 0.0 (in high dimension most of them underflow to 0.0 after ``exp``), not over all N.
- E-step: the Mahalanobis term uses the upper-triangular structure of the precision's Cholesky
  factor (BLAS ``dtrmm``: half the flops of scikit-learn's dense product).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
from scipy.linalg.blas import dtrmm

MAX_ITER = 100
TOL = 1e-3
REG_COVAR = 1e-6

_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical covariance "
    "(for instance caused by singleton or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data."
)


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """scikit-learn's ``_logsumexp(a, axis=1)`` (``sklearn.utils._array_api``), the same operations."""
    a_max = a.max(axis=1, keepdims=True)
    is_max = a == a_max
    rest = a.copy()
    rest[is_max] = -np.inf
    count = is_max.sum(axis=1, keepdims=True, dtype=a.dtype)
    shift = np.where(np.isfinite(a_max), a_max, 0)
    s = np.exp(rest - shift).sum(axis=1, keepdims=True, dtype=a.dtype)
    s = np.where(s == 0, s, s / count)
    return (np.log1p(s) + np.log(count) + a_max)[:, 0]


#: Below this fraction of nonzero responsibilities (or of log-densities left to compute), the sparse paths
#: are taken; above it, scikit-learn's own dense operations (the same values to the last bit).
_SPARSE = 0.25


def _m_step(x: np.ndarray, resp: np.ndarray, reg_covar: float):
    """``_estimate_gaussian_parameters(x, resp, reg_covar, "full")``: (nk, means, covariances). When few
    responsibilities are nonzero, each component is summed over its rows with resp > 0 only (the same
    sums, in another order)."""
    n, p = x.shape
    m = resp.shape[1]
    nk = resp.sum(axis=0) + 10 * np.finfo(resp.dtype).eps
    covariances = np.empty((m, p, p))
    nonzero = resp > 0
    if np.count_nonzero(nonzero) > _SPARSE * n * m:
        means = (resp.T @ x) / nk[:, None]
        for k in range(m):
            diff = x - means[k, :]
            covariances[k, :, :] = ((resp[:, k] * diff.T) @ diff) / nk[k]
            covariances[k].flat[:: p + 1] += reg_covar
        return nk, means, covariances
    means = np.empty((m, p))
    columns = nonzero.T
    for k in range(m):
        rows = np.flatnonzero(columns[k])
        r = resp[rows, k]
        xk = x[rows]
        means[k] = (r @ xk) / nk[k]
        diff = xk - means[k]
        covariances[k, :, :] = ((r * diff.T) @ diff) / nk[k]
        covariances[k].flat[:: p + 1] += reg_covar
    return nk, means, covariances


def _precision_cholesky(covariances: np.ndarray) -> np.ndarray:
    """``_compute_precision_cholesky(covariances, "full")``: inv(cholesky(cov)).T per component (upper)."""
    m, p, _ = covariances.shape
    out = np.empty_like(covariances)
    eye = np.eye(p)
    for k in range(m):
        try:
            chol = scipy.linalg.cholesky(covariances[k], lower=True)
        except np.linalg.LinAlgError:
            raise ValueError(_ILL_DEFINED) from None
        out[k] = scipy.linalg.solve_triangular(chol, eye, lower=True).T
    return out


#: Below this, exp() of a float64 is exactly 0.0 (exp(-745.2) == 0.0); the skip margin adds 54 nats.
_SKIP_NATS = 800.0


#: Columns of each precision's Cholesky factor U used for the lower bound of the Mahalanobis distances.
_BOUND_COLUMNS = 8
#: Rows per block of the bound (its N x M x _BOUND_COLUMNS products are computed a block at a time).
_BOUND_ROWS = 2048


def _upper_log_prob(x: np.ndarray, means: np.ndarray, prec_chol: np.ndarray, const: np.ndarray) -> np.ndarray:
    """An upper bound of const_k - ||(x_i - mu_k) U_k||^2 / 2 for every (i, k): the squared norm is bounded
    below by its sum over a few columns j of U_k (those of largest norm) of ((x_i - mu_k) . U_kj)^2, each
    term shrunk by a bound of its round-off. One product with all components' columns, by row blocks."""
    n, p = x.shape
    m = means.shape[0]
    c = min(p, _BOUND_COLUMNS)
    norms = np.sqrt(np.square(prec_chol).sum(axis=1))  # (M, p): column norms of each U_k
    cols = np.argsort(norms, axis=1)[:, -c:]
    u = np.take_along_axis(prec_chol, cols[:, None, :], axis=2)  # (M, p, c)
    shift = np.einsum("kp,kpc->kc", means, u)  # mu_k . U_kj
    slack_u = np.take_along_axis(norms, cols, axis=1)  # |U_kj|
    mean_norm = np.sqrt(np.square(means).sum(axis=1))
    u = u.transpose(1, 0, 2).reshape(p, m * c)
    upper = np.empty((n, m))
    xnorm = np.sqrt(np.square(x).sum(axis=1))
    for start in range(0, n, _BOUND_ROWS):
        block = slice(start, min(n, start + _BOUND_ROWS))
        z = np.abs((x[block] @ u).reshape(-1, m, c) - shift)
        # |error| <= ~p eps (|x| + |mu|) |U_j|; 1e-11 covers p up to ~1e4 with a wide margin
        z -= 1e-11 * (xnorm[block, None, None] + mean_norm[None, :, None]) * slack_u
        np.maximum(z, 0.0, out=z)
        upper[block] = const - 0.5 * (1.0 - 1e-9) * np.square(z).sum(axis=2)  # the sum's round-off
    return upper


def _exact_log_prob(x, rows, mean, prec_chol) -> np.ndarray:
    """||(x_i - mu) U||^2 for x_i in x[rows], as scikit-learn: x U - mu U (U upper triangular: BLAS dtrmm)."""
    # prec_chol.T is Fortran-ordered and lower triangular: B := B (prec_chol.T)' without copying it.
    y = dtrmm(1.0, prec_chol.T, np.asfortranarray(x[rows]), side=1, lower=1, trans_a=1, overwrite_b=1)
    y -= mean @ prec_chol
    return np.square(y).sum(axis=1)


def _dense_weighted_log_prob(x, means, prec_chol, p_log_2pi, log_det, log_w) -> np.ndarray:
    """scikit-learn's ``_estimate_log_gaussian_prob(x, ..., "full") + log w``, the same operations."""
    log_prob = np.empty((x.shape[0], means.shape[0]))
    for k in range(means.shape[0]):
        y = (x @ prec_chol[k]) - (means[k] @ prec_chol[k])
        log_prob[:, k] = np.square(y).sum(axis=1)
    return -0.5 * (p_log_2pi + log_prob) + log_det + log_w


def _weighted_log_prob(x: np.ndarray, weights, means, prec_chol) -> np.ndarray:
    """``_estimate_weighted_log_prob``: log N(x_i | mu_k, Sigma_k) + log w_k, shape (N, M); entries that are
    provably more than _SKIP_NATS below their row's maximum are -inf (scikit-learn's finite value there
    gives exactly 0.0 after exp, in the log-sum-exp and in the responsibilities, as -inf does).

    The bound (``_upper_log_prob``): ||(x - mu) U||^2 >= its sum over a few columns of U, cost
    O(N M p _BOUND_COLUMNS); the exact value is computed where the bound cannot exclude the entry."""
    n, p = x.shape
    m = means.shape[0]
    p_log_2pi = p * math.log(2 * math.pi)
    log_det = np.log(prec_chol.reshape(m, -1)[:, :: p + 1]).sum(axis=1)
    log_w = np.log(weights)
    const = -0.5 * p_log_2pi + log_det + log_w
    if p <= 4 * _BOUND_COLUMNS:  # the bound would cost about as much as the values
        return _dense_weighted_log_prob(x, means, prec_chol, p_log_2pi, log_det, log_w)
    wlp = np.full((n, m), -np.inf)
    upper = _upper_log_prob(x, means, prec_chol, const)
    upper += 1e-9 * np.abs(const)  # the constant's round-off
    first = upper.argmax(axis=1)
    for k in np.unique(first):
        rows = np.flatnonzero(first == k)
        wlp[rows, k] = -0.5 * (p_log_2pi + _exact_log_prob(x, rows, means[k], prec_chol[k])) + log_det[k] + log_w[k]
    floor = wlp[np.arange(n), first] - _SKIP_NATS
    todo = (upper >= floor[:, None]).T.copy()
    if np.count_nonzero(todo) > _SPARSE * n * m:
        return _dense_weighted_log_prob(x, means, prec_chol, p_log_2pi, log_det, log_w)
    todo[first, np.arange(n)] = False
    for k in range(m):
        rows = np.flatnonzero(todo[k])
        if rows.size:
            wlp[rows, k] = -0.5 * (p_log_2pi + _exact_log_prob(x, rows, means[k], prec_chol[k])) + log_det[k] + log_w[k]
    return wlp


def _e_step(x, weights, means, prec_chol):
    """``_estimate_log_prob_resp``: (log p(x_i), log responsibilities)."""
    wlp = _weighted_log_prob(x, weights, means, prec_chol)
    norm = _logsumexp_rows(wlp)
    with np.errstate(under="ignore"):
        log_resp = wlp - norm[:, None]
    return norm, log_resp


def gaussian_mixture_posteriors(
    x: np.ndarray,
    n_components: int,
    *,
    seed: int,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
    reg_covar: float = REG_COVAR,
) -> tuple[np.ndarray, bool, int]:
    """``GaussianMixture(n_components, covariance_type="full", random_state=seed).fit(x).predict_proba(x)``.

    Args:
        x: shape (N, p), float64, N >= n_components.
        n_components: M >= 1.
        seed: the mixture's random_state, an int >= 0.
    Returns:
        (posteriors of shape (N, M), float64; converged; number of EM steps).
    Raises:
        ValueError: a component's covariance is not positive definite (scikit-learn's message).
    """
    from sklearn.cluster import KMeans
    from sklearn.utils import check_random_state

    x = np.ascontiguousarray(x, dtype=np.float64)
    n = x.shape[0]
    random_state = check_random_state(seed)
    labels = KMeans(n_clusters=n_components, n_init=1, random_state=random_state).fit(x).labels_
    resp = np.zeros((n, n_components))
    resp[np.arange(n), labels] = 1
    weights, means, covariances = _m_step(x, resp, reg_covar)
    weights /= n
    prec_chol = _precision_cholesky(covariances)

    lower_bound = -np.inf
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        previous = lower_bound
        norm, log_resp = _e_step(x, weights, means, prec_chol)
        weights, means, covariances = _m_step(x, np.exp(log_resp), reg_covar)
        weights /= weights.sum()
        prec_chol = _precision_cholesky(covariances)
        lower_bound = norm.mean()
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    _, log_resp = _e_step(x, weights, means, prec_chol)
    return np.exp(log_resp), converged, n_iter
