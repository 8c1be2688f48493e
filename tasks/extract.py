"""The extraction task: one model's forward pass over one dataset, into one Parquet file.

Cached on (dataset fingerprint, model id, weights digest, preprocessing): a second run on the same
inputs is a Prefect cache hit and does no forward pass. The task is also idempotent on its own: if a
finished file for the same key is already in the store (say, the Prefect cache was wiped) it returns
that file without loading the model.

Its arguments are plain and picklable (a :class:`lead.dataref.DatasetRef`, a :class:`lead.zoo.ModelSpec`,
the store root and the file's key under it, numbers), so it runs in a fresh process from them alone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import time
from pathlib import Path

from prefect import task

from lead.data import ImageDataset
from lead.dataref import DatasetRef
from lead.errors import DatasetError, InputError, ModelLoadError
from lead.cost import count_params, model_cost
from lead.extract import CANCEL, extract, select_device, throughput
from lead.placement import now_iso, placed
from lead.zoo import ModelSpec, load_model
from storage.costs import read_cost
from storage.logits import SCHEMA_VERSION, LogitsWriter, is_complete, read_metadata
from storage.store import Store
from tasks.logs import run_logger

#: Transient faults are retried (a flaky network filesystem, a CUDA hiccup: :func:`is_transient`); anything
#: else fails at once, because it would fail the same way each time.
EXTRACT_RETRIES = 2
EXTRACT_RETRY_DELAY_S = 5
#: The Prefect global concurrency limit that caps forward passes per device (`lead setup` sizes it to the GPUs).
GPU_LIMIT = "gpu"


def gpu_slot():
    """Hold one slot of the global concurrency limit ``gpu`` while a forward pass runs, when a Prefect
    server is configured (``PREFECT_API_URL``; ``lead setup`` creates the limit there). A server without the
    limit logs a warning and does not wait; the embedded default (no server) skips the call altogether."""
    import contextlib

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(GPU_LIMIT, occupy=1, strict=False)


#: errno values of faults that pass: an I/O error or stale handle of a network file system, a busy or
#: interrupted call, a dropped connection. ENAMETOOLONG, ENOENT, EACCES, ENOSPC, EROFS fail again.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EIO", "EAGAIN", "EBUSY", "EINTR", "ESTALE", "ETIMEDOUT", "ECONNRESET",
                                      "ECONNABORTED", "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN")
    if hasattr(errno, name)
)
#: Phrases of torch RuntimeErrors that can pass: the device or memory of the moment, a killed decoding worker.
TRANSIENT_RUNTIME = ("CUDA", "out of memory", "DataLoader worker")


def is_transient(err: BaseException | None) -> bool:
    """True for an error that may not happen again on a retry: a network or I/O fault
    (``ConnectionError``, ``TimeoutError``, an ``OSError`` whose errno is in ``TRANSIENT_ERRNOS``), memory
    (``MemoryError``, CUDA out of memory), a CUDA error, a DataLoader worker killed. Everything else
    fails the same way each time and is not retried: bad input and models that cannot load, a forward
    pass that raises (a ViT given the wrong input size: ``AssertionError``), a file name too long."""
    if err is None or isinstance(err, (InputError, ModelLoadError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError, MemoryError)):
        return True
    if isinstance(err, OSError):
        return err.errno in TRANSIENT_ERRNOS
    if isinstance(err, RuntimeError):
        return any(phrase in str(err) for phrase in TRANSIENT_RUNTIME)
    return False


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only an error that can pass (:func:`is_transient`), and never
    after Ctrl-C."""
    err = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(err, BaseException) and is_transient(err) and not CANCEL.is_set()


