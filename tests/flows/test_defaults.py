"""The default ranking method and its fallback on datasets too small for it."""

from __future__ import annotations

from flows.rank_zoo import fallback_primary
from lead.scoring import DEFAULT_METHODS, get_method


def test_the_fallback_ranks_by_the_next_method_that_can_score_the_dataset():
    assert get_method("gbc").min_samples == 64
    assert fallback_primary(["gbc", "lead"], 24) == "lead"
    assert fallback_primary(["gbc", "lead"], 64) == "gbc"
    assert fallback_primary(["gbc"], 24) == "gbc"  # nothing else to rank by: the method's own error surfaces
    assert fallback_primary(["lead", "gbc"], 10) == "lead"


def test_lead_is_always_computed_by_default():
    assert "lead" in DEFAULT_METHODS
