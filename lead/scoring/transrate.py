"""TransRate: mutual information between features and labels, measured by coding rates.

Source: L.-K. Huang, J. Huang, Y. Rong, Q. Yang, Y. Wei, "Frustratingly Easy Transferability
Estimation", ICML 2022; the coding rate of Y. Ma, H. Derksen, W. Hong, J. Wright,
"Segmentation of Multivariate Mixed Data via Lossy Data Coding and Compression", TPAMI 2007.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lead.scoring._validate import check_float_knob, check_inputs

#: Distortion eps of the coding rate (the paper's and the reference's default).
EPS = 1e-4


def transrate(features, labels: Sequence[Hashable] | np.ndarray, *, eps: float = EPS) -> float:
    """TransRate: coding rate of all features minus the mean coding rate within a class. Higher is better.

    The coding rate R(Z, eps) = 1/2 log det(I_D + Z^T Z / (n eps)) is the number of nats needed to encode
    the n rows of Z up to distortion eps. Features that transfer well spread out overall (large R(Z))
    while each class stays compact (small R(Z_k)). Values are in nats; they depend on the feature
    scale and compare models on one dataset only.

    Source: Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022:
    TrR = R(Z, eps) - (1/K) sum_k R(Z_k, eps), Z the globally centred features and Z_k its rows of class
    k (not re-centred), as in the authors' code and thuml/Transfer-Learning-Library
    ``tllib/ranking/transrate.py``. Deviations: none.

    Args:
        features: pre-logit features, shape (N, D), float; computed in float64, centred here.
        labels: class indices or names, shape (N,); at least two classes.
        eps: distortion, > 0; default EPS = 1e-4 (the paper's).
    Returns:
        float, in nats; finite. Constant features give 0.
    Raises:
        InputError: non-finite or misshapen features, labels not matching, fewer than two classes,
            eps not a finite float > 0.
    Notes:
        log det(I_D + Z^T Z c) = sum_i log1p(c s_i^2) over the singular values s_i of Z (Sylvester's
        identity), from the eigenvalues of Z^T Z (D x D) when n > D, else the singular values of Z
        (n x D); no n x n matrix. Cost O(N D min(N, D)).
    """
    where = "transrate"
    z, enc = check_inputs(features, labels, where=where)
    eps = check_float_knob(eps, name="eps", where=where)
    z -= z.mean(axis=0)
    within = sum(coding_rate(z[enc.codes == k], eps) for k in range(enc.n_classes))
    return float(coding_rate(z, eps) - within / enc.n_classes)


def coding_rate(z: np.ndarray, eps: float) -> float:
    """R(Z, eps) = 1/2 log det(I_D + Z^T Z / (n eps)) of a float64 (n, D) array, in nats."""
    n, d = z.shape
    if n > d:
        s2 = np.clip(np.linalg.eigvalsh(z.T @ z), 0.0, None)
    else:
        s2 = np.linalg.svd(z, compute_uv=False) ** 2
    return 0.5 * float(np.log1p(s2 / (n * eps)).sum())
