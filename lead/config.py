"""Settings: one object, read from ``LEAD_*`` environment variables, overridable by CLI flags.

| variable | default | meaning |
|---|---|---|
| ``LEAD_STORE`` | ``./lead-store`` | folder (or later an fsspec URI) holding datasets, logits, rankings, MLflow |
| ``LEAD_DEVICE`` | ``auto`` | ``auto`` (cuda when present), ``cpu``, ``cuda``, ``cuda:N`` |
| ``LEAD_BATCH_SIZE`` | ``64`` | images per forward pass |
| ``LEAD_MAX_WORKERS`` | GPUs, or 2 on CPU | concurrent extraction tasks (the bounded thread pool) |
| ``LEAD_NUM_WORKERS`` | chosen per extraction: none when decoding its images takes less than starting workers, else 1 on CPU, ``cores // GPUs - 1`` on a GPU | DataLoader worker processes per extraction |
| ``LEAD_MAX_BAD_FRACTION`` | ``0.05`` | above this share of unreadable images a ranking stops with an error |
| ``LEAD_EXECUTOR`` | ``threads`` | where tasks run: ``threads`` (a thread pool in the flow's process) or ``dask`` (a local Dask cluster of worker processes, or the one at ``DASK_SCHEDULER_ADDRESS``; see ``flows.runners``) |
| ``LEAD_AUTO_MIN_DATASETS`` | ``3`` | ``--method auto`` uses the store's track record once a method was measured on this many datasets |
| ``LEAD_BOOTSTRAP`` | ``200`` | paired bootstrap resamples per ranking (``--bootstrap``; 0 turns it off) |
| ``LEAD_BOOTSTRAP_SEED`` | ``0`` | seed of the resamples (``--bootstrap-seed``) |
| ``LEAD_BOOTSTRAP_BUDGET`` | ``5`` | seconds a recomputed score may spend on one model's resamples (``--bootstrap-budget``) |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///<store>/mlflow.db`` | where selections are recorded |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from lead.errors import InputError

#: Executor names (``LEAD_EXECUTOR``, ``--executor``); ``flows.runners.RUNNERS`` maps each to its task runner.
EXECUTORS = ("threads", "dask")


def _env(name: str, default, parse, valid, what: str):
    """``$name`` parsed by ``parse`` and checked by ``valid``, or ``default`` when unset or empty.

    Raises:
        InputError: it does not parse, or it is not ``valid`` (the message says it must be ``what``).
    """
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise InputError(f"settings: {name} must be {what}; got {raw!r}.") from None
    if not valid(value):
        raise InputError(f"settings: {name} must be {'>= 0' if parse is int else what}; got {value}.")
    return value


def _int_env(name: str, default: int) -> int:
    return _env(name, default, int, lambda v: v >= 0, "an integer")


def _fraction_env(name: str, default: float) -> float:
    return _env(name, default, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def gpu_driver_present() -> bool:
    """Whether a GPU driver's device node exists (NVIDIA's /dev/nvidiactl, ROCm's /dev/kfd). Without one torch
    sees no CUDA device either, so callers can skip importing torch (seconds of CPU) to ask it."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/kfd")


def _executor_env(default: str = "threads") -> str:
    raw = (os.environ.get("LEAD_EXECUTOR") or default).strip().lower()
    if raw not in EXECUTORS:
        raise InputError(f"settings: LEAD_EXECUTOR must be one of {', '.join(EXECUTORS)}; got {raw!r}.")
    return raw
def _positive_env(name: str, default: float) -> float:
    return _env(name, default, float, lambda v: v > 0, "a number > 0")


