"""Task runners: where a flow's tasks run. One factory, :func:`task_runner`, used by every flow.

| executor (``--executor``, ``LEAD_EXECUTOR``) | runner | where the tasks run |
|---|---|---|
| ``threads`` (default) | ``ThreadPoolTaskRunner(max_workers)`` | threads of the flow's process |
| ``dask``, ``DASK_SCHEDULER_ADDRESS`` unset | ``prefect_dask.DaskTaskRunner`` on a local cluster this flow run starts and stops | one worker *process* per GPU (pinned to it with ``CUDA_VISIBLE_DEVICES``), else ``max_workers`` worker processes, each with the resource ``GPU=1`` |
| ``dask``, ``DASK_SCHEDULER_ADDRESS`` set | ``DaskTaskRunner(address=...)`` | the workers of that existing cluster; none is started or stopped |

Facts this module handles (measured here with prefect 3.9.1, prefect-dask 0.3.7, distributed 2026.8):

- A GPU-bound submit is wrapped in :func:`gpu`: ``dask.annotate(resources={"GPU": 1})``. A worker started
  with ``GPU=1`` then runs one such task at a time, whatever its threads; other tasks (scoring) need no
  resource. On a cluster where no worker has the resource such a task would wait for ever:
  :func:`check_cluster` refuses it first.
- Dask workers are daemonic processes by default, and a daemonic process may not start children: the
  DataLoader's decoding workers could not start. Local clusters run with ``distributed.worker.daemon:
  False`` (a remote worker needs ``DASK_DISTRIBUTED__WORKER__DAEMON=False`` in its environment).
- A worker without a Prefect API starts its own temporary server (three servers for a 2-worker cluster,
  about three times slower). The workers of a local cluster get the flow's API URL (``PREFECT_API_URL``,
  or the temporary server Prefect started for this process); remote workers need ``PREFECT_API_URL``.
- Dask's nanny sets ``OMP_NUM_THREADS=1`` in each worker by default; a local cluster gives each worker
  its share of the cores instead (torch and BLAS read it at start).
- A worker that dies during a task (killed, out of memory) surfaces as ``distributed.KilledWorker`` while
  the Prefect task run stays Pending or Running: :func:`settle` turns it into a Failed state with the
  reason (and sets it on the API), so that model is recorded as failed and the others are ranked. A
  local cluster does not hand a task that killed a worker to another one
  (``distributed.scheduler.allowed-failures: 0``): it would most likely kill that one too.
- Prefect's ``quote()`` does not survive pickling (the task receives a tuple): tasks take plain references.

Shutdown: the local cluster is closed when the flow run ends (the runner's context exit), also on an
exception; its worker processes also end by themselves when the flow's process dies, however it dies
(Dask's nanny holds a pipe they watch). A remote cluster is never stopped by ``lead``: Ctrl-C ends the
flow's client, and the tasks it had submitted are released by the scheduler once the client is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from lead.config import EXECUTORS, Settings, cpu_threads
from lead.errors import InputError

if TYPE_CHECKING:  # imported lazily: dask costs about a second to import
    from distributed import SpecCluster
    from prefect.futures import PrefectFuture
    from prefect.states import State

#: Dask's own variable naming an existing scheduler (``dask.config`` key ``scheduler-address``).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
#: The Dask worker resource an extraction holds: one per GPU (or CPU slot), ``--resources GPU=1``.
GPU_RESOURCE = "GPU"
#: Threads per local worker: one GPU-bound task (the resource) plus one scoring task beside it (our choice).
THREADS_PER_WORKER = 2
#: Seconds to wait for a cluster's first worker before refusing it (a fresh local worker imports
#: Python, Prefect and torch: 5-20 s on a busy 2-core box).
WORKER_WAIT_S = 120.0
#: Dask settings of every cluster ``lead`` starts (see the module docstring for why).
LOCAL_DASK_CONFIG: dict[str, Any] = {
    "distributed.worker.daemon": False,
    "distributed.scheduler.allowed-failures": 0,
}

LOG = logging.getLogger("lead.runners")


def thread_runner(settings: Settings) -> ThreadPoolTaskRunner:
    """A thread pool of ``settings.max_workers`` threads in the flow's process."""
    return ThreadPoolTaskRunner(max_workers=settings.max_workers)


