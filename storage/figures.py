"""The selection's figure on disk (:meth:`storage.store.Store.figure_file`), the history figure, and the
markdown that links the selection's figure (the Prefect artifact). Drawing is :mod:`lead.figures`; this
turns a :class:`lead.selection.Selection` (or the rankings table) into the figure's points and writes the
bytes through the store's atomic writer."""

from __future__ import annotations

import math
from pathlib import Path

from lead.selection import Selection
from storage.store import Store


def selection_points(sel: Selection) -> list:
    """The figure's points (:class:`lead.figures.ScorePoint`) of a selection's models by its ranking method;
    excluded models are left out."""
    from lead.figures import ScorePoint

    primary = sel.primary_method
    points = []
    for m in sel.models:
        if m.status == "excluded":
            continue
        u = m.uncertainty.get(primary, {})
        gflops = m.cost.get("gflops")
        points.append(ScorePoint(
            model=m.model, score=m.scores.get(primary, math.nan),
            low=u.get("score_low", math.nan), high=u.get("score_high", math.nan), p_best=u.get("p_best", math.nan),
            tied_with_best=bool(u.get("tied_with_best", False)), gflops=gflops if gflops else math.nan,
            pareto=bool(m.pareto.get(primary, False)), rank=m.ranks.get(primary),
        ))
    return points


#: The first bytes of every PNG file (its signature) and its last chunk: a kept figure is used only whole.
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def figure_key(points: list, *, method: str, title: str) -> str:
    """SHA-256 (hex) of everything a selection's figure depends on: its points (:func:`selection_points`),
    the method, the title, the drawing code (the bytes of :mod:`lead.figures`) and matplotlib's version
    (read from its metadata: nothing is imported). Two selections with the same key have the same picture."""
    import dataclasses
    import hashlib
    import importlib.metadata
    import importlib.util
    import json

    code = Path(importlib.util.find_spec("lead.figures").origin).read_bytes()
    try:
        mpl = importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        mpl = "none"
    payload = json.dumps({"points": [dataclasses.asdict(p) for p in points], "method": method, "title": title,
                          "matplotlib": mpl}, sort_keys=True, default=str)
    return hashlib.sha256(code + payload.encode("utf-8")).hexdigest()


def _kept_png(path: Path) -> bytes | None:
    """The PNG at ``path`` when it is there and whole (signature and end chunk), else None (it is redrawn)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END) else None


def write_selection_figure(store: Store | Path, sel: Selection) -> Path:
    """Draw the selection's figure (:func:`lead.figures.selection_figure`) and write it atomically as PNG
    to ``figures/dataset=<fp>/run=<run id>.png``. Returns its path.

    A figure is kept by what it shows (``figures/drawn/<key>.png``, :func:`figure_key`): a ranking that shows
    the same as an earlier one (a cached re-ranking: same scores, same seeded bootstrap) copies those bytes
    instead of importing matplotlib and drawing (about 1 s of CPU; docs/performance.md, Target 1). A kept
    file that is unreadable or not a whole PNG is drawn again.

    Raises:
        InputError: no model was scored (nothing to draw).
    """
    st = Store.of(store)
    boot = sel.bootstrap or {}
    resamples = f", {boot['resamples']} paired resamples" if boot.get("resamples") else ", no bootstrap"
    title = (f"{sel.dataset}: {len(sel.models)} models by {sel.primary_method} ({sel.n_samples} images{resamples})")
    points = selection_points(sel)
    drawn = st.drawn_figure_file(figure_key(points, method=sel.primary_method, title=title))
    png = _kept_png(drawn)
    if png is None:
        from lead.figures import png_bytes, selection_figure

        png = png_bytes(selection_figure(points, method=sel.primary_method, title=title))
        try:
            st.write(drawn, lambda tmp: Path(tmp).write_bytes(png))
        except OSError:  # keeping it only saves the next drawing
            pass
    return st.write(st.figure_file(sel.dataset_fingerprint, sel.run_id), lambda tmp: Path(tmp).write_bytes(png))


def selection_markdown(sel: Selection) -> str:
    """Markdown for the Prefect UI: the best model, links to the figure (its MLflow artifact and its file),
    and a table of score, P(best), rank interval, cost and Pareto flag by the ranking method."""
    primary = sel.primary_method
    lines = [f"# {sel.dataset}: best by {primary}: {sel.best_model or 'none'}", ""]
    ml = sel.mlflow
    if ml is not None and ml.url:
        from storage.tracking import FIGURE_ARTIFACT, run_url

        figure = run_url(ml.tracking_uri, ml.experiment_id, ml.run_id, f"artifacts/{FIGURE_ARTIFACT}")
        lines.append(f"Figure: [{FIGURE_ARTIFACT} in the MLflow run]({figure}) ([the run]({ml.url})"
                     + (f", [the runs table]({ml.runs_url})" if ml.runs_url else "") + ")")
    if sel.figure_path:
        lines.append(f"Figure file: [{sel.figure_path}]({Path(sel.figure_path).as_uri()})")
    lines += ["", f"| rank | model | {primary} | P(best) | 90% rank interval | params | GFLOPs | Pareto |",
              "|---|---|---|---|---|---|---|---|"]
    for m in sel.models:
        u = m.uncertainty.get(primary, {})
        score = m.scores.get(primary)
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            m.ranks.get(primary, m.status), m.model, f"{score:.4f}" if score is not None else "-",
            f"{u['p_best']:.2f}" if "p_best" in u else "-",
            f"{u['rank_low']}-{u['rank_high']}" if "rank_low" in u else "-",
            f"{m.cost['params'] / 1e6:.1f} M" if m.cost.get("params") else "-",
            f"{m.cost['gflops']:.3g}" if m.cost.get("gflops") else "-",
            "yes" if m.pareto.get(primary) else ""))
    for note in (sel.bootstrap or {}).get("notes", {}).values():
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


def history_points(store: Store | Path, dataset: str) -> list:
    """A dataset's past selections as :class:`lead.figures.HistoryPoint` (rows of rankings schema 1 have no
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


def write_history_figure(store: Store | Path, dataset: str, out: Path | None = None) -> Path:
    """Draw ``dataset``'s past selections (:func:`lead.figures.history_figure`) to ``out`` (default
    ``figures/history-<dataset>.png`` in the store), atomically. Returns the path.

    Raises:
        InputError: no scored selection of that dataset in the store.
    """
    from lead.figures import history_figure, png_bytes

    st = Store.of(store)
    png = png_bytes(history_figure(history_points(st, dataset), dataset=dataset))
    return st.write(Path(out).resolve() if out else st.history_figure_file(dataset), lambda tmp: Path(tmp).write_bytes(png))
