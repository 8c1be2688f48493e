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


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 worker processes with the GPU resource, shared by this module's tests."""
    with local_cluster(2) as c:
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
