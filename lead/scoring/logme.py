"""LogME: the maximum log evidence of a Bayesian linear model from features to labels.

Source: K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021, with the fixed-point updates of K. You et al., "Ranking and Tuning
Pre-trained Models: A New Paradigm for Exploiting Model Hubs", JMLR 2022 (arXiv 2110.10545).
Equation numbers are not cited: the formulas are written out below.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from lead.errors import ScoreError
from lead.scoring._validate import check_inputs

#: Relative change of t = alpha / beta below which the fixed-point iteration has converged (our choice;
#: the reference stops at 1e-3, which leaves the evidence off by up to ~1e-4 nats per sample).
TOL = 1e-10
#: Plain fixed-point steps per class before solving the same condition by bracketing (our choice;
#: the reference stops after 11 steps whether converged or not).
FIXED_POINT_STEPS = 100
#: Singular values below RANK_RTOL * max(N, D) * s_max count as zero (numpy's matrix_rank default
#: factor), eigenvalues of F^T F below RANK_RTOL * max(N, D) * sigma_max when N > D; the reference
#: uses an absolute 1e-10 on s, which is not scale-invariant.
RANK_RTOL = float(np.finfo(np.float64).eps)
#: t = alpha / beta is searched in [LIMIT_RTOL sigma_min, sigma_max / LIMIT_RTOL]; an evidence still rising
#: at an end has its supremum in the limit (t -> infinity or 0) and is within ~LIMIT_RTOL N nats of it there.
LIMIT_RTOL = 1e-12


def logme(features, labels: Sequence[Hashable] | np.ndarray) -> float:
    """LogME: mean over classes of the per-sample maximum log evidence of y_k given F. Higher is better.

    For each class k, the one-hot column y_k is modelled as y_k = F w + noise with prior
    w ~ N(0, I_D / alpha) and noise ~ N(0, I_N / beta). The evidence p(y_k | F, alpha, beta) is
    maximised over (alpha, beta) by MacKay's fixed point; the score is its log divided by N, averaged
    over the K classes. Values are in nats per sample; they compare models on one dataset only.

    Source: You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
    ICML 2021 (the evidence); fixed point on the SVD as in You et al., JMLR 2022.
    With F = U diag(s) V^T of rank r, sigma_i = s_i^2, x = U^T y_k and res = ||y_k||^2 - ||x||^2:

        log p = r/2 log alpha + N/2 log beta - 1/2 sum_{i<=r} log(alpha + beta sigma_i)
                - 1/2 [sum_{i<=r} alpha beta x_i^2 / (alpha + beta sigma_i) + beta res] - N/2 log(2 pi),

    which equals the paper's D/2 log alpha - 1/2 sum_{i<=D} log(alpha + beta sigma_i) with the D - r
    zero sigma_i written out, so it is the exact marginal likelihood of y_k ~ N(0, F F^T / alpha + I / beta).
    Deviations from thuml/LogME ``LogME.py``: (1) the rank is r, not min(N, D): the reference drops
    the (D - r) log alpha / 2 terms when N < D or F is rank-deficient and its score explodes there;
    (2) no epsilon in the updates alpha = gamma / ||m||^2, beta = (N - gamma) / ||y - F m||^2, so the
    result is a true stationary point and scale-invariant; (3) solved to TOL, not stopped after 11 steps:
    where the plain iteration crawls (r close to N) the same stationarity condition is solved by
    bracketing in log(alpha / beta) (:func:`_solve_t`); where the evidence keeps rising as
    alpha / beta -> infinity (features useless for a class) the score is that limit.

    Args:
        features: pre-logit features F, shape (N, D), float; computed in float64, not centred (as the paper).
        labels: class indices or names, shape (N,); at least two classes.
    Returns:
        float, in nats per sample; finite.
    Raises:
        InputError: non-finite or misshapen features, labels not matching, fewer than two classes.
        ScoreError: the evidence at the solution is not finite (not observed; a guard against NaN).
    Notes:
        SVD side: for N > D the eigendecomposition of F^T F (D x D), as the reference; else the thin SVD
        of F. U is never formed when N > D: x = diag(1/s) V^T F^T y_k. Rank threshold RANK_RTOL.
        All-zero features (r = 0), or a class whose indicator is orthogonal to the span of F, have the
        evidence of the noise-only model (alpha -> infinity), computed in closed form.
        Cost O(N D min(N, D) + N D K); no N x N matrix.
    """
    return logme_details(features, labels).score


@dataclass(frozen=True)
class LogmeResult:
    """One LogME evaluation, per class.

    Attributes:
        score: LogME, the mean of ``evidences``.
        classes: the K class names, in the order of the arrays below.
        evidences: per-sample maximum log evidence of each one-hot column, shape (K,), float64.
        alphas: prior precision alpha at the maximum, shape (K,); inf where the supremum is the
            noise-only limit (nothing of y_k in the span of F).
        betas: noise precision beta at the maximum, shape (K,).
    """

    score: float
    classes: tuple
    evidences: np.ndarray
    alphas: np.ndarray
    betas: np.ndarray


def logme_details(features, labels: Sequence[Hashable] | np.ndarray) -> LogmeResult:
    """Like :func:`logme` (same arguments and errors) but returns the per-class alpha, beta and evidence."""
    where = "logme"
    f, enc = check_inputs(features, labels, where=where)
    n = f.shape[0]
    y = np.eye(enc.n_classes)[enc.codes]  # (N, K) one-hot
    sigma, x = _spectrum_and_projections(f, y)
    y2 = y.sum(axis=0)  # ||y_k||^2 = n_k
    fits = [
        _max_evidence(sigma, x[:, k], float(y2[k]), n, where=where, label=enc.classes[k])
        for k in range(enc.n_classes)
    ]
    evidences, alphas, betas = (np.array(col) for col in zip(*fits))
    return LogmeResult(
        score=float(evidences.mean()), classes=enc.classes, evidences=evidences, alphas=alphas, betas=betas
    )


def _spectrum_and_projections(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero squared singular values sigma (r,) of F and x = U^T Y, shape (r, K)."""
    n, d = f.shape
    if n > d:
        evals, v = np.linalg.eigh(f.T @ f)  # ascending
        evals = evals[::-1]
        v = v[:, ::-1]
        # Eigenvalues of the Gram matrix carry an absolute error ~ eps sigma_max: threshold sigma, not s.
        keep = evals > (evals[0] * max(n, d) * RANK_RTOL if evals[0] > 0 else np.inf)
        s, v = np.sqrt(evals[keep]), v[:, keep]
        x = (v.T @ (f.T @ y)) / s[:, None]
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        keep = s > (s[0] * max(n, d) * RANK_RTOL if s[0] > 0 else np.inf)
        s, u = s[keep], u[:, keep]
        x = u.T @ y
    return s * s, x


