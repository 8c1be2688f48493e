"""Starting and stopping the two UIs, the Prefect server and the MLflow UI, on 127.0.0.1.

``run_uis`` is ``lead ui``; the helpers (``start_prefect_server``, ``start_mlflow_ui``, ``wait_http``,
``stop``) are also what the real-server test and ``docs/screenshots.py`` use. Each server runs in its own
process group, so stopping it stops its children too (uvicorn workers, MLflow's gunicorn/uvicorn), and
gets SIGTERM from the kernel when the process that started it ends, even by SIGKILL
(``lead.processes.die_with_parent``; MLflow's server forwards it to its uvicorn). Start them from the
main thread: the kernel ties that signal to the starting thread.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from lead.processes import die_with_parent

#: Seconds to wait for a server to answer its health check (a cold Prefect start on a busy 2-core box
#: took 8-20 s here, MLflow 5-20 s).
START_TIMEOUT_S = 120.0
#: Seconds a server gets to exit after SIGINT before its process group is killed.
STOP_GRACE_S = 15.0


class UIError(RuntimeError):
    """A UI could not start; ``input_error`` when the user can fix it with an option (a busy port)."""

    def __init__(self, message: str, input_error: bool = False):
        super().__init__(message)
        self.input_error = input_error


def _bin(name: str) -> str:
    """The console script ``name`` installed beside this Python (the virtual environment's), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def quiet_env(**extra: str) -> dict[str, str]:
    """This process's environment with telemetry off (these machines are often offline) plus ``extra``."""
    env = dict(os.environ)
    env.update({"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
    env.update(extra)
    return env


def _start(cmd: list[str], env: dict[str, str], log: Path | None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=die_with_parent())
    finally:
        if log:
            out.close()


def start_prefect_server(port: int, *, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """``prefect server start --host 127.0.0.1 --port PORT`` in its own process group (not yet ready:
    ``wait_http(prefect_health_url(port))``). Its database is the one of ``PREFECT_HOME`` in ``env``."""
    return _start([_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env or quiet_env(), log)


def start_mlflow_ui(tracking_uri: str, port: int, *, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """``mlflow server`` on ``tracking_uri`` at 127.0.0.1:PORT with one worker and no job execution (ready in
    about 5 s instead of 11-22 s), in its own process group."""
    env = dict(env or quiet_env())
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [_bin("mlflow"), "server", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    return _start(cmd, env, log)


def prefect_health_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api/health"


def mlflow_health_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/health"


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = START_TIMEOUT_S) -> float:
    """Poll ``url`` until it answers 200; returns the seconds waited.

    Raises:
        UIError: ``proc`` exited first, or no answer within ``timeout_s``.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise UIError(f"ui: the server for {url} must keep running; got exit status {proc.returncode}.")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise UIError(f"ui: {url} must answer within {timeout_s:.0f} s; got no answer.")


def stop(proc: subprocess.Popen | None, grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT the process group of ``proc``, wait ``grace_s``, then SIGKILL what is left of it."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGINT:  # the leader is gone; children of the group may linger
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        except subprocess.TimeoutExpired:
            continue


def mlflow_search_url(port: int, filter_string: str) -> str:
    """The MLflow UI's address of a run search across experiments, e.g. ``tags.best_model = 'x'``."""
    return f"http://127.0.0.1:{port}/#/experiments?searchFilter={quote(filter_string)}"


def run_uis(tracking_uri: str, *, prefect_port: int = 4200, mlflow_port: int = 5000,
            echo: Callable[[str], None] = print, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Start the Prefect server and (for a SQLite tracking URI) the MLflow UI, print their addresses,
    and keep them until Ctrl-C or SIGTERM (or ``should_stop()``), then stop both.

    Raises:
        UIError: a port is in use (``input_error``), or a server did not start (its log is named).
    """
    import tempfile

    local_mlflow = not tracking_uri.startswith(("http://", "https://"))
    for port, flag in ((prefect_port, "--prefect-port"), *(((mlflow_port, "--mlflow-port"),) if local_mlflow else ())):
        if not port_is_free(port):
            raise UIError(f"ui: port {port} on 127.0.0.1 must be free; got one in use. Pass {flag} with another port.",
                          input_error=True)
    logs = Path(tempfile.mkdtemp(prefix="lead-ui-"))
    procs: list[subprocess.Popen] = []

    def terminate(signum, frame):  # SIGTERM stops the servers as Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        echo("starting the Prefect server and the MLflow UI on 127.0.0.1 ...")
        prefect = start_prefect_server(prefect_port, log=logs / "prefect.log")
        procs.append(prefect)
        if local_mlflow:
            procs.append(start_mlflow_ui(tracking_uri, mlflow_port, log=logs / "mlflow.log"))
        for proc, url, log in ((prefect, prefect_health_url(prefect_port), "prefect.log"),
                               *(((procs[1], mlflow_health_url(mlflow_port), "mlflow.log"),) if local_mlflow else ())):
            try:
                wait_http(url, proc)
            except UIError as err:
                raise UIError(f"{err} See {logs / log}.") from None
        echo(f"Prefect UI:  http://127.0.0.1:{prefect_port}    (API: export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api)")
        mlflow_base = tracking_uri.rstrip("/") if not local_mlflow else f"http://127.0.0.1:{mlflow_port}"
        echo(f"MLflow UI:   {mlflow_base}    (tracking: {tracking_uri})")
        echo("             find selections with the run search  tags.dataset = '<name>'  or  tags.best_model = '<model>'")
        echo(f"logs: {logs}; Ctrl-C stops both")
        while not should_stop():
            for proc in procs:
                if proc.poll() is not None:
                    raise UIError(f"ui: a server exited with status {proc.returncode}; see the logs in {logs}.")
            time.sleep(0.5)
    finally:
        for proc in reversed(procs):
            stop(proc)
        signal.signal(signal.SIGTERM, previous)
