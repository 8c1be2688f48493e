"""The pieces of a suite build (lead.benchbuild) and LEAD's study variants, against independent values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lead.benchbuild import (
    FineTuning,
    Target,
    fashion_mnist,
    ground_truth,
    make_target,
    preprocessing,
)
from lead.errors import InputError


def test_fashion_mnist_reads_the_debian_idx_files():
    x, y = fashion_mnist("train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [6000] * 10
    xt, yt = fashion_mnist("test")
    assert xt.shape == (10000, 28, 28) and np.bincount(yt).tolist() == [1000] * 10
    # first training label of Fashion-MNIST is 9 (ankle boot), first test label 9 as well
    assert y[0] == 9 and yt[0] == 9


def test_target_split_is_deterministic_disjoint_and_balanced():
    t = Target("digits", "uci-digits", shots=5, test_per_class=7, seed=3)
    a, b = make_target(t), make_target(t)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert np.bincount(a.train_y).tolist() == [5] * 10 and np.bincount(a.test_y).tolist() == [7] * 10
    train = {x.tobytes() for x in a.train_x}
    # UCI digits has a few exact duplicate images; the split is by index, so compare with the source's count
    assert len(train & {x.tobytes() for x in a.test_x}) <= 2
    assert make_target(Target("digits", "uci-digits", shots=5, test_per_class=7, seed=4)).fingerprint != a.fingerprint
    with pytest.raises(InputError, match="must have at least 1000 images"):
        make_target(Target("digits", "uci-digits", shots=500, test_per_class=500))


def test_build_preprocessing_resizes_and_normalises():
    img = np.zeros((2, 8, 8), np.uint8)
    img[0] = 255
    x = preprocessing(16).arrays(img)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones_like(x[0])) and torch.allclose(x[1], -torch.ones_like(x[1]))


def test_ground_truth_is_the_best_rates_mean_over_seeds():
    runs = [
        {"dataset": "d", "model": "a", "lr": 0.01, "seed": s, "test_acc": v} for s, v in enumerate([50, 60, 70])
    ] + [
        {"dataset": "d", "model": "a", "lr": 0.03, "seed": s, "test_acc": v} for s, v in enumerate([65, 65, 62])
    ] + [
        {"dataset": "d", "model": "b", "lr": 0.01, "seed": s, "test_acc": v} for s, v in enumerate([10, 20, 30])
    ]
    gt = ground_truth(runs)
    assert gt["d"]["a"]["accuracy"] == pytest.approx(64.0) and gt["d"]["a"]["lr"] == 0.03
    assert gt["d"]["a"]["std"] == pytest.approx(np.std([65, 65, 62]))
    assert gt["d"]["b"]["accuracy"] == pytest.approx(20.0) and gt["d"]["a"]["n_seeds"] == 3
    assert gt["d"]["a"]["by_lr"] == {0.01: pytest.approx(60.0), 0.03: pytest.approx(64.0)}


def test_finetune_protocol_defaults_match_the_docs():
    p = FineTuning()
    assert p.lrs == (0.01, 0.03) and p.seeds == (0, 1, 2) and p.epochs == 10 and p.batch_size == 32
