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


def test_the_methods_are_planned_on_the_images_read():
    from flows.rank_zoo import plan_methods

    assert plan_methods(["gbc", "lead"], 64, default=True) == (["gbc", "lead"], "gbc")
    assert plan_methods(["gbc", "lead"], 63, default=True) == (["lead"], "lead")
    assert plan_methods(["gbc", "lead"], 63, default=False) == (["gbc", "lead"], "lead")  # requested: reported failed
    assert plan_methods(["gbc"], 63, default=True) == (["gbc"], "gbc")  # none fits: its own error surfaces


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