def cpu_threads() -> int:
    """The CPU threads this process may use: ``OMP_NUM_THREADS`` when it is a positive integer (what torch and
    BLAS read at start-up, e.g. set by a test runner that shares the cores among its worker processes), else
    the machine's cores. Threads beyond a process's share spin against the other processes' threads: on 2 busy
    cores that made BLAS-heavy scoring 4-5x slower (docs/performance.md, Target 2)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        n = 0
    return n if n > 0 else (os.cpu_count() or 1)


def _default_max_workers() -> int:
    """One extraction per GPU; 2 without one (torch is imported only when a GPU driver is present)."""
    if not gpu_driver_present():
        return 2
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    return 2


def _gpu_count() -> int:
    """CUDA devices torch sees (imports torch; call only when a GPU driver is present), at least 1."""
    try:
        import torch

        return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 1)
    except ImportError:
        return 1


def default_num_workers(device: str, gpus: int | None = None) -> int:
    """DataLoader workers per extraction when ``LEAD_NUM_WORKERS`` is not set.

    On a GPU: the cores shared out among the GPUs (one extraction runs per GPU, ``LEAD_MAX_WORKERS``), less
    one per GPU for the process that feeds it, at least 1: ``max(1, cores // gpus - 1)``. Decoding is what
    keeps a GPU waiting: on an H200 with 16 cores a ResNet-50 in bf16 ran 13,800 images/s on input already
    on the device, and the pipeline fed it 4,600 images/s with 8 workers and 6,600 with 15 (224 px JPEGs;
    benchmarks/gpu.py, docs/performance.md, issue #18). On a CPU: 1, where the workers take their cores from
    the forward pass itself: one worker decoded and resized 2,300 images/s on a 2-core machine, 7x what the
    forward pass on both cores consumed, and 1 worker ran at 0.99 of a bare timm loop against 0.93 for 2 and
    0.97 for none (benchmarks/extraction.py). Raise it for images that are expensive to decode next to a
    small model.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (a GPU when a driver is present).
        gpus: GPUs sharing the cores (default: the CUDA devices torch sees, at least 1).
    """
    on_gpu = device not in ("cpu",) and (device != "auto" or gpu_driver_present())
    if not on_gpu:
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, gpus if gpus is not None else _gpu_count()) - 1)


@dataclass(frozen=True)
class Settings:
    """Resolved settings; see the module docstring for the variables and defaults."""

    store: Path
    device: str
    batch_size: int
    max_workers: int
    num_workers: int  # negative: chosen per extraction (lead.extract.resolve_num_workers)
    tracking_uri: str
    max_bad_fraction: float = 0.05
    auto_min_datasets: int = 3  # lead.trackrecord.AUTO_MIN_DATASETS
    executor: str = "threads"  # EXECUTORS
    bootstrap: int = 200  # lead.scoring.bootstrap.DEFAULT_RESAMPLES
    bootstrap_budget: float = 5.0  # lead.scoring.bootstrap.RECOMPUTE_BUDGET_S
    bootstrap_seed: int = 0

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Read the environment, then apply the non-None ``overrides`` (CLI flags)."""
        from lead.scoring.bootstrap import DEFAULT_RESAMPLES, RECOMPUTE_BUDGET_S
        from lead.trackrecord import AUTO_MIN_DATASETS

        overrides = {k: v for k, v in overrides.items() if v is not None}
        store = Path(overrides.pop("store", None) or os.environ.get("LEAD_STORE") or "lead-store").expanduser().resolve()
        tracking = overrides.pop("tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"
        s = cls(
            store=store,
            device=os.environ.get("LEAD_DEVICE", "auto") or "auto",
            batch_size=_int_env("LEAD_BATCH_SIZE", 64) or 64,
            max_workers=_int_env("LEAD_MAX_WORKERS", 0) or _default_max_workers(),
            num_workers=_int_env("LEAD_NUM_WORKERS", -1),
            tracking_uri=tracking,
            max_bad_fraction=_fraction_env("LEAD_MAX_BAD_FRACTION", 0.05),
            auto_min_datasets=_int_env("LEAD_AUTO_MIN_DATASETS", AUTO_MIN_DATASETS),
            executor=_executor_env(),
            bootstrap=_int_env("LEAD_BOOTSTRAP", DEFAULT_RESAMPLES),
            bootstrap_budget=_positive_env("LEAD_BOOTSTRAP_BUDGET", RECOMPUTE_BUDGET_S),
            bootstrap_seed=_int_env("LEAD_BOOTSTRAP_SEED", 0),
        )
        executor = overrides.get("executor")
        if executor is not None and executor not in EXECUTORS:
            raise InputError(f"settings: executor must be one of {', '.join(EXECUTORS)}; got {executor!r}.")
        # num_workers stays negative when not set: each extraction chooses (lead.extract.resolve_num_workers)
        return replace(s, **overrides)
