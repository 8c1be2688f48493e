"""Baseline scores: each against an independent formulation written here, every trap of BASELINES.md,
invariances, small data, and the registry. The reference formulations are written out with numpy,
scipy and scikit-learn in this file; none calls the code under test."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.special import softmax

from lead.errors import InputError
from lead.scoring import METHODS, get_method, gbc, hscore, leep, logme, nce, nleep, sfda, transrate
from lead.scoring.logme import logme_details
from lead.scoring.nleep import ORDER_SEED


def blobs(n_per_class=10, k=3, d=6, dist=2.5, seed=0):
    """Gaussian blobs with centres about ``dist`` apart; labels 0..k-1, each class n_per_class samples."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * dist / math.sqrt(2 * d)
    labels = np.repeat(np.arange(k), n_per_class)
    return centres[labels] + rng.standard_normal((labels.size, d)), labels


def head_logits(features, n_source=7, seed=1):
    """Logits of a random linear source head on the features, plus noise."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features.shape[1], n_source)) / math.sqrt(features.shape[1])
    return 3.0 * features @ w + 0.5 * rng.standard_normal((features.shape[0], n_source))


# Each method called directly, with knobs small enough for the test data (GBC's PCA needs N, D >= d).
FEATURE_SCORES = {
    "logme": logme,
    "nleep": nleep,
    "hscore": hscore,
    "sfda": sfda,
    "gbc": functools.partial(gbc, n_components=4),
    "transrate": transrate,
}
LOGIT_SCORES = {"leep": leep, "nce": nce}
ALL = sorted(FEATURE_SCORES) + sorted(LOGIT_SCORES)


def score(name, features, logits, labels):
    if name in LOGIT_SCORES:
        return LOGIT_SCORES[name](logits, labels)
    return FEATURE_SCORES[name](features, labels)


@pytest.fixture(scope="module")
def small():
    x, y = blobs(n_per_class=12, k=3, d=6, seed=3)
    return x, head_logits(x), y


# --- LogME ---------------------------------------------------------------------------------------


def direct_log_evidence(f, y, alpha, beta):
    """log N(y; 0, F F^T / alpha + I / beta) from an N x N determinant and solve (small N only)."""
    n = f.shape[0]
    cov = f @ f.T / alpha + np.eye(n) / beta
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))


LOGME_CASES = {
    "N>D": blobs(n_per_class=10, k=3, d=5, seed=0),
    "N<D": (np.random.default_rng(1).standard_normal((20, 40)), np.arange(20) % 3),
    # Random features: for some classes the evidence rises all the way to alpha / beta -> infinity.
    "useless": (np.random.default_rng(0).standard_normal((30, 3)), np.arange(30) % 3),
    "rank-deficient": (
        np.hstack([blobs(n_per_class=8, k=3, d=4, seed=2)[0], np.zeros((24, 3))]),
        np.repeat(np.arange(3), 8),
    ),
}


@pytest.mark.parametrize("case", sorted(LOGME_CASES))
def test_logme_is_the_marginal_likelihood_at_its_alpha_beta(case):
    f, labels = LOGME_CASES[case]
    res = logme_details(f, labels)
    n = f.shape[0]
    for k in range(len(res.classes)):
        y = (labels == res.classes[k]).astype(float)
        direct = direct_log_evidence(f, y, res.alphas[k], res.betas[k])
        assert res.evidences[k] * n == pytest.approx(direct, rel=1e-9)
    assert res.score == pytest.approx(res.evidences.mean(), rel=1e-12)
    assert logme(f, labels) == res.score


@pytest.mark.parametrize("case", sorted(LOGME_CASES))
def test_logme_alpha_beta_maximise_the_evidence(case):
    from scipy.optimize import minimize

    f, labels = LOGME_CASES[case]
    res = logme_details(f, labels)
    for k in range(len(res.classes)):
        y = (labels == res.classes[k]).astype(float)
        a, b = res.alphas[k], res.betas[k]
        best = direct_log_evidence(f, y, a, b)
        # A stationary maximum: no small step in log alpha or log beta improves it.
        for da, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3), (1e-3, 1e-3), (-1e-3, 1e-3)]:
            assert direct_log_evidence(f, y, a * math.exp(da), b * math.exp(db)) <= best + 1e-9 * abs(best)
        # And a generic optimiser of the direct formula finds nothing better.
        found = minimize(lambda p: -direct_log_evidence(f, y, math.exp(p[0]), math.exp(p[1])), [0.0, 0.0],
                         method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
        assert -found.fun <= best + 1e-7 * abs(best)


def test_logme_n_smaller_than_d_is_finite_and_sensible():
    # BASELINES.md: on random 60 x 256 data the common implementation scores about +11 (it drops the
    # (D - r) log alpha terms); the full evidence of random features is below that of a useful model.
    rng = np.random.default_rng(4)
    f = rng.standard_normal((60, 256))
    labels = np.arange(60) % 4
    value = logme(f, labels)
    assert math.isfinite(value)
    assert -1.0 < value < 0.0
    useful, _ = blobs(n_per_class=15, k=4, d=256, dist=8.0, seed=5)
    assert logme(useful, labels[np.argsort(labels, kind="stable")]) > value


def test_logme_useless_features_reach_the_noise_only_limit():
    f, labels = LOGME_CASES["useless"]
    res = logme_details(f, labels)
    limit = [k for k in range(3) if res.alphas[k] / res.betas[k] > 1e12]
    assert limit  # the case exercises the limit
    for k in limit:
        assert res.evidences[k] == pytest.approx(0.5 * (math.log(3) - 1 - math.log(2 * math.pi)), rel=1e-9)


def test_logme_is_invariant_to_feature_scale():
    f, labels = blobs(n_per_class=10, k=3, d=5, seed=6)
    base = logme(f, labels)
    for c in (1e-3, 1e3):
        assert logme(c * f, labels) == pytest.approx(base, rel=1e-9)


def test_logme_all_zero_features_is_the_noise_only_model():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    n = labels.size
    expected = np.mean([0.5 * (math.log(n / c) - 1 - math.log(2 * math.pi)) for c in (3, 2, 5)])
    assert logme(np.zeros((n, 4)), labels) == pytest.approx(expected, rel=1e-12)


# --- LEEP and NCE --------------------------------------------------------------------------------


def leep_by_loops(logits, labels):
    n, cs = logits.shape
    classes = sorted(set(labels.tolist()))
    theta = [[math.exp(v - max(row)) for v in row] for row in logits.tolist()]
    theta = [[v / sum(row) for v in row] for row in theta]
    joint = {(y, z): 0.0 for y in classes for z in range(cs)}
    for i in range(n):
        for z in range(cs):
            joint[(labels[i], z)] += theta[i][z] / n
    marginal = [sum(joint[(y, z)] for y in classes) for z in range(cs)]
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[(labels[i], z)] / marginal[z] * theta[i][z] for z in range(cs)))
    return total / n


def nce_by_loops(logits, labels):
    n = len(labels)
    z = [max(range(len(row)), key=row.__getitem__) for row in logits.tolist()]
    pairs, per_z = {}, {}
    for yi, zi in zip(labels.tolist(), z):
        pairs[(yi, zi)] = pairs.get((yi, zi), 0) + 1
        per_z[zi] = per_z.get(zi, 0) + 1
    return sum(c / n * math.log(c / per_z[zi]) for (yi, zi), c in pairs.items())


def test_leep_equals_explicit_loops(small):
    x, logits, y = small
    assert leep(logits, y) == pytest.approx(leep_by_loops(logits, y), rel=1e-12)


def test_leep_ignores_a_source_class_with_no_probability(small):
    x, logits, y = small
    dead = np.hstack([logits, np.full((logits.shape[0], 1), -2000.0)])  # softmax underflows to exactly 0
    assert leep(dead, y) == pytest.approx(leep(logits, y), rel=1e-12)


def test_leep_has_the_log():
    # One source class, so p(y_i | x_i) = Phat(y_i): LEEP = mean log Phat(y_i), not mean Phat(y_i).
    labels = np.array([0, 0, 0, 1])
    expected = (3 * math.log(0.75) + math.log(0.25)) / 4
    assert leep(np.zeros((4, 1)), labels) == pytest.approx(expected, rel=1e-12)


def test_nce_hand_worked_six_samples():
    # Source argmax z = 0 0 1 1 1 1 against labels 0 0 0 1 1 1: H(Y | z=0) = 0 and
    # H(Y | z=1) = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351446; P(z=1) = 4/6; NCE = -(4/6) 0.5623351446.
    logits = np.eye(2)[[0, 0, 1, 1, 1, 1]]
    assert nce(logits, [0, 0, 0, 1, 1, 1]) == pytest.approx(-0.3748900964125, abs=1e-12)


def test_nce_equals_explicit_loops(small):
    x, logits, y = small
    assert nce(logits, y) == pytest.approx(nce_by_loops(logits, y), rel=1e-12)


def test_nce_extremes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert nce(np.eye(3)[labels], labels) == 0.0  # the source prediction determines the label
    assert nce(np.zeros((6, 3)), labels) == pytest.approx(-math.log(3), rel=1e-12)  # it carries nothing


# --- H-score -------------------------------------------------------------------------------------


def hscore_explicit(f, labels):
    """tr(C_alpha^-1 (1 - alpha) cov(g)) with scikit-learn's Ledoit-Wolf estimate and 1/N covariances."""
    from sklearn.covariance import LedoitWolf

    fc = f - f.mean(axis=0)
    lw = LedoitWolf(assume_centered=False).fit(fc)
    g = np.zeros_like(fc)
    for c in np.unique(labels):
        g[labels == c] = fc[labels == c].mean(axis=0)
    cov_g = g.T @ g / f.shape[0]
    return float(np.trace(np.linalg.solve(lw.covariance_, (1 - lw.shrinkage_) * cov_g)))


