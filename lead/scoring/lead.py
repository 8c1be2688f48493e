"""LEAD: transferability from the evolution of logits under fine-tuning.

Source: Z. Hu, X. Li, S. Tang, J. Liu, Y. Hu, L.-Y. Duan, "LEAD: Exploring Logit Space Evolution
for Model Selection", CVPR 2024. The project's reading of the method, with every open knob, is in
docs/method.md; equation numbers below refer to the steps listed there. Every knob lives in one frozen
dataclass, :class:`LeadParams`: the score function, the method registry's ``params`` and the MLflow
params of a ranking all read it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from lead.errors import InputError
from lead.scoring._validate import check_inputs, check_matrix, global_scale
from lead.scoring._validate import standardize as zscore

#: Initial-state estimators accepted by ``initial`` (docs/method.md, "initial").
INITIAL_STATES = ("ridge", "logreg", "svm", "svm_insample", "source")
#: How a class's mean tangent-kernel eigenvalue is obtained (docs/method.md, "kernel").
KERNELS = ("expected", "sampled")
#: Feature scalings before every step (docs/method.md, "normalize").
NORMALIZATIONS = ("global", "none")
#: Losses whose gradient flow is followed (docs/method.md, "loss").
LOSSES = ("mse", "ce")
#: Ridge penalty of ``initial="ridge"`` as a multiple of the mean eigenvalue of the training fold's centred
#: Gram matrix, lambda = alpha * trace(Zc^T Zc) / D (scale-free); chosen by the selection protocol of
#: docs/benchmarks.md over 0.001 ... 100 (docs/performance.md, "LEAD no slower than LogME").
RIDGE_ALPHA = 1.0
#: Bounds and stopping rule of the temperature fit of ``initial="ridge"`` (Newton on a concave function).
TEMPERATURE_BOUNDS = (1e-6, 1e4)
TEMPERATURE_MAX_ITER = 100
TEMPERATURE_TOL = 1e-9
#: Rows the temperature is fitted on, at most (an evenly spaced subset of larger inputs: one scalar needs few;
#: every target of the committed suites has fewer, so the selection protocol's numbers use every row).
TEMPERATURE_ROWS = 2048
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


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class LeadParams:
    """Every knob of LEAD, with its default: the one definition that :func:`lead_score`, the method
    registry (``get_method("lead").params``, :meth:`as_params`) and the MLflow params of a ranking use.

    Construction validates every field (``LeadParams(t=0)`` raises ``InputError``); ``head`` given as a
    list becomes a tuple. ``dataclasses.replace(params, knob=value)`` makes a variant.

    Attributes:
        initial: how the initial state P0 is estimated. ``"ridge"`` (default since issue #18): a
            least-squares linear probe of the one-hot labels (ridge regression with an unpenalised
            intercept, penalty ``ridge_alpha`` times the mean eigenvalue of the centred training Gram
            matrix), out-of-fold over ``min(5, smallest class)`` stratified folds, solved in closed form
            (one Gram matrix, one Cholesky solve per fold), its out-of-fold outputs R mapped to the simplex
            by temperature scaling, P0 = softmax(tau R) with tau maximising sum_i log P0_i[y_i] (Guo et al.,
            "On Calibration of Modern Neural Networks", ICML 2017); :func:`ridge_initial_state`.
            ``"logreg"`` (the default until issue #18): multinomial logistic regression (L-BFGS, C =
            ``logreg_c``), out-of-fold over the same folds; :func:`logreg_initial_state`.
            ``"svm"`` (the paper's reading): one-vs-rest linear SVM, Platt-calibrated, rows renormalised,
            out-of-fold. ``"svm_insample"``: the same SVM fitted and evaluated on all samples.
            ``"source"``: the model's own source logits mapped to the target classes as in LEEP,
            P0(y|x) = sum_z Phat(y|z) softmax(S)_z; needs ``logits``.
        t: fine-tuning "time", > 0; default 1.0 (the paper's sensitivity figure).
        n_per_class: samples per class that enter a sampled kernel estimate, >= 1; default 64 (paper).
        eta: step size of the gradient flow; ``"auto"`` (default) = 1 / mean_k lambda_k (the mean decay is
            then about exp(-t) for every model); ``"reference"`` = 1 / the same head's kernel on reference
            inputs N(0, I/D); or a float > 0.
        head: hidden widths of the random MLP head D -> head[0] -> ... -> K (ReLU, Kaiming-normal fan-in
            weights, zero biases); default (1024, 2048).
        standardize: z-score each feature dimension before the initial state and the head (default False).
        normalize: ``"global"`` (default): divide the features by their global scale sqrt(trace(Cov(Z)) / D)
            first, so the score is invariant to ``features * c`` (c > 0); ``"none"``: raw features.
        kernel: ``"expected"`` (default): lambda_k is the expectation of the random head's kernel diagonal
            over the head's draw, in closed form (:func:`expected_kernel_diagonal`); ``"sampled"``: the
            diagonal of ``n_heads`` sampled head(s), as in the paper.
        ridge_alpha: ridge penalty of ``initial="ridge"`` relative to the mean Gram eigenvalue, > 0;
            default ``RIDGE_ALPHA``.
        logreg_c: inverse regularisation strength C of ``initial="logreg"`` (> 0; default 100.0).
        softmax: if True score log_softmax(Fhat)[y] instead of log Fhat[y] (default False).
        seed: seed of the folds, a sampled head, its per-class sample and the SVM solver.
        n_heads: number of sampled heads (seeds seed, seed+1, ...) whose lambda_k are averaged; default 1.
        rescale: divide the features by sqrt(D) before the head (default False).
        loss: ``"mse"`` (default): the closed form of step 2; ``"ce"``: the cross-entropy gradient flow from
            F_0 = log P0, integrated with ``CE_STEPS`` RK4 steps.
    """

    initial: str = "ridge"
    t: float = 1.0
    n_per_class: int = 64
    eta: float | str = "auto"
    head: tuple[int, ...] = (1024, 2048)
    standardize: bool = False
    normalize: str = "global"
    kernel: str = "expected"
    ridge_alpha: float = RIDGE_ALPHA
    logreg_c: float = LOGREG_C
    softmax: bool = False
    seed: int = 0
    n_heads: int = 1
    rescale: bool = False
    loss: str = "mse"

    def __post_init__(self) -> None:
        where = "lead_score"
        if isinstance(self.head, list):
            object.__setattr__(self, "head", tuple(self.head))
        if self.initial not in INITIAL_STATES:
            raise InputError(f"{where}: initial must be one of {INITIAL_STATES}; got {self.initial!r}.")
        if not (_is_real(self.t) and self.t > 0):
            raise InputError(f"{where}: t must be a finite float > 0; got {self.t!r}.")
        if not (isinstance(self.n_per_class, (int, np.integer)) and not isinstance(self.n_per_class, bool) and self.n_per_class >= 1):
            raise InputError(f"{where}: n_per_class must be an int >= 1; got {self.n_per_class!r}.")
        if not (self.eta in ("auto", "reference") or (_is_real(self.eta) and self.eta > 0)):
            raise InputError(f"{where}: eta must be 'auto', 'reference' or a finite float > 0; got {self.eta!r}.")
        if not (isinstance(self.head, tuple) and len(self.head) >= 1
                and all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1 for w in self.head)):
            raise InputError(f"{where}: head must be a non-empty tuple of widths >= 1; got {self.head!r}.")
        if not isinstance(self.standardize, bool):
            raise InputError(f"{where}: standardize must be True or False; got {self.standardize!r}.")
        if self.normalize not in NORMALIZATIONS:
            raise InputError(f"{where}: normalize must be one of {NORMALIZATIONS}; got {self.normalize!r}.")
        if self.kernel not in KERNELS:
            raise InputError(f"{where}: kernel must be one of {KERNELS}; got {self.kernel!r}.")
        for name in ("ridge_alpha", "logreg_c"):
            v = getattr(self, name)
            if not (_is_real(v) and v > 0):
                raise InputError(f"{where}: {name} must be a finite float > 0; got {v!r}.")
        if not isinstance(self.softmax, bool):
            raise InputError(f"{where}: softmax must be True or False; got {self.softmax!r}.")
        if not (isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool) and self.seed >= 0):
            raise InputError(f"{where}: seed must be an int >= 0; got {self.seed!r}.")
        if not (isinstance(self.n_heads, (int, np.integer)) and not isinstance(self.n_heads, bool) and self.n_heads >= 1):
            raise InputError(f"{where}: n_heads must be an int >= 1; got {self.n_heads!r}.")
        if not isinstance(self.rescale, bool):
            raise InputError(f"{where}: rescale must be True or False; got {self.rescale!r}.")
        if self.loss not in LOSSES:
            raise InputError(f"{where}: loss must be one of {LOSSES}; got {self.loss!r}.")

    def as_params(self) -> dict:
        """The knobs as a plain dict in field order (the registry's ``params``, logged as MLflow params)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_knobs(cls, params: LeadParams | None = None, **knobs) -> LeadParams:
        """``params`` (default: the defaults) with ``knobs`` replaced.

        Raises:
            InputError: a knob that is not a field (the message lists them), or a value out of range.
        """
        base = cls() if params is None else params
        if not isinstance(base, cls):
            raise InputError(f"lead_score: params must be a LeadParams; got {type(base).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(knobs) - names)
        if unknown:
            raise InputError(f"lead_score: unknown knob(s) {unknown}; the knobs are {sorted(names)}.")
        return dataclasses.replace(base, **knobs) if knobs else base


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
        params: the knobs used.
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
    params: LeadParams = LeadParams()
    per_sample: np.ndarray | None = None


def lead_score(features, labels: Sequence[Hashable] | np.ndarray, params: LeadParams | None = None, *,
               class_kernel=None, logits=None, **knobs) -> float:
    """LEAD transferability score: the log-likelihood of the labels after the logits evolve. Higher is better.

    Fine-tuning moves the logits toward the labels along the gradient flow of the loss. With the
    tangent kernel held constant and a squared loss the flow has a closed form, an interpolation
    from the initial state P0 to the labels at a speed set by the kernel. LEAD replaces the kernel by
    one scalar per class (its mean eigenvalue for an MLP head on the frozen features), jumps to
    time ``t`` and scores how likely the true labels are there. Values are in nats (<= 0); they compare
    models on one dataset, not across datasets.

    Source: Hu et al., "LEAD: Exploring Logit Space Evolution for Model Selection", CVPR 2024,
    the chain of docs/method.md: Phi = J J^T (step 1); F_t = (I - exp(-eta Phi t)) Y + exp(-eta Phi t) F_0
    (step 2); lambda_k = trace(Phi_k) / n (step 3); Fhat_i = (1 - d_k) Y_i + d_k P0_i (step 4);
    score = mean_i log Fhat_i[y_i] (step 5). Deviations: the paper's open choices are the knobs of
    :class:`LeadParams`.

    Args:
        features: pre-logit features Z, shape (N, D), float; computed in float64.
        labels: class of each sample, shape (N,), any hashable names; at least two classes.
        params: the knobs, a :class:`LeadParams` (default: its defaults).
        class_kernel: precomputed lambda_k, shape (K,), float > 0, in the sorted order of the class names
            (e.g. the kernel over the backbone's last block and the head, ``lead.kernels``); replaces the
            head's kernel (``head``, ``n_heads``, ``n_per_class`` are then unused).
        logits: source-head logits S, shape (N, Cs), float; only for ``initial="source"``.
        **knobs: fields of :class:`LeadParams` overriding ``params`` (``lead_score(x, y, initial="logreg")``).
    Returns:
        float, in nats, <= 0; finite.
    Raises:
        InputError: non-finite or misshapen features/logits, fewer than two classes, a class with one
            sample under an out-of-fold initial state, an unknown knob or one out of range, or
            ``initial="source"`` without logits.
    Notes:
        No Jacobian and no N x N matrix is built (but for D > N, where the ridge probe works in the
        samples' span through the N x N Gram matrix). Cost of the default: O(N D min(N, D) + min(N, D)^3)
        for the probe (the same order as LogME's one Gram matrix and eigendecomposition), O(N D) for the
        kernel, O(N K) for the rest. Samples are put in a canonical order first, so the score is invariant
        to sample order and class names.
    """
    return _lead(features, labels, LeadParams.from_knobs(params, **knobs), class_kernel, logits, score_only=True)


def lead_details(features, labels, params: LeadParams | None = None, *, class_kernel=None, logits=None,
                 **knobs) -> LeadResult:
    """Like :func:`lead_score` (same arguments and errors) but returns every intermediate as a :class:`LeadResult`."""
    return _lead(features, labels, LeadParams.from_knobs(params, **knobs), class_kernel, logits, score_only=False)


def _lead(features, labels, p: LeadParams, class_kernel, logits, *, score_only: bool):
    """The score (``score_only``: only the float, without the N x K evolved state) or every intermediate."""
    where = "lead_score"
    # The ridge probe is unchanged by a constant factor on the features: on its fast path the global scale
    # only divides the squared norms the kernel needs, and the caller's float32/float64 features are read as
    # they are, in blocks, into the probe's own float64 buffer (no N x D float64 copy, no pass to rescale).
    fast = p.initial == "ridge" and not p.standardize and p.kernel == "expected"
    # the fast path checks finiteness in its own first pass (_projection), not in a pass of its own
    x, enc = check_inputs(features, labels, where=where, copy=not fast, finite=not fast)
    # Canonical order: by a fixed random projection of the raw features (ties, i.e. identical rows, by
    # class). It does not depend on the caller's order nor on the class names, so neither does any
    # later step: folds, the kernel's per-class sample and the SVM's coordinate order.
    direction = np.random.default_rng(12345).standard_normal(x.shape[1])
    if fast:
        proj = _projection(x, direction)
        if not np.isfinite(proj).all():  # a NaN or Inf in a row makes its projection NaN or Inf
            check_matrix(x, name="features", where=where, copy=False)  # raises for NaN/Inf (not for an overflow)
    if p.normalize == "global" and not fast:
        x /= global_scale(x)  # x is check_inputs' own copy
    if class_kernel is not None:
        class_kernel = np.asarray(class_kernel, dtype=np.float64)
        if class_kernel.shape != (enc.n_classes,) or not np.all(np.isfinite(class_kernel)) or np.any(class_kernel <= 0):
            raise InputError(
                f"{where}: class_kernel must be {enc.n_classes} finite values > 0 (one per class); got shape "
                f"{class_kernel.shape}."
            )
    n = x.shape[0]
    source = None
    if p.initial == "source":
        if logits is None:
            raise InputError(
                f"{where}: logits must be given for initial='source'; got None. "
                "Pass the model's source-head logits or use initial='svm'."
            )
        source = check_matrix(logits, name="logits", n_rows=n, where=where)
    if p.initial in ("ridge", "svm", "logreg") and enc.counts.min() < 2:
        small = [enc.classes[i] for i in np.nonzero(enc.counts < 2)[0]][:5]
        raise InputError(
            f"{where}: every class must have at least 2 samples for the out-of-fold initial state; got 1 for {small}. "
            "Add samples, drop the class, or use initial='svm_insample'."
        )

    if not fast:
        proj = x @ direction
    order = _canonical_order(proj, enc.codes)
    ys = enc.codes[order]
    k = enc.n_classes
    if fast:
        # the probe gathers its rows itself (one N x D copy fewer) and takes what the kernel needs, each class's mean
        # squared norm, and trace(Cov) / D (global_scale's square), from the gathered blocks; the score needs only
        # P0_i[y_i]
        zs = None
        p0, sq, var = _ridge_probe(x, ys, k, seed=p.seed, alpha=p.ridge_alpha, rows=order, mean=None,
                                   true_only=score_only and p.loss == "mse" and not p.softmax, norms=True)
        if p.normalize == "global" and var > 0 and math.isfinite(var):
            sq = sq / var
    else:
        xs = x[order]
        zs = zscore(xs) if p.standardize else xs
        sq = np.einsum("ij,ij->i", zs, zs)
        if p.initial == "source":
            p0 = source_initial_state(source[order], ys, k)
        elif p.initial == "ridge":
            p0 = ridge_initial_state(zs, ys, k, seed=p.seed, alpha=p.ridge_alpha)
        elif p.initial == "logreg":
            p0 = logreg_initial_state(zs, ys, k, seed=p.seed, c=p.logreg_c)
        else:
            p0 = svm_initial_state(zs, ys, k, out_of_fold=(p.initial == "svm"), seed=p.seed)

    d = x.shape[1]
    if class_kernel is not None:
        lambdas = class_kernel.copy()
    elif p.kernel == "expected" and fast:  # the probe gave each class's mean squared norm (the map is affine)
        lambdas = _expected_from_sq_norms(sq / d if p.rescale else sq, d, k, p.head)
    elif p.kernel == "expected":
        diag = _expected_from_sq_norms(sq / d if p.rescale else sq, d, k, p.head)
        lambdas = np.bincount(ys, weights=diag, minlength=k) / np.bincount(ys, minlength=k)
    else:
        zh = zs / math.sqrt(d) if p.rescale else zs
        lambdas = np.zeros(k)
        for h in range(p.n_heads):
            layers = random_head(d, k, p.head, seed=p.seed + h)
            lambdas += class_kernel_means(zh, ys, k, layers, n_per_class=p.n_per_class, seed=p.seed)
        lambdas /= p.n_heads

    if p.eta == "auto":
        eta_value = 1.0 / float(lambdas.mean())
    elif p.eta == "reference":
        if class_kernel is not None:
            raise InputError(f"{where}: eta='reference' needs the random-head kernel; got class_kernel. Pass a float eta.")
        eta_value = 1.0 / reference_kernel(d, k, p.head, n_heads=p.n_heads, seed=p.seed)
    else:
        eta_value = float(p.eta)
    decay = np.exp(-eta_value * lambdas * p.t)
    if score_only and p.loss == "mse" and not p.softmax:
        # step 5 needs only the true class's entry: log Fhat_i[y_i] = log((1 - d_k) + d_k P0_i[y_i]), the same
        # arithmetic as evolve() on that entry
        d = np.exp(-eta_value * lambdas * p.t)[ys]
        p0y = p0 if fast else p0[np.arange(n), ys]  # the fast path's probe returned P0_i[y_i] only
        return float(np.log((1.0 - d) * 1.0 + d * p0y).mean())
    per_sample, fhat = evolve(p0, ys, lambdas, eta_value, p.t, loss=p.loss, softmax=p.softmax)
    score = float(per_sample.mean())
    if score_only:
        return score

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
        params=p,
        per_sample=per_sample[inverse],
    )


def _canonical_order(proj: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``np.lexsort((codes, proj))``: positions by projection, equal projections (identical rows) by class, then
    by position; one sort of ``proj`` unless two projections are equal. Distinct keys have one sorted order, so the
    sort need not be stable (numpy's default, SIMD where the CPU has it: 4x its stable sort at N = 50,000); ties
    go to the lexsort."""
    order = np.argsort(proj)
    ranked = proj[order]
    if (ranked[1:] == ranked[:-1]).any():
        order = np.lexsort((codes, proj))
    return order


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
    from scipy.special import log_softmax, softmax as softmax_rows  # lazy: a cached `lead rank` imports the registry, not scipy
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


# --- initial state -----------------------------------------------------------------------------


def stratified_folds(codes: np.ndarray, n_classes: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold index of each sample, shape (N,), int64: within each class, a seeded permutation of its
    positions is dealt round-robin over ``n_folds`` folds. Depends only on class sizes and ``seed``."""
    folds = np.empty(codes.shape[0], dtype=np.int64)
    by_class = _stable_argsort(codes, n_classes)  # each class's positions, in increasing order
    ends = np.cumsum(np.bincount(codes, minlength=n_classes))
    dealt = {}  # the deal depends only on the class size (and seed): one permutation per distinct size
    for k in range(n_classes):
        size = int(ends[k] - (ends[k - 1] if k else 0))
        if size not in dealt:
            dealt[size] = np.random.default_rng(seed).permutation(size) % n_folds
        folds[by_class[ends[k] - size:ends[k]]] = dealt[size]
    return folds


def _stable_argsort(keys: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for integer keys in [0, bound): as int16 when they fit, which numpy sorts
    by radix (5x its stable sort of int64 at N = 50,000); the same permutation (a stable sort has one result)."""
    return np.argsort(keys.astype(np.int16) if bound <= np.iinfo(np.int16).max else keys, kind="stable")


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
    from scipy.special import expit  # lazy: a cached `lead rank` imports the registry, not scipy
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


#: Values per block (rows x D) of the passes over the features that touch each row several times (about
#: 2 MB of float64, so a block stays in cache between the operations on it).
BLOCK_VALUES = 1 << 18
#: Rows, at most, whose mean centres the probe's copy of the features (an evenly spaced subset, in the order the
#: probe is given: centring is for conditioning only, any centre gives the same fit in exact arithmetic).
CENTRE_ROWS = 1024


def _projection(x: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """x @ direction, computed in float64 (x: (N, D), float32 or float64), in blocks that are converted in cache."""
    from scipy.linalg import blas

    n = x.shape[0]
    rows = max(1, BLOCK_VALUES // x.shape[1])
    proj = np.empty(n)
    for a in range(0, n, rows):
        proj[a:a + rows] = blas.dgemv(1.0, x[a:a + rows].astype(np.float64, copy=False).T, direction, trans=1)
    return proj


def _probe_dtype(z: np.ndarray, n: int) -> type:
    """The precision of the probe's copy of the features and of its two large products (the fold Gram matrices and
    the out-of-fold outputs): float32 when the features are float32 (or narrower) and D <= N, else float64."""
    return np.float32 if z.dtype.itemsize <= 4 and z.shape[1] <= n else np.float64


def ridge_initial_state(z: np.ndarray, codes: np.ndarray, n_classes: int, *, seed: int, alpha: float = RIDGE_ALPHA,
                        rows: np.ndarray | None = None, mean: np.ndarray | None = None) -> np.ndarray:
    """P0 from an out-of-fold least-squares linear probe, calibrated by temperature scaling (``initial="ridge"``).

    For each of ``min(5, smallest class)`` stratified folds (:func:`stratified_folds`), a ridge regression
    of the one-hot labels Y on the features, with an unpenalised intercept, is fitted on the other folds,

        W = (Zc^T Zc + lambda I)^-1 Zc^T Yc,   lambda = alpha * trace(Zc^T Zc) / D,

    (Zc, Yc the training rows centred on their means; Hoerl & Kennard, Technometrics 12, 1970), and
    predicts the held-out fold: R_i = (z_i - mean) W + mean(Y). The out-of-fold outputs are mapped to the
    simplex by temperature scaling, P0 = softmax(tau R) with the one scalar tau > 0 that maximises
    sum_i log P0_i[y_i] (Guo et al., ICML 2017; a concave problem, solved by Newton's method in
    :func:`fit_temperature`).

    Closed form: the per-fold Gram matrices are computed once (their sum is the full one) and each fold's
    training Gram is the full one minus its own, so the cost is one pass over the data, O(N D^2), plus
    one Cholesky solve per fold, O(D^3), the same order as LogME's. When D > N the probe works in the
    samples' span (coordinates V sqrt(w) from the eigendecomposition of the N x N centred Gram matrix),
    which leaves every inner product, hence the fit, unchanged (the ridge solution with an intercept
    depends on the features only through their inner products).

    Args:
        z: features, shape (M, D), float64 or float32 (float32 with D <= N: the two large products in float32,
            :func:`_ridge_probe`); row ``rows[i]`` (or ``i`` when ``rows`` is None) is sample i.
        codes: labels 0..K-1 of the samples, shape (N,), every class with >= 2 samples.
        n_classes: K.
        seed: seed of the folds.
        alpha: the ridge penalty relative to the mean eigenvalue of the training Gram matrix, > 0; the
            result does not change when ``z`` is multiplied by a constant.
        rows: optional index array, shape (N,), that gathers the samples from ``z`` (saves a copy).
        mean: optional centre of the copy (shape (D,)); default: the mean of an evenly spaced subset of at most
            ``CENTRE_ROWS`` samples (any centre gives the same fit in exact arithmetic).
    Returns:
        shape (N, K), float64, rows on the simplex, floored at PROB_FLOOR and renormalised.
    """
    return _ridge_probe(z, codes, n_classes, seed=seed, alpha=alpha, rows=rows, mean=mean)


def _ridge_probe(z: np.ndarray, codes: np.ndarray, n_classes: int, *, seed: int, alpha: float,
                 rows: np.ndarray | None, mean: np.ndarray | None, true_only: bool = False, norms: bool = False):
    """:func:`ridge_initial_state` (same arguments); with ``true_only``, P0_i[y_i] alone, shape (N,) (all that
    LEAD's score needs: the last normalisation and the scatter of the other N (K - 1) entries are skipped).

    With ``norms``, returns ``(p0, sq, var)``: also each class's mean squared norm, mean_{i in k} ||z_i||^2, shape
    (K,), float64, and trace(Cov(z)) / D (the square of :func:`global_scale`), both taken from the gathered blocks
    (no pass of their own).

    Precision (:func:`_probe_dtype`): with float32 features and D <= N, the centred copy is float32 (the rounding of
    a centred value is at most that of the feature it comes from) and the fold Gram matrices and the out-of-fold
    products are float32 BLAS calls (``ssyrk``, ``sgemm``: 1.6x and 2x the speed of their float64 counterparts);
    everything else (the Gram totals, the class sums, the Cholesky solves, the temperature, the softmax) is float64.

    One BLAS: every product here (and in :func:`_projection` and :func:`_add_run_sums`) is a call into SciPy's BLAS,
    none into NumPy's. Each wheel bundles its own OpenBLAS with its own thread pool, and a pool's threads spin for a
    while after each call: alternating between the two left one pool spinning on the cores the other was using.
    With two threads LEAD took 1.1-1.8x LogME's time at D = 512, K = 100 (0.53-0.91x single-threaded); with
    one BLAS, 0.71-0.93x (docs/performance.md, Target 3, fifth round).
    """
    from scipy.linalg import blas, lapack  # lazy: a cached `lead rank` imports the registry, not scipy
    n = codes.shape[0]
    d = z.shape[1]
    n_folds = int(min(N_FOLDS, np.bincount(codes, minlength=n_classes).min()))
    folds = stratified_folds(codes, n_classes, n_folds, seed)
    # positions grouped by fold, and by class within a fold: each fold is one slice of rows, each (fold, class)
    # one run of it, run f * K + k in rows starts[f * K + k] : starts[f * K + k + 1] (round-robin dealing
    # puts every class in every fold)
    by_fold = _stable_argsort(folds * n_classes + codes, n_folds * n_classes)  # = np.lexsort((codes, folds))
    starts = np.searchsorted((folds * n_classes + codes)[by_fold], np.arange(n_folds * n_classes + 1))
    bounds = starts[::n_classes]
    # a centred copy, gathered in blocks (centring is for conditioning only: the intercept is fitted per fold, so
    # the centre need not be the exact mean: the mean of an evenly spaced subset, in the given order, which on
    # the score's path is the canonical one, so the centre does not depend on the caller's order either)
    gather = by_fold if rows is None else rows[by_fold]
    dtype = _probe_dtype(z, n)
    if mean is None:
        every = -(-n // CENTRE_ROWS)
        mean = z[np.arange(0, n, every) if rows is None else rows[::every]].mean(axis=0, dtype=np.float64)
    centre = np.asarray(mean, dtype=dtype)  # the centre subtracted (rounded to float32: still a centre)
    zf = np.empty((n, d), dtype=dtype)
    run_sums = np.zeros((n_folds * n_classes, min(n, d)))  # Z^T Y per fold, transposed: row f * K + k
    # with norms, class sums of the centred rows in feature coordinates (when D > N, run_sums are taken later, in
    # the samples' span)
    class_sums = run_sums if d <= n else np.zeros((n_folds * n_classes, d)) if norms else None
    sqc = np.empty(n) if norms else None  # ||z_i - c||^2, fold order
    step = max(1, BLOCK_VALUES // d)
    for a in range(0, n, step):
        block = zf[a:a + step]
        block[...] = z[gather[a:a + step]]  # float32 rows are converted exactly, in cache (np.take: 1.3x slower)
        block -= centre  # (5% faster than one np.subtract from float32, the same values)
        if norms:
            sqc[a:a + step] = np.einsum("ij,ij->i", block, block)  # in the copy's precision
        if class_sums is not None:
            _add_run_sums(block, a, starts, class_sums)
    if norms:
        # sum_{i in k} ||z_i||^2 = sum_{i in k} ||z_i - c||^2 + 2 c . sum_{i in k} (z_i - c) + n_k ||c||^2
        centre64 = centre.astype(np.float64)
        counts_k = np.bincount(codes, minlength=n_classes)
        by_class = class_sums.reshape(n_folds, n_classes, -1).sum(axis=0)  # (K, D)
        sq = (np.bincount(codes[by_fold], weights=sqc, minlength=n_classes) + 2.0 * blas.dgemv(1.0, by_class.T, centre64, trans=1)
              + counts_k * float(centre64 @ centre64)) / counts_k
        zbar = by_class.sum(axis=0) / n  # the mean of the centred rows
        var = (float(sqc.sum()) / n - float(zbar @ zbar)) / d  # trace(Cov) / D
    if d > n:
        from scipy.linalg import eigh

        # the N x N Gram matrix Zf Zf^T by syrk on the Fortran view (its lower triangle, which eigh reads)
        w, v = eigh((blas.ssyrk if dtype == np.float32 else blas.dsyrk)(1.0, zf.T, trans=1, lower=1), lower=True,
                    overwrite_a=True, check_finite=False)
        zf = v * np.sqrt(np.maximum(w, 0.0))
        _add_run_sums(zf, 0, starts, run_sums)
    slices = [slice(int(bounds[f]), int(bounds[f + 1])) for f in range(n_folds)]
    # Zf^T Zf of each fold by BLAS syrk on the Fortran view of its rows (no copy): the lower triangle only, in a
    # Fortran-ordered (D, D) array, which is all the Cholesky factorisation below reads (the upper triangle
    # stays zero; numpy's `zf[s].T @ zf[s]` computes the same triangle and then copies it over)
    syrk = blas.ssyrk if dtype == np.float32 else blas.dsyrk
    gemm = blas.sgemm if dtype == np.float32 else blas.dgemm
    grams = [syrk(1.0, zf[s].T, trans=0, lower=1) for s in slices]  # their sum is the full Gram
    cross = run_sums.reshape(n_folds, n_classes, -1)  # (fold, K, D): Y^T Z of each fold
    counts = np.diff(starts).reshape(n_folds, n_classes)  # Y^T 1 of each fold
    sums = cross.sum(axis=1)  # 1^T Z of each fold
    g_all = sum(g.astype(np.float64, copy=False) for g in grams)  # summed in float64 (Fortran order kept)
    c_all, s_all, y_all = cross.sum(axis=0), sums.sum(axis=0), counts.sum(axis=0)
    out = np.empty((n, n_classes))
    gram, rhs_t = np.empty_like(g_all), np.empty_like(c_all)  # reused across folds (no fresh pages per fold)
    outer_t = np.empty_like(c_all)
    for f, s in enumerate(slices):
        n_train = n - (s.stop - s.start)
        mean = (s_all - sums[f]) / n_train
        ybar = (y_all - counts[f]) / n_train
        # gram = g_all - grams[f] - n_train * outer(mean, mean) (its lower triangle is the training Gram matrix;
        # Fortran order; the rank-1 update of that triangle by BLAS syr, one pass over half the matrix);
        # rhs_t = c_all - cross[f] - n_train * outer(ybar, mean), shape (K, D): Zc^T Yc transposed
        np.subtract(g_all, grams[f], out=gram)
        gram = blas.dsyr(-float(n_train), mean, lower=1, a=gram, overwrite_a=1)
        np.subtract(c_all, cross[f], out=rhs_t)
        rhs_t -= np.multiply(np.multiply.outer(ybar, mean, out=outer_t), n_train, out=outer_t)
        trace = float(np.trace(gram))
        lam = alpha * trace / d if trace > 0 else 1.0  # constant features: W = 0, P0 from the class priors
        gram.flat[:: gram.shape[0] + 1] += lam
        # LAPACK on Fortran-ordered arrays (gram, and the view rhs_t.T): no transposed copies
        chol, info = lapack.dpotrf(gram, lower=1, overwrite_a=1, clean=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"ridge probe: the training Gram matrix of fold {f} is not positive definite (dpotrf info {info}).")
        w, info = lapack.dpotrs(chol, rhs_t.T, lower=1, overwrite_b=1)  # (D, K)
        if info != 0:
            raise np.linalg.LinAlgError(f"ridge probe: dpotrs failed on fold {f} (info {info}).")
        out[s] = gemm(1.0, w.astype(dtype, copy=False), zf[s].T, trans_a=1).T  # (W^T Zf^T)^T on Fortran views: no copy
        out[s] += ybar - blas.dgemv(1.0, w, mean, trans=1)  # mean @ w
    tau = fit_temperature(out, codes[by_fold])
    # softmax(tau R), floored and renormalised, in place (N x K values: at K = 100 every pass counts; the
    # two normalisations stay as they are: where the probe separates the classes, 1 - P0_i[y_i] is ~1e-10 and
    # the score carries those last bits), in row blocks that stay in cache across the passes, each scattered
    # back to canonical order (with true_only, P0_i[y_i] alone: the same arithmetic on that entry)
    p0 = np.empty(n) if true_only else np.empty_like(out)
    codes_f = codes[by_fold]
    step = max(1, BLOCK_VALUES // (4 * n_classes))
    for a in range(0, n, step):
        block = out[a:a + step]
        block -= block.max(axis=1, keepdims=True)
        block *= tau
        np.exp(block, out=block)
        block /= block.sum(axis=1, keepdims=True)
        np.maximum(block, PROB_FLOOR, out=block)
        if true_only:
            p0[by_fold[a:a + step]] = block[np.arange(block.shape[0]), codes_f[a:a + step]] / block.sum(axis=1)
        else:
            block /= block.sum(axis=1, keepdims=True)
            p0[by_fold[a:a + step]] = block
    return (p0, sq, var) if norms else p0


#: A row of ones for the column sums of :func:`_add_run_sums` (a gathered block has at most this many rows), in
#: each precision of the probe's copy.
ONES = {np.dtype(np.float64): np.ones(BLOCK_VALUES), np.dtype(np.float32): np.ones(BLOCK_VALUES, dtype=np.float32)}


def _add_run_sums(block: np.ndarray, first: int, starts: np.ndarray, sums: np.ndarray) -> None:
    """Add the column sums of each run of rows in ``block`` to ``sums`` (in place).

    Args:
        block: rows ``first : first + len(block)`` of a matrix whose rows are grouped in runs, float64 or float32 (B, D).
        first: the position of the block's first row.
        starts: run r covers rows starts[r] : starts[r + 1], shape (R + 1,), non-decreasing (empty runs allowed).
        sums: shape (R, D), float64; row r receives the sum of run r's rows in the block.
    """
    from scipy.linalg import blas

    end = first + block.shape[0]
    lo, hi = np.searchsorted(starts, [first, end], side="right")
    bounds = starts[lo - 1:hi + 1].tolist()  # the runs that meet the block (Python ints: a short loop)
    for r, a, b in zip(range(lo - 1, hi), bounds[:-1], bounds[1:]):
        a, b = max(a, first) - first, min(b, end) - first
        if b > a:
            ones = ONES[block.dtype]
            ones = ones[:b - a] if b - a <= ones.size else np.ones(b - a, dtype=block.dtype)
            gemv = blas.sgemv if block.dtype == np.float32 else blas.dgemv
            sums[r] += gemv(1.0, block[a:b].T, ones)  # BLAS gemv on the Fortran view: 2x numpy's sum(axis=0)


def fit_temperature(r: np.ndarray, codes: np.ndarray) -> float:
    """The inverse temperature tau > 0 maximising L(tau) = sum_i log softmax(tau r_i)[y_i] (temperature scaling).

    L is concave in tau (L'' = -sum_i Var_{softmax(tau r_i)}(r_i) <= 0), so Newton's method with steps
    limited to a factor 10 either way converges to the maximiser. It stops when the step's predicted gain
    L'^2 / (2 |L''|) is below ``TEMPERATURE_TOL`` nats per sample, or at ``TEMPERATURE_BOUNDS`` (the upper
    bound is approached when the outputs separate the classes: L then increases without bound and the
    gain criterion ends the climb once the mean -log P0_i[y_i] is about that small). One scalar needs
    few samples: with more than ``TEMPERATURE_ROWS`` rows, every ceil(N / TEMPERATURE_ROWS)-th row is used.

    Args:
        r: scores, shape (N, K), float64; codes: labels 0..K-1, shape (N,).
    Returns:
        float in TEMPERATURE_BOUNDS.
    """
    lo, hi = TEMPERATURE_BOUNDS
    every = -(-r.shape[0] // TEMPERATURE_ROWS)
    if every > 1:
        r, codes = r[::every], codes[::every]
    n = r.shape[0]
    # (K, n): the per-row sums below become K contiguous vector additions (2x faster than row reductions)
    rc = (r - r.max(axis=1, keepdims=True)).T.copy()  # <= 0: exp(tau rc) never overflows for tau > 0
    rc2 = rc * rc
    ry = rc[codes, np.arange(n)]
    e = np.empty_like(rc)
    tau = 1.0
    for _ in range(TEMPERATURE_MAX_ITER):
        np.multiply(rc, tau, out=e)
        np.exp(e, out=e)
        z = e.sum(axis=0)
        m1 = np.einsum("ij,ij->j", e, rc) / z
        m2 = np.einsum("ij,ij->j", e, rc2) / z
        grad = float((ry - m1).sum())
        curv = float((m2 - m1 * m1).sum())
        if curv <= 0.0 or not math.isfinite(curv):  # every row constant, or each softmax one-hot
            return tau
        step = grad / curv
        new = min(max(tau + step, tau / 10.0, lo), tau * 10.0, hi)
        if grad * step / 2.0 <= TEMPERATURE_TOL * n or abs(new - tau) <= 1e-12 * tau:
            return new
        tau = new
    return tau

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
    from scipy.special import softmax as softmax_rows  # lazy: a cached `lead rank` imports the registry, not scipy
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
    from scipy.optimize import minimize
    from scipy.special import expit  # lazy: a cached `lead rank` imports the registry, not scipy
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
    from scipy.special import softmax as softmax_rows  # lazy: a cached `lead rank` imports the registry, not scipy
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
    return _expected_from_sq_norms(np.einsum("ij,ij->i", z, z), z.shape[1], n_classes, widths)


def _expected_from_sq_norms(sq: np.ndarray, in_dim: int, n_classes: int, widths: tuple[int, ...]) -> np.ndarray:
    """:func:`expected_kernel_diagonal` from the squared norms ||z||^2, shape (n,), of inputs of dimension in_dim."""
    dims = (in_dim, *widths)
    return n_classes * (sum(dims) / in_dim * sq + len(dims))


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