def extraction_key(dataset_fingerprint: str, spec: ModelSpec, weights_digest: str) -> str:
    """sha256 of everything that determines a logits file's content."""
    doc = {
        "dataset": dataset_fingerprint,
        "model": spec.name,
        "arch": spec.arch,
        "weights_digest": weights_digest,
        "preprocessing": spec.preprocessing(),
        "schema": SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _cache_key(context, parameters) -> str:
    return f"extract-{parameters['cache_key']}"


@task(
    name="extract-logits",
    task_run_name="extract-{spec.name}",
    tags=["gpu"],
    retries=EXTRACT_RETRIES,
    retry_delay_seconds=EXTRACT_RETRY_DELAY_S,
    retry_condition_fn=retry_transient,
    cache_key_fn=_cache_key,
    persist_result=True,
)
def extract_logits(
    dataset: DatasetRef,
    spec: ModelSpec,
    *,
    cache_key: str,
    weights_digest: str,
    store: str,
    key: str,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = -1,
    max_bad_fraction: float = 0.05,
    progress_position: int | None = None,
) -> dict:
    """Extract features and logits of ``spec`` on ``dataset`` into the file ``key`` of the store ``store``
    (atomically).

    Images that cannot be decoded are skipped and listed; if more than ``max_bad_fraction`` of the
    dataset is unreadable, extraction stops at once and nothing is written.

    Returns a JSON-able dict: ``path``, ``cache_key``, ``n`` (rows written), ``d``, ``cs``, ``seconds``,
    ``skipped`` ([sample id, error] pairs), ``extracted`` (False when a finished file was already there),
    and where the file was made (:mod:`lead.placement`, also kept in the file's metadata, so a file found
    in the store names the worker that made it): ``worker`` (``host:pid``), ``device``, ``extract_start``,
    ``extract_end`` (ISO 8601, UTC; empty for files written before these were recorded).

    Raises:
        ModelLoadError: the model cannot be built or its weights loaded.
        DatasetError: too many unreadable images (the message names the first ones).
    """
    logger = run_logger()
    path = Store.of(store).path(key)
    started = time.perf_counter()
    if is_complete(path, cache_key):
        logger.info("%s: logits already in the store at %s", spec.name, path)
        meta = read_metadata(path)
        return {"path": str(path), "cache_key": cache_key, "n": int(meta["lead.n"]), "seconds": 0.0,
                "skipped": json.loads(meta.get("lead.skipped", "[]")), "extracted": False,
                **cost_from_metadata(meta), **{k: meta.get(f"lead.{k}", "") for k in PLACEMENT_KEYS}}

    ds = dataset.open()
    with gpu_slot(), placed(select_device(device)) as where:
        result = _extract(ds, dataset.fingerprint, spec, path, started, store=store, cache_key=cache_key, weights_digest=weights_digest,
                          device=device, batch_size=batch_size, num_workers=num_workers, max_bad_fraction=max_bad_fraction,
                          progress_position=progress_position, where=where.as_record())
    return {**where.as_record(), **result}  # the end as written in the file


#: Where a file was made, in its metadata as ``lead.<key>`` and in the task's result (lead.placement).
PLACEMENT_KEYS = ("worker", "device", "extract_start", "extract_end")


def _extract(dataset: ImageDataset, fingerprint: str, spec: ModelSpec, path: Path, started: float, *, store: str, cache_key: str,
             weights_digest: str, device: str, batch_size: int, num_workers: int, max_bad_fraction: float,
             progress_position: int | None, where: dict[str, str]) -> dict:
    logger = run_logger()
    model = load_model(spec)
    # The flow counted the architecture's FLOPs (storage.costs); they hold for the loaded model when it has
    # the same parameters. A checkpoint whose head differs from the entry's (file: infers num_classes) has
    # another count, and is counted itself.
    stored = read_cost(spec, store)
    if stored is not None and stored.params == count_params(model) and stored.input_size == tuple(spec.input_size):
        cost = stored
    else:
        try:
            cost = model_cost(model, spec.input_size)  # shapes only: before the weights move to the device
        except Exception as err:  # an operator FlopCounterMode cannot run: the ranking goes on without the cost
            logger.warning("%s: could not count its cost: %s", spec.name, err)
            cost = None
    metadata = {
        "lead.model": spec.name,
        "lead.arch": spec.arch,
        "lead.weights": spec.weights,
        "lead.weights_digest": weights_digest,
        "lead.dataset": dataset.name,
        "lead.dataset_fingerprint": fingerprint,
        "lead.preprocessing": json.dumps(spec.preprocessing(), sort_keys=True),
        "lead.classes": json.dumps(dataset.classes),
        "lead.cache_key": cache_key,
        **{f"lead.{k}": where[k] for k in ("worker", "device", "extract_start")},
        **({"lead.params": str(cost.params), "lead.flops": str(cost.flops)} if cost else {}),
    }
    forward_s = 0.0
    bar = None
    if progress_position is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dataset), desc=spec.name, unit="img", position=progress_position, leave=True, dynamic_ncols=True)
    try:
        limit = max_bad_fraction * len(dataset)
        with LogitsWriter(path, metadata, background=True) as writer:
            for batch in extract(
                model, spec, dataset.samples, dataset.classes, batch_size=batch_size, num_workers=num_workers, device=device
            ):
                writer.write(batch.sample_ids, batch.labels, batch.features, batch.logits)
                writer.skip(batch.skipped)
                forward_s += batch.seconds
                rate = throughput(writer.n, forward_s)
                writer.close_metadata = {"lead.images_per_s": f"{rate:.6g}"} if rate else {}  # lead.device: at open
                if len(writer.skipped) > limit:
                    raise DatasetError(too_many_unreadable(dataset.name, writer.skipped, len(dataset), max_bad_fraction))
                if bar is not None:
                    bar.update(len(batch.sample_ids))
            end = writer.footer["lead.extract_end"] = now_iso()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    logger.info("%s: %d images in %.1f s -> %s", spec.name, len(dataset), seconds, path)
    return {
        "path": str(path),
        "cache_key": cache_key,
        "n": writer.n,
        "d": writer.d,
        "cs": writer.cs,
        "seconds": seconds,
        "skipped": [list(x) for x in writer.skipped],
        "extracted": True,
        "extract_end": end,
        **cost_from_metadata({**metadata, **writer.close_metadata}),
    }


def cost_from_metadata(meta: dict) -> dict:
    """The model's cost recorded in a logits file's metadata: ``params``, ``flops``, ``images_per_s``,
    ``device`` (each None when the file predates them)."""
    def num(key, kind):
        try:
            return kind(meta[key])
        except (KeyError, TypeError, ValueError):
            return None

    return {"params": num("lead.params", int), "flops": num("lead.flops", int),
            "images_per_s": num("lead.images_per_s", float), "device": meta.get("lead.device")}


def too_many_unreadable(dataset: str, skipped: list, n: int, max_bad_fraction: float) -> str:
    """The error message when more than ``max_bad_fraction`` of a dataset's images cannot be decoded."""
    first = "; ".join(f"{sid} ({err})" for sid, err in skipped[:5])
    return (
        f"dataset {dataset!r}: at most {max_bad_fraction:.0%} of the images may be unreadable; got at least "
        f"{len(skipped)} of {n} ({first}{'; ...' if len(skipped) > 5 else ''}). Fix or remove those files, "
        "or raise LEAD_MAX_BAD_FRACTION."
    )
