"""NCE: negative conditional entropy of the target labels given the source head's hard predictions.

Source: A. T. Tran, C. V. Nguyen, T. Hassner, "Transferability and Hardness of Supervised
Classification Tasks", ICCV 2019 (the NCE measure; formula below).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lead.scoring._validate import check_inputs


def nce(logits, labels: Sequence[Hashable] | np.ndarray) -> float:
    """NCE: minus the conditional entropy H(Y | Z) of target label Y given source prediction Z. Higher is better.

    Z_i = argmax of the source logits of sample i. From the empirical joint Phat(y, z) of the N pairs,
    NCE = sum_{y, z} Phat(y, z) log Phat(y | z): 0 when the source prediction determines the target
    label, -H(Y) when it carries no information. Values are in nats (<= 0); they compare models on
    one dataset only.

    Source: Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019:
    NCE(Y | Z) = -H(Y | Z) = sum_{y, z} Phat(y, z) log(Phat(y, z) / Phat(z)).
    Deviations: none. Source classes never predicted do not enter (0 log 0 = 0); thuml/LogME ``NCE.py``
    adds 1e-20 inside every log, which changes the value by < 1e-17.

    Args:
        logits: source-head logits, shape (N, Cs), float, Cs >= 1; computed in float64. Ties in the
            argmax go to the first column (numpy's argmax).
        labels: class indices or names, shape (N,); at least two classes.
    Returns:
        float, in nats, in [-log K, 0]; finite.
    Raises:
        InputError: non-finite or misshapen logits, labels not matching, fewer than two classes.
    Notes:
        Cost O(N Cs) for the argmax, O(N) for the counts; only predicted source classes are stored.
    """
    return nce_terms(logits, labels)[0]


def nce_terms(logits, labels: Sequence[Hashable] | np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`nce` (same arguments and errors) and its per-sample terms log Phat(y_i | z_i): (score, terms of
    shape (N,), float64, in the caller's order). NCE = sum_{y,z} Phat(y, z) log Phat(y | z) is their mean;
    the score is computed from the counts as before (equal to the terms' mean up to rounding)."""
    where = "nce"
    s, enc = check_inputs(logits, labels, where=where, name="logits")
    n = enc.codes.shape[0]
    _, z = np.unique(np.argmax(s, axis=1), return_inverse=True)  # predicted source classes, 0..P-1
    counts = np.zeros((enc.n_classes, int(z.max()) + 1))
    np.add.at(counts, (enc.codes, z), 1.0)
    per_z = counts.sum(axis=0)  # > 0 for every column by construction
    nz = counts > 0
    conditional = counts / per_z
    score = float((counts[nz] * np.log(conditional[nz])).sum() / n) + 0.0  # + 0.0: no -0.0
    return score, np.log(conditional[enc.codes, z]) + 0.0
