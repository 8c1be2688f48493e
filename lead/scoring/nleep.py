"""N-LEEP: LEEP with the source head replaced by a Gaussian mixture fitted to the features.

Source: Y. Li, X. Jia, R. Sang, Y. Zhu, B. Green, L. Wang, B. Gong, "Ranking Neural Checkpoints",
CVPR 2021 (N-LEEP); LEEP of Nguyen et al., ICML 2020.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import numpy as np

from lead.errors import InputError, ScoreError
from lead.scoring._validate import check_float_knob, check_inputs, check_int_knob, global_scale, require_samples
from lead.scoring.leep import leep_log_eep

#: Fraction of the variance the PCA keeps (paper; TencentARC/SFDA ``NLEEP``: ``PCA(n_components=0.8)``).
VARIANCE = 0.8
#: Mixture components per target class (paper: 5 K; the references' ``component_ratio=5``).
COMPONENTS_PER_CLASS = 5
#: Seed of the mixture's k-means initialisation (our choice; TencentARC/SFDA leaves it unseeded,
#: google-research ``stable_transfer`` uses 123).
SEED = 0
#: Seed of the fixed projection that puts the samples in a canonical order (our choice).
ORDER_SEED = 12345


def nleep(
    features,
    labels: Sequence[Hashable] | np.ndarray,
    *,
    variance: float = VARIANCE,
    components_per_class: int = COMPONENTS_PER_CLASS,
    seed: int = SEED,
) -> float:
    """N-LEEP: LEEP of the posteriors of a Gaussian mixture fitted to the PCA-reduced features. Higher is better.

    The features are reduced by PCA to the fewest principal components that explain more than
    ``variance`` of their variance; a Gaussian mixture with ``components_per_class * K`` full-covariance
    components is fitted to them (unsupervised); its posteriors p(z | x_i) play the role of the source
    head in LEEP. Values are in nats (<= 0); they compare models on one dataset only.

    Source: Li et al., "Ranking Neural Checkpoints", CVPR 2021; LEEP, Nguyen et al., ICML 2020:
    T = (1/N) sum_i log sum_z Phat(y_i | z) p(z | x_i). As TencentARC/SFDA ``metrics.py``
    ``NLEEP`` (scikit-learn ``PCA(n_components=0.8)``, ``GaussianMixture(5 K)`` with its defaults:
    k-means initialisation, 100 EM steps, tol 1e-3, reg_covar 1e-6). Deviations: (1) the log is kept
    (the reference reports the mean of p(y_i | x_i), without it; the paper has it); (2) the mixture
    is seeded (``seed``) and the samples are put in a canonical order first (sorted by a fixed random
    projection of the features), so the score is deterministic and invariant to the caller's sample
    order and class names; (3) the PCA uses the exact SVD.

    Args:
        features: pre-logit features, shape (N, D), float; computed in float64.
        labels: class indices or names, shape (N,); at least two classes, N >= components_per_class * K.
        variance: fraction of variance the PCA keeps, in (0, 1); default VARIANCE = 0.8 (the paper's).
        components_per_class: mixture components per class, an int >= 1; default 5 (the paper's).
        seed: seed of the mixture's initialisation, an int >= 0; default SEED = 0. Other seeds give
            other (equally valid) values: the mixture's EM finds a local optimum.
    Returns:
        float, in nats, <= 0; finite.
    Raises:
        InputError: non-finite or misshapen features, labels not matching, fewer than two classes,
            N < components_per_class * K (the mixture needs a sample per component), constant features
            (the PCA has no variance to keep), a knob out of range.
        ScoreError: the mixture could not be fitted (scikit-learn's error is chained).
    Notes:
        A mixture that has not converged after 100 EM steps is used as it is (as the reference); the
        warning is silenced. The mixture is scikit-learn's, fitted by our own EM that repeats its steps
        (lead/scoring/_mixture.py: posteriors within round-off of ``predict_proba``, skipping the
        responsibilities and densities that are exactly 0.0 after ``exp``). Cost per EM step
        O(N M p^2) with M = 5 K components and p PCA dimensions at most (about O(N p^2) when the
        posteriors are nearly hard, as in high dimension), plus O(N D min(N, D)) for the PCA.
    """
    return nleep_terms(features, labels, variance=variance, components_per_class=components_per_class, seed=seed)[0]


def nleep_terms(
    features,
    labels: Sequence[Hashable] | np.ndarray,
    *,
    variance: float = VARIANCE,
    components_per_class: int = COMPONENTS_PER_CLASS,
    seed: int = SEED,
) -> tuple[float, np.ndarray]:
    """:func:`nleep` (same arguments and errors) and its per-sample terms log p(y_i | x_i): (score, terms of
    shape (N,), float64, in the caller's order). The score is their mean taken in the canonical order (so
    it stays exactly invariant to the caller's order); the PCA, the mixture and Phat(y | z) are fitted on
    all N samples."""
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning

    from lead.scoring._mixture import gaussian_mixture_posteriors

    where = "nleep"
    x, enc = check_inputs(features, labels, where=where)
    variance = check_float_knob(variance, name="variance", where=where, low=0.0, high=1.0)
    per_class = check_int_knob(components_per_class, name="components_per_class", where=where, minimum=1)
    seed = check_int_knob(seed, name="seed", where=where, minimum=0)
    n = x.shape[0]
    m = per_class * enc.n_classes
    require_samples(
        n,
        m,
        where=where,
        why=f"for a mixture of components_per_class * K = {per_class} * {enc.n_classes} components",
        fix="Add samples or pass a smaller components_per_class",
    )
    if not float(np.ptp(x, axis=0).max()) > 0.0:
        raise InputError(
            f"{where}: features must vary across samples; got {n} identical rows. "
            "The PCA has no variance to keep; check the model's output."
        )

    order = np.argsort(x @ np.random.default_rng(ORDER_SEED).standard_normal(x.shape[1]), kind="stable")
    xs, codes = x[order], enc.codes[order]
    # reg_covar (1e-6) is absolute; on features divided by their global scale it is relative, so the
    # score is invariant to features * c.
    reduced = PCA(n_components=variance, svd_solver="full").fit_transform(xs / global_scale(xs))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            # scikit-learn's GaussianMixture(m, covariance_type="full", random_state=seed).fit(reduced)
            # .predict_proba(reduced), by our own EM (the same steps; lead/scoring/_mixture.py).
            posterior, _, _ = gaussian_mixture_posteriors(reduced, m, seed=seed)
    except (ValueError, np.linalg.LinAlgError) as err:
        raise ScoreError(
            f"{where}: the Gaussian mixture must fit the PCA-reduced features; got {type(err).__name__}: {err}. "
            "Try another seed or fewer components_per_class."
        ) from err
    terms = leep_log_eep(posterior, codes, enc.n_classes, where=where)
    caller = np.empty_like(terms)
    caller[order] = terms
    return float(terms.mean()), caller
