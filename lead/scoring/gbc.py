"""GBC: how little the target classes overlap in the (PCA-reduced) feature space.

Source: M. Pándy, A. Agostinelli, J. Uijlings, V. Ferrari, T. Mensink, "Transferability Estimation
using Bhattacharyya Class Separability", CVPR 2022 (GBC; formula below).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lead.errors import InputError
from lead.scoring._validate import check_inputs, check_int_knob, global_scale

#: PCA dimensions before the class Gaussians are fitted (google-research ``stable_transfer``
#: config ``gbc.pca_reduction = 64``).
N_COMPONENTS = 64
#: Covariance shapes of the class Gaussians; the reference's default is "spherical".
GAUSSIANS = ("spherical", "diagonal")
#: Floor on each per-class, per-dimension variance, so constant directions stay finite (reference).
VARIANCE_FLOOR = 1e-4


def gbc(
    features,
    labels: Sequence[Hashable] | np.ndarray,
    *,
    n_components: int = N_COMPONENTS,
    gaussian: str = "spherical",
) -> float:
    """GBC: minus the summed Bhattacharyya coefficients between every ordered pair of classes. Higher is better.

    The features are reduced by PCA to ``n_components`` dimensions; each class is modelled as a
    Gaussian with diagonal (or spherical) covariance; the Bhattacharyya coefficient BC = exp(-D_B) of
    two classes is 1 when they coincide and 0 when they do not overlap. GBC = -sum_{i != j} BC(c_i, c_j)
    lies in [-K (K - 1), 0]; 0 means perfectly separated classes. Compares models on one dataset.

    Source: Pándy et al., "Transferability Estimation using Bhattacharyya Class Separability", CVPR 2022:
    D_B = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j) + 1/2 log(det S / sqrt(det S_i det S_j)),
    S = (S_i + S_j) / 2. Per-class means and maximum-likelihood (1/n_k) variances, each floored at
    VARIANCE_FLOOR; "spherical" uses the mean of the floored variances in every dimension, as
    google-research ``stable_transfer/transferability/gbc.py``. Deviations from that reference: (1) the
    spherical log-determinant term is d/2 log(s / sqrt(s_i s_j)) over the d PCA dimensions, as the
    formula above; the reference adds it once, not d times; (2) float64 throughout (the reference casts the
    PCA output to float32).

    Args:
        features: pre-logit features, shape (N, D), float; computed in float64.
        labels: class indices or names, shape (N,); at least two classes.
        n_components: PCA dimensions d, an int >= 1; default N_COMPONENTS = 64 (the reference's).
            Needs N >= d and D >= d, as the reference's exact PCA.
        gaussian: "spherical" (default, the reference's) or "diagonal" class covariances.
    Returns:
        float, unitless, in [-K (K - 1), 0]; finite.
    Raises:
        InputError: non-finite or misshapen features, labels not matching, fewer than two classes,
            N < n_components or D < n_components (the PCA is not defined; pass a smaller
            ``n_components``), a bad ``n_components`` or ``gaussian``.
    Notes:
        PCA: centred features projected on the top d eigenvectors of F^T F when N > D, else on the top
        d right singular vectors of F; the score does not depend on their signs. A class of one sample
        has all its variances at the floor (as the reference). Cost O(N D min(N, D) + K^2 d).
    """
    where = "gbc"
    f, enc = check_inputs(features, labels, where=where)
    d = check_int_knob(n_components, name="n_components", where=where, minimum=1)
    if gaussian not in GAUSSIANS:
        raise InputError(f"{where}: gaussian must be one of {GAUSSIANS}; got {gaussian!r}.")
    n, dim = f.shape
    if n < d or dim < d:
        raise InputError(
            f"{where}: features must have at least n_components={d} rows and columns for the PCA; got "
            f"shape ({n}, {dim}). Pass n_components <= {min(n, dim)} or add samples."
        )
    # The variance floor is absolute in the reference; on features divided by their global scale it is
    # relative, so the score is invariant to features * c like the Bhattacharyya coefficient itself.
    z = pca_project(f / global_scale(f), d)

    means = np.zeros((enc.n_classes, d))
    np.add.at(means, enc.codes, z)
    means /= enc.counts[:, None]
    sq = np.zeros((enc.n_classes, d))
    np.add.at(sq, enc.codes, (z - means[enc.codes]) ** 2)
    var = np.maximum(sq / enc.counts[:, None], VARIANCE_FLOOR)  # (K, d)
    if gaussian == "spherical":
        var = np.repeat(var.mean(axis=1, keepdims=True), d, axis=1)

    total = 0.0
    for i in range(enc.n_classes - 1):  # each unordered pair once, counted twice (BC is symmetric)
        rest = slice(i + 1, None)
        dist = bhattacharyya_distance(means[i], means[rest], var[i], var[rest])
        total += 2.0 * float(np.exp(-dist).sum())
    return -total + 0.0  # + 0.0: no -0.0


def bhattacharyya_distance(mu1: np.ndarray, mu2: np.ndarray, var1: np.ndarray, var2: np.ndarray) -> np.ndarray:
    """D_B between Gaussians with diagonal covariances: shapes (..., d), broadcast; returns shape (...)."""
    avg = 0.5 * (var1 + var2)
    mahalanobis = ((mu1 - mu2) ** 2 / avg).sum(axis=-1) / 8.0
    log_det = (np.log(avg) - 0.5 * np.log(var1) - 0.5 * np.log(var2)).sum(axis=-1)
    return mahalanobis + 0.5 * log_det


def pca_project(f: np.ndarray, n_components: int) -> np.ndarray:
    """Scores of the centred rows of ``f`` (N, D) on its top ``n_components`` principal axes, (N, d)."""
    n, dim = f.shape
    fc = f - f.mean(axis=0)
    if n > dim:
        _, v = np.linalg.eigh(fc.T @ fc)  # ascending
        axes = v[:, ::-1][:, :n_components]
    else:
        _, _, vt = np.linalg.svd(fc, full_matrices=False)
        axes = vt[:n_components].T
    return fc @ axes
