"""The ``lead`` command: help texts, a ranking and the history, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import lite_entry, write_zoo

runner = CliRunner()


def test_help_explains_every_command():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "LEAD transferability score" in out and "rank" in out and "history" in out
    rank_help = runner.invoke(app, ["rank", "--help"], terminal_width=200).output
    for flag in ("--dataset", "--zoo", "--method", "--store", "--device", "--batch-size", "--max-workers", "--tracking-uri"):
        assert flag in rank_help
    assert "animal-mnist-fewshot" in rank_help
    assert "--sql" in runner.invoke(app, ["history", "--help"], terminal_width=200).output


@pytest.mark.usefixtures("prefect_harness")
def test_rank_then_history(tmp_path, tiny_dataset):
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), lite_entry(1)])
    store = tmp_path / "store"
    result = runner.invoke(app, ["rank", "-d", str(tiny_dataset), "-z", str(zoo), "--store", str(store)], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Ranking of 2 models on animals (24 images, 4 classes), by lead" in out
    assert "efficientnet_lite0.in1k" in out and "efficientnet_lite1.in1k" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{store}/mlflow.db" in out
    assert "#/experiments/1/runs/" in out

    as_json = runner.invoke(app, ["rank", "-d", str(tiny_dataset), "-z", str(zoo), "--store", str(store), "--json"])
    sel = json.loads(as_json.stdout)  # stdout is the document; notes and log lines go to stderr
    assert [m["extraction"]["status"] for m in sel["models"]] == ["cached", "cached"]

    hist = runner.invoke(app, ["history", "--store", str(store), "--json"])
    rows = [json.loads(line) for line in hist.output.splitlines()]
    # two runs x the two default methods (lead ranks, logme beside it): one history row per run and method
    assert len(rows) == 4 and {r["best_model"] for r in rows if r["method"] == "lead"} == {sel["best_model"]}
    sql = runner.invoke(app, ["history", "--store", str(store), "--json", "--sql",
                              "SELECT model, count(*) AS n FROM rankings GROUP BY model ORDER BY model"])
    assert [json.loads(line) for line in sql.output.splitlines()] == [
        {"model": "efficientnet_lite0.in1k", "n": 4}, {"model": "efficientnet_lite1.in1k", "n": 4}]


def test_bad_input_is_one_line_and_exit_code_two(tmp_path):
    result = runner.invoke(app, ["rank", "-d", str(tmp_path / "nowhere"), "-z", "efficientnet-lite", "--store", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: dataset:") and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["rank", "-d", "animal-mnist-fewshot", "-z", "efficientnet-lite", "-m", "nope",
                                 "--store", str(tmp_path)])
    assert result.exit_code == 2 and "method must be one of ['gbc', 'hscore', 'lead', 'leep', 'logme', 'nce', 'nleep', 'sfda', 'transrate'] or an ensemble ['mean-rank:logme:lead', " in result.output
    assert "; got 'nope'" in result.output
    result = runner.invoke(app, ["history", "--store", str(tmp_path), "--sql", "SELEC nonsense"])
    assert result.exit_code == 2 and result.output.startswith("error:")
    result = runner.invoke(app, ["history", "--store", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "the store" in result.output and "must exist; got no such folder" in result.output
    result = runner.invoke(app, ["rank", "-d", "animal-mnist-fewshot", "-z", "efficientnet-lite", "--device", "tpu",
                                 "--store", str(tmp_path)])
    assert result.exit_code == 2 and "device must be auto, cpu, cuda, cuda:N or mps; got 'tpu'" in result.output