def dask_runner(settings: Settings) -> TaskRunner:
    """A ``DaskTaskRunner``: on the cluster at ``$DASK_SCHEDULER_ADDRESS`` when set (started by someone
    else, never stopped here), else on a local cluster of :func:`worker_plan` processes that the flow run
    starts (at its first submit) and stops (when it ends).

    Raises:
        InputError: ``prefect-dask`` is not installed.
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:  # a dependency; a broken install gets one clear line
        raise InputError("executor 'dask' needs the package prefect-dask; got it missing. "
                         "Install it: pip install 'prefect-dask>=0.3.7,<0.4'.") from err
    address = scheduler_address()
    if address:
        return DaskTaskRunner(address=address, client_kwargs={"set_as_default": False})
    n_workers, gpus = worker_plan(settings)
    return DaskTaskRunner(cluster_class=local_cluster,
                          cluster_kwargs={"n_workers": n_workers, "gpus": gpus})


#: The executors: name -> factory of the task runner (``lead.config.EXECUTORS`` lists the names).
RUNNERS: dict[str, Callable[[Settings], TaskRunner]] = {"threads": thread_runner, "dask": dask_runner}
assert tuple(RUNNERS) == EXECUTORS, "lead.config.EXECUTORS and flows.runners.RUNNERS must list the same executors"


def task_runner(settings: Settings) -> TaskRunner:
    """The task runner of ``settings.executor`` (``threads`` or ``dask``; see the module docstring).

    Raises:
        InputError: an unknown executor (``Settings.from_env`` already refuses one), or prefect-dask missing.
    """
    try:
        factory = RUNNERS[settings.executor]
    except KeyError:
        raise InputError(f"executor must be one of {', '.join(RUNNERS)}; got {settings.executor!r}.") from None
    return factory(settings)


@contextlib.contextmanager
def runners_for(settings: Settings) -> Iterator[Callable[[], TaskRunner]]:
    """For a flow that runs several ranking sub-flows (nightly, bench): a factory of task runners that
    share one cluster. With ``dask`` and no ``DASK_SCHEDULER_ADDRESS`` one local cluster is started for the
    whole block (not one per sub-flow: a start costs 5-20 s) and closed at its end, also on an error;
    each runner connects to it. Otherwise each call is :func:`task_runner`."""
    if settings.executor != "dask" or scheduler_address():
        yield lambda: task_runner(settings)
        return
    from prefect_dask import DaskTaskRunner

    n_workers, gpus = worker_plan(settings)
    with local_cluster(n_workers, gpus) as cluster:
        yield lambda: DaskTaskRunner(address=cluster.scheduler_address, client_kwargs={"set_as_default": False})


def scheduler_address() -> str | None:
    """``$DASK_SCHEDULER_ADDRESS`` (Dask's own variable), or None when unset or empty."""
    return os.environ.get(SCHEDULER_ENV) or None


def worker_plan(settings: Settings, gpu_ids: list[str] | None = None) -> tuple[int, list[str] | None]:
    """How many local workers to start, and the GPU each one is pinned to.

    - ``device`` ``cpu``/``mps``, or no GPU: ``max_workers`` workers, not pinned.
    - ``device`` ``auto``/``cuda`` with GPUs: one worker per GPU, at most ``max_workers`` (whose default
      is the number of GPUs), worker i pinned to the i-th GPU this process sees.
    - ``device`` ``cuda:N``: one worker, pinned to GPU N.

    Args:
        gpu_ids: the GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` names them (default: from
            ``CUDA_VISIBLE_DEVICES``, else ``0..torch.cuda.device_count()-1``).
    Returns:
        (number of workers, one ``CUDA_VISIBLE_DEVICES`` value per worker, or None: not pinned).
    """
    if gpu_ids is None:
        gpu_ids = visible_gpus()
    device = settings.device or "auto"
    if device.startswith("cuda:") and gpu_ids:
        index = int(device.split(":", 1)[1])
        if index >= len(gpu_ids):
            raise InputError(f"device {device!r} must exist; got {len(gpu_ids)} visible GPU(s). Use --device auto.")
        return 1, [gpu_ids[index]]
    if device in ("auto", "cuda") and gpu_ids:
        n = max(1, min(len(gpu_ids), settings.max_workers))
        return n, gpu_ids[:n]
    return max(1, settings.max_workers), None


def visible_gpus() -> list[str]:
    """The GPUs this process sees, named as ``CUDA_VISIBLE_DEVICES`` would name them; [] without CUDA."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        count = 0
    if not count:
        return []
    listed = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return listed[:count] if len(listed) >= count else [str(i) for i in range(count)]


def shared_api_url() -> str | None:
    """The Prefect API this process uses, for its workers: ``PREFECT_API_URL``, else the temporary server
    Prefect started for this process (``SubprocessASGIServer``), else None."""
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return url
    server_mod = sys.modules.get("prefect.server.api.server")
    server = getattr(server_mod, "SubprocessASGIServer", None)
    instance = getattr(server, "_instances", {}).get(None) if server else None
    if instance is not None and getattr(instance, "running", False):
        return instance.api_url
    return None


def worker_env(n_workers: int, gpu: str | None, api_url: str | None) -> dict[str, str]:
    """The environment of one local worker process on top of the flow's own: its share of the cores for
    torch and BLAS, its GPU (``CUDA_VISIBLE_DEVICES``) and the flow's Prefect API."""
    threads = str(max(1, cpu_threads() // max(1, n_workers)))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def local_cluster(n_workers: int, gpus: list[str] | None = None, threads_per_worker: int = THREADS_PER_WORKER,
                  api_url: str | None = None) -> SpecCluster:
    """Start a local Dask cluster (what ``distributed.LocalCluster`` starts, with a spec per worker): a
    scheduler in this process and ``n_workers`` worker processes (each under a nanny in this process), each with ``threads_per_worker`` threads and the resource ``GPU=1``,
    worker i pinned to ``gpus[i]`` when given; non-daemonic, on 127.0.0.1, no dashboard.

    Args:
        n_workers: worker processes, >= 1.
        gpus: one ``CUDA_VISIBLE_DEVICES`` value per worker, or None.
        threads_per_worker: threads of each worker (tasks at once; GPU-bound ones are 1 per worker).
        api_url: the Prefect API the workers use (default: :func:`shared_api_url`).
    Returns:
        A started ``distributed.SpecCluster`` with every worker up; close it (``with`` or ``.close()``).
    Raises:
        InputError: ``n_workers`` < 1, or ``gpus`` not one per worker.
    """
    import dask
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    if n_workers < 1:
        raise InputError(f"local cluster: n_workers must be >= 1; got {n_workers}.")
    if gpus is not None and len(gpus) != n_workers:
        raise InputError(f"local cluster: gpus must list one GPU per worker ({n_workers}); got {gpus!r}.")
    dask.config.set(LOCAL_DASK_CONFIG)  # global on purpose: a nanny reads it again when it restarts a worker
    api_url = api_url or shared_api_url()
    # What distributed.LocalCluster builds, with one spec per worker (its own GPU and environment). Built
    # in the constructor, so a worker that cannot start raises here instead of a wait for workers.
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "protocol": "tcp://", "dashboard": False,
                                               "dashboard_address": "127.0.0.1:0"}}  # Dask's HTTP routes: a free port
    workers = {
        f"lead-{i}": {"cls": Nanny, "options": {
            "host": "127.0.0.1", "protocol": "tcp://", "name": f"lead-{i}", "nthreads": threads_per_worker,
            "resources": {GPU_RESOURCE: 1}, "memory_limit": MEMORY_LIMIT // n_workers, "dashboard": False,
            "silence_logs": logging.ERROR, "env": worker_env(n_workers, gpus[i] if gpus else None, api_url)}}
        for i in range(n_workers)
    }
    cluster = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR, name="lead")
    _LOCAL.add(cluster)
    return cluster


