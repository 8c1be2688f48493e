"""The temporary Prefect API of a ``lead`` command when no server is configured, inside that command.

Without ``PREFECT_API_URL`` Prefect starts its own temporary server in a second Python process
(``SubprocessASGIServer``: ``python -m uvicorn prefect.server.api.server:create_app``) and stops it at
exit (``atexit``). That has two costs. A ``lead`` killed with SIGKILL runs no ``atexit``, and the server
(about 200 MB) lived on, orphaned, for good. And the second interpreter imports Prefect, pydantic,
SQLAlchemy and Alembic again, which the command has already imported for its client and MLflow: about
6 s of CPU per command, 40% of a cached ``lead rank`` (docs/performance.md, issue #18).

So ``lead`` serves the same application, ``create_app(ephemeral=True, final=True)`` (the one Prefect's
subprocess serves), with uvicorn in a daemon thread of the command itself, on a socket bound here to a
free port, and points ``PREFECT_API_URL`` at it: the supported way to give Prefect a server. Everything
else is unchanged: the flow, its task runs and Dask workers in other processes talk to it over HTTP. It
ends with the command however the command ends: at exit it is stopped after Prefect has sent its last
logs and events, and on SIGKILL it goes with the process.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time

#: Seconds the server gets to finish its requests and close its database at exit.
STOP_GRACE_S = 5.0

_server = None  # uvicorn.Server
_thread: threading.Thread | None = None


def _bind() -> socket.socket:
    """A listening TCP socket on a free port of 127.0.0.1 (bound here, so no other process can take the port
    between choosing and serving it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def ensure_api() -> str | None:
    """Make sure Prefect has a server this process may use; returns the URL of the one started here, or
    None when a server is configured (``PREFECT_API_URL``, in the environment or the profile, or a test
    harness) or temporary servers are off (Prefect then reports that itself).

    The server runs in a daemon thread of this process and stops at its exit (``atexit``, after Prefect's
    own log and event workers have drained), or with the process on SIGKILL.

    Raises:
        RuntimeError: the server failed to start, or did not answer within Prefect's startup timeout
            (at least flows.ui.START_TIMEOUT_S).
    """
    global _server, _thread
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if _server is not None or PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    import uvicorn
    from prefect.context import refresh_global_settings_context

    from flows.ui import START_TIMEOUT_S

    # A temporary server of one command sends no telemetry (an HTTP call per start, which fails offline and
    # logs an error); a value the user set, in the environment or the profile, still wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    refresh_global_settings_context()
    from prefect.server.api.server import create_app

    # Prefect's own wait counts only its 0.1 s sleeps against this setting (20 s); a fresh database on a busy
    # 2-core box took over 20 s here. At least START_TIMEOUT_S.
    timeout = max(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), START_TIMEOUT_S)
    sock = _bind()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ephemeral=True, final=True), log_level="error", lifespan="on",
                                          access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lead-prefect-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the temporary Prefect server must start; got it stopped during its start-up "
                               "(see the error above).")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(STOP_GRACE_S)
            sock.close()
            raise RuntimeError(f"the temporary Prefect server must start; got no answer within {timeout:.0f} s.")
        time.sleep(0.02)
    _server, _thread = server, thread
    atexit.register(stop_api)
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()  # Prefect's own way to pick up a changed environment variable
    return url


def stop_api(grace_s: float = STOP_GRACE_S) -> None:
    """Stop the server started here, if any: first let Prefect's log and event workers send what they hold,
    then ask uvicorn to finish its requests and run the application's shutdown (waits at most ``grace_s``)."""
    global _server, _thread
    server, thread = _server, _thread
    if server is None:
        return
    _server = _thread = None
    _drain_prefect_workers()
    server.should_exit = True
    if thread is not None:
        thread.join(grace_s)


def _drain_prefect_workers() -> None:
    """Send Prefect's buffered logs and events now, while the API still answers (Prefect drains them at
    exit too, but its handlers may run after this one)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=STOP_GRACE_S)
        EventsWorker.drain_all(timeout=STOP_GRACE_S)
    except Exception:  # noqa: BLE001 - best effort at exit: what is not sent is lost as with Prefect's own drain
        pass
