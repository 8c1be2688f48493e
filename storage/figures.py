"""The selection's figure on disk, ``<store>/figures/dataset=<fingerprint>/run=<run id>.png``, and the
markdown that links it (the Prefect artifact). Drawing is :mod:`lead.figures`; this writes the bytes
atomically and turns a selection into the figure's points."""

from __future__ import annotations

import math
from pathlib import Path

from storage.files import atomic_write


def figure_path(store: Path, dataset_fingerprint: str, run_id: str) -> Path:
    return Path(store) / "figures" / f"dataset={dataset_fingerprint}" / f"run={run_id}.png"


def selection_points(selection: dict) -> list:
    """The figure's points (:class:`lead.figures.ScorePoint`) of a selection's models by its ranking method."""
    from lead.figures import ScorePoint

    primary = selection["primary_method"]
    points = []
    for m in selection["models"]:
        if m["status"] == "excluded":
            continue
        u = m.get("uncertainty", {}).get(primary, {})
        gflops = (m.get("cost") or {}).get("gflops")
        points.append(ScorePoint(
            model=m["model"], score=m["scores"].get(primary, math.nan),
            low=u.get("score_low", math.nan), high=u.get("score_high", math.nan), p_best=u.get("p_best", math.nan),
            tied_with_best=bool(u.get("tied_with_best", False)), gflops=gflops if gflops else math.nan,
            pareto=bool(m.get("pareto", {}).get(primary, False)), rank=m["ranks"].get(primary),
        ))
    return points


def write_selection_figure(store: Path, dataset_fingerprint: str, run_id: str, selection: dict) -> Path:
    """Draw the selection's figure (:func:`lead.figures.selection_figure`) and write it atomically as PNG.
    Returns its path.

    Raises:
        InputError: no model was scored (nothing to draw).
    """
    from lead.figures import png_bytes, selection_figure

    boot = selection.get("bootstrap") or {}
    resamples = f", {boot['resamples']} paired resamples" if boot.get("resamples") else ", no bootstrap"
    title = (f"{selection['dataset']}: {len(selection['models'])} models by {selection['primary_method']} "
             f"({selection['n_samples']} images{resamples})")
    png = png_bytes(selection_figure(selection_points(selection), method=selection["primary_method"], title=title))
    return atomic_write(figure_path(store, dataset_fingerprint, run_id), lambda tmp: Path(tmp).write_bytes(png))


def selection_markdown(selection: dict) -> str:
    """Markdown for the Prefect UI: the best model, a table of P(best), rank interval and cost, and links to
    the figure (its MLflow artifact and its file)."""
    primary = selection["primary_method"]
    lines = [f"# {selection['dataset']}: best by {primary}: {selection['best_model'] or 'none'}", ""]
    ml = selection.get("mlflow") or {}
    if ml.get("url"):
        from storage.tracking import FIGURE_ARTIFACT, run_url

        figure = run_url(ml["tracking_uri"], ml["experiment_id"], ml["run_id"], f"artifacts/{FIGURE_ARTIFACT}")
        lines.append(f"Figure: [{FIGURE_ARTIFACT} in the MLflow run]({figure}) ([the run]({ml['url']}))")
    if selection.get("figure_path"):
        lines.append(f"Figure file: [{selection['figure_path']}]({Path(selection['figure_path']).as_uri()})")
    lines += ["", f"| rank | model | {primary} | P(best) | 90% rank interval | params | GFLOPs | Pareto |",
              "|---|---|---|---|---|---|---|---|"]
    for m in selection["models"]:
        u = m.get("uncertainty", {}).get(primary, {})
        cost = m.get("cost") or {}
        score = m["scores"].get(primary)
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            m["ranks"].get(primary, m["status"]), m["model"], f"{score:.4f}" if score is not None else "-",
            f"{u['p_best']:.2f}" if "p_best" in u else "-",
            f"{u['rank_low']}-{u['rank_high']}" if "rank_low" in u else "-",
            f"{cost['params'] / 1e6:.1f} M" if cost.get("params") else "-",
            f"{cost['gflops']:.3g}" if cost.get("gflops") else "-",
            "yes" if m.get("pareto", {}).get(primary) else ""))
    for note in (selection.get("bootstrap") or {}).get("notes", {}).values():
        lines += ["", f"- {note}"]
    return "\n".join(lines)


#: Each selection's rows by its own ranking method (the first of ``params_json``'s methods), for one dataset
#: (name or fingerprint).
HISTORY_SQL = """
SELECT created_at, run_id, model, method, score, score_low, score_high, rank
FROM rankings
WHERE (dataset = ? OR dataset_fingerprint = ?) AND status = 'ok'
  AND method = json_extract_string(params_json, '$.methods[0]')
ORDER BY created_at, model
"""


def history_points(store: Path, dataset: str) -> list:
    """A dataset's past selections as :class:`lead.figures.HistoryPoint` (files of rankings schema 1 have no
    interval: NaN there)."""
    from lead.figures import HistoryPoint
    from storage.history import connect

    con = connect(store)
    try:
        cols = {r[0] for r in con.sql("DESCRIBE rankings").fetchall()}
        sql = HISTORY_SQL if "score_low" in cols else HISTORY_SQL.replace("score_low, score_high", "NULL, NULL")
        rows = con.execute(sql, [dataset, dataset]).fetchall()
    finally:
        con.close()
    nan = math.nan
    return [HistoryPoint(created_at=c, run_id=r, model=m, method=meth, score=s,
                         low=nan if lo is None else lo, high=nan if hi is None else hi, best=rank == 1)
            for c, r, m, meth, s, lo, hi, rank in rows]


def write_history_figure(store: Path, dataset: str, out: Path | None = None) -> Path:
    """Draw ``dataset``'s past selections (:func:`lead.figures.history_figure`) to ``out`` (default
    ``<store>/figures/history-<dataset>.png``), atomically. Returns the path.

    Raises:
        InputError: no scored selection of that dataset in the store.
    """
    import re

    from lead.figures import history_figure, png_bytes

    png = png_bytes(history_figure(history_points(store, dataset), dataset=dataset))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset)[:80] or "dataset"
    path = Path(out) if out else Path(store) / "figures" / f"history-{slug}.png"
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
