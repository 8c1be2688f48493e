"""The scoring task: every requested transferability score of one model, from its logits file."""

from __future__ import annotations

import time

from prefect import task
from prefect.logging import get_run_logger

from lead.scoring import get_method
from storage.logits import read_logits


@task(name="score-model", task_run_name="score-{model}")
def score_model(model: str, path: str, methods: list[str]) -> dict[str, dict]:
    """Compute each method in ``methods`` on the logits file at ``path``.

    A method that fails is reported, not raised, so the other methods (and models) still count.

    Returns:
        {method: {"score": float, "seconds": float} or {"error": "<Type>: <message>"}}.
    """
    logger = get_run_logger()
    data = read_logits(path)
    out: dict[str, dict] = {}
    for name in methods:
        method = get_method(name)
        started = time.perf_counter()
        try:
            value = method(features=data.features, logits=data.logits, labels=data.labels)
        except Exception as err:  # one method's failure must not hide the others
            logger.warning("%s: %s failed: %s", model, name, err)
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        out[name] = {"score": value, "seconds": time.perf_counter() - started}
    return out
