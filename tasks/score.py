"""The scoring task: every requested transferability score of one model, from its logits file."""

from __future__ import annotations

import threading
import time

from prefect import task
from prefect.logging import get_run_logger

from lead.scoring import get_method
from storage.logits import read_logits


#: Scores run one at a time per process, each with all of BLAS's threads. Their libraries are not
#: thread-safe together: scikit-learn's KMeans (inside N-LEEP's mixture) sets process-wide BLAS thread
#: limits through threadpoolctl, and a second thread leaving its own limit re-enables BLAS threading
#: inside the first one's OpenMP loop (OpenBLAS: "Detect OpenMP Loop and this application may hang").
#: Scoring is cheap next to extraction, which still overlaps with it.
_SCORING_LOCK = threading.Lock()


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
            with _SCORING_LOCK:
                value = method(features=data.features, logits=data.logits, labels=data.labels)
        except Exception as err:  # one method's failure must not hide the others
            logger.warning("%s: %s failed: %s", model, name, err)
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        out[name] = {"score": value, "seconds": time.perf_counter() - started}
    return out
