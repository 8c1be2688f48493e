"""One place where arrays enter the scores: shapes, finiteness, labels.

Scores never modify their inputs: every array returned here is a new float64 copy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from lead.errors import InputError


@dataclass(frozen=True)
class Labels:
    """Labels encoded as integer codes.

    Attributes:
        codes: shape (N,), int64, values in 0..K-1.
        classes: the K distinct class names, in code order.
        counts: shape (K,), int64, samples per class.
    """

    codes: np.ndarray
    classes: tuple
    counts: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def encode_labels(labels: Sequence[Hashable] | np.ndarray, *, where: str = "labels") -> Labels:
    """Map arbitrary hashable class names (ints, strings, mixed) to codes 0..K-1.

    Codes follow the sorted order of the names when they are mutually comparable, else the order
    of first appearance; every score here is invariant to the choice.

    Raises:
        InputError: labels not one-dimensional, empty, containing None or NaN, or unhashable.
    """
    arr = np.asarray(labels, dtype=object) if not isinstance(labels, np.ndarray) else labels
    if arr.ndim != 1:
        raise InputError(f"{where}: labels must be one-dimensional; got shape {arr.shape}. Pass one label per sample.")
    if arr.shape[0] == 0:
        raise InputError(f"{where}: labels must not be empty; got 0 samples.")
    values = arr.tolist()
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise InputError(f"{where}: every label must be a class name or index; got {v!r}. Remove unlabelled samples.")
    try:
        distinct = set(values)
    except TypeError as err:
        raise InputError(f"{where}: labels must be hashable class names; got {type(values[0]).__name__}.") from err
    try:
        classes = tuple(sorted(distinct))
    except TypeError:
        seen: dict = {}
        for v in values:
            seen.setdefault(v, len(seen))
        classes = tuple(seen)
    index = {c: i for i, c in enumerate(classes)}
    codes = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    counts = np.bincount(codes, minlength=len(classes)).astype(np.int64)
    return Labels(codes=codes, classes=classes, counts=counts)


def check_matrix(x, *, name: str, n_rows: int | None = None, where: str = "score", copy: bool = True,
                 finite: bool = True) -> np.ndarray:
    """Return ``x`` as a new C-contiguous float64 (N, D) array after checking shape and finiteness.

    With ``copy=False`` a float32 or float64 ndarray is checked and returned as it is, not converted: for a
    score that reads the features once into its own float64 buffers (LEAD's probe), so that no N x D float64
    copy is made; the caller must not modify it. With ``finite=False`` the finiteness check (a pass over
    the N x D values) is left to the caller, who must call this again with ``finite=True`` when its own pass
    finds a non-finite value (LEAD's row statistics: a finite sum of squares means a finite row).

    Raises:
        InputError: not two-dimensional, zero columns, wrong number of rows, or NaN/Inf values.
    """
    try:
        if not copy and isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
            arr = x
        else:
            arr = np.array(x, dtype=np.float64, copy=True, order="C")
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {name} must be a numeric (N, D) array; got {type(x).__name__}.") from err
    if arr.ndim != 2:
        raise InputError(f"{where}: {name} must be a 2-D array of shape (N, D); got shape {arr.shape}.")
    if arr.shape[1] == 0:
        raise InputError(f"{where}: {name} must have at least one column; got shape {arr.shape}.")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise InputError(
            f"{where}: {name} must have one row per label; got {arr.shape[0]} rows for {n_rows} labels."
        )
    bad = ~np.isfinite(arr) if finite else None
    if bad is not None and bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise InputError(
            f"{where}: {name} must be finite; got NaN or Inf in {rows.size} of {arr.shape[0]} rows "
            f"(first: row {rows[0]}). Check the model's forward pass or drop those samples."
        )
    return arr


def check_inputs(
    features, labels, *, where: str, min_classes: int = 2, name: str = "features", copy: bool = True,
    finite: bool = True,
) -> tuple[np.ndarray, Labels]:
    """Validate a (features, labels) pair once, where it enters a score.

    ``name`` is what the matrix is called in messages (``"logits"`` for scores of the source head);
    ``copy=False``, ``finite=False``: see :func:`check_matrix`.

    Returns:
        (features as a new float64 (N, D) array, or the caller's float array with ``copy=False``; encoded labels).
    Raises:
        InputError: see :func:`encode_labels` and :func:`check_matrix`; fewer than ``min_classes`` classes.
    """
    enc = encode_labels(labels, where=where)
    x = check_matrix(features, name=name, n_rows=enc.codes.shape[0], where=where, copy=copy, finite=finite)
    if enc.n_classes < min_classes:
        raise InputError(
            f"{where}: labels must contain at least {min_classes} classes; got {enc.n_classes} "
            f"({list(enc.classes)[:5]}). A ranking needs a classification task."
        )
    return x, enc


def standardize(x: np.ndarray) -> np.ndarray:
    """Z-score each column of a float64 (N, D) array; constant columns become 0. Returns a new array."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return (x - mean) / std


def global_scale(x: np.ndarray) -> float:
    """The features' global scale: sqrt(trace(Cov(x)) / D), the root mean square deviation of an entry
    from its column mean (1.0 for constant features). Dividing by it makes a score invariant to
    ``x * c`` for any c > 0 while keeping the relative variances of the dimensions (unlike a per-column
    z-score, which inflates near-dead units to unit variance).

    Args:
        x: shape (N, D), float64.
    Returns:
        float > 0.
    """
    var = float(((x - x.mean(axis=0)) ** 2).mean())
    return math.sqrt(var) if var > 0 and math.isfinite(var) else 1.0


def require_samples(n: int, minimum: int, *, where: str, why: str, fix: str) -> None:
    """Refuse fewer than ``minimum`` samples, saying ``why`` the method needs them and how to ``fix`` it.

    Raises:
        InputError: ``n < minimum``.
    """
    if n < minimum:
        raise InputError(f"{where}: labels must cover at least {minimum} samples {why}; got {n}. {fix}.")


def check_int_knob(value, *, name: str, where: str, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer (not a bool) >= ``minimum``.

    Raises:
        InputError: not an integer, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{where}: {name} must be an int >= {minimum}; got {value!r}.")
    return int(value)


def check_float_knob(
    value, *, name: str, where: str, low: float = 0.0, high: float = float("inf"), high_inclusive: bool = False
) -> float:
    """Return ``value`` as a float after checking it is finite and in (``low``, ``high``) (``high`` included if asked).

    Raises:
        InputError: not a real number, not finite, or out of range.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and bool(np.isfinite(value)) and value > low and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise InputError(f"{where}: {name} must be a finite float in ({low:g}, {high:g}{bracket}; got {value!r}.")
    return float(value)
