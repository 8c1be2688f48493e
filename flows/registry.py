"""Registering datasets: validate, record in the store's registry, announce with a Prefect event.

``register_dataset`` is what ``lead datasets add`` runs; ``watch`` is ``lead watch DIR``: it registers
each new sub-folder of a drop folder once its contents have stopped changing (Prefect has no
file-arrival trigger, so the watcher emits the event). The ``rank-on-new-dataset`` deployment
(``flows.deployments``) runs ``rank-zoo`` when the event ``lead.dataset.registered`` arrives.

The event::

    event:    lead.dataset.registered
    resource: {"prefect.resource.id": "lead.dataset.<name>", "prefect.resource.name": "<name>",
               "lead.dataset.fingerprint": "<fingerprint>"}
    payload:  {"name", "path", "fingerprint", "n_samples", "n_classes", "registered_at", "store"}
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from lead.config import Settings
from lead.data import check_name, check_rankable, resolve_dataset
from lead.errors import InputError
from storage.registry import DatasetEntry, add_dataset, list_datasets
from storage.store import Store

#: Name of the Prefect event emitted when a dataset is registered.
REGISTERED_EVENT = "lead.dataset.registered"


def prefect_api_url() -> str | None:
    """The Prefect API URL this process talks to (``PREFECT_API_URL`` or the active profile), or None
    when none is configured (Prefect would start a private ephemeral server no one else sees)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_server(what: str) -> str:
    """The configured Prefect API URL, after checking that the server answers.

    Raises:
        InputError: no server is configured.
        ConnectionError: the server does not answer its health check.
    """
    url = prefect_api_url()
    if not url:
        raise InputError(
            f"{what}: a Prefect server must be configured; got PREFECT_API_URL unset. Start one (`lead ui`, or "
            "`prefect server start --host 127.0.0.1`) and export PREFECT_API_URL=http://127.0.0.1:4200/api."
        )
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        err = client.api_healthcheck()
    if err is not None:
        raise ConnectionError(
            f"{what}: the Prefect server at {url} must answer; got {type(err).__name__}: {err}. "
            "Start it, or fix PREFECT_API_URL."
        )
    return url


@dataclass(frozen=True)
class Registration:
    """What ``register_dataset`` did: the entry recorded, and where the event went (None: not sent)."""

    entry: DatasetEntry
    event_sent_to: str | None
    notes: list[str]


