"""The temporary Prefect API of a ``lead`` command when no server is configured, tied to that command.

Without ``PREFECT_API_URL`` Prefect starts its own temporary server (``SubprocessASGIServer``: ``python
-m uvicorn prefect.server.api.server:create_app``) and stops it at exit (``atexit``). A ``lead`` killed
with SIGKILL runs no ``atexit``, and that server (about 200 MB) lived on, orphaned, for good. Prefect
offers no hook into how it spawns that process, so ``lead`` starts the same server itself, with the
kernel's parent-death signal (``lead.processes.die_with_parent``), and points ``PREFECT_API_URL`` at it:
the supported way to give Prefect a server. It ends with the command, however the command ends.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from lead.processes import die_with_parent

#: Exit status of the server when its port was taken meanwhile (Prefect retries on it too).
PORT_IN_USE_STATUS = 3
#: Tries at a free port before giving up.
PORT_TRIES = 3

_server: subprocess.Popen | None = None


def _command(port: int) -> list[str]:
    """The command Prefect's own ``SubprocessASGIServer._run_uvicorn_command`` runs (Prefect 3.x)."""
    prefect_dir = Path(find_spec("prefect").origin).parent
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


def _environment() -> dict[str, str]:
    from prefect.settings import get_current_settings

    # A temporary server of one command sends no telemetry (an HTTP call per start, which fails offline and
    # logs an error); a value the user set, in the environment or the profile, still wins.
    return {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **os.environ, "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True)}


def ensure_api(while_starting: Callable[[], object] | None = None) -> str | None:
    """Make sure Prefect has a server this process may use; returns the URL of the one started here, or
    None when a server is configured (``PREFECT_API_URL``, in the environment or the profile, or a test
    harness) or temporary servers are off (Prefect then reports that itself).

    Call it from the main thread before the first flow runs: the server gets the parent-death signal
    tied to the calling thread. It stops at this process's exit (``atexit``), on SIGKILL by the kernel.

    Args:
        while_starting: called once the server process is started, before waiting for it to answer (the
            server takes seconds to import and start; ``lead rank`` imports what its flow will need
            meanwhile). Whatever it raises is ignored.

    Raises:
        RuntimeError: the server exited, or did not answer within Prefect's startup timeout (at least
            flows.ui.START_TIMEOUT_S).
    """
    global _server
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if _server is not None or PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.context import refresh_global_settings_context

    from flows.ui import START_TIMEOUT_S, UIError, free_port, prefect_health_url, wait_http

    # Prefect's own wait counts only its 0.1 s sleeps against this setting (20 s), so it waits far longer
    # in wall time; a fresh database on a busy 2-core box took over 20 s here. At least START_TIMEOUT_S.
    timeout = max(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), START_TIMEOUT_S)
    for _ in range(PORT_TRIES):
        port = free_port()
        proc = subprocess.Popen(_command(port), env=_environment(), stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent())
        if while_starting is not None:
            try:
                while_starting()
            except Exception:  # noqa: BLE001 - a head start only; the flow does the same work and reports
                pass
            while_starting = None
        try:
            wait_http(prefect_health_url(port), proc, timeout_s=timeout)
        except UIError as err:
            stop_api(proc)
            if proc.returncode == PORT_IN_USE_STATUS:
                continue
            raise RuntimeError(f"the temporary Prefect server must start; got {err}") from None
        _server = proc
        atexit.register(stop_api)
        url = f"http://127.0.0.1:{port}/api"
        os.environ["PREFECT_API_URL"] = url
        refresh_global_settings_context()  # Prefect's own way to pick up a changed environment variable
        return url
    raise RuntimeError(f"the temporary Prefect server must find a free port; got {PORT_TRIES} ports taken meanwhile.")


def stop_api(proc: subprocess.Popen | None = None, grace_s: float = 5.0) -> None:
    """Stop the server started here (SIGTERM, then SIGKILL after ``grace_s``), as Prefect does."""
    global _server
    proc = proc or _server
    if proc is None:
        return
    if proc is _server:
        _server = None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
