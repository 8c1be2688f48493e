"""The scoring task: every requested transferability score of one model, from its logits file.

Its arguments are plain (the model's name, a store root and the file's key under it, method ids), so it
runs in a fresh process from them alone.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from prefect import task

from lead import __version__
from lead.errors import error_text
from lead.scoring import get_method
from lead.scoring.bootstrap import RECOMPUTE_BUDGET_S, score_and_resample
from storage.logits import read_logits, read_metadata
from storage.store import Store
from tasks.logs import run_logger


#: Scores run one at a time per process, each with all of BLAS's threads. Their libraries are not
#: thread-safe together: scikit-learn's KMeans (inside N-LEEP's mixture) sets process-wide BLAS thread
#: limits through threadpoolctl, and a second thread leaving its own limit re-enables BLAS threading
#: inside the first one's OpenMP loop (OpenBLAS: "Detect OpenMP Loop and this application may hang").
#: Scoring is cheap next to extraction, which still overlaps with it.
_SCORING_LOCK = threading.Lock()


def scoring_lock() -> threading.Lock:
    """This process's scoring lock. The task reaches it through this function: a Dask runner pickles the
    task's function by value (the module's ``score_model`` is the Task, not the function), and a lock
    among its globals cannot be pickled; a module-level function travels by reference."""
    return _SCORING_LOCK


def scoring_key(path: str | Path, methods: list[str], bootstrap: int = 0, seed: int = 0,
                budget_s: float = RECOMPUTE_BUDGET_S) -> str:
    """sha256 of what determines the scores: the logits file's extraction key, each method and its
    knobs, the bootstrap's resamples, seed and budget (when on), and the package version."""
    doc = {
        "logits": read_metadata(Path(path)).get("lead.cache_key", str(path)),
        "methods": [[m, get_method(m).params] for m in methods],
        "version": __version__,
        **({"bootstrap": [bootstrap, seed, budget_s]} if bootstrap else {}),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _cache_key(context, parameters) -> str:
    return "score-" + scoring_key(Store.of(parameters["store"]).path(parameters["key"]), parameters["methods"],
                                  parameters.get("bootstrap", 0), parameters.get("seed", 0),
                                  parameters.get("budget_s", RECOMPUTE_BUDGET_S))


@task(name="score-model", task_run_name="score-{model}", cache_key_fn=_cache_key, persist_result=True)
def score_model(model: str, store: str, key: str, methods: list[str], bootstrap: int = 0, seed: int = 0,
                budget_s: float = RECOMPUTE_BUDGET_S) -> dict[str, dict]:
    """Compute each method in ``methods`` on the logits file ``key`` of the store ``store`` (a file
    outside a store, such as a suite's stored features: its folder and its name), and its scores on
    ``bootstrap`` paired resamples of the images (:func:`lead.scoring.bootstrap.score_and_resample`; 0: none).

    Cached on (the file's extraction key, the methods and their knobs, the bootstrap's settings, the
    package version): a second ranking of unchanged inputs recomputes no score. A method that fails is
    reported, not raised, so the other methods (and models) still count.

    Returns:
        {method: {"score": float, "seconds": float, "resampled": ResampledScore.to_dict() (with a bootstrap)}
        or {"error": "<Type>: <message>"}}.
    """
    logger = run_logger()
    data = read_logits(Store.of(store).path(key))
    out: dict[str, dict] = {}
    for name in methods:
        method = get_method(name)
        started = time.perf_counter()
        try:
            with scoring_lock():
                if bootstrap:
                    r = score_and_resample(method, features=data.features, logits=data.logits, labels=data.labels,
                                           n_resamples=bootstrap, seed=seed, budget_s=budget_s)
                    value, extra = r.score, {"resampled": r.to_dict()}
                    if r.note:
                        logger.warning("%s: %s", model, r.note)
                else:
                    value, extra = method(features=data.features, logits=data.logits, labels=data.labels), {}
        except Exception as err:  # one method's failure must not hide the others
            logger.warning("%s: %s failed: %s", model, name, err)
            out[name] = {"error": error_text(err)}
            continue
        out[name] = {"score": value, "seconds": time.perf_counter() - started, **extra}
    return out