def validate_dataset(path: str | Path, name: str, settings: Settings) -> DatasetEntry:
    """Read and check the dataset at ``path`` (ImageFolder, CSV manifest or demo name) and describe it
    as a registry entry named ``name`` (its fingerprint hashes every image).

    Raises:
        InputError: ``name`` is not a plain name. DatasetError: no such dataset, or not rankable.
    """
    ds = check_rankable(resolve_dataset(str(path), datasets_dir=Store.of(settings.store).datasets_dir, name=name))
    location = Path(path).expanduser()
    where = location.resolve() if location.is_file() else ds.root  # a manifest keeps its file; a folder its root
    return DatasetEntry(
        name=ds.name, path=str(where), fingerprint=ds.fingerprint(), n_samples=len(ds), n_classes=len(ds.classes),
        registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def emit_registered(entry: DatasetEntry, store: Path) -> None:
    """Emit ``lead.dataset.registered`` for ``entry`` to the configured Prefect server and wait until it
    is sent (at most 30 s)."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    emit_event(
        event=REGISTERED_EVENT,
        resource={"prefect.resource.id": f"lead.dataset.{entry.name}", "prefect.resource.name": entry.name,
                  "lead.dataset.fingerprint": entry.fingerprint},
        payload={**asdict(entry), "store": str(store)},
    )
    # the worker warns "Still processing items" while it sends the one event: not news to the user
    logging.getLogger(EventsWorker.__name__).setLevel(logging.ERROR)
    EventsWorker.drain_all(timeout=30)


def register_dataset(path: str | Path, name: str | None, *, store: str | Path | None = None, emit: bool = True) -> Registration:
    """Validate the dataset at ``path``, record it as ``name`` (default: the folder or file name) in the
    store's registry and emit ``lead.dataset.registered``.

    The event goes to the configured Prefect server (``PREFECT_API_URL``); when none is configured the
    dataset is still recorded (the nightly re-ranking picks it up) and ``notes`` says no event was sent.
    A configured server that does not answer is an error, and nothing is recorded.

    Raises:
        InputError: a name that is not plain or already registered. DatasetError: no such dataset, or
            one that cannot be ranked (fewer than 2 classes, a class with fewer than 2 images).
        ConnectionError: ``PREFECT_API_URL`` is set but the server does not answer.
    """
    settings = Settings.from_env(store=store)
    if name is None:
        p = Path(path).expanduser()
        name = p.stem if p.suffix.lower() == ".csv" else p.resolve().name if p.exists() else str(path)
    check_name(name, what="datasets add")
    already = {e.name: e for e in list_datasets(settings.store)}
    if name in already:  # cheap check first: do not hash a large dataset only to refuse its name
        add_dataset(settings.store, already[name])  # raises the duplicate-name error
    entry = validate_dataset(path, name, settings)
    url = check_server("datasets add") if emit and prefect_api_url() else None
    add_dataset(settings.store, entry)
    notes = []
    if url:
        emit_registered(entry, settings.store)
    elif emit:
        notes.append("no Prefect server configured (PREFECT_API_URL unset): no event sent; the nightly re-ranking "
                     f"will rank it, or run `lead rank --dataset {entry.path} --name {entry.name} --zoo ZOO`.")
    return Registration(entry=entry, event_sent_to=url, notes=notes)


# --- the drop-folder watcher ----------------------------------------------------------------------


def folder_signature(folder: Path) -> tuple[int, int, int]:
    """(number of files, total bytes, newest modification time in ns) of everything under ``folder``;
    hidden files and folders (a name starting with '.') are left out."""
    n = size = newest = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith("."):
                continue
            try:
                st = os.stat(os.path.join(dirpath, fn))
            except FileNotFoundError:  # removed while we looked: the folder is still changing
                continue
            n += 1
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return n, size, newest


def watch(
    drop_dir: str | Path,
    *,
    store: str | Path | None = None,
    interval_s: float = 5.0,
    settle_s: float = 10.0,
    once: bool = False,
    report: Callable[[str, str], None] = lambda kind, text: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Registration]:
    """Register every new sub-folder of ``drop_dir`` once its contents have not changed for ``settle_s``.

    A sub-folder is new when neither its name nor its path is registered yet. Its signature (file count,
    total bytes, newest mtime) is polled every ``interval_s``; when it has stayed the same for
    ``settle_s`` the folder is registered under its own name (``register_dataset``: validated,
    recorded, event emitted). A folder that fails validation is reported once and tried again when its
    contents change. Hidden sub-folders (``.name``) are ignored, so a producer can write into
    ``.name`` and rename it when done.

    Args:
        drop_dir: the folder to watch; each dataset is one sub-folder (an ImageFolder).
        store: the store whose registry is used (default ``$LEAD_STORE``).
        interval_s, settle_s: polling period and quiet time, in seconds.
        once: register what is already there and has settled, then return (waits about ``settle_s``).
        report: called with (kind, text), kind one of ``seen``, ``registered``, ``failed``.
        should_stop: polled every ``interval_s``; True ends the watch.
    Returns:
        The registrations made.
    Raises:
        InputError: ``drop_dir`` is not a directory.
        ConnectionError: ``PREFECT_API_URL`` is set but the server does not answer (checked at the start).
    """
    from lead.errors import DatasetError

    drop = Path(drop_dir).expanduser().resolve()
    if not drop.is_dir():
        raise InputError(f"watch: {drop} must be a directory to watch; got no such directory.")
    settings = Settings.from_env(store=store)
    if prefect_api_url():
        check_server("watch")
    seen: dict[str, tuple[tuple[int, int, int], float]] = {}
    failed: dict[str, tuple[int, int, int]] = {}
    done: list[Registration] = []
    deadline = time.monotonic() + settle_s + interval_s if once else None
    while True:
        registered = list_datasets(settings.store)
        names, paths = {e.name for e in registered}, {e.path for e in registered}
        now = time.monotonic()
        for folder in sorted(p for p in drop.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name in names or str(folder) in paths:
                continue
            sig = folder_signature(folder)
            if folder.name not in seen or seen[folder.name][0] != sig:
                if folder.name not in seen:
                    report("seen", f"{folder.name}: new folder, waiting until it stops changing")
                seen[folder.name] = (sig, now)
                continue
            if sig[0] == 0 or now - seen[folder.name][1] < settle_s or failed.get(folder.name) == sig:
                continue
            try:
                reg = register_dataset(folder, folder.name, store=settings.store)
            except (InputError, DatasetError) as err:
                failed[folder.name] = sig
                report("failed", f"{folder.name}: {err}")
                continue
            except ConnectionError as err:  # the server is down: try again at the next poll
                report("failed", f"{folder.name}: {err}")
                continue
            done.append(reg)
            names.add(folder.name)
            report("registered", f"{folder.name}: {reg.entry.n_samples} images, {reg.entry.n_classes} classes, "
                   f"fingerprint {reg.entry.fingerprint[:12]}" + (f"; event sent to {reg.event_sent_to}" if reg.event_sent_to else
                                                                   "; no Prefect server configured, no event sent"))
        if should_stop() or (deadline is not None and time.monotonic() >= deadline):
            return done
        time.sleep(interval_s if deadline is None else max(0.0, min(interval_s, deadline - time.monotonic())))
