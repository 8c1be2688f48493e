"""Operations without a long-running server: the registry commands, the watcher, the nightly flow, the
deployments' definitions (Python and deploy/prefect.yaml agree), and the errors of serve/setup/ui.

The end-to-end path through a real ``prefect server start`` is tests/flows/test_server.py.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import lite_entry, write_zoo

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_server():
    """No Prefect server configured (the session's test harness may have set one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def test_help_explains_the_operations_commands():
    for cmd, words in {
        ("datasets", "add"): ["lead.dataset.registered", "NAME", "PATH"],
        ("datasets", "list"): ["registered datasets"],
        ("datasets", "remove"): ["rankings, logits and", "MLflow runs are kept"],
        ("watch",): ["--interval", "--settle", "--once", "stopped changing"],
        ("serve",): ["--cron", "--timezone", "--zoo", "nightly-rerank", "rank-on-new-dataset", "02:00 UTC"],
        ("setup",): ["--gpus", "--pool", "concurrency limit `gpu`", "work pool"],
        ("ui",): ["--prefect-port", "--mlflow-port", "127.0.0.1", "tags.best_model"],
    }.items():
        out = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "400"}).output
        for w in words:
            assert w in out, (cmd, w)


@pytest.mark.usefixtures("no_server")
def test_datasets_add_list_remove_without_a_server(tmp_path, tiny_dataset):
    store = tmp_path / "store"
    add = runner.invoke(app, ["datasets", "add", "animals", str(tiny_dataset), "--store", str(store)], terminal_width=200)
    assert add.exit_code == 0, add.output
    assert f"registered animals: {tiny_dataset} (24 images, 4 classes, fingerprint " in add.output
    assert "note: no Prefect server configured (PREFECT_API_URL unset): no event sent" in add.output
    listed = runner.invoke(app, ["datasets", "list", "--store", str(store), "--json"])
    import json

    (entry,) = [json.loads(line) for line in listed.output.splitlines()]
    from lead.data import image_folder

    assert entry["name"] == "animals" and entry["path"] == str(tiny_dataset)
    assert entry["fingerprint"] == image_folder(tiny_dataset).fingerprint()
    assert (entry["n_samples"], entry["n_classes"]) == (24, 4)

    # bad input: one line, exit status 2
    for args, message in [
        (["datasets", "add", "animals", str(tiny_dataset)], "error: datasets add: name must not be registered already; got 'animals'"),
        (["datasets", "add", "x", str(tmp_path / "nowhere")], "got no such file or directory"),
        (["datasets", "add", "a/b", str(tiny_dataset)], "error: datasets add: name must be a plain name"),
        (["datasets", "remove", "nope"], "error: datasets remove: name must be a registered dataset; got 'nope'. Registered: animals."),
    ]:
        result = runner.invoke(app, [*args, "--store", str(store)], terminal_width=300)
        assert result.exit_code == 2, result.output
        assert result.output.strip().startswith("error:") and message in result.output
        assert len(result.output.strip().splitlines()) == 1
    one_class = tmp_path / "one-class" / "bear"
    one_class.mkdir(parents=True)
    for f in sorted((tiny_dataset / "bear").iterdir()):
        shutil.copy(f, one_class)
    result = runner.invoke(app, ["datasets", "add", "one", str(one_class.parent), "--store", str(store)])
    assert result.exit_code == 2 and "must have at least 2 classes; got 1" in result.output

    removed = runner.invoke(app, ["datasets", "remove", "animals", "--store", str(store)])
    assert removed.exit_code == 0 and "removed animals" in removed.output
    assert "no datasets registered" in runner.invoke(app, ["datasets", "list", "--store", str(store)]).output


@pytest.mark.usefixtures("no_server")
def test_watch_registers_settled_folders_once(tmp_path, tiny_dataset):
    from flows.registry import watch
    from storage.registry import list_datasets

    drop, store = tmp_path / "drop", tmp_path / "store"
    drop.mkdir()
    shutil.copytree(tiny_dataset, drop / "pets")
    shutil.copytree(tiny_dataset, drop / ".incoming")  # hidden: still being written
    (drop / "broken" / "only-class").mkdir(parents=True)
    shutil.copy(next((tiny_dataset / "cat").iterdir()), drop / "broken" / "only-class")
    reports = []
    done = watch(drop, store=store, interval_s=0.2, settle_s=0.5, once=True, report=lambda k, t: reports.append((k, t)))
    assert [r.entry.name for r in done] == ["pets"]
    assert [e.name for e in list_datasets(store)] == ["pets"]
    assert ("registered", next(t for k, t in reports if k == "registered")) in reports
    failed = [t for k, t in reports if k == "failed"]
    assert len(failed) == 1 and failed[0].startswith("broken: dataset 'broken': must have at least 2 classes")
    # a second pass registers nothing again
    assert watch(drop, store=store, interval_s=0.2, settle_s=0.5, once=True) == []

    result = runner.invoke(app, ["watch", str(tmp_path / "nowhere"), "--store", str(store), "--once"])
    assert result.exit_code == 2 and "must be a directory to watch; got no such directory" in result.output


