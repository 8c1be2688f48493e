"""Bad input through the whole flow: the exact behaviour documented in docs/errors.md."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from lead.errors import DatasetError
from storage.history import query
from tests.conftest import lite_entry, write_zoo
from tests.lead.test_images import write_bad_files

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_zoo(tmp_path_factory.mktemp("zoo") / "zoo.yaml", [lite_entry(0)])


def test_a_few_unreadable_images_are_skipped_counted_and_listed(tmp_path, tiny_dataset, zoo):
    from mlflow import MlflowClient

    from flows.cli import app

    root = shutil.copytree(tiny_dataset, tmp_path / "ds")
    (root / "cat" / "zero.png").write_bytes(b"")  # 1 of 25 images: 4%, under the 5% threshold
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["rank", "-d", str(root), "-z", str(zoo), "--store", str(store)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable images: cat/zero.png (UnidentifiedImageError" in result.output
    run_id = query(store, "SELECT mlflow_run_id FROM rankings").to_pylist()[0]["mlflow_run_id"]
    tags = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db").get_run(run_id).data.tags
    assert tags["skipped_images"] == "1" and tags["skipped_list"] == "cat/zero.png"
    assert query(store, "SELECT count(*) AS n FROM logits").to_pylist() == [{"n": 24}]


def test_too_many_unreadable_images_stop_the_run_with_the_files_named(tmp_path, tiny_dataset, zoo):
    from flows.rank_zoo import rank_zoo

    root = shutil.copytree(tiny_dataset, tmp_path / "ds")
    write_bad_files(root / "cat")  # 3 unreadable of 28: 11%
    with pytest.raises(DatasetError, match=r"at most 5% of the images may be unreadable; got at least \d+ of 28 \(cat/.*\)"):
        rank_zoo(dataset=str(root), zoo=str(zoo), store=str(tmp_path / "store"))
    assert not list((tmp_path / "store" / "logits").rglob("*.parquet"))