def _max_evidence(
    sigma: np.ndarray, x: np.ndarray, y2: float, n: int, *, where: str, label
) -> tuple[float, float, float]:
    """(per-sample log evidence, alpha, beta) of one target column at the maximising (alpha, beta)."""
    r = sigma.size
    x2 = x * x
    res = 0.0 if r == n else max(y2 - float(x2.sum()), 0.0)
    if res <= y2 * n * RANK_RTOL:
        # ||y||^2 - ||x||^2 cancels to rounding when y lies in the span of F (e.g. fewer distinct rows than
        # dimensions, as a bootstrap resample with repeated rows): that residual is 0, as when r == N, so
        # the score does not depend on rounding noise (lead.scoring.bootstrap).
        res = 0.0
    if r == 0 or float(x2.sum()) <= y2 * RANK_RTOL:
        # Nothing of y is in the span of F: the evidence increases to its limit as alpha -> infinity,
        # the noise-only model y ~ N(0, I / beta) with beta = N / ||y||^2.
        return 0.5 * (math.log(n / y2) - 1.0 - math.log(2.0 * math.pi)), math.inf, n / y2
    t = _solve_t(sigma, x2, res, n)
    beta = n / _q(t, sigma, x2, res)  # the optimal beta for this t
    evidence = log_evidence(t * beta, beta, sigma, x, res, n)
    if not math.isfinite(evidence):
        raise ScoreError(
            f"{where}: the log evidence must be finite; got {evidence} for class {label!r} "
            f"(alpha / beta = {t:.3g}, beta = {beta:.3g}). Report the features' shape and scale."
        )
    return evidence / n, t * beta, beta


def _q(t: float, sigma: np.ndarray, x2: np.ndarray, res: float) -> float:
    """Q(t) = ||y - F m||^2 + t ||m||^2 = sum x_i^2 t / (t + sigma_i) + res; the optimal beta is N / Q(t)."""
    return float((x2 * (t / (t + sigma))).sum()) + res


def _solve_t(sigma: np.ndarray, x2: np.ndarray, res: float, n: int) -> float:
    """The t = alpha / beta where the evidence is stationary, or the limit where it is largest.

    MacKay's fixed point first (alpha = gamma / ||m||^2, beta = (N - gamma) / ||y - F m||^2, from
    alpha = beta = 1 as the paper); it converges in a few steps when N - gamma is large. Where it has
    not converged after FIXED_POINT_STEPS (r close to N makes it crawl: thousands of steps), the same
    stationarity condition, gamma = N t ||m||^2 / Q(t), is solved in log t: walk uphill in the
    evidence by decades to a bracket, then Brent's method. If the evidence rises all the way to
    t = sigma_max / LIMIT_RTOL (or down to sigma_min LIMIT_RTOL), its supremum is that limit.
    """
    from scipy.optimize import brentq  # lazy: importing the registry must not import scipy
    t_low, t_high = float(sigma.min()) * LIMIT_RTOL, float(sigma.max()) / LIMIT_RTOL
    t = min(max(1.0, t_low), t_high)
    for _ in range(FIXED_POINT_STEPS):
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())  # ||m||^2
        res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + res  # ||y - F m||^2
        if not (m2 > 0.0 and n - gamma > 0.0):  # underflow at an extreme t: leave it to the bracketing
            break
        t_new = (gamma / m2) * (res2 / (n - gamma))  # alpha / beta after one update
        if not (t_low < t_new < t_high):
            break
        if abs(t_new - t) <= TOL * t:
            return t_new
        t = t_new

    def slope(u: float) -> float:  # sign of d(log evidence)/d(log t) at the optimal beta
        tt = math.exp(u)
        gamma = float((sigma / (sigma + tt)).sum())
        m2 = float((sigma * x2 / (sigma + tt) ** 2).sum())
        return gamma - n * tt * m2 / _q(tt, sigma, x2, res)

    u_low, u_high = math.log(t_low), math.log(t_high)
    u = math.log(t)
    g = slope(u)
    if g == 0.0:
        return t
    step = math.log(10.0) if g > 0 else -math.log(10.0)
    while True:
        u_next = min(max(u + step, u_low), u_high)
        if u_next == u:  # reached a limit with the evidence still rising
            return math.exp(u)
        if (slope(u_next) > 0) != (g > 0):
            break
        u = u_next
    root = brentq(slope, min(u, u_next), max(u, u_next), xtol=TOL, rtol=4 * np.finfo(float).eps)
    return math.exp(root)


