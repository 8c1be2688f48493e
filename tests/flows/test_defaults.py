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
    sel = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(tmp_path / "s")).to_dict()
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


def test_the_methods_are_planned_on_the_images_read():
    assert (plan_methods(["gbc", "lead"], 64).methods, plan_methods(["gbc", "lead"], 64).primary) == (("gbc", "lead"), "gbc")
    p = plan_methods(["gbc", "lead"], 63)  # requested: kept (gbc reported failed), the next one ranks
    assert (p.methods, p.primary) == (("gbc", "lead"), "lead")
    assert p.fallback == "gbc needs at least 64 images and the dataset has 63: ranking by lead"
    assert plan_methods(["gbc"], 63).primary == "gbc"  # nothing else: its own error surfaces


@pytest.mark.usefixtures("prefect_harness")
def test_a_dataset_below_a_methods_minimum_after_skipping_is_ranked_on_the_images_read(tmp_path):
    """4 classes x 16 PNGs (64 images), one cut to 40 bytes (1.6%, within the 5% rule): 63 images are read,
    so the default methods are planned for 63, whatever DEFAULT_METHODS holds (GBC needs 64)."""
    import numpy as np
    from typer.testing import CliRunner

    from flows.cli import app
    from lead.data import animal_mnist_fewshot
    from tests.conftest import lite_entry, write_image_folder, write_zoo

    images, labels = animal_mnist_fewshot(per_class=16, seed=2)
    keep = np.isin(labels, ["bear", "cat", "horse", "zebra"])
    root = write_image_folder(tmp_path / "ds", images[keep], list(np.asarray(labels)[keep]))
    cut = sorted((root / "cat").iterdir())[0]
    cut.write_bytes(cut.read_bytes()[:40])
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    store = tmp_path / "s"
    result = CliRunner().invoke(app, ["rank", "-d", str(root), "-z", str(zoo), "--store", str(store), "--json"],
                                terminal_width=250)
    assert result.exit_code == 0, result.output
    import json

    sel = json.loads(result.output[result.output.index("{"):])
    expected = [m for m in DEFAULT_METHODS if get_method(m).min_samples <= 63] or list(DEFAULT_METHODS)
    assert sel["methods"] == expected and sel["primary_method"] == expected[0]
    assert "gbc" not in sel["methods"]
    assert (sel["n_samples"], sel["n_listed"]) == (63, 64)
    assert [x["sample_id"] for x in sel["skipped_images"]] == [f"cat/{cut.name}"]
    assert sel["models"][0]["status"] == "ok" and sel["best_model"] == "efficientnet_lite0.in1k"
    from storage.history import query

    assert query(store, "SELECT DISTINCT n_samples FROM rankings").to_pylist() == [{"n_samples": 63}]
    # asked for gbc first: it cannot score the 63 images read, so lead ranks, and gbc is reported failed
    result = CliRunner().invoke(app, ["rank", "-d", str(root), "-z", str(zoo), "--store", str(store), "--json",
                                      "-m", "gbc,lead"], terminal_width=250)
    assert result.exit_code == 0, result.output
    sel = json.loads(result.output[result.output.index("{"):])
    assert sel["primary_method"] == "lead" and sel["fallback"].startswith("gbc needs at least 64 images and the dataset has 63")
    assert "n_components" in sel["models"][0]["method_errors"]["gbc"]