#: Local clusters started by this process and not yet closed (for :func:`cancel_local_workers`).
_LOCAL: weakref.WeakSet = weakref.WeakSet()


def cancel_local_workers(timeout_s: float = 2.0) -> int:
    """On Ctrl-C/SIGTERM: ask the workers of the local clusters this process started to stop their
    extractions after the current batch (``lead.extract.CANCEL`` in each worker: temporary files removed,
    finished files kept), as the thread pool does. Remote clusters are left alone (their long-lived
    workers would stay cancelled). Returns the number of workers told; never raises."""
    told = 0
    for cluster in list(_LOCAL):
        try:
            if cluster.status.name in ("closing", "closed"):
                continue
            from distributed import Client

            with Client(cluster.scheduler_address, timeout=timeout_s, set_as_default=False) as client:
                told += len(client.run(_cancel_extractions, wait=True))
        except Exception as err:  # noqa: BLE001 - the stop goes on; the workers end with this process anyway
            LOG.warning("could not tell the local Dask workers to stop: %s", err)
    return told


def _cancel_extractions() -> None:
    from lead.extract import CANCEL

    CANCEL.set()


@contextlib.contextmanager
def gpu() -> Iterator[None]:
    """Around a ``task.submit``: the task holds one ``GPU`` resource of a Dask worker while it runs. With
    the thread pool (Dask not imported) it does nothing."""
    if "dask" not in sys.modules:
        yield
        return
    import dask

    with dask.annotate(resources={GPU_RESOURCE: 1}):
        yield


