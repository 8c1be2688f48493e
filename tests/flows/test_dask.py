"""The Dask executor (flows.runners) on real Dask clusters and the real Prefect API.

One module-scoped local cluster of 2 worker processes is shared by the tests that point a flow at an
existing cluster (``DASK_SCHEDULER_ADDRESS``); one test lets the factory start and stop its own. Cluster
start-up on a busy 2-core machine takes 5-20 s, so the Dask tests are few.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from datetime import datetime

import pytest
from prefect import flow, task
from prefect.futures import wait

from flows.runners import (
    GPU_RESOURCE,
    check_cluster,
    dask_failure_text,
    gpu,
    local_cluster,
    settle,
    task_runner,
    worker_plan,
)
from lead.config import Settings
from lead.errors import InputError
from lead.placement import device_label, placed, where_text, worker_id
from lead.processes import descendants

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: Command-line marks of a Prefect API server process (lead's own and Prefect's temporary one).
SERVER_MARK = "prefect.server.api.server"


def _settings(**kw) -> Settings:
    return Settings.from_env(device="cpu", **kw)


def _servers() -> list[int]:
    """Pids of Prefect API servers below this process."""
    out = []
    for pid in descendants():
        try:
            if SERVER_MARK in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                out.append(pid)
        except OSError:
            continue
    return out


#: Python's own helpers, which live as long as this process (the session's reaper stops them at the end).
PYTHON_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _started_since(before: set[int]) -> dict[int, str]:
    """Processes below this one started since ``before``, with their command lines; Python's helpers left out."""
    out = {}
    for pid in set(descendants()) - before:
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if not any(h in cmd for h in PYTHON_HELPERS):
            out[pid] = cmd[:160]
    return out


def _child_ok() -> int:
    """What a DataLoader does: start a child process (refused in a daemonic process)."""
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join(30)
    return p.exitcode


@task(name="placed-sleep")
def placed_sleep(seconds: float) -> dict:
    from prefect.settings import PREFECT_API_URL

    with placed("cpu") as where:
        time.sleep(seconds)
    return {**where.as_record(), "pid": os.getpid(), "api": PREFECT_API_URL.value(), "child_exit": _child_ok(),
            "servers": _servers()}


@task(name="kill-own-worker")
def kill_own_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _run_gpu_tasks(runner, n: int, seconds: float) -> list[dict]:
    @flow(name="dask-mechanics", task_runner=runner)
    def mechanics() -> list[dict]:
        check_cluster()
        with gpu():
            futures = [placed_sleep.submit(seconds) for _ in range(n)]
        wait(futures)
        return [f.result() for f in futures]

    return mechanics()


def _no_overlap(records: list[dict]) -> None:
    by_worker: dict[str, list[tuple[datetime, datetime]]] = {}
    for r in records:
        by_worker.setdefault(r["worker"], []).append((datetime.fromisoformat(r["extract_start"]),
                                                      datetime.fromisoformat(r["extract_end"])))
    for spans in by_worker.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, f"two GPU tasks overlapped on one worker: {spans}"


