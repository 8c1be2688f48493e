"""The default ranking method and its fallback on datasets too small for it."""

from __future__ import annotations

import pytest

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


@pytest.mark.usefixtures("prefect_harness")
def test_the_default_methods_leave_out_gbc_on_a_dataset_under_64_images(tiny_dataset, tmp_path):
    from flows.rank_zoo import rank_zoo
    from tests.conftest import lite_entry, write_zoo

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    sel = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(tmp_path / "s"))
    assert sel["primary_method"] == "lead" and sel["methods"] == ["lead"]
    assert sel["models"][0]["status"] == "ok"
