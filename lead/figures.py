"""Pictures of a selection and of a dataset's history, drawn with matplotlib's Agg backend.

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas, never through ``pyplot``: no
global figure registry, no GUI backend, safe from a Prefect worker thread. :func:`png_bytes` renders one;
the caller (storage) writes the bytes atomically and logs them to MLflow.

- :func:`selection_figure`: one selection, two panels. Left: each model's score by the ranking method
  with its 90% bootstrap interval (percentiles of its resampled scores), P(best) written beside it, the
  models tied with the best in the best's colour. Right: score against GFLOPs per image (log scale), the
  models on the Pareto front joined by a step line.
- :func:`history_figure`: a dataset's past selections over time, one line per model (its score by each
  run's ranking method), the interval as a band where there is one, each run's best model ringed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from lead.errors import InputError

#: Colours (matplotlib's tab10): the best model and those tied with it, the others, the front.
BEST, OTHER, FRONT = "#1f77b4", "#7f7f7f", "#d62728"


@dataclass(frozen=True)
class ScorePoint:
    """One model of a selection as the figure draws it.

    Attributes:
        model: model id. score: its score by the ranking method (NaN: not scored, not drawn).
        low, high: its 90% bootstrap interval of the score (NaN: none). p_best: P(best) (NaN: none).
        tied_with_best: its rank interval reaches 1. gflops: GFLOPs per image (NaN: unknown).
        pareto: on the score-versus-cost front. rank: its rank (1 = best; None: not ranked).
    """

    model: str
    score: float
    low: float = math.nan
    high: float = math.nan
    p_best: float = math.nan
    tied_with_best: bool = False
    gflops: float = math.nan
    pareto: bool = False
    rank: int | None = None


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _tick(p: ScorePoint) -> str:
    """The y tick of a model: its name, P(best), and ≈ when its rank interval reaches the best's."""
    tail = f"P(best) {p.p_best:.2f}" if _finite(p.p_best) else ""
    if p.tied_with_best and p.rank != 1:
        tail += " ≈"
    return f"{p.model}\n{tail}" if tail else p.model


def selection_figure(points: Sequence[ScorePoint], *, method: str, title: str = ""):
    """The figure of one selection (see the module docstring). Returns a ``matplotlib.figure.Figure``.

    Args:
        points: the models, in any order; those with a NaN score are listed in the caption, not drawn.
        method: the ranking method's id (the axes' label).
        title: the figure's title, e.g. "animal-mnist-fewshot: 3 models by lead, 200 resamples".
    Raises:
        InputError: no model with a finite score.
    """
    drawn = sorted((p for p in points if _finite(p.score)), key=lambda p: -p.score)
    if not drawn:
        raise InputError("selection_figure: at least one model must have a finite score; got none.")
    fig = _new_figure(11.0, 0.9 + 0.42 * max(len(drawn), 4))
    left, right = fig.subplots(1, 2, width_ratios=[1.25, 1.0])
    ys = list(range(len(drawn)))[::-1]
    for y, p in zip(ys, drawn):
        colour = BEST if (p.rank == 1 or p.tied_with_best) else OTHER
        if _finite(p.low) and _finite(p.high):
            left.plot([p.low, p.high], [y, y], color=colour, lw=2.2, alpha=0.55, solid_capstyle="butt")
        left.plot([p.score], [y], "o", color=colour, ms=6)
    left.set_yticks(ys, [_tick(p) for p in drawn], fontsize=8)
    left.set_xlabel(f"{method} score (higher is better); bar: 90% bootstrap interval", fontsize=8)
    left.tick_params(axis="x", labelsize=8)
    left.margins(x=0.1, y=0.15)
    left.grid(axis="x", alpha=0.3)

    costed = [p for p in drawn if _finite(p.gflops) and p.gflops > 0]
    if costed:
        for p in costed:
            colour = FRONT if p.pareto else OTHER
            if _finite(p.low) and _finite(p.high):
                right.plot([p.gflops, p.gflops], [p.low, p.high], color=colour, lw=1.5, alpha=0.5)
            right.plot([p.gflops], [p.score], "o", color=colour, ms=6)
            right.annotate(p.model, (p.gflops, p.score), xytext=(4, 3), textcoords="offset points", fontsize=7)
        front = sorted((p for p in costed if p.pareto), key=lambda p: p.gflops)
        if len(front) > 1:
            right.step([p.gflops for p in front], [p.score for p in front], where="post", color=FRONT, lw=1, alpha=0.7,
                       label="Pareto front")
            right.legend(fontsize=7, loc="lower right")
        right.set_xscale("log")
        right.margins(x=0.25, y=0.2)
    else:
        right.text(0.5, 0.5, "cost not known", ha="center", va="center", transform=right.transAxes, fontsize=9)
    right.set_xlabel("GFLOPs per image (log scale)", fontsize=8)
    right.set_ylabel(f"{method} score", fontsize=8)
    right.tick_params(labelsize=8)
    right.grid(alpha=0.3)
    missing = [p.model for p in points if not _finite(p.score)]
    if title or missing:
        fig.suptitle(title + (f"\nnot scored: {', '.join(missing)}" if missing else ""), fontsize=10)
    return fig


@dataclass(frozen=True)
class HistoryPoint:
    """One model in one past selection. created_at: when the selection was made; method: its ranking
    method; best: ranked 1 in it; low/high: its score interval (NaN: none)."""

    created_at: datetime
    run_id: str
    model: str
    method: str
    score: float
    low: float = math.nan
    high: float = math.nan
    best: bool = False


def history_figure(points: Sequence[HistoryPoint], *, dataset: str):
    """A dataset's past selections over time (see the module docstring). Returns a ``Figure``.

    The y-axis is the score of each run's own ranking method; runs ranked by different methods are drawn
    in one panel per method, so no axis mixes units.

    Raises:
        InputError: no point with a finite score.
    """
    pts = [p for p in points if _finite(p.score)]
    if not pts:
        raise InputError(f"history_figure: {dataset!r} must have at least one scored selection; got none.")
    methods = sorted({p.method for p in pts})
    fig = _new_figure(9.0, 3.2 * len(methods))
    axes = fig.subplots(len(methods), 1, squeeze=False)[:, 0]
    for ax, method in zip(axes, methods):
        mine = [p for p in pts if p.method == method]
        for model in sorted({p.model for p in mine}):
            line = sorted((p for p in mine if p.model == model), key=lambda p: p.created_at)
            xs = [p.created_at for p in line]
            drawn = ax.plot(xs, [p.score for p in line], "o-", ms=4, lw=1.2, label=model)[0]
            band = [(p.created_at, p.low, p.high) for p in line if _finite(p.low) and _finite(p.high)]
            if len(band) > 1:
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                color=drawn.get_color(), alpha=0.15, lw=0)
            elif band:
                ax.plot([band[0][0]] * 2, [band[0][1], band[0][2]], color=drawn.get_color(), alpha=0.5, lw=2)
            best = [p for p in line if p.best]
            ax.plot([p.created_at for p in best], [p.score for p in best], "o", ms=10, mfc="none",
                    color=drawn.get_color())
        ax.set_ylabel(f"{method} score", fontsize=8)
        ax.set_title(f"{dataset}: {len({p.run_id for p in mine})} selections by {method} (ringed: best of its run)",
                     fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    return fig


def png_bytes(fig, *, dpi: int = 110) -> bytes:
    """The figure rendered as PNG bytes."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():  # a model name in a script the font lacks is drawn as boxes, not an error
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
