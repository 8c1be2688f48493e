"""Stopping a ranking: Ctrl-C and SIGTERM end the extractions after their batch, the MLflow runs as KILLED,
and the processes this one started; the flow runs in a helper thread so the main thread takes the signals."""

from __future__ import annotations

import os
import sys

import typer

def _terminate_children() -> None:
    """SIGTERM every process below this one (the temporary Prefect server, the DataLoader fork server and
    its workers), which an immediate exit would otherwise leave running. Linux (/proc) only; elsewhere a
    no-op. (They would also end by themselves: see lead.processes.)"""
    from lead.processes import descendants, signal_all

    signal_all(descendants())


INTERRUPTED = "interrupted: finished logits files are kept; run the same command again to resume."

#: Exit status after a stop by signal: 128 + the signal's number, as a shell reports it (130 for Ctrl-C).
_STOPPED_BY: dict[str, int] = {"status": 130}


def _end_runs_killed() -> None:
    """Mark the MLflow runs this process started and has not ended as KILLED (a stopped ranking is not
    a finished selection); a failure here is left to the next ranking on the store, which ends runs whose
    process is gone (storage.tracking.Tracker.end_dead_runs)."""
    if "storage.tracking" not in sys.modules:  # no run was started
        return
    from storage.tracking import Tracker

    try:
        Tracker.end_open_runs("KILLED")
    except Exception as err:  # noqa: BLE001 - the stop must go on
        sys.stderr.write(f"MLflow: could not mark the run KILLED ({type(err).__name__}: {err}); the next ranking on "
                         "this store marks it\n")


def _interrupted():
    """Stop after an interruption: MLflow runs ended as KILLED, children terminated, one line, exit status
    128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    _end_runs_killed()
    _terminate_children()
    typer.secho(INTERRUPTED, fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(_STOPPED_BY["status"])


#: Seconds a Ctrl-C leaves running extractions to stop after their current batch and remove their
#: temporary files, before the process exits.
INTERRUPT_GRACE_S = 3.0


def _cancel_on_interrupt():
    """On Ctrl-C (SIGINT) or SIGTERM (timeout, systemd, Docker, CI cancellation) stop promptly and cleanly:
    running extractions stop after their current batch (their temporary files are removed; finished logits
    files stay for the rerun), the MLflow runs of this process end as KILLED, the processes it started are
    terminated, and it exits with status 130 (SIGINT) or 143 (SIGTERM). Unwinding through Prefect instead
    took minutes here, because Ctrl-C also stops the ephemeral Prefect server and the client retries it.
    A second signal exits at once (the processes it started still end: lead.processes.die_with_parent).

    Returns a function that puts the previous handlers back (for in-process callers such as tests).
    """
    import signal
    import threading
    import time

    from lead.extract import CANCEL

    def leave():
        time.sleep(INTERRUPT_GRACE_S)
        _end_runs_killed()
        _terminate_children()
        sys.stderr.write(INTERRUPTED + "\n")
        sys.stderr.flush()
        os._exit(_STOPPED_BY["status"])

    def handler(signum, frame):
        if CANCEL.is_set():
            os._exit(_STOPPED_BY["status"])
        _STOPPED_BY["status"] = 128 + signum
        CANCEL.set()
        sys.stderr.write("\ninterrupting: stopping the extractions after their current batch...\n")
        threading.Thread(target=leave, daemon=True).start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]


def _run_flow(flow, **params):
    """Run ``flow(**params)`` in a helper thread while the main thread waits and takes the signals.

    In the main thread Prefect's flow engine replaces the SIGTERM handler with its own, which unwinds
    through the task runner: it waits for every running extraction to finish before anything else
    happens. From a helper thread Prefect cannot install it, so SIGTERM takes the same path as Ctrl-C.
    The thread runs in a copy of this context (Prefect's settings, e.g. a test harness's API URL).
    """
    import contextvars
    import threading

    outcome: dict = {}

    def target():
        try:
            outcome["value"] = flow(**params)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name="lead-flow", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