def _warm() -> None:
    """In a worker: import what an extraction imports, once (10-20 s per process on a busy 2-core box)."""
    import timm  # noqa: F401

    import tasks.extract  # noqa: F401
    import tasks.score  # noqa: F401


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 worker processes with the GPU resource, shared by this module's tests; its
    workers have imported torch and timm."""
    from distributed import Client

    with local_cluster(2) as c:
        with Client(c.scheduler_address, set_as_default=False) as client:
            client.run(_warm)
        yield c


# --- plain functions: no cluster ---------------------------------------------------------------------

def test_worker_plan_one_worker_per_gpu_else_max_workers():
    assert worker_plan(_settings(max_workers=3), gpu_ids=[]) == (3, None)
    assert worker_plan(Settings.from_env(device="auto", max_workers=2), gpu_ids=["0", "1", "2"]) == (2, ["0", "1"])
    assert worker_plan(Settings.from_env(device="cuda", max_workers=4), gpu_ids=["2", "3"]) == (2, ["2", "3"])
    assert worker_plan(Settings.from_env(device="cuda:1", max_workers=4), gpu_ids=["2", "3"]) == (1, ["3"])
    assert worker_plan(_settings(max_workers=2), gpu_ids=["0", "1"]) == (2, None)  # --device cpu: not pinned
    with pytest.raises(InputError, match=r"device 'cuda:5' must exist; got 2 visible GPU\(s\)"):
        worker_plan(Settings.from_env(device="cuda:5", max_workers=1), gpu_ids=["0", "1"])


def test_executor_setting_is_validated(monkeypatch):
    monkeypatch.setenv("LEAD_EXECUTOR", "Dask")
    assert Settings.from_env().executor == "dask"
    monkeypatch.setenv("LEAD_EXECUTOR", "ray")
    with pytest.raises(InputError, match=r"LEAD_EXECUTOR must be one of threads, dask; got 'ray'"):
        Settings.from_env()
    monkeypatch.delenv("LEAD_EXECUTOR")
    assert Settings.from_env().executor == "threads"
    with pytest.raises(InputError, match=r"executor must be one of threads, dask; got 'spark'"):
        Settings.from_env(executor="spark")
    assert type(task_runner(Settings.from_env())).__name__ == "ThreadPoolTaskRunner"


def test_device_label_names_the_hosts_gpu():
    assert device_label("cpu", visible="3") == "cpu"
    assert device_label("cuda", visible="3") == "cuda:3"
    assert device_label("cuda:1", visible="2,5") == "cuda:5"
    assert device_label("cuda:0", visible="") == "cuda:0"
    assert worker_id().endswith(f":{os.getpid()}")
    here = "hostA:100"
    assert where_text("hostA:100", "cpu", here=here) == ""  # the thread pool: nothing to add
    assert where_text("hostA:200", "cpu", here=here) == "pid 200"
    assert where_text("hostB:300", "cuda:1", here=here) == "hostB:300, cuda:1"
    assert where_text("", "", here=here) == ""


def test_killed_worker_text_names_the_worker():
    from distributed.scheduler import KilledWorker

    class W:  # what the scheduler's WorkerState exposes
        address = "tcp://127.0.0.1:4242"

    text = dask_failure_text(KilledWorker("key", W(), 0))
    assert "died (KilledWorker: worker tcp://127.0.0.1:4242)" in text and "not retried" in text


# --- the factory's own local cluster ----------------------------------------------------------------

def test_local_cluster_from_the_factory_runs_gpu_tasks_one_at_a_time_per_worker_process(monkeypatch):
    """Two worker processes, other than pytest's; one GPU task at a time on each (2 threads each); the
    workers use the harness's API (no server of their own); DataLoader-style children can start; the
    cluster is gone when the flow ends."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    from prefect.settings import PREFECT_API_URL

    before = set(descendants())
    servers_before = _servers()
    runner = task_runner(_settings(executor="dask", max_workers=2))
    assert type(runner).__name__ == "DaskTaskRunner"
    started = time.monotonic()
    records = _run_gpu_tasks(runner, n=4, seconds=1.0)
    took = time.monotonic() - started
    pids = {r["pid"] for r in records}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {r["worker"] for r in records} == {worker_id(p) for p in pids}
    _no_overlap(records)
    assert {r["api"] for r in records} == {PREFECT_API_URL.value()}
    assert all(r["servers"] == [] for r in records)  # no worker started an API server of its own
    assert _servers() == servers_before
    assert {r["child_exit"] for r in records} == {0}  # non-daemonic workers
    assert all(r["device"] == "cpu" for r in records)
    deadline = time.monotonic() + 10
    while (left := _started_since(before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"the local cluster's processes must end with the flow; got {left}"
    print(f"local 2-worker cluster, 4 x 1 s GPU tasks: {took:.1f} s including start-up")


def test_runners_for_shares_one_local_cluster_between_sub_flows_and_closes_it(monkeypatch):
    """nightly and bench: every runner of the block connects to one local cluster, closed at the block's end."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    from distributed import Client

    from flows.runners import runners_for

    with runners_for(_settings(executor="dask", max_workers=1)) as make:
        first, second = make(), make()
        assert first.address == second.address and first.address.startswith("tcp://127.0.0.1:")
        with Client(first.address, set_as_default=False) as client:
            assert [w["resources"] for w in client.scheduler_info(n_workers=-1)["workers"].values()] == [{GPU_RESOURCE: 1}]
    with pytest.raises(OSError):
        Client(first.address, timeout=2, set_as_default=False)
    with runners_for(_settings(max_workers=3)) as make:  # threads: a thread pool per sub-flow, nothing started
        assert type(make()).__name__ == "ThreadPoolTaskRunner"


# --- an existing cluster: DASK_SCHEDULER_ADDRESS ---------------------------------------------------

def test_scheduler_address_runs_every_task_on_that_clusters_workers_and_leaves_it_running(cluster, monkeypatch):
    from distributed import Client

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        worker_pids = set(client.run(os.getpid).values())
    records = _run_gpu_tasks(task_runner(_settings(executor="dask")), n=4, seconds=0.5)
    assert {r["pid"] for r in records} <= worker_pids
    _no_overlap(records)
    assert len(cluster.scheduler_info["workers"]) == 2  # not stopped by the flow


def test_a_killed_worker_fails_only_its_task(cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)

    @flow(name="dask-killed-worker", task_runner=task_runner(_settings(executor="dask")))
    def killed():
        doomed = kill_own_worker.submit()
        fine = placed_sleep.submit(0.1)
        return settle(doomed), settle(fine)

    doomed, fine = killed()
    assert doomed.is_failed() and "worker running this task died (KilledWorker" in doomed.message
    assert fine.is_completed() and fine.result()["pid"] != os.getpid()
    cluster.wait_for_workers(2, timeout=120)  # the nanny restarts the killed worker


def test_a_cluster_without_the_gpu_resource_is_refused():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as plain, Client(plain) as client:
        with pytest.raises(InputError, match=rf"must have the resource {GPU_RESOURCE}=1 .* got 1 worker\(s\) without it"):
            check_cluster(client, timeout_s=30)


if not sys.platform.startswith("linux"):  # /proc for descendants
    pytestmark = [pytestmark, pytest.mark.skip(reason="Linux only")]


# --- rankings on Dask (phase 2: the rank-zoo flow) ----------------------------------------------------

RANK_METHODS = "lead,logme"


@pytest.fixture(scope="module")
def zoo3(tmp_path_factory):
    """Three real EfficientNet-Lites, a model whose checkpoint is missing, and one whose checkpoint is not
    a checkpoint (it fails on the worker, in load_model)."""
    from tests.conftest import lite_entry, write_zoo

    root = tmp_path_factory.mktemp("zoo3")
    (root / "garbage.safetensors").write_bytes(b"not a safetensors file" * 10)
    return write_zoo(root / "zoo.yaml", [
        lite_entry(0), lite_entry(1), lite_entry(2),
        {**lite_entry(0), "name": "missing", "weights": "file:missing.safetensors"},
        {**lite_entry(0), "name": "garbage", "weights": "file:garbage.safetensors"},
    ])


def _rank(runner, dataset, zoo, store):
    from flows.rank_zoo import rank_zoo

    return rank_zoo.with_options(task_runner=runner)(dataset=str(dataset), zoo=str(zoo), store=str(store),
                                                    methods=RANK_METHODS)


@pytest.fixture(scope="module")
def on_threads(tmp_path_factory, tiny_dataset, zoo3):
    return _rank(task_runner(_settings(max_workers=2)), tiny_dataset, zoo3, tmp_path_factory.mktemp("threads"))


def _rank_on(cluster, dataset, zoo, store):
    """A ranking on ``cluster`` through DASK_SCHEDULER_ADDRESS, as a user points lead at a running cluster."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    try:
        return _rank(task_runner(_settings(executor="dask")), dataset, zoo, store)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def on_dask(tmp_path_factory, tiny_dataset, zoo3, cluster):
    """The same ranking on the module's cluster (DASK_SCHEDULER_ADDRESS): (store, selection)."""
    store = tmp_path_factory.mktemp("dask")
    return store, _rank_on(cluster, tiny_dataset, zoo3, store)


@pytest.fixture(scope="module")
def on_dask_again(on_dask, tiny_dataset, zoo3, cluster):
    """The same ranking again on the same store: (store, first selection, second selection)."""
    store, first = on_dask
    return store, first, _rank_on(cluster, tiny_dataset, zoo3, store)


def _by_model(sel) -> dict:
    return {m.model: m for m in sel.models}


def test_dask_ranks_like_the_thread_pool_in_the_clusters_worker_processes(on_threads, on_dask, cluster):
    from distributed import Client

    _, first = on_dask
    threads, dask = _by_model(on_threads), _by_model(first)
    ok = [n for n, m in threads.items() if m.ok]
    assert sorted(ok) == ["efficientnet_lite0.in1k", "efficientnet_lite1.in1k", "efficientnet_lite2.in1k"]
    assert [m.model for m in on_threads.models] == [m.model for m in first.models]
    for name in ok:
        assert dask[name].ok and dask[name].ranks == threads[name].ranks
        for method, value in threads[name].scores.items():
            assert dask[name].scores[method] == pytest.approx(value, abs=1e-6)
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        worker_pids = set(client.run(os.getpid).values())
    ran = {dask[n].extraction.worker for n in ok}
    assert {int(w.rsplit(":", 1)[1]) for w in ran} <= worker_pids and os.getpid() not in worker_pids
    assert len(ran) == 2  # both workers extracted
    assert {threads[n].extraction.worker for n in ok} == {worker_id()}  # the thread pool: this process
    _no_overlap([{"worker": dask[n].extraction.worker, "extract_start": dask[n].extraction.start,
                  "extract_end": dask[n].extraction.end} for n in ok])


def test_failures_on_dask_fail_only_their_model_and_are_not_retried(on_dask):
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    _, first = on_dask
    models = _by_model(first)
    assert models["missing"].status == "failed" and "missing.safetensors must exist" in models["missing"].error
    assert models["garbage"].status == "failed" and models["garbage"].extraction is None
    assert "ModelLoadError" in models["garbage"].error or "garbage.safetensors" in models["garbage"].error
    assert [m.model for m in first.models][-2:] == ["garbage", "missing"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["extract-garbage"])))
    assert runs and all(r.run_count == 1 and r.state.is_failed() for r in runs)  # a bad checkpoint is not retried


