"""SFDA: self-challenging Fisher discriminant analysis of the features.

Source: W. Shao, X. Zhao, Y. Ge, Z. Zhang, L. Yang, X. Wang, Y. Shan, P. Luo, "Not All Models Are Equal:
Predicting Model Transferability in a Self-challenging Fisher Space", ECCV 2022 (regularised Fisher space, ConfMix, score).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from lead.errors import InputError
from lead.scoring._validate import check_inputs

#: Shrinkage lambda = exp(-SHRINKAGE_RATE * sigma_max(S_w)) (paper and reference, a = 5).
SHRINKAGE_RATE = 5.0
#: Smallest shrinkage (reference ``max(..., 1e-10)``).
SHRINKAGE_FLOOR = 1e-10
#: Power-iteration rounds for sigma_max(S_w), each two products, from the row sums of S_w (reference
#: ``utils.iterative_A(Sw, max_iterations=3)``).
POWER_STEPS = 3
#: Eigenvalues of S_w below RANK_RTOL * max(N, D) * lambda_max count as zero (numpy's matrix_rank factor).
RANK_RTOL = float(np.finfo(np.float64).eps)


def sfda(features, labels: Sequence[Hashable] | np.ndarray) -> float:
    """SFDA: mean posterior of the true class after a self-challenging Fisher discriminant. Higher is better.

    A regularised Fisher discriminant (linear discriminant analysis with the within-class scatter S_w
    shrunk toward a multiple of the identity, by an amount that falls as S_w grows) gives class
    posteriors. Each sample is then moved toward the mean of the other classes by (1 - its softened
    confidence), the "ConfMix" challenge, and the discriminant is fitted again on the mixed features;
    the score is the mean posterior of the true class there. In (0, 1]; compares models on one dataset.

    Source: Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a
    Self-challenging Fisher Space", ECCV 2022: regularised Fisher space with
    lambda = exp(-5 sigma_max(S_w)), ConfMix, score, as TencentARC/SFDA ``metrics.py``
    ``SFDA_Score``. There, the posterior uses all D Fisher directions (``coef_ = means @ V @ V^T`` with
    V the generalised eigenvectors of (S_b, S_w,shrunk), V V^T = S_w,shrunk^-1), which is the LDA
    posterior softmax_k(x^T S^-1 m_k - 1/2 m_k^T S^-1 m_k + log pi_k) with S = (1 - lambda) S_w +
    lambda (tr S_w / D) I; that is what is computed here, without S_b. The confidence is softened by a
    second softmax (of the probabilities), the challenge point of class k is the mean of the other K - 1
    class means, the second fit keeps the first's lambda, and there is no log in the score (all as the
    reference). Deviations: inputs are not modified (the reference overwrites its features); when the
    power iteration cannot start (the row sums of S_w vanish, e.g. features that sum to a constant)
    sigma_max is the exact largest eigenvalue (the reference gives NaN there).

    Args:
        features: pre-logit features, shape (N, D), float; computed in float64, not centred.
        labels: class indices or names, shape (N,); at least two classes.
    Returns:
        float, a probability in (0, 1]; finite. Tends to 1 for every model when N is small against D
        (the shrinkage floor leaves S nearly singular and the classes separable); not scale-invariant,
        as lambda depends on the scale of S_w.
    Raises:
        InputError: non-finite or misshapen features, labels not matching, fewer than two classes,
            zero within-class scatter (every sample equals its class mean; the discriminant is not defined).
    Notes:
        S is never formed or inverted: from the eigendecomposition S_w = V diag(l) V^T (of X_w^T X_w / N
        when N > D, else the thin SVD of the within-class centred X_w),
        S^-1 m = V diag(1 / ((1 - lambda) l + lambda mu)) V^T m + (m - V V^T m) / (lambda mu).
        Cost O(N D min(N, D) + N D K); no N x N matrix.
    """
    return sfda_terms(features, labels)[0]


def sfda_terms(features, labels: Sequence[Hashable] | np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`sfda` (same arguments and errors) and its per-sample terms, each sample's posterior of its
    true class after the challenge: (score, terms of shape (N,), float64, in the caller's order); the score
    is their mean. Both discriminants are fitted on all N samples."""
    from scipy.special import softmax  # lazy: importing the registry must not import scipy
    where = "sfda"
    x, enc = check_inputs(features, labels, where=where)
    codes, k = enc.codes, enc.n_classes
    log_priors = np.log(enc.counts / codes.shape[0])

    means, within = _class_means(x, codes, k, enc.counts)
    lam, vecs, mu = _within_spectrum(within, where=where)
    shrinkage = max(math.exp(-SHRINKAGE_RATE * _largest_eigenvalue(within, lam)), SHRINKAGE_FLOOR)
    prob = _posterior(x, means, lam, vecs, mu, shrinkage, log_priors)

    confidence = softmax(prob, axis=1)[np.arange(codes.shape[0]), codes][:, None]  # softened, as the reference
    outer = (means.sum(axis=0) - means) / (k - 1)  # mean of the other classes' means, (K, D)
    mixed = confidence * x + (1.0 - confidence) * outer[codes]

    means2, within2 = _class_means(mixed, codes, k, enc.counts)
    lam2, vecs2, mu2 = _within_spectrum(within2, where=where)
    prob2 = _posterior(mixed, means2, lam2, vecs2, mu2, shrinkage, log_priors)
    terms = prob2[np.arange(codes.shape[0]), codes]
    return float(terms.mean()), terms


