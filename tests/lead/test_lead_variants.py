"""LEAD's study variants (initial="logreg", loss="ce", eta="reference", rescale, class_kernel) and the
backbone kernel, each against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import softmax

from lead.errors import InputError
from lead.scoring.lead import (
    ce_flow,
    evolve,
    kernel_diagonal,
    lead_details,
    lead_score,
    logreg_initial_state,
    random_head,
    reference_kernel,
    stratified_folds,
)


def data(n_per=20, k=4, d=12, sep=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    x = rng.normal(size=(n_per * k, d))
    x[:, :k] += sep * np.eye(k)[y]
    return x, y


def test_ce_flow_matches_solve_ivp():
    rng = np.random.default_rng(1)
    f0 = rng.normal(size=(5, 3))
    y = np.eye(3)[[0, 1, 2, 0, 1]]
    rate = rng.uniform(0.5, 3.0, size=5)
    got = ce_flow(f0, y, rate, 1.7)
    for i in range(5):
        sol = solve_ivp(lambda t, f: -rate[i] * (softmax(f) - y[i]), (0, 1.7), f0[i], rtol=1e-10, atol=1e-12)
        assert np.allclose(got[i], sol.y[:, -1], atol=1e-6)


def test_ce_loss_score_is_log_softmax_of_the_flow():
    x, y = data()
    r = lead_details(x, y, loss="ce")
    p0 = r.p0
    ft = ce_flow(np.log(p0), np.eye(4)[y], r.eta * r.lambdas[y], 1.0)
    expected = np.mean(np.log(softmax(ft, axis=1)[np.arange(len(y)), y]))
    assert r.score == pytest.approx(expected, rel=1e-9)
    assert np.allclose(r.fhat.sum(1), 1.0)


def test_logreg_initial_state_equals_sklearn_cross_val_predict():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    x, y = data(seed=2)
    folds = stratified_folds(y, 4, 5, seed=0)
    expected = cross_val_predict(LogisticRegression(C=1.0, max_iter=100), x, y, cv=PredefinedSplit(folds), method="predict_proba")
    got = logreg_initial_state(x, y, 4, seed=0, c=1.0)
    assert np.allclose(got, expected, atol=1e-9)


def test_logreg_needs_two_per_class_and_scores_separable_higher():
    x, y = data(seed=3, sep=3.0)
    assert lead_score(x, y, initial="logreg") > lead_score(x, np.random.default_rng(0).permutation(y), initial="logreg") + 0.1
    with pytest.raises(InputError, match="at least 2 samples"):
        lead_score(x[:61], np.r_[y[:60], 3], initial="logreg")


def test_reference_eta_is_the_head_kernel_on_unit_norm_inputs():
    x, y = data(d=32)
    r = lead_details(x, y, eta="reference", rescale=True)
    g = np.random.default_rng(2024).standard_normal((256, 32)) / np.sqrt(32)
    assert r.eta == pytest.approx(1.0 / kernel_diagonal(g, random_head(32, 4, (1024, 2048), seed=0)).mean(), rel=1e-12)
    assert reference_kernel(32, 4, (1024, 2048)) == pytest.approx(1.0 / r.eta, rel=1e-12)
    # standardised and rescaled features have mean squared norm 1, so the mean decay is about exp(-1)
    assert np.mean(r.decay) == pytest.approx(np.exp(-1.0), abs=0.1)
    # without the rescale the kernel grows with D and every class has converged
    assert np.all(lead_details(x, y, eta="reference").decay < 1e-6)


def test_class_kernel_replaces_the_head_and_is_checked():
    x, y = data()
    lam = np.array([1.0, 2.0, 3.0, 4.0])
    r = lead_details(x, y, class_kernel=lam)
    assert np.allclose(r.lambdas, lam) and r.eta == pytest.approx(1 / 2.5)
    per, _ = evolve(r.p0, y, lam, 1 / 2.5, 1.0)
    assert r.score == pytest.approx(per.mean(), rel=1e-12)
    with pytest.raises(InputError, match="class_kernel must be 4 finite values > 0"):
        lead_score(x, y, class_kernel=[1.0, 2.0])
    with pytest.raises(InputError, match="loss must be one of"):
        lead_score(x, y, loss="hinge")


def test_backbone_kernel_head_share_is_the_closed_form_and_backbone_share_matches_autograd():
    import timm
    import torch

    from lead.kernels import backbone_class_kernel, last_block_parameters

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    x = torch.randn(12, 3, 32, 32)
    codes = np.repeat(np.arange(3), 4)
    got = backbone_class_kernel(model, x, codes, 3, head=(16, 8), n_per_class=3)
    with torch.inference_mode():
        f = model.forward_head(model.forward_features(x), pre_logits=True).double().numpy()
    sd = f.std(0)
    sd[sd == 0] = 1
    z = (f - f.mean(0)) / sd
    kd = kernel_diagonal(z, random_head(z.shape[1], 3, (16, 8), seed=0))
    head = np.array([kd[codes == k][:3].mean() for k in range(3)])
    assert np.allclose(got["head"], head, rtol=1e-4)
    # backbone share, one sample at a time through plain autograd
    params = [p for _, p in last_block_parameters(model)]
    layers = [(torch.from_numpy(w).float(), torch.from_numpy(b).float()) for w, b in random_head(z.shape[1], 3, (16, 8), seed=0)]
    mu = torch.from_numpy(f.mean(0)).float()
    s = torch.from_numpy(sd).float()
    vals = []
    for i in np.nonzero(codes == 1)[0][:3]:
        a = (model.forward_head(model.forward_features(x[i:i + 1]), pre_logits=True) - mu) / s
        for j, (w, b) in enumerate(layers):
            a = a @ w.T + b
            if j < len(layers) - 1:
                a = torch.relu(a)
        grads = torch.autograd.grad(a.sum(), params)
        vals.append(sum(float((g.double() ** 2).sum()) for g in grads))
    assert got["backbone"][1] == pytest.approx(np.mean(vals), rel=1e-4)
    assert np.allclose(got["total"], got["head"] + got["backbone"])
