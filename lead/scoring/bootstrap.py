"""How sure a ranking is: a paired, stratified bootstrap over the dataset's images.

The same resamples of the images are used for every model (they are drawn from the labels and a seed
alone, so each model's scoring, in whatever process, draws identical ones): the models are compared on
the same images in every resample, which is what makes "model A beats model B in 93% of resamples" a
statement about the models rather than about the draw. Each resample draws, within every class, as many
images as the class has, with replacement (a stratified bootstrap: every class keeps its size, so no
resample loses a class and every method stays defined on it).

How a method's score is resampled (:func:`score_and_resample`):

- **per-sample** (``lead``, ``leep``, ``nce``, ``nleep``, ``sfda``): the score is a mean over samples of
  per-sample terms (:attr:`lead.scoring.Method.terms`); a resample's score is the mean of the terms of the
  images it drew. Cheap: one score computation plus a gather. The fitted parts (LEAD's out-of-fold initial
  state and kernel, LEEP's and NCE's empirical conditionals, N-LEEP's mixture, SFDA's discriminants) are
  those fitted on all images: the interval says how much the score moves with the images it is averaged
  over, not with a refit (docs/method.md, "Uncertainty").
- **recompute** (``logme``, ``hscore``, ``gbc``, ``transrate``): the score is not a mean over samples, so
  it is computed again on each resample's rows (LogME from the distinct rows weighted by their counts,
  :func:`lead.scoring.logme.logme_resampler`; TransRate on the Gram coordinates when N < D). Its cost is measured on the first resample and bounded by
  ``budget_s`` seconds per model: fewer resamples are used when all of them would not fit (the note says
  so), and when not even ``min_resamples`` fit the method is reported "too slow to resample" with the
  measured cost, never silently skipped.

From the models' resampled scores of one method, :func:`summarize` gives each model's P(best) (the share
of resamples in which it scores highest; models with exactly equal scores in a resample share that
resample equally), its 90% rank interval (the 5th and 95th percentiles of its rank over the resamples,
competition ranks, 1 = best) and ``tied_with_best`` (the interval reaches rank 1). Ensembles are
aggregated per resample from their members' resampled scores (:func:`summarize_ranking`).

Source: B. Efron, R. Tibshirani, "An Introduction to the Bootstrap", 1993 (the percentile interval);
paired resampling of a shared test set to compare models as in Bouthillier et al., "Accounting for Variance
in Machine Learning Benchmarks", MLSys 2021.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from lead.errors import InputError, error_text

#: Resamples of a ranking when none is asked for (the issue's default); 0 turns the bootstrap off.
DEFAULT_RESAMPLES = 200
#: Seed of the resamples (our choice); the same seed and labels give the same resamples.
DEFAULT_SEED = 0
#: Coverage of the rank interval (the issue's 90%): the 5th to the 95th percentile.
INTERVAL = 0.90
#: Seconds a method that is recomputed on each resample may spend per model (our choice: keeps the
#: demo's LogME bootstrap to a few seconds; LEAD_BOOTSTRAP_BUDGET overrides it, docs/performance.md).
RECOMPUTE_BUDGET_S = 5.0
#: Fewest resamples worth reporting (our choice): with fewer, a 90% interval rests on fewer than 3 resamples
#: in each tail, so the method is reported "too slow to resample" instead.
MIN_RESAMPLES = 50
#: Recomputations timed one by one before the budget is split (the fastest counts), and the share of the
#: budget that timing may take (our choices: robust to one descheduling, cheap for a slow method).
PROBE_RESAMPLES = 3
PROBE_SHARE = 0.1

#: Scores that depend on the features only through their Gram matrix F F^T (TransRate: log det(I + Z^T Z c)
#: = log det(I + Z Z^T c) of the centred features, Sylvester). For N < D their recomputation runs on the N
#: coordinates G = U S of the thin SVD F = U S V^T instead of the D features: F[idx] F[idx]^T =
#: G[idx] G[idx]^T, the same score (tested), a smaller problem.
GRAM_ONLY = ("transrate",)


def _resamplers() -> dict:
    """Methods with a dedicated recomputation on resamples: ``name -> factory(features, labels) -> (idx -> score)``,
    equal to the method on the resampled rows (tested) and cheaper. LogME: the distinct rows weighted by their
    counts, from a Gram matrix formed once (:func:`lead.scoring.logme.logme_resampler`)."""
    from lead.scoring.logme import logme_resampler

    return {"logme": logme_resampler}

#: How a method is resampled (``ResampledScore.mode``).
PER_SAMPLE, RECOMPUTE, OFF, TOO_SLOW = "per-sample", "recompute", "off", "too-slow"


def paired_resamples(labels, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The bootstrap's resamples: row indices, shape (B, N), int64; row b is resample b.

    Within each class (classes in sorted order of their names), each resample draws as many of its
    positions as it has, uniformly with replacement, from ``numpy.random.default_rng(seed)``. So the
    result depends only on the labels (their classes and positions) and the seed: every model scored on
    the same images in the same order gets the same resamples, and resample b is the same whatever B is
    (the first B' of a larger draw are a smaller draw).

    Args:
        labels: class of each sample, shape (N,), any hashable; N >= 1.
        n_resamples: B >= 0.
        seed: int >= 0.
    Raises:
        InputError: ``n_resamples`` or ``seed`` not a non-negative int, or no labels.
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 0:
        raise InputError(f"paired_resamples: n_resamples must be an int >= 0; got {n_resamples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"paired_resamples: seed must be an int >= 0; got {seed!r}.")
    codes = _codes(labels)
    n = codes.shape[0]
    if n == 0:
        raise InputError("paired_resamples: labels must hold at least one sample; got none.")
    out = np.empty((int(n_resamples), n), dtype=np.int64)
    if n_resamples == 0:
        return out
    rng = np.random.default_rng(seed)
    # Draw class by class, resample by resample, so resample b does not depend on B.
    members = [np.nonzero(codes == k)[0] for k in range(int(codes.max()) + 1)]
    for b in range(int(n_resamples)):
        for idx in members:
            out[b, idx] = idx[rng.integers(0, idx.size, size=idx.size)]
    return out


def resamples_digest(labels, n_resamples: int, seed: int) -> str:
    """A short digest of what fixes the resamples (the class of each position, B, the seed): two models'
    resampled scores are paired only when their digests are equal."""
    codes = _codes(labels)
    h = hashlib.sha256(codes.astype(np.int64).tobytes())
    h.update(f"{n_resamples}:{seed}".encode())
    return h.hexdigest()[:16]


def _codes(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"paired_resamples: labels must be 1-D; got shape {arr.shape}.")
    if arr.dtype == object:
        arr = np.array([str(x) for x in arr])
    return np.unique(arr, return_inverse=True)[1].reshape(-1)


@dataclass(frozen=True)
class ResampledScore:
    """One method's score on one model and its scores on the resamples.

    Attributes:
        method: the method id.
        score: the score on all images (the one the ranking uses).
        resampled: the score on each of the first B' resamples, shape (B',), float64; NaN where the
            method failed on a resample; empty when the method was not resampled.
        mode: ``"per-sample"``, ``"recompute"``, ``"too-slow"`` (recomputation would exceed the budget:
            ``resampled`` is empty) or ``"off"`` (B = 0).
        seconds: wall time spent on the resamples, s.
        note: why fewer than B resamples, or why none; "" otherwise.
        digest: :func:`resamples_digest` of the resamples used.
    """

    method: str
    score: float
    resampled: np.ndarray
    mode: str
    seconds: float
    note: str = ""
    digest: str = ""

    def to_dict(self) -> dict:
        """A JSON-able form (for a Prefect task result or an artifact); :meth:`from_dict` reads it back."""
        return {"method": self.method, "score": self.score, "resampled": [float(x) for x in self.resampled],
                "mode": self.mode, "seconds": self.seconds, "note": self.note, "digest": self.digest}

    @classmethod
    def from_dict(cls, d: Mapping) -> ResampledScore:
        return cls(method=d["method"], score=float(d["score"]), resampled=np.asarray(d["resampled"], dtype=np.float64),
                   mode=d["mode"], seconds=float(d["seconds"]), note=d.get("note", ""), digest=d.get("digest", ""))


def score_and_resample(
    method,
    *,
    labels,
    features=None,
    logits=None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    budget_s: float = RECOMPUTE_BUDGET_S,
    min_resamples: int = MIN_RESAMPLES,
    clock: Callable[[], float] = time.perf_counter,
) -> ResampledScore:
    """A method's score on all images and on each paired resample (:func:`paired_resamples`).

    Args:
        method: a :class:`lead.scoring.Method` (not an ensemble) or its id.
        labels, features, logits: as the method takes them; rows in the order shared by every model.
        n_resamples: B; 0 computes the score alone (mode ``"off"``).
        seed: the resamples' seed.
        budget_s: seconds a recomputed method may spend on one model's resamples (> 0). The first
            resamples are timed one by one (:data:`PROBE_RESAMPLES`, while under :data:`PROBE_SHARE` of the
            budget) and the fastest is the cost of one; if ``min_resamples`` would not fit, the method stops
            there ("too-slow");
            else it runs min(B, budget / cost of one) resamples and stops early if the budget is spent.
        min_resamples: fewest resamples reported (>= 1).
        clock: the time source (seconds), for tests.
    Returns:
        a :class:`ResampledScore`.
    Raises:
        whatever the method raises on all images (InputError, ScoreError): a score that cannot be computed
        on the full data has nothing to resample. A failure on one resample is NaN there, not raised.
    """
    from lead.scoring import get_method

    m = get_method(method) if isinstance(method, str) else method
    if not (isinstance(budget_s, (int, float)) and budget_s > 0):
        raise InputError(f"score_and_resample: budget_s must be a number > 0; got {budget_s!r}.")
    if isinstance(min_resamples, bool) or not isinstance(min_resamples, int) or min_resamples < 1:
        raise InputError(f"score_and_resample: min_resamples must be an int >= 1; got {min_resamples!r}.")
    resamples = paired_resamples(labels, n_resamples, seed)
    digest = resamples_digest(labels, n_resamples, seed)
    if n_resamples == 0:
        return ResampledScore(m.name, m(features=features, logits=logits, labels=labels), np.zeros(0), OFF, 0.0, "", digest)
    if m.terms is not None:
        score, terms = m.score_terms(features=features, logits=logits, labels=labels)
        started = clock()
        # row by row: memory O(N), not a B x N gather
        resampled = np.fromiter((terms[row].mean() for row in resamples), dtype=np.float64, count=len(resamples))
        return ResampledScore(m.name, score, resampled, PER_SAMPLE, clock() - started, "", digest)

    from threadpoolctl import threadpool_limits

    score = m(features=features, logits=logits, labels=labels)
    y = np.asarray(labels)
    f = None if features is None else np.asarray(features, dtype=np.float64)
    s = None if logits is None else np.asarray(logits)
    if f is not None and m.name in GRAM_ONLY and f.ndim == 2 and f.shape[0] < f.shape[1]:
        u, sv, _ = np.linalg.svd(f, full_matrices=False)
        f = u * sv  # (N, N): the same Gram matrix as the features
    fast = _resamplers().get(m.name) if not m.params else None
    compute = fast(f, y) if fast is not None else None

    def once(idx: np.ndarray) -> float:
        try:
            if compute is not None:
                return compute(idx)
            return m(features=None if f is None else f[idx], logits=None if s is None else s[idx], labels=y[idx])
        except Exception:  # noqa: BLE001 - one resample's failure is NaN there; the others still count
            return math.nan

    # Many small problems: one BLAS thread each. OpenBLAS's second thread cost more than it saved on the
    # 2-core machine (LogME on 300 x 300: 0.11 s with one thread, 1.2 s with two, under load; docs/performance.md).
    with threadpool_limits(limits=1):
        # The cost of one recomputation: the fastest of the first few, timed one by one. A single timing in
        # wall seconds is at the mercy of one descheduling on a busy machine (LogME's 10 ms recomputation
        # timed at over 0.1 s made it "too slow" for the default budget); probing stops at a tenth of the
        # budget, so a really slow method is judged on its first recomputation.
        started = clock()
        values, marks = [], [started]
        for idx in resamples[:PROBE_RESAMPLES]:
            values.append(once(idx))
            marks.append(clock())
            if marks[-1] - started > PROBE_SHARE * budget_s:
                break
        per_resample = max(min(b - a for a, b in zip(marks, marks[1:])), 1e-9)
        target = min(n_resamples, int(budget_s / per_resample + 1e-9))
        if target < min(min_resamples, n_resamples):
            note = (f"{m.name}: too slow to resample: one recomputation took {per_resample:.2f} s, so {n_resamples} "
                    f"resamples would take {per_resample * n_resamples:.0f} s per model and not even {min_resamples} fit "
                    f"in the budget of {budget_s:g} s per model (--bootstrap-budget, LEAD_BOOTSTRAP_BUDGET); no interval for {m.name}.")
            return ResampledScore(m.name, score, np.zeros(0), TOO_SLOW, clock() - started, note, digest)
        for b in range(len(values), target):
            values.append(once(resamples[b]))
            if clock() - started > budget_s and len(values) >= min_resamples:
                break
    note = ""
    if len(values) < n_resamples:
        note = (f"{m.name}: {len(values)} of {n_resamples} resamples (a recomputation takes {per_resample:.2f} s; "
                f"the budget is {budget_s:g} s per model: --bootstrap-budget, LEAD_BOOTSTRAP_BUDGET).")
    return ResampledScore(m.name, score, np.asarray(values, dtype=np.float64), RECOMPUTE, clock() - started, note, digest)


@dataclass(frozen=True)
class Uncertainty:
    """How sure the ranking is of one model under one method, from B paired resamples.

    Attributes:
        p_best: share of resamples in which the model scores highest, in [0, 1]; models with exactly equal
            scores in a resample share it equally (two identical models: 0.5 each).
        rank_low, rank_high: the 90% interval of its competition rank (1 = best) over the resamples: the
            5th percentile (numpy ``method="lower"``) and the 95th (``"higher"``).
        tied_with_best: ``rank_low == 1``: the interval reaches rank 1 (true for the best model too).
        n_resamples: B, the resamples it rests on.
        score_low, score_high: the 90% percentile interval of its score over the resamples (the figure's
            error bars), in the method's unit.
    """

    p_best: float
    rank_low: int
    rank_high: int
    tied_with_best: bool
    n_resamples: int
    score_low: float = math.nan
    score_high: float = math.nan


def summarize(resampled: Mapping[str, np.ndarray], *, interval: float = INTERVAL,
              observed: Mapping[str, float] | None = None) -> dict[str, Uncertainty]:
    """P(best), the rank interval and the tie flag of each model, from its scores on the same resamples.

    Args:
        resampled: ``{model: scores}``, each of shape (B_m,), higher is better, column b the same resample
            for every model. Only the first min(B_m) resamples are used, and a resample on which any model's
            score is NaN is left out for all (the comparison stays paired).
        interval: the rank interval's coverage, in (0, 1).
        observed: ``{model: score on all images}``. When given, each model's resampled scores are first
            bias-corrected, shifted by (observed - their mean) (Efron & Tibshirani 1993, ch. 10): a score
            recomputed on resamples with repeated images can drift (LogME rises with repeats), and a
            model must not gain rank by drifting more. For a mean over samples the shift is Monte Carlo
            noise only. Identical models get identical shifts, so exact ties stay exact.
    Returns:
        ``{model: Uncertainty}``; empty when no resample is left (or no model).
    Raises:
        InputError: ``interval`` out of range, or a scores array that is not 1-D.
    """
    if not (0.0 < interval < 1.0):
        raise InputError(f"summarize: interval must be in (0, 1); got {interval!r}.")
    models = list(resampled)
    arrays = [np.asarray(resampled[k], dtype=np.float64) for k in models]
    if any(a.ndim != 1 for a in arrays):
        raise InputError("summarize: each model's resampled scores must be 1-D, one per resample.")
    if not models:
        return {}
    b = min(a.size for a in arrays)
    table = np.stack([a[:b] for a in arrays])  # (M, B)
    table = table[:, np.all(np.isfinite(table), axis=0)]
    if table.shape[1] == 0:
        return {}
    if observed is not None:
        centre = np.array([float(observed.get(k, math.nan)) for k in models])
        shift = np.where(np.isfinite(centre), centre - table.mean(axis=1), 0.0)
        table = table + shift[:, None]
    top = table.max(axis=0)
    winners = table == top  # (M, B): exact ties at the top share the resample
    p_best = (winners / winners.sum(axis=0)).mean(axis=1)
    ranks = 1 + (table[None, :, :] > table[:, None, :]).sum(axis=1)  # (M, B): 1 + models strictly better
    tail = (1.0 - interval) / 2.0
    low = np.quantile(ranks, tail, axis=1, method="lower")
    high = np.quantile(ranks, 1.0 - tail, axis=1, method="higher")
    s_low = np.quantile(table, tail, axis=1)
    s_high = np.quantile(table, 1.0 - tail, axis=1)
    return {
        k: Uncertainty(float(p_best[i]), int(low[i]), int(high[i]), bool(low[i] == 1), int(table.shape[1]),
                       float(s_low[i]), float(s_high[i]))
        for i, k in enumerate(models)
    }


def summarize_ranking(
    methods: tuple[str, ...] | list[str],
    resampled: Mapping[str, Mapping[str, ResampledScore]],
    *,
    interval: float = INTERVAL,
    scores: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[dict[str, dict[str, Uncertainty]], dict[str, str]]:
    """Every reported method's uncertainty, ensembles included.

    Args:
        methods: the methods reported (a :class:`lead.scoring.ranking.Ranking`'s ``methods``).
        resampled: ``{method: {model: ResampledScore}}`` for the computed (non-ensemble) methods; models a
            method could not score are absent.
        scores: ``{method: {model: score}}`` on all images (a ``Ranking``'s ``scores``), the centres of the
            bias correction (:func:`summarize`); a computed method's own ``ResampledScore.score`` otherwise.
    Returns:
        (``{method: {model: Uncertainty}}``, ``{method: note}``): a method without resamples (off, too
        slow, resamples that do not pair) has no entry in the first and its reason in the second.
    """
    from lead.scoring import get_method
    from lead.scoring.ensemble import aggregate

    out: dict[str, dict[str, Uncertainty]] = {}
    notes: dict[str, str] = {}
    usable: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        method = get_method(m)
        if method.members:
            continue
        per_model = resampled.get(m, {})
        if not per_model:
            continue
        bad = sorted({r.note for r in per_model.values() if r.mode == TOO_SLOW and r.note})
        if any(r.mode in (OFF, TOO_SLOW) for r in per_model.values()):
            notes[m] = bad[0] if bad else f"{m}: not resampled (--bootstrap 0)."
            continue
        if len({r.digest for r in per_model.values()}) > 1:
            notes[m] = f"{m}: the models' resamples differ (different images or seeds); no interval."
            continue
        fewer = sorted({r.note for r in per_model.values() if r.note})
        if fewer:
            notes[m] = fewer[0]
        usable[m] = {k: r.resampled for k, r in per_model.items()}
        out[m] = summarize(usable[m], interval=interval, observed={k: r.score for k, r in per_model.items()})
    for m in methods:
        method = get_method(m)
        if not method.members:
            continue
        if any(c not in usable for c in method.members):
            notes[m] = f"{m}: a member ({', '.join(c for c in method.members if c not in usable)}) has no resamples; no interval."
            continue
        models = sorted(set.intersection(*(set(usable[c]) for c in method.members)))
        if not models:
            continue
        b = min(usable[c][k].size for c in method.members for k in models)
        agg = np.full((len(models), b), np.nan)
        for j in range(b):
            col = aggregate({c: {k: float(usable[c][k][j]) for k in models} for c in method.members}, how=method.how)
            agg[:, j] = [col[k] for k in models]
        out[m] = summarize({k: agg[i] for i, k in enumerate(models)}, interval=interval,
                           observed=(scores or {}).get(m))
    return out, notes


def bootstrap_arrays(
    arrays: Mapping[str, tuple],
    labels,
    methods,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    budget_s: float = RECOMPUTE_BUDGET_S,
) -> dict[str, dict[str, ResampledScore]]:
    """:func:`score_and_resample` of every computed method on every model: ``{method: {model: ResampledScore}}``;
    a model a method cannot score is absent there (its error is the ranking's business)."""
    out: dict[str, dict[str, ResampledScore]] = {m: {} for m in methods}
    for name, (features, logits) in arrays.items():
        for m in methods:
            try:
                out[m][name] = score_and_resample(m, features=features, logits=logits, labels=labels,
                                                  n_resamples=n_resamples, seed=seed, budget_s=budget_s)
            except Exception as err:  # noqa: BLE001 - reported by the ranking itself
                _ = error_text(err)
    return out