def test_a_rerun_on_dask_is_all_cached_and_names_the_worker_that_made_each_file(on_dask_again):
    import pyarrow.parquet as pq

    from storage.history import query

    store, first, again = on_dask_again
    before, after = _by_model(first), _by_model(again)
    ok = [n for n, m in before.items() if m.ok]
    assert {after[n].extraction.status for n in ok} == {"cached"}
    for n in ok:
        assert after[n].extraction.worker == before[n].extraction.worker  # who made the file
        assert after[n].extraction.start == before[n].extraction.start
        meta = pq.read_metadata(after[n].extraction.path).metadata
        assert meta[b"lead.worker"].decode() == before[n].extraction.worker
        assert meta[b"lead.device"].decode() == "cpu"
    rows = query(store, f"SELECT model, worker, device, extract_start, extract_end FROM rankings "
                        f"WHERE run_id = '{again.run_id}' AND method = 'lead' AND status = 'ok'").to_pylist()
    assert {r["model"]: r["worker"] for r in rows} == {n: before[n].extraction.worker for n in ok}
    assert all(r["device"] == "cpu" and r["extract_start"] < r["extract_end"] for r in rows)


def _extracting() -> list[str]:
    """In a worker: the models whose extraction runs now (the ``spec`` of each thread's ``_extract`` frame)."""
    names = []
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_extract" and "spec" in frame.f_locals:
                names.append(frame.f_locals["spec"].name)
                break
            frame = frame.f_back
    return names


