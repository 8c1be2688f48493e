"""The figures: drawn with Agg, rendered to PNG, with what they say in their artists."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from lead.errors import InputError
from lead.figures import HistoryPoint, ScorePoint, history_figure, png_bytes, selection_figure


def test_selection_figure_draws_intervals_p_best_and_the_front():
    pts = [
        ScorePoint("lite1", -0.0716, -0.085, -0.060, 0.62, True, 0.084, True, 1),
        ScorePoint("lite0", -0.0768, -0.090, -0.065, 0.38, True, 0.065, True, 2),
        ScorePoint("lite2", -0.0917, -0.100, -0.080, 0.00, False, 0.096, False, 3),
        ScorePoint("broken", math.nan),
    ]
    fig = selection_figure(pts, method="lead", title="demo: 3 models by lead")
    left, right = fig.axes
    ticks = [t.get_text() for t in left.get_yticklabels()]
    assert ticks == ["lite1\nP(best) 0.62", "lite0\nP(best) 0.38 ≈", "lite2\nP(best) 0.00"]  # best at the top
    assert right.get_xscale() == "log"
    front = [ln for ln in right.get_lines() if ln.get_label() == "Pareto front"]
    assert len(front) == 1 and list(front[0].get_xdata()) == [0.065, 0.084]
    assert "not scored: broken" in fig._suptitle.get_text()
    png = png_bytes(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with pytest.raises(InputError, match="at least one model must have a finite score"):
        selection_figure([ScorePoint("x", math.nan)], method="lead")


def test_history_figure_has_a_panel_per_method_and_a_line_per_model():
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    pts = [HistoryPoint(t0 + timedelta(days=i), f"r{i}", m, "lead", -0.07 - 0.01 * j, -0.08, -0.06, j == 0)
           for i in range(3) for j, m in enumerate(["a", "b"])]
    pts.append(HistoryPoint(t0 + timedelta(days=4), "r4", "a", "logme", 0.2, best=True))
    fig = history_figure(pts, dataset="animals")
    assert len(fig.axes) == 2
    lead_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "lead score")
    assert sorted(t.get_text() for t in lead_ax.get_legend().get_texts()) == ["a", "b"]
    assert "3 selections by lead" in lead_ax.get_title()
    assert png_bytes(fig)[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="'animals' must have at least one scored selection"):
        history_figure([], dataset="animals")
