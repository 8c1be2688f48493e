"""H-score, regularised: how much of the feature covariance the class means explain, with shrinkage.

Source: Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas, "An Information-Theoretic
Approach to Transferability in Task Transfer Learning", ICIP 2019 (the H-score); S. Ibrahim,
N. Ponomareva, R. Mazumder, "Newer is not always better: Rethinking transferability metrics, their
peculiarities, stability and performance", ECML-PKDD 2022 / arXiv 2110.06893 (the shrinkage form).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lead.scoring._validate import check_inputs

#: Eigenvalues of the feature covariance below RANK_RTOL * max(N, D) * lambda_max count as zero
#: (numpy's matrix_rank factor). They can only matter when the Ledoit-Wolf shrinkage is 0.
RANK_RTOL = float(np.finfo(np.float64).eps)


def hscore(features, labels: Sequence[Hashable] | np.ndarray) -> float:
    """Regularised H-score: tr(cov_alpha(f)^-1 (1 - alpha) cov(E[f | y])). Higher is better.

    The H-score measures the between-class covariance of the features in units of their total
    covariance: the sum over discriminant directions of the fraction of variance the class means
    explain (between 0 and K - 1 unregularised). The regularised form replaces cov(f) by its
    Ledoit-Wolf estimate (1 - alpha) S + alpha (tr S / D) I and scales the between-class covariance by
    (1 - alpha) the same way, which keeps it stable when N is small against D. Unitless, >= 0; compares
    models on one dataset.

    Source: Bao et al., ICIP 2019: H(f) = tr(cov(f)^-1 cov(E[f | y])); Ibrahim et al. 2022:
    H_alpha(f) = tr(cov_alpha(f)^-1 (1 - alpha) cov(E[f | y])), alpha the Ledoit-Wolf shrinkage
    (Ledoit & Wolf, J. Multivariate Analysis 88, 2004, as in scikit-learn's ``ledoit_wolf_shrinkage``).
    Deviation from thuml/Transfer-Learning-Library ``tllib/ranking/hscore.py`` (regularized_h_score):
    both covariances are the maximum-likelihood (1/N) estimates; the reference divides cov(E[f | y]) by
    N - 1 (``np.cov``) but the total covariance by N, so its value is ours times N / (N - 1).

    Args:
        features: pre-logit features f, shape (N, D), float; computed in float64, centred here.
        labels: class indices or names, shape (N,); at least two classes.
    Returns:
        float, unitless, >= 0; finite. Constant features give 0.
    Raises:
        InputError: non-finite or misshapen features, labels not matching, fewer than two classes.
    Notes:
        The covariance is never inverted: with S = V diag(lambda) V^T (eigendecomposition of F^T F / N
        when N > D, thin SVD of the centred F otherwise) and the class means m_k in the span of V,
        H_alpha = (1 - alpha) sum_k (n_k / N) sum_i (v_i^T m_k)^2 / ((1 - alpha) lambda_i + alpha mu),
        mu = tr(S) / D. The Ledoit-Wolf alpha comes from the same spectrum: ||S||_F^2 = sum lambda_i^2.
        Cost O(N D min(N, D) + N D K); no N x N matrix.
    """
    where = "hscore"
    f, enc = check_inputs(features, labels, where=where)
    n, d = f.shape
    f -= f.mean(axis=0)
    lam, v = _covariance_spectrum(f)
    if lam.size == 0:  # constant features: no variance, no between-class variance
        return 0.0
    mu = float(lam.sum()) / d
    alpha = ledoit_wolf_shrinkage(lam, f, mu)

    means = np.zeros((enc.n_classes, d))
    np.add.at(means, enc.codes, f)
    means /= enc.counts[:, None]  # centred class means m_k, (K, D)
    weights = enc.counts / n
    proj = means @ v  # (K, r)
    denom = (1.0 - alpha) * lam + alpha * mu
    return float((1.0 - alpha) * (weights[:, None] * proj * proj / denom).sum())


def _covariance_spectrum(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero eigenvalues (r,) and eigenvectors (D, r) of S = F^T F / N for centred F."""
    n, d = f.shape
    if n > d:
        lam, v = np.linalg.eigh(f.T @ f / n)
    else:
        _, s, vt = np.linalg.svd(f, full_matrices=False)
        lam, v = s * s / n, vt.T
    top = float(lam.max()) if lam.size else 0.0
    keep = lam > (top * max(n, d) * RANK_RTOL if top > 0 else np.inf)
    return lam[keep], v[:, keep]


def ledoit_wolf_shrinkage(lam: np.ndarray, f: np.ndarray, mu: float) -> float:
    """Ledoit-Wolf shrinkage alpha in [0, 1] of the covariance S = F^T F / N of centred F.

    alpha = min(b2, d2) / d2 with d2 = ||S - mu I||_F^2 / D and
    b2 = (1 / (N D)) (1/N sum_i ||f_i||^4 - ||S||_F^2), both from the spectrum ``lam`` of S.
    """
    n, d = f.shape
    frob2 = float((lam * lam).sum())  # ||S||_F^2
    d2 = (frob2 - d * mu * mu) / d
    row4 = float((np.einsum("ij,ij->i", f, f) ** 2).sum()) / n
    b2 = (row4 - frob2) / (n * d)
    if d2 <= 0.0:  # S is already a multiple of the identity: nothing to shrink toward
        return 0.0
    return float(min(max(b2, 0.0), d2) / d2)