@pytest.mark.parametrize("shape", [(40, 6), (15, 30)])
def test_hscore_equals_ledoit_wolf_formula(shape):
    n, d = shape
    f, _ = blobs(n_per_class=n // 5, k=5, d=d, seed=7)
    labels = np.repeat(np.arange(5), n // 5)
    assert hscore(f, labels) == pytest.approx(hscore_explicit(f, labels), rel=1e-9)


def test_hscore_tends_to_the_unregularised_h_score_when_well_conditioned():
    # H_alpha - H = O(alpha): the Ledoit-Wolf alpha, and with it the gap to tr(pinv(cov f) cov g),
    # shrinks as N grows on a well-conditioned problem.
    from sklearn.covariance import LedoitWolf

    gaps = []
    for n_per_class in (100, 1000):
        f, labels = blobs(n_per_class=n_per_class, k=3, d=4, dist=3.0, seed=8)
        f = f * np.array([1.0, 2.0, 0.5, 1.5])
        cov_f = np.cov(f, rowvar=False, bias=True)
        g = np.zeros_like(f)
        for c in range(3):
            g[labels == c] = f[labels == c].mean(axis=0)
        unregularised = float(np.trace(np.linalg.pinv(cov_f) @ np.cov(g, rowvar=False, bias=True)))
        alpha = LedoitWolf().fit(f).shrinkage_
        gap = abs(hscore(f, labels) - unregularised) / unregularised
        assert gap <= 2 * alpha
        gaps.append(gap)
    assert gaps[1] < gaps[0] / 2 and gaps[1] < 3e-3


# --- TransRate -----------------------------------------------------------------------------------


def transrate_slogdet(f, labels, eps=1e-4):
    z = f - f.mean(axis=0)

    def rate(a):
        sign, logdet = np.linalg.slogdet(np.eye(a.shape[1]) + a.T @ a / (a.shape[0] * eps))
        assert sign > 0
        return 0.5 * logdet

    classes = np.unique(labels)
    return rate(z) - sum(rate(z[labels == c]) for c in classes) / classes.size


@pytest.mark.parametrize("shape", [(60, 5), (12, 20)])
def test_transrate_equals_slogdet_formula(shape):
    n, d = shape
    f, labels = blobs(n_per_class=n // 3, k=3, d=d, seed=9)
    assert transrate(f, labels) == pytest.approx(transrate_slogdet(f, labels), rel=1e-10)
    assert transrate(f, labels, eps=0.5) == pytest.approx(transrate_slogdet(f, labels, eps=0.5), rel=1e-10)


# --- GBC -----------------------------------------------------------------------------------------


def bhattacharyya_by_hand(mu1, mu2, cov1, cov2):
    cov = (cov1 + cov2) / 2
    diff = mu1 - mu2
    return diff @ np.linalg.inv(cov) @ diff / 8 + 0.5 * math.log(
        np.linalg.det(cov) / math.sqrt(np.linalg.det(cov1) * np.linalg.det(cov2))
    )


@pytest.mark.parametrize("gaussian", ["diagonal", "spherical"])
def test_gbc_two_classes_by_hand(gaussian):
    from sklearn.decomposition import PCA

    f, labels = blobs(n_per_class=15, k=2, d=8, dist=2.0, seed=10)
    z = PCA(n_components=3, svd_solver="full").fit_transform(f)
    stats = []
    for c in (0, 1):
        zc = z[labels == c]
        var = np.maximum(zc.var(axis=0), 1e-4)
        cov = np.diag(var) if gaussian == "diagonal" else np.eye(3) * var.mean()
        stats.append((zc.mean(axis=0), cov))
    bc = math.exp(-bhattacharyya_by_hand(stats[0][0], stats[1][0], stats[0][1], stats[1][1]))
    assert gbc(f, labels, n_components=3, gaussian=gaussian) == pytest.approx(-2 * bc, rel=1e-9)


def test_gbc_well_separated_classes_score_near_zero_and_overlapping_near_minus_k_k_minus_1():
    far, labels = blobs(n_per_class=20, k=3, d=6, dist=60.0, seed=11)
    assert -1e-6 < gbc(far, labels, n_components=4) <= 0.0
    same = np.random.default_rng(12).standard_normal((60, 6))
    assert gbc(same, labels, n_components=4) < -0.8 * 6


def test_gbc_refuses_fewer_samples_or_dimensions_than_components():
    f, labels = blobs(n_per_class=10, k=3, d=100, seed=13)  # N = 30 < 64
    with pytest.raises(InputError, match=r"gbc: features must have at least n_components=64 rows and columns "
                       r"for the PCA; got shape \(30, 100\)\. Pass n_components <= 30"):
        gbc(f, labels)
    f, labels = blobs(n_per_class=30, k=3, d=10, seed=13)  # D = 10 < 64
    with pytest.raises(InputError, match=r"got shape \(90, 10\)\. Pass n_components <= 10"):
        gbc(f, labels)
    assert math.isfinite(gbc(f, labels, n_components=10))


def test_gbc_rejects_unknown_gaussian(small):
    with pytest.raises(InputError, match="gbc: gaussian must be one of"):
        gbc(small[0], small[2], n_components=2, gaussian="full")


# --- SFDA ----------------------------------------------------------------------------------------


def sfda_by_loops(x, labels):
    """TencentARC/SFDA's algorithm written out: explicit scatter matrices, the generalised eigenproblem."""
    from scipy.linalg import eigh

    x = np.array(x, dtype=float)
    n, d = x.shape
    classes = np.unique(labels)
    priors = np.array([(labels == c).mean() for c in classes])

    def fit(x, shrinkage):
        means = np.array([x[labels == c].mean(axis=0) for c in classes])
        sw = np.zeros((d, d))
        for p, c in zip(priors, classes):
            xc = x[labels == c] - x[labels == c].mean(axis=0)
            sw += p * xc.T @ xc / xc.shape[0]
        if shrinkage is None:  # power iteration from the row sums, three rounds, as the paper's code
            v = sw.sum(axis=1)
            for _ in range(3):
                t = sw @ v
                w = t / np.linalg.norm(t)
                t = sw @ w
                v = t / np.linalg.norm(t)
            shrinkage = max(math.exp(-5 * float(v @ sw @ w)), 1e-10)
        xt = x - x.mean(axis=0)
        st = xt.T @ xt / n
        st = (1 - shrinkage) * st + shrinkage * np.trace(st) / d * np.eye(d)
        sw_s = (1 - shrinkage) * sw + shrinkage * np.trace(sw) / d * np.eye(d)
        _, vecs = eigh(st - sw_s, sw_s)
        coef = means @ vecs @ vecs.T
        intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
        return softmax(x @ coef.T + intercept, axis=1), means, shrinkage

    prob, means, shrinkage = fit(x, None)
    soft = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
    mixed = x.copy()
    for i in range(n):
        k = int(np.searchsorted(classes, labels[i]))
        others = (means.sum(axis=0) - means[k]) / (len(classes) - 1)
        mixed[i] = soft[i, k] * x[i] + (1 - soft[i, k]) * others
    prob2, _, _ = fit(mixed, shrinkage)
    return float(np.mean([prob2[i, np.searchsorted(classes, labels[i])] for i in range(n)]))


@pytest.mark.parametrize("scale", [0.15, 1.0])
def test_sfda_equals_loop_formulation(scale):
    # scale 0.15 keeps the shrinkage exp(-5 sigma_max) well above its floor; 1.0 puts it near the floor.
    f, labels = blobs(n_per_class=10, k=3, d=4, dist=2.0, seed=14)
    assert sfda(scale * f, labels) == pytest.approx(sfda_by_loops(scale * f, labels), rel=1e-9)


def test_sfda_two_classes_with_n_smaller_than_d():
    f, labels = blobs(n_per_class=3, k=2, d=9, dist=1.0, seed=15)
    f = 0.2 * f
    assert sfda(f, labels) == pytest.approx(sfda_by_loops(f, labels), rel=1e-7)


def test_sfda_zero_within_class_scatter_raises():
    f = np.repeat(np.array([[0.0, 1.0], [2.0, 0.5]]), 3, axis=0)
    with pytest.raises(InputError, match=r"sfda: features must vary within at least one class; got zero "
                       r"within-class scatter \(all 6 samples equal their class mean\)"):
        sfda(f, [0, 0, 0, 1, 1, 1])


def test_sfda_rows_with_constant_sum_do_not_break_the_power_iteration():
    # Rows summing to 1 (probabilities): the row sums of S_w vanish and the reference's power
    # iteration divides 0 by 0; the exact largest eigenvalue is used instead.
    f, labels = blobs(n_per_class=10, k=3, d=5, seed=16)
    value = sfda(softmax(f, axis=1), labels)
    assert math.isfinite(value) and 0.0 < value <= 1.0


# --- N-LEEP --------------------------------------------------------------------------------------


def test_nleep_equals_the_pipeline_built_step_by_step():
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    f, labels = blobs(n_per_class=12, k=2, d=6, dist=3.0, seed=17)
    order = np.argsort(f @ np.random.default_rng(ORDER_SEED).standard_normal(6), kind="stable")
    fs, ys = f[order], labels[order]
    fs = fs / np.sqrt(((fs - fs.mean(axis=0)) ** 2).mean())  # one global scale: reg_covar becomes relative
    z = PCA(n_components=0.8, svd_solver="full").fit_transform(fs)
    posterior = GaussianMixture(n_components=10, covariance_type="full", random_state=0).fit(z).predict_proba(z)
    n, m = posterior.shape
    joint = np.zeros((2, m))
    for i in range(n):
        joint[ys[i]] += posterior[i] / n
    marginal = joint.sum(axis=0)
    expected = 0.0
    for i in range(n):
        expected += math.log(sum(joint[ys[i], c] / marginal[c] * posterior[i, c] for c in range(m) if marginal[c] > 0))
    assert nleep(f, labels) == pytest.approx(expected / n, rel=1e-9)


def test_nleep_refuses_fewer_samples_than_components():
    f, labels = blobs(n_per_class=4, k=3, d=5, seed=18)
    with pytest.raises(InputError, match=r"nleep: labels must cover at least 15 samples for a mixture of "
                       r"components_per_class \* K = 5 \* 3 components; got 12\."):
        nleep(f, labels)
    assert math.isfinite(nleep(f, labels, components_per_class=2))


def test_nleep_seed_is_a_knob():
    f, labels = blobs(n_per_class=15, k=2, d=5, dist=1.0, seed=19)
    assert nleep(f, labels, seed=0) == nleep(f, labels, seed=0)
    assert math.isfinite(nleep(f, labels, seed=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variance": 1.0}, r"nleep: variance must be a finite float in \(0, 1\); got 1\.0\."),
        ({"variance": 0}, r"nleep: variance must be a finite float in \(0, 1\); got 0\."),
        ({"components_per_class": 0}, r"nleep: components_per_class must be an int >= 1; got 0\."),
        ({"seed": -1}, r"nleep: seed must be an int >= 0; got -1\."),
    ],
)
def test_nleep_knobs_are_checked(small, kwargs, message):
    with pytest.raises(InputError, match=message):
        nleep(small[0], small[2], **kwargs)


def test_knobs_of_gbc_and_transrate_are_checked(small):
    with pytest.raises(InputError, match=r"gbc: n_components must be an int >= 1; got 0\."):
        gbc(small[0], small[2], n_components=0)
    with pytest.raises(InputError, match=r"transrate: eps must be a finite float in \(0, inf\); got -1\.0\."):
        transrate(small[0], small[2], eps=-1.0)


# --- traps and properties shared by every method ---------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_returns_a_finite_python_float(name, small):
    value = score(name, *small)
    assert type(value) is float and math.isfinite(value)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_raises(name, small, bad):
    x, logits, y = small
    x, logits = x.copy(), logits.copy()
    x[5, 2] = bad
    logits[5, 2] = bad
    what = "logits" if name in LOGIT_SCORES else "features"
    message = rf"{name}: {what} must be finite; got NaN or Inf in 1 of 36 rows \(first: row 5\)"
    with pytest.raises(InputError, match=message):
        score(name, x, logits, y)


@pytest.mark.parametrize("name", ALL)
def test_inputs_are_not_modified(name, small):
    x, logits, y = (a.copy() for a in small)
    labels = y.astype(object)
    before = (x.copy(), logits.copy(), labels.copy())
    score(name, x, logits, labels)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(logits, before[1])
    np.testing.assert_array_equal(labels, before[2])


@pytest.mark.parametrize("name", ALL)
def test_string_labels_score_as_integers(name, small):
    x, logits, y = small
    names = np.array(["cat", "dog", "emu"])[y]
    assert score(name, x, logits, names) == pytest.approx(score(name, x, logits, y), rel=1e-12)
    assert score(name, x, logits, list(names)) == pytest.approx(score(name, x, logits, y), rel=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_one_class_is_refused(name, small):
    x, logits, _ = small
    with pytest.raises(InputError, match=rf"{name}: labels must contain at least 2 classes; got 1 \(\['a'\]\)"):
        score(name, x, logits, ["a"] * x.shape[0])


@pytest.mark.parametrize("name", ALL)
def test_invariant_to_sample_order(name, small):
    # N-LEEP is invariant because it sorts the samples by a fixed projection before its seeded mixture.
    x, logits, y = small
    perm = np.random.default_rng(20).permutation(y.size)
    assert score(name, x[perm], logits[perm], y[perm]) == pytest.approx(score(name, x, logits, y), rel=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_invariant_to_class_relabelling(name, small):
    x, logits, y = small
    relabelled = np.array([2, 0, 1])[y]
    assert score(name, x, logits, relabelled) == pytest.approx(score(name, x, logits, y), rel=1e-9)
    assert score(name, x, logits, np.array(["z", "b", 7], dtype=object)[y]) == pytest.approx(
        score(name, x, logits, y), rel=1e-9
    )


CONSTANT = {  # what each method gives when every sample has the same features / logits
    "logme": "finite",
    "hscore": 0.0,
    "transrate": 0.0,
    "gbc": -6.0,  # three classes, identical Gaussians: BC = 1 for each of the 6 ordered pairs
    "leep": "finite",
    "nce": "finite",
    "nleep": r"nleep: features must vary across samples; got 36 identical rows\. The PCA has no variance to keep",
    "sfda": r"sfda: features must vary within at least one class; got zero within-class scatter",
}


@pytest.mark.parametrize("name", ALL)
def test_constant_features_give_a_finite_value_or_a_clear_error(name, small):
    x, logits, y = small
    x = np.ones_like(x) * 3.0
    logits = np.ones_like(logits)
    expected = CONSTANT[name]
    if isinstance(expected, str) and expected != "finite":
        with pytest.raises(InputError, match=expected):
            score(name, x, logits, y)
        return
    value = score(name, x, logits, y)
    assert math.isfinite(value)
    if expected != "finite":
        assert value == pytest.approx(expected, abs=1e-12)


SMALL_DATA = {  # N = 4 samples, K = 2, D = 3: what each method does
    "logme": "finite",
    "hscore": "finite",
    "transrate": "finite",
    "sfda": "finite",
    "leep": "finite",
    "nce": "finite",
    "gbc": r"gbc: features must have at least n_components=4 rows and columns for the PCA; got shape \(4, 3\)",
    "nleep": (
        r"nleep: labels must cover at least 10 samples for a mixture of "
        r"components_per_class \* K = 5 \* 2 components; got 4\. Add samples"
    ),
}


@pytest.mark.parametrize("name", ALL)
def test_tiny_data_works_or_raises_clearly(name):
    x = np.array([[0.0, 1.0, 2.0], [1.0, 0.5, 0.0], [3.0, 1.0, 1.0], [2.5, 2.0, 0.5]])
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.5, 0.4]])
    y = np.array([0, 0, 1, 1])
    expected = SMALL_DATA[name]
    if expected != "finite":
        with pytest.raises(InputError, match=expected):
            score(name, x, logits, y)
        return
    assert math.isfinite(score(name, x, logits, y))


@pytest.mark.parametrize("name", ALL)
def test_a_class_with_a_single_sample_is_accepted(name, small):
    x, logits, y = small
    y = y.copy()
    y[0] = 9  # class 9 has one sample
    assert math.isfinite(score(name, x, logits, y))


def test_logits_must_match_labels():
    with pytest.raises(InputError, match=r"leep: logits must have one row per label; got 3 rows for 4 labels\."):
        leep(np.zeros((3, 2)), [0, 1, 0, 1])


# --- registry ------------------------------------------------------------------------------------


def test_registry_order_and_needs():
    assert METHODS == ("lead", "logme", "leep", "nce", "nleep", "hscore", "sfda", "gbc", "transrate")
    for name in ("logme", "nleep", "hscore", "sfda", "gbc", "transrate"):
        m = get_method(name)
        assert (m.needs_features, m.needs_logits, m.higher_is_better, m.min_classes) == (True, False, True, 2)
    for name in ("leep", "nce"):
        m = get_method(name)
        assert (m.needs_features, m.needs_logits) == (False, True)
    assert get_method("gbc").params == {"n_components": 64, "gaussian": "spherical"}
    assert get_method("gbc").min_samples == 64
    assert get_method("nleep").params == {"variance": 0.8, "components_per_class": 5, "seed": 0}
    assert get_method("transrate").params == {"eps": 1e-4}


def test_registered_methods_equal_direct_calls():
    x, y = blobs(n_per_class=22, k=3, d=64, dist=4.0, seed=21)  # N = 66, D = 64: GBC's default PCA fits
    logits = head_logits(x)
    direct = {
        "logme": logme(x, y),
        "leep": leep(logits, y),
        "nce": nce(logits, y),
        "nleep": nleep(x, y, variance=0.8, components_per_class=5, seed=0),
        "hscore": hscore(x, y),
        "sfda": sfda(x, y),
        "gbc": gbc(x, y, n_components=64, gaussian="spherical"),
        "transrate": transrate(x, y, eps=1e-4),
    }
    for name, value in direct.items():
        assert get_method(name)(features=x, logits=logits, labels=y) == value


def test_registered_logit_method_without_logits_says_so():
    with pytest.raises(InputError, match="leep: source logits must be given; got None"):
        get_method("leep")(features=np.zeros((4, 2)), labels=[0, 1, 0, 1])
