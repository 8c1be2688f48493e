"""The selection's figure on disk: drawn once per picture, kept by what it shows (storage.figures)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

from lead.selection import Extraction, ModelResult, Selection
from storage.figures import PNG_SIGNATURE, figure_key, selection_points, write_selection_figure
from storage.store import Store


def _selection(run_id: str, lead_b: float = 0.5) -> Selection:
    def model(name: str, score: float, rank: int, gflops: float) -> ModelResult:
        return ModelResult(name, "arch", f"timm:{name}", extraction=Extraction("cached", "/p", 0.0),
                           scores={"lead": score}, ranks={"lead": rank}, scoring="cached",
                           uncertainty={"lead": {"score_low": score - 0.1, "score_high": score + 0.1, "p_best": 1.0 / rank,
                                                 "tied_with_best": rank == 1}},
                           cost={"params": 1e6, "gflops": gflops}, pareto={"lead": rank == 1})

    return Selection(
        run_id=run_id, dataset="d", dataset_path="/x", dataset_fingerprint="f" * 64, n_samples=9, n_listed=9,
        n_classes=2, methods=["lead"], primary_method="lead", dropped_methods={}, fallback="", n_read=9,
        best_model="a", best_models=["a"], models=[model("a", 1.0, 1, 0.2), model("b", lead_b, 2, 0.4)],
        rankings_path="/r.parquet", zoo_digest="z", bootstrap={"resamples": 200, "seed": 0},
    )


def test_a_selection_that_shows_the_same_reuses_the_drawn_figure(tmp_path):
    store = Store.of(tmp_path)
    first = write_selection_figure(store, _selection("r1"))
    png = first.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and first == store.figure_file("f" * 64, "r1")
    [kept] = (tmp_path / "figures" / "drawn").iterdir()
    assert kept.read_bytes() == png
    # the same picture in a new run: the same bytes, drawn by nobody (a fresh process never imports matplotlib)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = {sys.path!r}
        from tests.storage.test_figures import _selection
        from storage.figures import write_selection_figure
        out = write_selection_figure({str(tmp_path)!r}, _selection("r2"))
        assert "matplotlib" not in sys.modules, "drew a figure it had"
        print(out)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    second = store.figure_file("f" * 64, "r2")
    assert done.stdout.strip() == str(second) and second.read_bytes() == png
    # a different picture (another score) is drawn and kept beside the first
    third = write_selection_figure(store, _selection("r3", lead_b=0.25))
    assert third.read_bytes() != png and len(list((tmp_path / "figures" / "drawn").iterdir())) == 2
    # a kept file that is not a whole PNG is drawn again, and replaced
    kept.write_bytes(png[: len(png) // 2])
    again = write_selection_figure(store, _selection("r4"))
    assert again.read_bytes() == png and kept.read_bytes() == png


def test_the_key_changes_with_every_input_of_the_picture():
    sel = _selection("r")
    points = selection_points(sel)
    base = figure_key(points, method="lead", title="t")
    assert base == figure_key(selection_points(_selection("other run id")), method="lead", title="t")
    assert len({base,
                figure_key(points, method="logme", title="t"),
                figure_key(points, method="lead", title="t2"),
                figure_key([dataclasses.replace(points[0], p_best=0.5), points[1]], method="lead", title="t"),
                figure_key([dataclasses.replace(points[0], gflops=0.3), points[1]], method="lead", title="t"),
                figure_key(points[:1], method="lead", title="t")}) == 6