def test_a_folder_still_changing_is_not_registered(tmp_path, tiny_dataset):
    import threading
    import time

    from flows.registry import folder_signature, watch

    drop = tmp_path / "drop"
    shutil.copytree(tiny_dataset, drop / "growing")
    before = folder_signature(drop / "growing")
    stop = threading.Event()

    def keep_writing():
        i = 0
        while not stop.is_set():
            (drop / "growing" / "cat" / f"extra{i}.png").write_bytes(min((tiny_dataset / "cat").iterdir()).read_bytes())
            i += 1
            time.sleep(0.1)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        assert watch(drop, store=tmp_path / "store", interval_s=0.2, settle_s=0.6, once=True) == []
    finally:
        stop.set()
        writer.join()
    assert folder_signature(drop / "growing")[0] > before[0]


@pytest.mark.usefixtures("no_server")
def test_serve_setup_and_ui_explain_what_is_missing(tmp_path):
    for cmd in (["serve", "--store", str(tmp_path)], ["setup"]):
        result = runner.invoke(app, cmd, terminal_width=300)
        assert result.exit_code == 2, result.output
        assert "a Prefect server must be configured; got PREFECT_API_URL unset" in result.output
    result = runner.invoke(app, ["serve", "--cron", "every night", "--store", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 2 and "--cron must be a cron expression such as '0 2 * * *'; got 'every night'" in result.output
    result = runner.invoke(app, ["serve", "--timezone", "Mars/Olympus", "--store", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 2 and "--timezone must be an IANA time zone" in result.output
    result = runner.invoke(app, ["serve", "--zoo", str(tmp_path / "nope.yaml"), "--store", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 2 and "zoo:" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["ui", "--prefect-port", str(port), "--store", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 2
    assert f"ui: port {port} on 127.0.0.1 must be free; got one in use. Pass --prefect-port with another port." in result.output


def test_python_deployments_and_prefect_yaml_agree(tmp_path):
    from flows.deployments import TRIGGER_PARAMETERS, build_deployments

    zoo = str(write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)]))
    nightly, on_new = build_deployments(zoo=zoo, store=str(tmp_path), cron="30 3 * * 1-5", timezone="Europe/Paris")
    assert (nightly.name, nightly.entrypoint) == ("nightly-rerank", "flows.nightly.nightly_rerank")
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("30 3 * * 1-5", "Europe/Paris")]
    assert nightly.parameters == {"zoo": zoo, "methods": "default", "store": str(tmp_path)}
    assert (on_new.name, on_new.entrypoint) == ("rank-on-new-dataset", "flows.rank_zoo.rank_zoo")
    (trigger,) = on_new.triggers
    assert trigger.expect == {"lead.dataset.registered"} and trigger.parameters == TRIGGER_PARAMETERS

    doc = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in doc["deployments"]}
    assert by_name["nightly-rerank"]["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert by_name["nightly-rerank"]["entrypoint"] == "flows/nightly.py:nightly_rerank"
    (yaml_trigger,) = by_name["rank-on-new-dataset"]["triggers"]
    assert yaml_trigger["expect"] == ["lead.dataset.registered"] and yaml_trigger["parameters"] == TRIGGER_PARAMETERS
    assert {d["work_pool"]["name"] for d in doc["deployments"]} == {"lead"}


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_rerank_ranks_every_registered_dataset_and_reuses_the_cache(tmp_path, tiny_dataset):
    import pyarrow.parquet as pq

    from flows.nightly import nightly_rerank
    from flows.registry import validate_dataset
    from lead.config import Settings
    from storage.registry import add_dataset

    store = tmp_path / "store"
    settings = Settings.from_env(store=store)
    zoo = str(write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)]))
    gone = tmp_path / "gone"
    shutil.copytree(tiny_dataset, gone)
    add_dataset(store, validate_dataset(tiny_dataset, "animals", settings))
    add_dataset(store, validate_dataset(gone, "gone", settings))
    shutil.rmtree(gone)

    first = nightly_rerank(zoo=zoo, store=str(store))
    assert first["animals"]["status"] == "ok" and first["animals"]["best_model"] == "efficientnet_lite0.in1k"
    assert (first["animals"]["extracted"], first["animals"]["cached"], first["animals"]["changed"]) == (1, 0, False)
    assert first["gone"]["status"] == "failed" and "got no such file or directory" in first["gone"]["error"]
    second = nightly_rerank(zoo=zoo, store=str(store))
    assert (second["animals"]["extracted"], second["animals"]["cached"]) == (0, 1)  # no forward pass repeated
    tables = [pq.read_table(p).to_pylist() for p in sorted((store / "rankings").glob("dataset=*/run=*.parquet"))]
    assert len(tables) == 2 and all(t[0]["dataset"] == "animals" and t[0]["status"] == "ok" for t in tables)
    assert tables[0][0]["score"] == pytest.approx(tables[1][0]["score"])

    shutil.rmtree(store / "rankings")
    from storage.registry import remove_dataset

    remove_dataset(store, "animals")
    with pytest.raises(RuntimeError, match="nightly-rerank: at least one dataset must be ranked; every one failed"):
        nightly_rerank(zoo=zoo, store=str(store))
    remove_dataset(store, "gone")
    assert nightly_rerank(zoo=zoo, store=str(store)) == {}