def _class_means(x: np.ndarray, codes: np.ndarray, k: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, D) and the within-class centred rows x_i - m_{y_i} (N, D)."""
    means = np.zeros((k, x.shape[1]))
    np.add.at(means, codes, x)
    means /= counts[:, None]
    return means, x - means[codes]


def _within_spectrum(within: np.ndarray, *, where: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Non-zero eigenvalues (r,), eigenvectors (D, r) and mean eigenvalue tr / D of S_w = X_w^T X_w / N."""
    n, d = within.shape
    mu = float((within * within).sum()) / (n * d)
    if not mu > 0.0:
        raise InputError(
            f"{where}: features must vary within at least one class; got zero within-class scatter "
            f"(all {n} samples equal their class mean). The Fisher discriminant is not defined for such "
            "features; check the model's output."
        )
    if n > d:
        lam, v = np.linalg.eigh(within.T @ within / n)
    else:
        _, s, vt = np.linalg.svd(within, full_matrices=False)
        lam, v = s * s / n, vt.T
    keep = lam > float(lam.max()) * max(n, d) * RANK_RTOL
    return lam[keep], v[:, keep], mu


def _largest_eigenvalue(within: np.ndarray, lam: np.ndarray) -> float:
    """sigma_max(S_w) by the reference's power iteration, from the row sums of S_w; exact if that start is 0."""
    n = within.shape[0]

    def apply(v: np.ndarray) -> np.ndarray:  # S_w v without forming S_w
        return within.T @ (within @ v) / n

    top = float(lam.max())
    x = apply(np.ones(within.shape[1]))  # row sums of S_w
    if not np.linalg.norm(x) > top * RANK_RTOL * math.sqrt(x.size):
        return top
    for _ in range(POWER_STEPS):
        t = apply(x)
        y = t / np.linalg.norm(t)
        t = apply(y)
        x = t / np.linalg.norm(t)
    return float(x @ apply(y))


def _posterior(
    x: np.ndarray,
    means: np.ndarray,
    lam: np.ndarray,
    vecs: np.ndarray,
    mu: float,
    shrinkage: float,
    log_priors: np.ndarray,
) -> np.ndarray:
    """LDA posteriors (N, K) with the shrunk within-class scatter S = (1 - s) S_w + s mu I."""
    from scipy.special import softmax  # lazy: importing the registry must not import scipy
    proj = vecs.T @ means.T  # (r, K)
    coef = vecs @ (proj / ((1.0 - shrinkage) * lam + shrinkage * mu)[:, None])  # in the span of S_w
    if vecs.shape[1] < vecs.shape[0]:  # the rest of R^D, where S = s mu I
        coef += (means.T - vecs @ proj) / (shrinkage * mu)
    intercept = -0.5 * np.einsum("kd,dk->k", means, coef) + log_priors
    return softmax(x @ coef + intercept, axis=1)