def test_a_worker_killed_mid_extraction_fails_only_its_model(tmp_path, tiny_dataset, cluster, monkeypatch):
    import threading

    from distributed import Client

    from tests.conftest import lite_entry, write_zoo

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), lite_entry(2, size=160)])
    victim = "efficientnet_lite2.in1k"
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    cluster.wait_for_workers(2, timeout=120)
    outcome: dict = {}
    import contextvars

    def run():
        try:
            outcome["sel"] = _rank(task_runner(_settings(executor="dask")), tiny_dataset, zoo, tmp_path / "store")
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,))
    thread.start()
    killed = None
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        deadline = time.monotonic() + 120
        while killed is None and thread.is_alive() and time.monotonic() < deadline:
            try:
                running = client.run(_extracting)
                pids = client.run(os.getpid)
            except Exception:  # noqa: BLE001 - a worker restarting
                time.sleep(0.2)
                continue
            for address, names in running.items():
                if victim in names:
                    killed = pids[address]
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.1)
    thread.join(180)
    assert killed is not None, "the extraction finished before it could be killed"
    sel = outcome["sel"]
    models = _by_model(sel)
    assert models[victim].status == "failed"
    assert "worker running this task died (KilledWorker" in models[victim].error
    assert models["efficientnet_lite0.in1k"].ok and models["efficientnet_lite0.in1k"].ranks["lead"] == 1
    cluster.wait_for_workers(2, timeout=120)  # the nanny restarts the killed worker