def current_client():
    """The Dask client of the running flow's task runner, or None when it is not a ``DaskTaskRunner``.
    Starts the runner's cluster or connection if it has not been yet."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    if runner is None or type(runner).__name__ != "DaskTaskRunner":
        return None
    return runner.client


def check_cluster(client=None, timeout_s: float = WORKER_WAIT_S) -> dict[str, dict]:
    """Refuse a cluster where GPU-bound tasks would wait for ever: wait up to ``timeout_s`` for at least
    one worker, then require one with the ``GPU`` resource.

    Args:
        client: a Dask client (default: :func:`current_client`; no client: nothing to check).
    Returns:
        {worker address: {"name", "resources", "nthreads"}} of the cluster's workers ({} without a client).
    Raises:
        InputError: no worker joined within ``timeout_s``, or none has the ``GPU`` resource.
    """
    client = client if client is not None else current_client()
    if client is None:
        return {}
    address = getattr(client.scheduler, "address", "?")
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (TimeoutError, OSError) as err:
        raise InputError(f"Dask cluster at {address}: at least one worker must join within {timeout_s:.0f} s; got none "
                         f"({type(err).__name__}). Start workers with `dask worker {address} --resources "
                         f"{GPU_RESOURCE}=1`.") from None
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not any(w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1 for w in workers.values()):
        raise InputError(f"Dask cluster at {address}: at least one worker must have the resource {GPU_RESOURCE}=1 "
                         f"(extractions wait for it); got {len(workers)} worker(s) without it. Start each worker with "
                         f"`dask worker {address} --resources {GPU_RESOURCE}=1`, one per GPU.")
    return {a: {"name": w.get("name"), "resources": w.get("resources", {}), "nthreads": w.get("nthreads")}
            for a, w in workers.items()}


def settle(future: PrefectFuture) -> State:
    """Wait for ``future`` and return its final Prefect state. A Dask task whose worker died
    (``KilledWorker``), or that was cancelled or lost, has no Prefect final state (the task run is left
    Pending or Running): it gets a ``Failed`` state saying so, also set on the API (best effort) so the
    UI does not show it running for ever. Thread-pool futures are returned as they are."""
    from prefect.states import Failed

    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is None or not hasattr(wrapped, "exception"):  # not a Dask future
        future.wait()
        return future.state
    try:
        outcome = wrapped.result()
    except BaseException as err:  # noqa: BLE001 - KilledWorker, CancelledError, a lost connection
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        message = dask_failure_text(err)
        state = Failed(message=message, data=RuntimeError(message))
        _set_api_state(future.task_run_id, state)
        return state
    from prefect.client.schemas.objects import State as StateType

    if isinstance(outcome, StateType):
        return outcome
    future.wait()
    return future.state


def dask_failure_text(err: BaseException) -> str:
    """One line for a task Dask could not finish: ``KilledWorker`` names the worker that died."""
    name = type(err).__name__
    if name == "KilledWorker":
        last = err.args[1] if len(err.args) > 1 else "?"
        worker = getattr(last, "address", last)
        return (f"the Dask worker running this task died ({name}: worker {worker}); "
                "it is not retried on another worker. Check that worker's memory and logs.")
    return f"the Dask cluster did not finish this task ({name}: {err})."


def _set_api_state(task_run_id, state) -> None:
    try:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            client.set_task_run_state(task_run_id, state, force=True)
    except Exception as err:  # noqa: BLE001 - the ranking records the failure either way
        LOG.warning("could not mark task run %s failed on the Prefect API: %s", task_run_id, err)
