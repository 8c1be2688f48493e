"""Where a task ran: the worker process (``host:pid``), the device, and when it started and ended.

A ranking records this for every extraction (rankings columns ``worker``, ``device``, ``extract_start``,
``extract_end``; MLflow child-run tags; the logits file's metadata, so a cached model names the worker
that made its file). With the thread pool every extraction runs in the flow's own process; on a Dask
cluster each one runs in a worker process, possibly on another host.

No Prefect, no Dask: plain ``os``/``socket``/``datetime``, usable from any task.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime


def worker_id(pid: int | None = None) -> str:
    """``host:pid`` of this process (or of ``pid`` on this host)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def now_iso() -> str:
    """The current time, UTC, ISO 8601 with microseconds and offset (``2026-11-30T11:40:02.123456+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def device_label(device: str, visible: str | None = None) -> str:
    """The device as the host numbers it: ``cuda:N`` inside a process that sees only some GPUs
    (``CUDA_VISIBLE_DEVICES``, as a Dask worker pinned to one GPU does) becomes the host's ordinal, so
    two workers on two GPUs record ``cuda:0`` and ``cuda:1``, not ``cuda:0`` twice.

    Args:
        device: a resolved torch device string: ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.
        visible: the value of ``CUDA_VISIBLE_DEVICES`` (default: this process's environment).
    Returns:
        ``cpu``, ``mps``, or ``cuda:N`` with N the host's GPU ordinal (or the UUID/name listed in
        ``CUDA_VISIBLE_DEVICES`` when it lists those instead of ordinals).
    """
    if not device.startswith("cuda"):
        return device
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    listed = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if index < len(listed):
        return f"cuda:{listed[index]}"
    return f"cuda:{index}"


@dataclass
class Placement:
    """Where and when one task ran. Times are ISO 8601 strings in UTC (:func:`now_iso`); ``end`` is empty
    while the task runs."""

    worker: str
    device: str
    start: str
    end: str = ""

    def as_record(self) -> dict[str, str]:
        """The rankings-table / metadata form: ``worker``, ``device``, ``extract_start``, ``extract_end``."""
        d = asdict(self)
        return {"worker": d["worker"], "device": d["device"], "extract_start": d["start"], "extract_end": d["end"]}


@contextmanager
def placed(device: str) -> Iterator[Placement]:
    """Record where the enclosed work runs: this process, ``device`` (see :func:`device_label`), the start
    now and the end when the block exits (also on an error).

    Example::

        with placed("cuda") as where:
            result = work()
        return {**result, **where.as_record()}
    """
    where = Placement(worker=worker_id(), device=device_label(device), start=now_iso())
    try:
        yield where
    finally:
        where.end = now_iso()


def where_text(worker: str, device: str = "", *, here: str | None = None) -> str:
    """A short note of where a task ran, relative to process ``here`` (default: this one), for the CLI:
    ``""`` when it ran in ``here`` itself on the CPU (the thread pool: nothing to say), ``pid N`` in another
    process of the same host, ``host:pid`` on another host; a GPU device is appended (``pid N, cuda:1``)."""
    here = here or worker_id()
    host, _, pid = (worker or "").rpartition(":")
    here_host = here.rpartition(":")[0]
    if not worker or worker == here:
        place = ""
    elif host == here_host:
        place = f"pid {pid}"
    else:
        place = worker
    gpu = device if device and device not in ("cpu",) else ""
    return ", ".join(p for p in (place, gpu) if p)
