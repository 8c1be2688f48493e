"""Faults: failing models, an unreachable tracking server, changed data, names, a killed run, and two
rankings at once on one store. Each is a case of docs/errors.md."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from lead.errors import InputError
from lead.zoo import save_checkpoint
from storage.history import query
from tests.conftest import lite_entry, write_zoo

pytestmark = pytest.mark.usefixtures("prefect_harness")
LEAD = str(Path(sys.executable).with_name("lead"))


def tiny_entry(name, arch, path, size=32):
    return {"name": name, "arch": arch, "weights": f"file:{path}", "input_size": size, "mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.fixture(scope="module")
def faulty_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    nan = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    with torch.no_grad():
        nan.conv_stem.weight.fill_(float("nan"))
    save_checkpoint(nan, root / "nan.safetensors")
    save_checkpoint(timm.create_model("test_vit3", pretrained=False, num_classes=3), root / "vit.safetensors")
    save_checkpoint(timm.create_model("test_efficientnet", pretrained=False, num_classes=3), root / "effnet.safetensors")
    (root / "corrupt.pth").write_bytes(b"\x80\x04 not a pickle")
    torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=3), root / "module.pth")
    return write_zoo(root / "zoo.yaml", [
        lite_entry(0),
        tiny_entry("nan-features", "test_efficientnet", "nan.safetensors"),
        tiny_entry("forward-raises", "test_vit3", "vit.safetensors"),  # fixed 160 px input, given 32
        tiny_entry("wrong-arch", "resnet18", "effnet.safetensors"),
        tiny_entry("corrupt", "resnet18", "corrupt.pth"),
        tiny_entry("unknown-arch", "no_such_net", "effnet.safetensors"),
        tiny_entry("pickled-module", "test_efficientnet", "module.pth"),
    ])


def test_each_failing_model_has_its_reason_and_the_others_are_ranked(tmp_path, tiny_dataset, faulty_zoo):
    from flows.rank_zoo import rank_zoo

    sel = rank_zoo(dataset=str(tiny_dataset), zoo=str(faulty_zoo), store=str(tmp_path / "s"), methods=["lead", "logme"]).to_dict()
    models = {m["model"]: m for m in sel["models"]}
    assert sel["best_model"] == "efficientnet_lite0.in1k" and models["efficientnet_lite0.in1k"]["status"] == "ok"
    expected = {
        "nan-features": "features must be finite; got NaN or Inf in 24 of 24 rows",
        "forward-raises": "Input height (32) doesn't match model (160)",
        "wrong-arch": "must fit resnet18",
        "corrupt": "must be a readable state dict",
        "unknown-arch": "arch must be a timm architecture; got 'no_such_net'",
        "pickled-module": "got an object the safe loader refuses (Unsupported global: GLOBAL "
                          "timm.models.efficientnet.EfficientNet was not an allowed global by default.). Re-save the "
                          "weights with torch.save(model.state_dict(), path) or safetensors.",
    }
    for name, text in expected.items():
        assert models[name]["status"] == "failed" and text in models[name]["error"], (name, models[name]["error"])
        assert models[name]["ranks"] == {}
    rows = query(tmp_path / "s", "SELECT model, status, error, mlflow_run_id FROM rankings WHERE method = 'lead' AND "
                 "status = 'failed'").to_pylist()
    assert {r["model"] for r in rows} == set(expected)
    assert not [r["model"] for r in rows if "\x1b" in r["error"]]  # no terminal escape codes stored
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 's'}/mlflow.db")
    children = client.search_runs([client.get_run(rows[0]["mlflow_run_id"]).info.experiment_id],
                                  filter_string="tags.status = 'failed'")
    assert sorted(r.data.tags["model"] for r in children) == sorted(expected)
    assert not [r.data.tags["model"] for r in children if "\x1b" in r.data.tags["error"]]


def test_timm_weights_offline_fail_fast_with_the_reason(tmp_path, tiny_dataset, monkeypatch):
    from flows.rank_zoo import rank_zoo

    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1 in the environment before the import; here the session has imported the hub already
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), {**lite_entry(1), "name": "hub", "arch": "resnet18",
                                                            "weights": "timm:a1_in1k"}])
    started = time.perf_counter()
    sel = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(tmp_path / "s")).to_dict()
    hub = next(m for m in sel["models"] if m["model"] == "hub")
    assert "timm weights resnet18.a1_in1k must be downloadable" in hub["error"]
    assert time.perf_counter() - started < 30


def test_unreachable_tracking_server_keeps_the_ranking(tmp_path, tiny_dataset):
    from flows.cli import app

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), lite_entry(1)])
    store = tmp_path / "s"
    started = time.perf_counter()
    out = CliRunner().invoke(app, ["rank", "-d", str(tiny_dataset), "-z", str(zoo), "--store", str(store),
                                   "--tracking-uri", "http://127.0.0.1:9"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "Ranking of 2 models" in out.output and "MLflow logging failed" in out.output
    assert "the ranking is in the rankings table" in out.output
    rows = query(store, "SELECT model, mlflow_run_id FROM rankings WHERE method = 'lead' ORDER BY model").to_pylist()
    assert [r["model"] for r in rows] == ["efficientnet_lite0.in1k", "efficientnet_lite1.in1k"]
    assert {r["mlflow_run_id"] for r in rows} == {""}
    assert time.perf_counter() - started < 90


def test_changed_files_are_re_extracted_and_unchanged_never(tmp_path, tiny_dataset):
    from flows.rank_zoo import rank_zoo

    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    store = tmp_path / "s"
    first = rank_zoo(dataset=str(data), zoo=str(zoo), store=str(store)).to_dict()
    same = rank_zoo(dataset=str(data), zoo=str(zoo), store=str(store)).to_dict()
    image = next((data / "cat").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")  # same pixels, different bytes: a different file
    changed = rank_zoo(dataset=str(data), zoo=str(zoo), store=str(store)).to_dict()
    assert [m["extraction"]["status"] for m in (first["models"][0], same["models"][0], changed["models"][0])] == [
        "extracted", "cached", "extracted"]
    assert first["dataset_fingerprint"] == same["dataset_fingerprint"] != changed["dataset_fingerprint"]
    assert len(list((store / "logits").glob("dataset=*"))) == 2


def test_names_that_would_escape_the_store_are_refused(tmp_path, tiny_dataset):
    from flows.cli import app

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    for name in ("..", "../x", "/abs", "a/b"):
        out = CliRunner().invoke(app, ["rank", "-d", str(tiny_dataset), "-z", str(zoo), "--store", str(tmp_path),
                                       "--name", name])
        assert out.exit_code == 2 and "name must be a plain name" in out.output, out.output
    with pytest.raises(InputError, match="name must be a plain name"):
        from lead.zoo import load_zoo

        load_zoo(write_zoo(tmp_path / "bad.yaml", [{**lite_entry(0), "name": "../../etc"}]))
    assert not (tmp_path / "logits").exists()


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (Z: ended, not yet reaped), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def running(pids: list[int]) -> list[int]:
    return [p for p in pids if _state(p) not in (None, "Z")]


def cmdlines(pids: list[int]) -> list[str]:
    out = []
    for p in pids:
        try:
            out.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            out.append("")
    return out


def descendants_of_a_ranking(pid: int) -> list[int]:
    """The processes below a running ``lead rank``: its temporary Prefect server and its DataLoader fork
    server at least (checked, so the test cannot pass on an empty list)."""
    from lead.processes import descendants

    pids = descendants(pid)
    names = cmdlines(pids)
    assert any("prefect.server.api.server:create_app" in c for c in names), names
    assert any("multiprocessing.forkserver" in c for c in names), names
    return pids


def seconds_until_gone(pids: list[int], timeout_s: float = 10.0) -> float:
    """Seconds until none of ``pids`` runs; fails naming the survivors after ``timeout_s``."""
    started = time.monotonic()
    while running(pids):
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"processes must end with the ranking; alive {timeout_s:.0f} s later: "
                        f"{cmdlines(running(pids))}")
        time.sleep(0.1)
    return time.monotonic() - started


def mlflow_runs(store: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time"])


def lead_rank(*args, api_url: str | None = None, **kwargs) -> subprocess.Popen:
    """``lead rank *args`` as a user starts it. Without ``api_url`` it starts its own temporary Prefect
    server (flows/ephemeral.py), as with no server configured; with it, it uses that server (conftest's
    ``harness_api_url``: for the tests that do not check the temporary server)."""
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "ERROR"}
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return subprocess.Popen([LEAD, "rank", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            **kwargs)


def test_two_rankings_at_once_on_one_store(tmp_path, tiny_dataset, harness_api_url):
    """Two ``lead rank`` processes at once on one store: both rankings land, whole. They use the session's
    Prefect server (the store is what this checks; the killed run, Ctrl-C and SIGTERM below check the
    temporary server each command starts without one), which saves two server starts."""
    a = shutil.copytree(tiny_dataset, tmp_path / "a")
    b = shutil.copytree(tiny_dataset, tmp_path / "b")
    (next((b / "cat").iterdir())).unlink()  # a different dataset
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), lite_entry(1)])
    store = tmp_path / "store"
    procs = [lead_rank("-d", str(d), "-z", str(zoo), "--store", str(store), api_url=harness_api_url)
             for d in (a, b)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("MLflow logging failed" not in o for o in outs)
    rows = query(store, "SELECT dataset, count(*) AS n, count(DISTINCT mlflow_run_id) AS runs, min(mlflow_run_id) AS run, "
                        "min(flow_run_id) AS flow_run FROM rankings GROUP BY dataset ORDER BY dataset").to_pylist()
    # 2 models x the 2 default methods (lead, logme) per dataset, one MLflow run each
    assert [(r["dataset"], r["n"], r["runs"]) for r in rows] == [("a", 4, 1), ("b", 4, 1)]
    from prefect import get_client

    with get_client(sync_client=True) as client:  # both flow runs are on the session's server, completed
        assert [client.read_flow_run(r["flow_run"]).state.is_completed() for r in rows] == [True, True]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    for r in rows:
        parent = client.get_run(r["run"])
        assert parent.info.status == "FINISHED" and parent.data.tags["dataset"] == r["dataset"]
    import pyarrow.parquet as pq

    files = list((store / "logits").rglob("*.parquet"))
    assert len(files) == 4 and all(pq.read_table(f).num_rows in (23, 24) for f in files)


def test_a_killed_run_leaves_no_partial_file_and_the_rerun_reuses_what_finished(tmp_path):
    from flows.rank_zoo import rank_zoo

    store = tmp_path / "store"
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), lite_entry(2, size=96)])
    # one DataLoader worker asked for (the default chooses none for these small images): it must end too
    proc = lead_rank("-d", "animal-mnist-fewshot", "-z", str(zoo), "--store", str(store), "--max-workers", "1",
                     "--batch-size", "8", "--num-workers", "1")
    deadline = time.time() + 240
    partial = []
    while time.time() < deadline and proc.poll() is None:
        partial = list((store / "logits").rglob(".part-*.parquet.*.tmp")) if (store / "logits").exists() else []
        if any("lite2" in str(p) for p in partial):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the ranking finished before it could be interrupted"
    below = descendants_of_a_ranking(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    seconds_until_gone(below)  # the Prefect server, the fork server and its DataLoader workers (measured: 3 s)
    finished = list((store / "logits").rglob("part-*.parquet"))
    assert [f.parent.name for f in finished] == ["model=efficientnet_lite0.in1k"]
    # the half-written file is invisible to the store's readers
    assert query(store, "SELECT DISTINCT model FROM logits").to_pylist() == [{"model": "efficientnet_lite0.in1k"}]
    assert query(store, "SELECT count(*) AS n FROM rankings").to_pylist() == [{"n": 0}]
    [killed] = mlflow_runs(store)
    assert killed.info.status == "RUNNING"  # nothing could end it; the next ranking on the store does
    rerun = rank_zoo(dataset="animal-mnist-fewshot", zoo=str(zoo), store=str(store)).to_dict()
    status = {m["model"]: m["extraction"]["status"] for m in rerun["models"]}
    assert status == {"efficientnet_lite0.in1k": "cached", "efficientnet_lite2.in1k": "extracted"}
    runs = mlflow_runs(store)
    assert [(r.info.run_id, r.info.status) for r in runs[:2]] == [(killed.info.run_id, "KILLED"),
                                                                 (rerun["mlflow"]["run_id"], "FINISHED")]
    assert [r.info.status for r in runs[2:]] == ["FINISHED", "FINISHED"]  # the rerun's child per model
    assert runs[0].info.end_time is not None


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_promptly_and_cleanly(tmp_path, sig, status):
    store = tmp_path / "store"
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0, size=96), lite_entry(1, size=96)])
    proc = lead_rank("-d", "animal-mnist-fewshot", "-z", str(zoo), "--store", str(store), "--batch-size", "4",
                     "--num-workers", "1")  # a DataLoader worker, which must end with the ranking

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (store / "logits").exists() and list((store / "logits").rglob(".part-*.tmp")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the ranking finished before it could be interrupted"
    below = descendants_of_a_ranking(proc.pid)
    proc.send_signal(sig)
    started = time.time()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == status, out
    assert time.time() - started < 20
    assert "interrupted: finished logits files are kept; run the same command again to resume." in out
    assert not list((store / "logits").rglob("*.tmp"))
    seconds_until_gone(below)  # the Prefect server, the fork server and its workers (measured: gone on exit, 3.3 s)
    # nothing half-made: the selection is ended as KILLED in MLflow and is not in the rankings table
    assert [(r.info.status, r.info.end_time is not None) for r in mlflow_runs(store)] == [("KILLED", True)]
    assert query(store, "SELECT count(*) AS n FROM rankings").to_pylist() == [{"n": 0}]


def test_a_damaged_cached_logits_file_is_set_aside_and_extracted_again(tmp_path, tiny_dataset, capsys):
    """64 bytes overwritten inside a column chunk of a cached file (footer intact): the rerun detects it by
    the page checksums, names the file, sets it aside and extracts again; the scores are the intact ones."""
    from flows.cli import _print_selection
    from lead.selection import Selection
    from flows.rank_zoo import rank_zoo
    from tests.storage.test_storage import damage

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    store = tmp_path / "s"
    first = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(store), methods=["lead", "leep"]).to_dict()
    path = Path(first["models"][0]["extraction"]["path"])
    damage(path, 3, "middle")  # the logits column: LEEP would change silently without the checksums
    again = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(store), methods=["lead", "leep"]).to_dict()
    assert again["models"][0]["extraction"]["status"] == "extracted"
    assert again["models"][0]["scores"] == first["models"][0]["scores"]
    assert path.exists() and path.with_name(path.name + ".corrupt").exists()
    [warning] = again["warnings"]
    assert warning.startswith(f"efficientnet_lite0.in1k: logits file {path} must read back as written; got OSError: ")
    assert warning.endswith(f"Set aside as {path.name}.corrupt; extracting again.")
    capsys.readouterr()
    _print_selection(Selection.from_dict(again))
    assert f"warning: {warning}" in capsys.readouterr().out.replace("\n", "")


def test_exact_ties_name_no_best_model_and_long_names_are_stored(tmp_path, tiny_dataset):
    """Two entries with the same weights score exactly alike: the output and MLflow say it is a tie instead
    of naming the alphabetically first. One of them is named with 30 CJK characters (270 characters
    percent-encoded, over the 255-byte file name limit): it is stored under a bounded folder name."""
    from mlflow import MlflowClient

    from flows.cli import app

    long_name = "模型" * 15
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), {**lite_entry(0), "name": long_name}])
    store = tmp_path / "s"
    result = CliRunner().invoke(app, ["rank", "-d", str(tiny_dataset), "-z", str(zoo), "--store", str(store),
                                      "--method", "lead,logme"], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert f"best model: tie between efficientnet_lite0.in1k and {long_name}" in result.output
    rows = query(store, "SELECT model, method, rank FROM rankings ORDER BY method, model").to_pylist()
    assert [r["rank"] for r in rows] == [1, 1, 1, 1]  # competition ranks kept
    run_id = query(store, "SELECT DISTINCT mlflow_run_id FROM rankings").to_pylist()[0]["mlflow_run_id"]
    tags = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db").get_run(run_id).data.tags
    assert tags["best_model"] == f"tie: efficientnet_lite0.in1k, {long_name}"
    assert tags["best_models"] == f"efficientnet_lite0.in1k,{long_name}"
    folders = sorted(p.name for p in (store / "logits").glob("dataset=*/model=*"))
    assert folders == ["model=" + "%E6%A8%A1%E5%9E%8B" * 10 + "~aab011b60f3a3b41",
                       "model=efficientnet_lite0.in1k"]
    assert query(store, "SELECT DISTINCT model FROM logits ORDER BY model").to_pylist() == [
        {"model": "efficientnet_lite0.in1k"}, {"model": long_name}]
