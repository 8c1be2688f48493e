"""N-LEEP's own EM (lead/scoring/_mixture.py) against scikit-learn's GaussianMixture it reproduces."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lead.scoring import nleep
from lead.scoring._mixture import gaussian_mixture_posteriors
from lead.scoring.nleep import ORDER_SEED


def _sklearn(x, m, seed, **kwargs):
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm = GaussianMixture(n_components=m, covariance_type="full", random_state=seed, **kwargs).fit(x)
        return gmm.predict_proba(x), gmm.converged_, gmm.n_iter_


def _blobs(n, p, c, sep, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, p)) + sep * rng.standard_normal((c, p))[np.arange(n) % c]


CASES = {
    # low dimension, soft posteriors, 84 EM steps (scikit-learn's dense operations: the same bits)
    "long-run-p3": (lambda: np.random.default_rng(0).exponential(size=(2000, 3)) ** 3, 30, 1, {}),
    # stopped by max_iter before converging
    "max-iter-p3": (lambda: np.random.default_rng(0).exponential(size=(2000, 3)) ** 3, 30, 1, {"max_iter": 20}),
    # rows repeated three times: near-singular covariances
    "duplicates-p8": (lambda: np.repeat(_blobs(300, 8, 3, 2.0, 6), 3, axis=0), 30, 2, {}),
    # high dimension, nearly hard posteriors: the sparse M-step and the bounded E-step
    "hard-p120": (lambda: _blobs(800, 120, 16, 1.0, 9), 80, 4, {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_own_em_reproduces_sklearns_gaussian_mixture(name):
    make, m, seed, kwargs = CASES[name]
    x = make()
    expected, converged, n_iter = _sklearn(x, m, seed, **kwargs)
    got, our_converged, our_n_iter = gaussian_mixture_posteriors(x, m, seed=seed, **kwargs)
    assert (our_converged, our_n_iter) == (converged, n_iter)
    assert got.shape == expected.shape and got.dtype == np.float64
    assert np.abs(got - expected).max() <= 1e-8


def test_the_sparse_paths_are_taken_where_posteriors_are_hard():
    import lead.scoring._mixture as mixture

    x = _blobs(800, 120, 16, 1.0, 9)
    calls = []
    dense = mixture._dense_weighted_log_prob
    mixture._dense_weighted_log_prob = lambda *a: calls.append(1) or dense(*a)
    try:
        posterior, _, _ = gaussian_mixture_posteriors(x, 80, seed=4)
    finally:
        mixture._dense_weighted_log_prob = dense
    assert calls == []
    assert np.count_nonzero(posterior) < 0.1 * posterior.size


def test_nleep_with_the_own_em_matches_the_sklearn_pipeline_in_high_dimension():
    from sklearn.decomposition import PCA

    from lead.scoring.leep import leep_log_eep

    rng = np.random.default_rng(3)
    n, k, d = 500, 10, 64
    labels = np.arange(n) % k
    f = 0.6 * rng.standard_normal((k, d))[labels] + rng.standard_normal((n, d))
    order = np.argsort(f @ np.random.default_rng(ORDER_SEED).standard_normal(d), kind="stable")
    fs, ys = f[order], labels[order]
    fs = fs / np.sqrt(((fs - fs.mean(axis=0)) ** 2).mean())
    z = PCA(n_components=0.8, svd_solver="full").fit_transform(fs)
    posterior, _, _ = _sklearn(z, 5 * k, 0)
    expected = float(leep_log_eep(posterior, ys, k, where="test").mean())
    assert math.isfinite(expected) and expected < -0.1  # classes mixed in the components: a real test
    assert nleep(f, labels) == pytest.approx(expected, rel=1e-9, abs=0)
