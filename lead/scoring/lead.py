"""LEAD: transferability from the evolution of logits under fine-tuning.

Source: Z. Hu, X. Li, S. Tang, J. Liu, Y. Hu, L.-Y. Duan, "LEAD: Exploring Logit Space Evolution
for Model Selection", CVPR 2024. The project's reading of the method, with every open knob, is in
docs/method.md; equation numbers below refer to the steps listed there.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_softmax
from scipy.special import softmax as softmax_rows

from lead.errors import InputError
from lead.scoring._validate import check_inputs, check_matrix, global_scale
from lead.scoring._validate import standardize as zscore

#: Initial-state estimators accepted by ``initial`` (docs/method.md, "initial").
INITIAL_STATES = ("svm", "svm_insample", "logreg", "source")
#: How a class's mean tangent-kernel eigenvalue is obtained (docs/method.md, "kernel").
KERNELS = ("expected", "sampled")
#: Feature scalings before every step (docs/method.md, "normalize").
NORMALIZATIONS = ("global", "none")
#: Losses whose gradient flow is followed (docs/method.md, "loss").
LOSSES = ("mse", "ce")
#: Regularisation C of the multinomial logistic regression of ``initial="logreg"``, on features divided by
#: their global scale; chosen by the leave-one-target-out protocol of docs/benchmarks.md (0.1 ... 1000:
#: weak regularisation ranks best, 100 and 1000 on a plateau).
LOGREG_C = 100.0
LOGREG_MAX_ITER = 100
#: Its stopping tolerance (scikit-learn's default).
LOGREG_TOL = 1e-4
#: Explicit RK4 steps over [0, t] for ``loss="ce"`` (checked against scipy's solve_ivp to 1e-6 in the tests).
CE_STEPS = 32
#: Folds of the out-of-fold initial state (our choice; fewer when the smallest class is smaller).
N_FOLDS = 5
#: Regularisation of the linear SVM (scikit-learn's default).
SVM_C = 1.0
#: liblinear dual coordinate descent (10x faster than the primal solver on standardised features here);
#: iteration cap, with convergence warnings silenced (the probabilities are calibrated after).
SVM_MAX_ITER = 2000
#: liblinear (behind LinearSVC) seeds and draws from one process-wide C random generator, so fits in
#: concurrent threads (the flow scores models in a thread pool) interleave their draws and the scores
#: stop being reproducible. Fits are serialised through this lock.
_LIBLINEAR_LOCK = threading.Lock()
#: Floor on initial-state probabilities before renormalising, so log() stays finite when d_k = 1.
PROB_FLOOR = 1e-12


@dataclass(frozen=True)
class LeadResult:
    """Every intermediate of one LEAD evaluation, in the caller's sample order.

    Attributes:
        score: LEAD, mean_i log Fhat_i[y_i]; float <= 0, higher is better.
        classes: the K class names, in column order of ``p0`` and ``fhat``.
        p0: initial logit state P0, shape (N, K), float64, rows on the simplex.
        lambdas: mean tangent-kernel eigenvalue per class, shape (K,), float64, > 0.
        eta: the step size used (``1 / mean(lambdas)`` when ``eta="auto"``).
        decay: d_k = exp(-eta * lambda_k * t), shape (K,), in (0, 1].
        fhat: evolved state, shape (N, K), float64, rows on the simplex.
        per_sample: each sample's log-likelihood of its label at the evolved state, shape (N,), float64;
            ``score`` is their mean (the per-sample terms :mod:`lead.scoring.bootstrap` resamples).
    """

    score: float
    classes: tuple
    p0: np.ndarray
    lambdas: np.ndarray
    eta: float
    decay: np.ndarray
    fhat: np.ndarray
    per_sample: np.ndarray | None = None


def lead_score(
    features,
    labels: Sequence[Hashable] | np.ndarray,
    *,
    initial: str = "logreg",
    t: float = 1.0,
    n_per_class: int = 64,
    eta: float | str = "auto",
    head: tuple[int, ...] = (1024, 2048),
    standardize: bool = False,
    normalize: str = "global",
    kernel: str = "expected",
    logreg_c: float = 100.0,
    softmax: bool = False,
    seed: int = 0,
    n_heads: int = 1,
    rescale: bool = False,
    loss: str = "mse",
    class_kernel=None,
    logits=None,
) -> float:
    """LEAD transferability score: the log-likelihood of the labels after the logits evolve. Higher is better.

    Fine-tuning moves the logits toward the labels along the gradient flow of the loss. With the
    tangent kernel held constant and a squared loss the flow has a closed form, an interpolation
    from the initial state P0 to the labels at a speed set by the kernel. LEAD replaces the kernel by
    one scalar per class (its mean eigenvalue, from a random MLP head on the frozen features), jumps to
    time ``t`` and scores how likely the true labels are there. Values are in nats (<= 0); they compare
    models on one dataset, not across datasets.

    Source: Hu et al., "LEAD: Exploring Logit Space Evolution for Model Selection", CVPR 2024,
    the chain of docs/method.md: Phi = J J^T (step 1); F_t = (I - exp(-eta Phi t)) Y + exp(-eta Phi t) F_0
    (step 2); lambda_k = trace(Phi_k) / n (step 3); Fhat_i = (1 - d_k) Y_i + d_k P0_i (step 4);
    score = mean_i log Fhat_i[y_i] (step 5). Deviations: the paper's open choices are the knobs below.

    Args:
        features: pre-logit features Z, shape (N, D), float; computed in float64.
        labels: class of each sample, shape (N,), any hashable names; at least two classes.
        initial: how P0 is estimated. ``"logreg"`` (default, chosen by the study of docs/benchmarks.md):
            multinomial logistic regression (L-BFGS, C = 1) on the (standardised, if asked) features,
            out-of-fold over ``min(5, smallest class)`` stratified folds (each class needs >= 2 samples);
            its probabilities need no calibration step. ``"svm"`` (the paper's reading): one-vs-rest
            linear SVM, Platt-calibrated, rows renormalised, out-of-fold over the same folds.
            ``"svm_insample"``: the same SVM fitted and evaluated on all samples.
            ``"source"``: the model's own source logits mapped to the target classes as in LEEP,
            P0(y|x) = sum_z Phat(y|z) softmax(S)_z; needs ``logits``.
        t: fine-tuning "time", > 0; default 1.0 (the paper's sensitivity figure).
        n_per_class: samples per class that enter the kernel estimate, >= 1; default 64 (paper).
            Classes with fewer samples use all of theirs.
        eta: step size of the gradient flow; ``"auto"`` (default) = 1 / mean_k lambda_k (a per-model
            normalisation: the mean decay is then about exp(-t) for every model); ``"reference"`` =
            1 / the same head's kernel on reference inputs N(0, I/D) (unit norm on average), a scale that
            does not depend on the features, so a model's kernel magnitude is kept; or a float > 0.
        head: hidden widths of the random MLP head D -> head[0] -> ... -> K; ReLU, Kaiming-normal
            fan-in weights, zero biases; default (1024, 2048).
        standardize: z-score each feature dimension before the initial-state classifier and the head
            (default False: the study of docs/benchmarks.md ranked better on raw features).
        normalize: ``"global"`` (default): divide the features by their global scale
            sqrt(trace(Cov(Z)) / D) first (``lead.scoring._validate.global_scale``), so the score is
            exactly invariant to ``features * c`` (c > 0), as transferability is; ``"none"``: raw features
            (the score then changes with the features' units, see docs/method.md).
        kernel: ``"expected"`` (default): lambda_k is the expectation of the random head's kernel
            diagonal over the head's Kaiming draw, in closed form (:func:`expected_kernel_diagonal`):
            deterministic, O(N D), and equal to the mean over many sampled heads (tested);
            ``"sampled"``: the diagonal of one (or ``n_heads``) sampled head(s), as in the paper.
        logreg_c: inverse regularisation strength C of ``initial="logreg"`` (> 0; default 100.0 on the
            normalised features, chosen by the leave-one-target-out protocol of docs/benchmarks.md over
            0.1, 1, 10, 100 and 1000; with at most 100 L-BFGS iterations).
        softmax: if True score log_softmax(Fhat)[y] instead of log Fhat[y] (default False).
        seed: seed of the head, the per-class sample and the SVM solver; the score is deterministic.
        n_heads: number of random heads (seeds seed, seed+1, ...) whose lambda_k are averaged; default 1.
        rescale: divide the (standardised) features by sqrt(D) before the head, so that their mean squared
            norm is 1 whatever D is; with a fixed ``eta`` the kernel's scale then compares across models
            without rewarding a larger D (default False).
        loss: ``"mse"`` (default): the closed form of step 2 (squared error). ``"ce"``: the gradient flow of
            the cross-entropy, dF_i/dt = -eta lambda_k (softmax(F_i) - Y_i) from F_0 = log P0, integrated
            with ``CE_STEPS`` RK4 steps; the score is then mean_i log softmax(F_t,i)[y_i].
        class_kernel: precomputed lambda_k, shape (K,), float > 0, in the sorted order of the class names
            (e.g. the kernel over the backbone's last block and the head, ``lead.kernels``); replaces the
            random-head kernel (``head``, ``n_heads``, ``n_per_class`` are then unused).
        logits: source-head logits S, shape (N, Cs), float; only for ``initial="source"``.
    Returns:
        float, in nats, <= 0; finite.
    Raises:
        InputError: non-finite or misshapen features/logits, fewer than two classes, a class with one
            sample under ``initial="svm"``, a knob out of range, or ``initial="source"`` without logits.
    Notes:
        The tangent-kernel diagonal is computed in closed form, one forward and one backward pass of
        the head (``kernel_diagonal``); no Jacobian and no N x N matrix is built. Cost: O(N D K) for the
        SVM, O(K n P) for the kernel (P = head parameters), O(N K) for the rest. Samples are put in a
        canonical order first, so the score is exactly invariant to sample order and class names.
    """
    return lead_details(
        features,
        labels,
        initial=initial,
        t=t,
        n_per_class=n_per_class,
        eta=eta,
        head=head,
        standardize=standardize,
        normalize=normalize,
        kernel=kernel,
        logreg_c=logreg_c,
        softmax=softmax,
        seed=seed,
        n_heads=n_heads,
        rescale=rescale,
        loss=loss,
        class_kernel=class_kernel,
        logits=logits,
    ).score


def lead_details(
    features,
    labels,
    *,
    initial: str = "logreg",
    t: float = 1.0,
    n_per_class: int = 64,
    eta: float | str = "auto",
    head: tuple[int, ...] = (1024, 2048),
    standardize: bool = False,
    normalize: str = "global",
    kernel: str = "expected",
    logreg_c: float = 100.0,
    softmax: bool = False,
    seed: int = 0,
    n_heads: int = 1,
    rescale: bool = False,
    loss: str = "mse",
    class_kernel=None,
    logits=None,
) -> LeadResult:
    """Like :func:`lead_score` (same arguments and errors) but returns every intermediate as a :class:`LeadResult`."""
    where = "lead_score"
    x, enc = check_inputs(features, labels, where=where)
    _check_knobs(where, initial=initial, t=t, n_per_class=n_per_class, eta=eta, head=head, n_heads=n_heads)
    if normalize not in NORMALIZATIONS:
        raise InputError(f"{where}: normalize must be one of {NORMALIZATIONS}; got {normalize!r}.")
    if kernel not in KERNELS:
        raise InputError(f"{where}: kernel must be one of {KERNELS}; got {kernel!r}.")
    if not (isinstance(logreg_c, (int, float)) and not isinstance(logreg_c, bool) and math.isfinite(logreg_c) and logreg_c > 0):
        raise InputError(f"{where}: logreg_c must be a finite float > 0; got {logreg_c!r}.")
    if normalize == "global":
        x = x / global_scale(x)
    if loss not in LOSSES:
        raise InputError(f"{where}: loss must be one of {LOSSES}; got {loss!r}.")
    if class_kernel is not None:
        class_kernel = np.asarray(class_kernel, dtype=np.float64)
        if class_kernel.shape != (enc.n_classes,) or not np.all(np.isfinite(class_kernel)) or np.any(class_kernel <= 0):
            raise InputError(
                f"{where}: class_kernel must be {enc.n_classes} finite values > 0 (one per class); got shape "
                f"{class_kernel.shape}."
            )
    n = x.shape[0]
    source = None
    if initial == "source":
        if logits is None:
            raise InputError(
                f"{where}: logits must be given for initial='source'; got None. "
                "Pass the model's source-head logits or use initial='svm'."
            )
        source = check_matrix(logits, name="logits", n_rows=n, where=where)
    if initial in ("svm", "logreg") and enc.counts.min() < 2:
        small = [enc.classes[i] for i in np.nonzero(enc.counts < 2)[0]][:5]
        raise InputError(
            f"{where}: every class must have at least 2 samples for the out-of-fold initial state; got 1 for {small}. "
            "Add samples, drop the class, or use initial='svm_insample'."
        )

    # Canonical order: by a fixed random projection of the raw features (ties, i.e. identical rows, by
    # class). It does not depend on the caller's order nor on the class names, so neither does any
    # later step: folds, the kernel's per-class sample and the SVM's coordinate order.
    proj = x @ np.random.default_rng(12345).standard_normal(x.shape[1])
    order = np.lexsort((enc.codes, proj))
    xs, ys = x[order], enc.codes[order]
    zs = zscore(xs) if standardize else xs

    if initial == "source":
        p0 = source_initial_state(source[order], ys, enc.n_classes)
    elif initial == "logreg":
        p0 = logreg_initial_state(zs, ys, enc.n_classes, seed=seed, c=logreg_c)
    else:
        p0 = svm_initial_state(zs, ys, enc.n_classes, out_of_fold=(initial == "svm"), seed=seed)

    if class_kernel is not None:
        lambdas = class_kernel.copy()
    elif kernel == "expected":
        zh = zs / math.sqrt(zs.shape[1]) if rescale else zs
        diag = expected_kernel_diagonal(zh, enc.n_classes, head)
        lambdas = np.bincount(ys, weights=diag, minlength=enc.n_classes) / np.bincount(ys, minlength=enc.n_classes)
    else:
        zh = zs / math.sqrt(zs.shape[1]) if rescale else zs
        lambdas = np.zeros(enc.n_classes)
        for h in range(n_heads):
            layers = random_head(zh.shape[1], enc.n_classes, head, seed=seed + h)
            lambdas += class_kernel_means(zh, ys, enc.n_classes, layers, n_per_class=n_per_class, seed=seed)
        lambdas /= n_heads

    if eta == "auto":
        eta_value = 1.0 / float(lambdas.mean())
    elif eta == "reference":
        if class_kernel is not None:
            raise InputError(f"{where}: eta='reference' needs the random-head kernel; got class_kernel. Pass a float eta.")
        eta_value = 1.0 / reference_kernel(zs.shape[1], enc.n_classes, head, n_heads=n_heads, seed=seed)
    else:
        eta_value = float(eta)
    decay = np.exp(-eta_value * lambdas * t)
    per_sample, fhat = evolve(p0, ys, lambdas, eta_value, t, loss=loss, softmax=softmax)
    score = float(per_sample.mean())

    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    return LeadResult(
        score=score,
        classes=enc.classes,
        p0=p0[inverse],
        lambdas=lambdas,
        eta=eta_value,
        decay=decay,
        fhat=fhat[inverse],
        per_sample=per_sample[inverse],
    )


def lead_terms(features, labels, **knobs) -> tuple[float, np.ndarray]:
    """:func:`lead_score` (same arguments and errors) and its per-sample terms: (score, terms of shape (N,),
    float64, in the caller's sample order). ``score`` is exactly :func:`lead_score`'s value and the mean of
    ``terms`` up to rounding."""
    result = lead_details(features, labels, **knobs)
    return result.score, result.per_sample


def evolve(p0: np.ndarray, codes: np.ndarray, lambdas: np.ndarray, eta: float, t: float, *, loss: str = "mse",
           softmax: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Steps 4-5 of docs/method.md: evolve the initial state and take each sample's log-likelihood.

    Args:
        p0: initial state, shape (N, K), float64, rows on the simplex; codes: labels 0..K-1, shape (N,);
        lambdas: per-class kernel means, shape (K,); eta, t: floats > 0.
        loss: ``"mse"``: Fhat_i = (1 - d_k) Y_i + d_k P0_i with d_k = exp(-eta lambda_k t), log-likelihood
            log Fhat_i[y_i] (or log_softmax(Fhat_i)[y_i] with ``softmax``); ``"ce"``: :func:`ce_flow` from
            log P0, log-likelihood log softmax(F_t,i)[y_i].
    Returns:
        (per-sample log-likelihood, shape (N,); evolved state Fhat, shape (N, K), rows on the simplex).
    """
    y_onehot = np.eye(p0.shape[1])[codes]
    rows = np.arange(p0.shape[0])
    if loss == "ce":
        logits_t = ce_flow(np.log(p0), y_onehot, eta * lambdas[codes], t)
        return log_softmax(logits_t, axis=1)[rows, codes], softmax_rows(logits_t, axis=1)
    d = np.exp(-eta * lambdas * t)[codes][:, None]
    fhat = (1.0 - d) * y_onehot + d * p0
    if softmax:
        return log_softmax(fhat, axis=1)[rows, codes], fhat
    return np.log(fhat[rows, codes]), fhat


def _check_knobs(where, *, initial, t, n_per_class, eta, head, n_heads) -> None:
    if initial not in INITIAL_STATES:
        raise InputError(f"{where}: initial must be one of {INITIAL_STATES}; got {initial!r}.")
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise InputError(f"{where}: t must be a finite float > 0; got {t!r}.")
    if not (isinstance(n_per_class, (int, np.integer)) and n_per_class >= 1):
        raise InputError(f"{where}: n_per_class must be an int >= 1; got {n_per_class!r}.")
    if not (eta in ("auto", "reference") or (isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0)):
        raise InputError(f"{where}: eta must be 'auto', 'reference' or a finite float > 0; got {eta!r}.")
    if not (len(head) >= 1 and all(isinstance(w, (int, np.integer)) and w >= 1 for w in head)):
        raise InputError(f"{where}: head must be a non-empty tuple of widths >= 1; got {head!r}.")
    if not (isinstance(n_heads, (int, np.integer)) and n_heads >= 1):
        raise InputError(f"{where}: n_heads must be an int >= 1; got {n_heads!r}.")


# --- initial state -----------------------------------------------------------------------------


def stratified_folds(codes: np.ndarray, n_classes: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold index of each sample, shape (N,), int64: within each class, a seeded permutation of its
    positions is dealt round-robin over ``n_folds`` folds. Depends only on class sizes and ``seed``."""
    folds = np.empty(codes.shape[0], dtype=np.int64)
    for k in range(n_classes):
        idx = np.nonzero(codes == k)[0]
        perm = np.random.default_rng(seed).permutation(idx.size)
        folds[idx] = perm % n_folds
    return folds


def svm_initial_state(z: np.ndarray, codes: np.ndarray, n_classes: int, *, out_of_fold: bool, seed: int) -> np.ndarray:
    """P0 from one-vs-rest linear SVMs (one binary fit per class) with Platt scaling, rows renormalised.

    Args:
        z: features, shape (N, D), float64 (already standardised when the caller asks for it).
        codes: labels 0..K-1, shape (N,).
        out_of_fold: decision values of each sample come from an SVM that did not see it
            (``min(5, smallest class)`` stratified folds); else one SVM fitted on all samples.
    Returns:
        shape (N, K), float64, rows sum to 1, entries >= PROB_FLOOR / (1 + K * PROB_FLOOR).
    Notes:
        One Platt sigmoid per class (Platt 1999, with the target smoothing of Lin, Lin & Weng 2007)
        is fitted on the decision values of all samples, out-of-fold ones when ``out_of_fold``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    n = z.shape[0]
    decision = np.empty((n, n_classes))

    def fit_decide(train, test):
        # One binary SVM per class, each with the same seed (rather than liblinear's multi-class
        # one-vs-rest, whose random state runs on across classes): class k's problem, and so its
        # decision values, do not depend on how the classes are numbered.
        for k in range(n_classes):
            clf = LinearSVC(C=SVM_C, dual=True, max_iter=SVM_MAX_ITER, random_state=seed)
            with _LIBLINEAR_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(z[train], codes[train] == k)
            decision[test, k] = clf.decision_function(z[test])

    if out_of_fold:
        n_folds = int(min(N_FOLDS, np.bincount(codes, minlength=n_classes).min()))
        folds = stratified_folds(codes, n_classes, n_folds, seed)
        for f in range(n_folds):
            fit_decide(folds != f, folds == f)
    else:
        everything = np.ones(n, dtype=bool)
        fit_decide(everything, everything)

    probs = np.empty_like(decision)
    for k in range(n_classes):
        a, b = platt_fit(decision[:, k], codes == k)
        probs[:, k] = expit(-(a * decision[:, k] + b))
    probs = np.maximum(probs, PROB_FLOOR)
    return probs / probs.sum(axis=1, keepdims=True)


def logreg_initial_state(z: np.ndarray, codes: np.ndarray, n_classes: int, *, seed: int, c: float = LOGREG_C) -> np.ndarray:
    """P0 from a multinomial logistic regression (L-BFGS, C = ``c``), out-of-fold over
    ``min(5, smallest class)`` stratified folds (:func:`stratified_folds`).

    Cost O(N D K) per L-BFGS iteration, so it scales to N = 50,000, D = 2,048, K = 100 where the
    one-vs-rest SVM does not (docs/performance.md).

    Args:
        z: features, shape (N, D), float64.
    Returns:
        shape (N, K), float64, rows on the simplex, floored at PROB_FLOOR and renormalised.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n_folds = int(min(N_FOLDS, np.bincount(codes, minlength=n_classes).min()))
    folds = stratified_folds(codes, n_classes, n_folds, seed)
    if z.shape[1] > z.shape[0]:
        # More dimensions than samples: the L2-regularised solution lies in the span of the samples
        # (representer theorem), so the features' coordinates in an orthonormal basis of that span,
        # Z V = U S (thin SVD), give the same fit and the same probabilities with N instead of D
        # weights per class (L-BFGS from zero is invariant to the rotation).
        u, sv, _ = np.linalg.svd(z, full_matrices=False)
        z = u * sv
    probs = np.empty((z.shape[0], n_classes))
    for f in range(n_folds):
        train, test = folds != f, folds == f
        clf = LogisticRegression(C=c, max_iter=LOGREG_MAX_ITER, tol=LOGREG_TOL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z[train], codes[train])
        probs[np.ix_(test, clf.classes_)] = clf.predict_proba(z[test])
        missing = np.setdiff1d(np.arange(n_classes), clf.classes_)
        probs[np.ix_(test, missing)] = 0.0
    probs = np.maximum(probs, PROB_FLOOR)
    return probs / probs.sum(axis=1, keepdims=True)


def ce_flow(f0: np.ndarray, y: np.ndarray, rate: np.ndarray, t: float, steps: int = CE_STEPS) -> np.ndarray:
    """Logits after time ``t`` of the cross-entropy gradient flow with a per-sample scalar kernel.

    dF_i/dt = -rate_i (softmax(F_i) - Y_i), integrated with ``steps`` classical RK4 steps.

    Args:
        f0: initial logits, shape (N, K), float64; y: one-hot labels (N, K); rate: eta * lambda_k(i), shape (N,).
    Returns:
        F_t, shape (N, K), float64.
    """
    h = t / steps
    r = rate[:, None]

    def velocity(f):
        return -r * (softmax_rows(f, axis=1) - y)

    f = f0.copy()
    for _ in range(steps):
        k1 = velocity(f)
        k2 = velocity(f + 0.5 * h * k1)
        k3 = velocity(f + 0.5 * h * k2)
        k4 = velocity(f + h * k3)
        f = f + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return f


def platt_fit(f: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid P(y=1 | f) = 1 / (1 + exp(A f + B)), fitted by maximum likelihood.

    Source: J. Platt, "Probabilistic outputs for support vector machines", 1999; targets
    (N+ + 1)/(N+ + 2) and 1/(N- + 2) as in Lin, Lin & Weng, Machine Learning 68 (2007).
    Returns (A, B).
    """
    n_pos = float(positive.sum())
    n_neg = float(positive.size - n_pos)
    target = np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def nll(params):
        a, b = params
        u = a * f + b
        # -[t log p + (1-t) log(1-p)] with p = expit(-u): log p = -logaddexp(0, u), log(1-p) = -logaddexp(0, -u)
        loss = target * np.logaddexp(0.0, u) + (1.0 - target) * np.logaddexp(0.0, -u)
        p = expit(-u)
        g = target - p  # d loss / d u
        return loss.sum(), np.array([(g * f).sum(), g.sum()])

    b0 = math.log((n_neg + 1.0) / (n_pos + 1.0))
    res = minimize(nll, np.array([0.0, b0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def source_initial_state(source_logits: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """P0 from the model's own source head, as in LEEP (Nguyen et al., ICML 2020, Eq. 1-2).

    P0(y|x_i) = sum_z Phat(y|z) softmax(S_i)_z, with the empirical joint Phat(y, z) = mean_i 1[y_i=y] softmax(S_i)_z.

    Args:
        source_logits: S, shape (N, Cs), float64.
    Returns:
        shape (N, K), float64, rows on the simplex, floored at PROB_FLOOR and renormalised.
    """
    theta = softmax_rows(source_logits, axis=1)
    onehot = np.eye(n_classes)[codes]
    joint = onehot.T @ theta / codes.shape[0]  # (K, Cs)
    marginal = joint.sum(axis=0, keepdims=True)
    conditional = joint / np.maximum(marginal, np.finfo(float).tiny)  # Phat(y|z), (K, Cs)
    p0 = np.maximum(theta @ conditional.T, PROB_FLOOR)
    return p0 / p0.sum(axis=1, keepdims=True)


# --- tangent kernel ------------------------------------------------------------------------------


def random_head(in_dim: int, n_classes: int, widths: tuple[int, ...], *, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The random MLP head in_dim -> widths... -> n_classes as a list of (W, b) per dense layer.

    W has shape (fan_out, fan_in), float64, drawn N(0, 2 / fan_in) (Kaiming-normal, fan-in, ReLU gain);
    b is zero. Deterministic for a given seed (numpy's default generator).
    """
    rng = np.random.default_rng(seed)
    dims = (in_dim, *widths, n_classes)
    layers = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        w = rng.standard_normal((fan_out, fan_in)) * math.sqrt(2.0 / fan_in)
        layers.append((w, np.zeros(fan_out)))
    return layers


def kernel_diagonal(z: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per-sample squared gradient norm ||grad_theta sum_j h_j(z_u)||^2 of a ReLU MLP head, in closed form.

    This is the diagonal Phi[u, u] of the tangent kernel of the summed logits (docs/method.md, step 3).
    For a dense layer y = W a + b with back-propagated signal delta = d(sum_j h_j)/dy, the layer's
    parameters contribute ||delta||^2 (||a||^2 + 1) (the outer product delta a^T plus the bias).

    Args:
        z: head inputs, shape (n, D), float64.
        layers: [(W, b), ...] as from :func:`random_head`; ReLU between layers, none after the last.
    Returns:
        shape (n,), float64, >= 0.
    """
    acts = [z]
    pres = []
    a = z
    for i, (w, b) in enumerate(layers):
        pre = a @ w.T + b
        if i < len(layers) - 1:
            pres.append(pre)
            a = np.maximum(pre, 0.0)
            acts.append(a)
    delta = np.ones((z.shape[0], layers[-1][0].shape[0]))
    total = np.zeros(z.shape[0])
    for i in range(len(layers) - 1, -1, -1):
        a_in = acts[i]
        total += (delta * delta).sum(axis=1) * ((a_in * a_in).sum(axis=1) + 1.0)
        if i > 0:
            delta = (delta @ layers[i][0]) * (pres[i - 1] > 0)
    return total


def expected_kernel_diagonal(z: np.ndarray, n_classes: int, widths: tuple[int, ...]) -> np.ndarray:
    """Expectation of :func:`kernel_diagonal` over the random head's draw (:func:`random_head`), in closed form.

    For a ReLU MLP D = d_0 -> d_1 -> ... -> d_L -> K with Kaiming-normal fan-in weights N(0, 2 / fan_in)
    and zero biases, in the usual independence approximation of wide networks (the back-propagated
    signal independent of the forward ReLU masks): the forward pass keeps the mean squared activation,
    E ||a_l||^2 = (d_l / D) ||z||^2, and the backward pass keeps E ||delta_l||^2 = K (each layer's
    Kaiming gain 2 cancels the ReLU's half). Summing the per-layer terms ||delta_l||^2 (||a_l||^2 + 1)
    of :func:`kernel_diagonal`:

        E Phi(z, z) = K * ( (sum_l d_l) / D * ||z||^2 + (L + 1) ),   sum over l = 0..L, d_0 = D.

    So the mean kernel eigenvalue of a class follows its mean squared feature norm (the study's
    Pearson 0.997, docs/benchmarks.md), and the head's only role is this affine map.

    Args:
        z: head inputs, shape (n, D), float64; n_classes: K; widths: the hidden widths (d_1..d_L).
    Returns:
        shape (n,), float64, > 0.
    """
    dims = (z.shape[1], *widths)
    slope = sum(dims) / z.shape[1]
    return n_classes * (slope * np.einsum("ij,ij->i", z, z) + len(dims))


#: Reference inputs of ``eta="reference"``.
REFERENCE_SAMPLES = 256


def reference_kernel(in_dim: int, n_classes: int, widths: tuple[int, ...], *, n_heads: int = 1, seed: int = 0) -> float:
    """Mean kernel diagonal of the random head(s) on ``REFERENCE_SAMPLES`` inputs drawn N(0, I/in_dim)
    (squared norm 1 on average) with a fixed generator: the kernel's scale for unit-norm inputs.
    Returns a float > 0."""
    g = np.random.default_rng(2024).standard_normal((REFERENCE_SAMPLES, in_dim)) / math.sqrt(in_dim)
    total = 0.0
    for h in range(n_heads):
        total += float(kernel_diagonal(g, random_head(in_dim, n_classes, widths, seed=seed + h)).mean())
    return total / n_heads


def class_kernel_means(
    z: np.ndarray, codes: np.ndarray, n_classes: int, layers, *, n_per_class: int, seed: int
) -> np.ndarray:
    """lambda_k = trace(Phi_k) / n = mean over n sampled members of class k of the kernel diagonal.

    The n = min(n_per_class, class size) members are drawn without replacement with a generator
    seeded by ``seed`` alone, so the choice depends only on the class's size (relabel-invariant).
    Returns shape (K,), float64.
    """
    lambdas = np.empty(n_classes)
    for k in range(n_classes):
        idx = np.nonzero(codes == k)[0]
        take = min(n_per_class, idx.size)
        pick = np.sort(np.random.default_rng(seed).choice(idx.size, size=take, replace=False))
        lambdas[k] = kernel_diagonal(z[idx[pick]], layers).mean()
    return lambdas
