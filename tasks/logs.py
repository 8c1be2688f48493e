"""The logger of a task: Prefect's run logger inside a flow or task run, else a standard logger, so a task's
function also runs outside Prefect (``task.fn(...)``, in a fresh worker process)."""

from __future__ import annotations

import logging


def run_logger():
    """Prefect's run logger when a run context exists, else the logger ``lead.tasks``."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("lead.tasks")
