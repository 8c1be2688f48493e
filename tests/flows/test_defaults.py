"""The default ranking method and its fallback on datasets too small for it."""

from __future__ import annotations

import pytest

from lead.scoring import DEFAULT_METHODS, get_method
from lead.scoring.ranking import plan_methods


def test_the_fallback_ranks_by_the_next_method_that_can_score_the_dataset():
    assert get_method("gbc").min_samples == 64
    assert plan_methods(["gbc", "lead"], 24).primary == "lead"
    assert plan_methods(["gbc", "lead"], 64).primary == "gbc"
    assert plan_methods(["gbc"], 24).primary == "gbc"  # nothing else to rank by: the method's own error surfaces
    assert plan_methods(["lead", "gbc"], 10).primary == "lead"
    # an explicit list equal to the default is taken as written: nothing is dropped
    assert plan_methods(list(DEFAULT_METHODS), 3).methods == tuple(DEFAULT_METHODS)


def test_lead_is_always_computed_by_default():
    assert "lead" in DEFAULT_METHODS
    assert "lead" in plan_methods(None, 24).computed and "lead" in plan_methods("default", 10_000).computed


@pytest.mark.usefixtures("prefect_harness")
def test_the_default_methods_leave_out_what_a_dataset_under_64_images_cannot_score(tiny_dataset, tmp_path):
    from flows.rank_zoo import rank_zoo
    from tests.conftest import lite_entry, write_zoo

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    sel = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(tmp_path / "s"))
    plan = plan_methods(None, 24)
    assert sel["primary_method"] == plan.primary and sel["methods"][0] == plan.primary
    assert set(sel["dropped_methods"]) == {m for m in DEFAULT_METHODS if get_method(m).min_samples > 24}
    assert sel["models"][0]["status"] == "ok"


def test_the_max_workers_setting_reaches_the_task_runner(monkeypatch):
    from flows.rank_zoo import task_runner
    from lead.config import Settings

    monkeypatch.setenv("LEAD_MAX_WORKERS", "4")
    assert task_runner(Settings.from_env())._max_workers == 4  # a 4-GPU host extracts 4 models at once
    monkeypatch.delenv("LEAD_MAX_WORKERS")
    import torch

    expected = torch.cuda.device_count() if torch.cuda.is_available() else 2
    assert task_runner(Settings.from_env())._max_workers == expected
    assert task_runner(Settings.from_env(max_workers=3))._max_workers == 3  # the --max-workers flag