def log_evidence(alpha: float, beta: float, sigma: np.ndarray, x: np.ndarray, res: float, n: int) -> float:
    """log p(y | F, alpha, beta) in nats (not divided by N), from the spectrum of F.

    Written with t = alpha / beta as N/2 log beta - 1/2 sum log1p(sigma_i / t)
    - beta/2 [sum x_i^2 / (1 + sigma_i / t) + res] - N/2 log(2 pi), which is the formula of
    :func:`logme` with r/2 log alpha - 1/2 sum log(alpha + beta sigma_i) = -1/2 sum log1p(sigma_i / t),
    stable when alpha / beta is very large.

    Args:
        sigma: the r non-zero squared singular values of F, shape (r,).
        x: U^T y, shape (r,).
        res: ||y||^2 - ||x||^2, the part of y outside the span of F.
        n: N.
    """
    ratio = sigma * (beta / alpha)  # sigma_i / t
    quad = float((x * x / (1.0 + ratio)).sum()) + res
    return (
        0.5 * n * math.log(beta)
        - 0.5 * float(np.log1p(ratio).sum())
        - 0.5 * beta * quad
        - 0.5 * n * math.log(2.0 * math.pi)
    )


def logme_resampler(features, labels: Sequence[Hashable] | np.ndarray):
    """A fast ``idx -> logme(features[idx], labels[idx])`` for bootstrap resamples (lead.scoring.bootstrap).

    A resample repeats rows. With the m distinct rows F_u of F[idx], their counts c and C = diag(c),
    F[idx]^T F[idx] = F_u^T C F_u, so the spectrum and the projections LogME needs come from the m x m
    matrix A = C^1/2 F_u F_u^T C^1/2 = Q diag(sigma) Q^T: x = Q^T C^1/2 Y_u and ||y_k||^2 = sum_u c_u y_uk^2.
    For N <= D the Gram matrix F F^T is formed once and each resample costs one eigendecomposition of
    about 0.63 N x 0.63 N instead of an SVD of N x D; for N > D each resample forms F_u^T C F_u (D x D).
    Equal to :func:`logme` on the resampled rows up to rounding (tested).

    Args:
        features, labels: as :func:`logme`.
    Returns:
        a function of ``idx`` (row indices, shape (N_b,), int, repeats allowed; every class must be present)
        returning the float score.
    Raises:
        InputError: as :func:`logme`, for the full inputs.
    """
    where = "logme"
    f, enc = check_inputs(features, labels, where=where)
    n, d = f.shape
    y = np.eye(enc.n_classes)[enc.codes]
    gram = f @ f.T if n <= d else None

    def score(idx) -> float:
        uniq, counts = np.unique(np.asarray(idx), return_counts=True)
        n_b = int(counts.sum())
        root = np.sqrt(counts.astype(np.float64))
        yw = y[uniq] * root[:, None]  # C^1/2 Y_u
        if gram is not None:
            evals, q = np.linalg.eigh(root[:, None] * gram[np.ix_(uniq, uniq)] * root[None, :])
            evals, q = evals[::-1], q[:, ::-1]
            keep = evals > (evals[0] * max(n_b, d) * RANK_RTOL if evals[0] > 0 else np.inf)
            sigma, x = evals[keep], q[:, keep].T @ yw
        else:
            fw = f[uniq] * root[:, None]  # C^1/2 F_u
            evals, v = np.linalg.eigh(fw.T @ fw)
            evals, v = evals[::-1], v[:, ::-1]
            keep = evals > (evals[0] * max(n_b, d) * RANK_RTOL if evals[0] > 0 else np.inf)
            s = np.sqrt(evals[keep])
            sigma, x = evals[keep], (v[:, keep].T @ (fw.T @ yw)) / s[:, None]
        y2 = (yw * yw).sum(axis=0)
        evidences = [_max_evidence(sigma, x[:, k], float(y2[k]), n_b, where=where, label=enc.classes[k])[0]
                     for k in range(enc.n_classes)]
        return float(np.mean(evidences))

    return score
