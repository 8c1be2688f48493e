"""The Store: one object owning the layout under a store folder, and the one atomic writer."""

from __future__ import annotations

import pickle

import pytest

from lead.config import Settings
from storage.store import LOGITS_GLOB, OUTCOMES_GLOB, RANKINGS_GLOB, Store


def test_the_store_owns_the_layout(tmp_path):
    st = Store.of(tmp_path / "s")
    root = (tmp_path / "s").resolve()
    assert st.root == root and Store.of(st) is st
    assert st.datasets_dir == root / "datasets"
    key = st.logits_key("fp", "org/m.tag", "0123456789abcdef" * 4)
    assert key == "logits/dataset=fp/model=org%2Fm.tag/part-0123456789abcdef.parquet"
    assert st.logits_file("fp", "org/m.tag", "0123456789abcdef" * 4) == root / key and st.key(root / key) == key
    assert st.rankings_file("fp", "r1") == root / "rankings" / "dataset=fp" / "run=r1.parquet"
    assert st.registry_file == root / "registry" / "datasets.json"
    assert (st.outcomes_dir, st.outcomes_lock) == (root / "outcomes", root / "outcomes" / ".lock")
    assert st.bench_dir("x") == root / "bench" / "suite=x"
    assert (st.mlflow_db, st.mlflow_artifacts) == (root / "mlflow.db", root / "mlflow-artifacts")
    assert st.tracking_uri == Settings.from_env(store=str(root)).tracking_uri  # one default, two places agree
    with pytest.raises(ValueError):
        st.key(tmp_path / "elsewhere.parquet")
    assert pickle.loads(pickle.dumps(st)) == st  # a task in another process rebuilds it from the root


def test_the_storage_modules_ask_the_store(tmp_path):
    from storage.bench import bench_dir
    from storage.logits import logits_path
    from storage.outcomes import outcomes_dir
    from storage.rankings import rankings_path
    from storage.registry import registry_path

    st = Store.of(tmp_path)
    assert logits_path(tmp_path, "fp", "m", "k" * 64) == st.logits_file("fp", "m", "k" * 64)
    assert rankings_path(tmp_path, "fp", "r") == st.rankings_file("fp", "r")
    assert registry_path(tmp_path) == st.registry_file
    assert outcomes_dir(tmp_path) == st.outcomes_dir
    assert bench_dir(tmp_path, "s") == st.bench_dir("s")


def test_the_globs_match_finished_files_only(tmp_path):
    st = Store.of(tmp_path)
    for key in ("rankings/dataset=f/run=a.parquet", "rankings/dataset=f/.run=b.parquet.1234.tmp",
                "logits/dataset=f/model=m/part-1.parquet", "outcomes/part-1.parquet", "outcomes/.part-2.parquet.x.tmp"):
        st.write(key, lambda tmp: tmp.write_bytes(b"x"))
    assert [st.key(p) for p in st.files(RANKINGS_GLOB)] == ["rankings/dataset=f/run=a.parquet"]
    assert [st.key(p) for p in st.files(LOGITS_GLOB)] == ["logits/dataset=f/model=m/part-1.parquet"]
    assert [st.key(p) for p in st.files(OUTCOMES_GLOB)] == ["outcomes/part-1.parquet"]
    assert st.glob_path(RANKINGS_GLOB) == f"{st.root.as_posix()}/{RANKINGS_GLOB}"


def test_the_atomic_writer_leaves_the_old_file_or_the_whole_new_one(tmp_path):
    st = Store.of(tmp_path)
    path = st.write("registry/datasets.json", lambda tmp: tmp.write_text("old"))
    assert path == tmp_path.resolve() / "registry" / "datasets.json" and path.read_text() == "old"

    def fails(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        st.write("registry/datasets.json", fails)
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["datasets.json"]  # no temporary file left
    st.write(path, lambda tmp: tmp.write_text("new"))  # an absolute path under the root works too
    assert path.read_text() == "new"
