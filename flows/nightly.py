"""The ``nightly-rerank`` flow: re-rank every registered dataset against the current zoo.

One ``rank-zoo`` sub-flow per dataset of the store's registry (``storage.registry``), one after the
other. Work whose cache is still valid is skipped inside each sub-flow: an extraction whose key
(dataset fingerprint, model, weights digest, preprocessing) is unchanged is a cache hit that does no
forward pass, and the scores of unchanged logits files are cached too; only new models, changed
weights or changed images cost a forward pass. A dataset that fails (its folder moved, all its models
failed) is reported and the others still run; the flow fails only when every dataset failed.

Last, when the store's outcomes (``lead outcomes``) changed since the last logged track record, the track
record is logged as its own MLflow run in experiment ``lead-track-record`` (``flows.bench.track_record``).
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import flow
from prefect.logging import get_run_logger

from flows.bench import log_track_record_if_changed
from flows.rank_zoo import rank_zoo, task_runner
from lead.config import Settings
from lead.errors import error_text
from storage.registry import list_datasets


def _log_track_record(logger, settings: Settings, tracking_uri: str | None, zoo: str) -> dict:
    """The track record as an MLflow run when the outcomes changed; a failure is logged, never fatal."""
    try:
        done = log_track_record_if_changed(store=str(settings.store), tracking_uri=tracking_uri, zoo=zoo)
    except Exception as err:  # the re-ranking is what the night is for; the track record is a report
        logger.error("track record not logged: %s: %s", type(err).__name__, err)
        return {"status": "failed", "reason": str(err)}
    logger.info("track record: %s%s", done["status"], f" (run {done['run_id']})" if done.get("run_id") else
                f" ({done['reason']})" if done.get("reason") else "")
    return done


@flow(name="nightly-rerank", validate_parameters=False)
def nightly_rerank(
    zoo: str = "efficientnet-lite",
    methods: Sequence[str] | str = "default",
    store: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> dict:
    """Re-rank every dataset registered in ``store`` with ``zoo`` by ``methods``.

    Args:
        zoo: zoo YAML file or built-in zoo name.
        methods: method ids; the first ranks.
        store: the store whose registry is re-ranked (default ``$LEAD_STORE`` or ``./lead-store``).
        tracking_uri, device, batch_size, num_workers: as for ``rank-zoo``.
    Returns:
        {dataset name: {"status": "ok" | "failed", "best_model", "run_id", "rankings_path",
        "extracted" (models that needed a forward pass), "cached" (models served from the cache),
        "changed" (the content differs from the registered fingerprint), "error"}}.
    Raises:
        RuntimeError: every registered dataset failed (each one's error is in the message).
    """
    logger = get_run_logger()
    settings = Settings.from_env(store=store)
    entries = list_datasets(settings.store)
    if not entries:
        logger.warning("no datasets registered in %s: nothing to re-rank (register one with `lead datasets add`)",
                       settings.store)
        _log_track_record(logger, settings, tracking_uri, zoo)
        return {}
    logger.info("re-ranking %d registered dataset(s) of %s with zoo %s", len(entries), settings.store, zoo)
    summary: dict[str, dict] = {}
    for entry in entries:
        state = rank_zoo.with_options(flow_run_name=f"nightly-{entry.name}", task_runner=task_runner(settings))(
            dataset=entry.path, zoo=zoo, methods=methods, store=str(settings.store), tracking_uri=tracking_uri,
            dataset_name=entry.name, device=device, batch_size=batch_size, num_workers=num_workers, return_state=True,
        )
        if not state.is_completed():
            err = state.result(raise_on_failure=False)
            summary[entry.name] = {"status": "failed", "error": error_text(err) if isinstance(err, BaseException)
                                   else str(state.message)}
            logger.error("%s: re-ranking failed: %s", entry.name, summary[entry.name]["error"])
            continue
        sel = state.result()
        kinds = [m.extraction.status for m in sel.models if m.extraction]
        summary[entry.name] = {
            "status": "ok", "best_model": sel.best_model, "run_id": sel.run_id, "rankings_path": sel.rankings_path,
            "extracted": kinds.count("extracted"), "cached": kinds.count("cached"),
            "changed": sel.dataset_fingerprint != entry.fingerprint, "error": "",
        }
        logger.info("%s: best %s (%d extracted, %d from the cache)%s", entry.name, sel.best_model,
                    kinds.count("extracted"), kinds.count("cached"),
                    "; content changed since registration" if summary[entry.name]["changed"] else "")
    _log_track_record(logger, settings, tracking_uri, zoo)
    if all(s["status"] == "failed" for s in summary.values()):
        raise RuntimeError("nightly-rerank: at least one dataset must be ranked; every one failed ("
                           + "; ".join(f"{k}: {v['error']}" for k, v in summary.items()) + ").")
    return summary