def test_lead_rank_executor_dask_from_the_cli_starts_one_api_and_leaves_nothing_running(tmp_path, tiny_dataset,
                                                                                       monkeypatch):
    """`lead rank --executor dask` with no Prefect server configured: the command's own temporary API is the
    only one (its worker uses it), the extraction ran in the cluster's worker process, and every process the
    command started is gone when it ends. (One model, one worker: each worker process imports torch, the
    slowest part of this test on a busy machine; two workers are shown above.)"""
    import json
    import subprocess

    from tests.conftest import lite_entry, write_zoo

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DASK_SCHEDULER_ADDRESS")}
    lead = os.path.join(os.path.dirname(sys.executable), "lead")
    proc = subprocess.Popen([lead, "rank", "-d", str(tiny_dataset), "-z", str(zoo), "--store", str(tmp_path / "store"),
                             "--executor", "dask", "--max-workers", "1", "--method", "lead", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    servers: set[int] = set()
    seen: set[int] = set()
    while proc.poll() is None:
        below = descendants(proc.pid)
        seen.update(below)
        servers.update(p for p in below if SERVER_MARK in _cmdline(p))
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    sel = json.loads(out)
    workers = {m["extraction"]["worker"] for m in sel["models"]}
    assert len(servers) == 1, f"one Prefect API for the flow and its workers; got {len(servers)}"
    [worker] = workers
    assert int(worker.rsplit(":", 1)[1]) in seen and int(worker.rsplit(":", 1)[1]) != proc.pid
    assert [m["status"] for m in sel["models"]] == ["ok"]
    deadline = time.monotonic() + 10
    while (alive := [p for p in seen if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"nothing the command started may outlive it; got {[_cmdline(p) for p in alive]}"


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
