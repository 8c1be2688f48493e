"""Parquet logits store, rankings table and DuckDB history on real files."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.history import connect, query, selections
from storage.logits import LogitsWriter, decode_model_id, encode_model_id, is_complete, logits_path, read_logits
from storage.rankings import RANKINGS_SCHEMA, write_rankings


def write_file(path, n=10, d=4, cs=3, key="k1", background=False):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    logits = rng.standard_normal((n, cs)).astype(np.float32) if cs else None
    with LogitsWriter(path, {"lead.cache_key": key, "lead.classes": '["a", "b"]'}, background=background) as w:
        for s in range(0, n, 4):
            w.write([f"s{i}" for i in range(s, min(n, s + 4))], np.arange(s, min(n, s + 4)) % 2,
                    feats[s:s + 4], None if logits is None else logits[s:s + 4])
    return feats, logits


def test_model_ids_encode_reversibly_into_one_path_component(tmp_path):
    for name in ("resnet50.a1_in1k", "org/model:v2", "..", "ünïcode model"):
        enc = encode_model_id(name)
        assert "/" not in enc and decode_model_id(enc) == name
    p = logits_path(tmp_path, "fp", "../../x", "k" * 64)
    assert p.parent.parent.parent == tmp_path / "logits" and p.name == "part-kkkkkkkkkkkkkkkk.parquet"


def test_logits_file_schema_metadata_and_round_trip(tmp_path):
    path = logits_path(tmp_path, "fp", "m.tag", "0123456789abcdef" * 4)
    feats, logits = write_file(path)
    schema = pq.read_schema(path)
    assert schema.field("sample_id").type == pa.string()
    assert schema.field("label").type == pa.int32()
    assert schema.field("features").type == pa.list_(pa.float32(), 4)
    assert schema.field("logits").type == pa.list_(pa.float32(), 3)
    back = read_logits(path)
    np.testing.assert_array_equal(back.features, feats)
    np.testing.assert_array_equal(back.logits, logits)
    assert back.sample_ids == [f"s{i}" for i in range(10)]
    assert back.metadata["lead.n"] == "10" and back.metadata["lead.d"] == "4" and back.metadata["lead.cs"] == "3"
    assert back.classes == ["a", "b"]
    assert is_complete(path, "k1") and not is_complete(path, "k2")
    assert list(path.parent.iterdir()) == [path]


def test_headless_file_has_no_logits_column(tmp_path):
    path = tmp_path / "h.parquet"
    write_file(path, cs=0)
    assert "logits" not in pq.read_schema(path).names
    assert read_logits(path).logits is None


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "x" / "part-0.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with LogitsWriter(path, {}) as w:
            w.write(["a"], np.array([0]), np.zeros((1, 2), np.float32), None)
            raise RuntimeError("boom")
    assert list(path.parent.iterdir()) == []
    assert not is_complete(path, "")


def ranking_rows(run_id, dataset, scores):
    now = datetime.now(UTC)
    ordered = sorted(scores.items(), key=lambda kv: -kv[1])
    return [
        {"run_id": run_id, "created_at": now, "dataset": dataset, "dataset_fingerprint": "fp-" + dataset, "model": m,
         "method": "lead", "score": s, "rank": r, "n_samples": 10, "n_classes": 2, "mlflow_run_id": "ml",
         "flow_run_id": "fl", "params_json": "{}", "status": "ok", "error": ""}
        for r, (m, s) in enumerate(ordered, start=1)
    ]


def test_rankings_and_history_through_duckdb(tmp_path):
    write_rankings(tmp_path, "fp-a", "r1", ranking_rows("r1", "a", {"m1": -0.5, "m2": -0.2}))
    write_rankings(tmp_path, "fp-b", "r2", ranking_rows("r2", "b", {"m1": -0.1, "m2": -0.3}))
    assert pq.read_schema(tmp_path / "rankings" / "dataset=fp-a" / "run=r1.parquet").equals(RANKINGS_SCHEMA, check_metadata=False)
    best = selections(tmp_path).to_pylist()
    assert {(r["dataset"], r["best_model"]) for r in best} == {("a", "m2"), ("b", "m1")}
    assert [r["best_model"] for r in selections(tmp_path, "b").to_pylist()] == ["m1"]
    avg = query(tmp_path, "SELECT model, avg(score) AS s FROM rankings GROUP BY model ORDER BY model").to_pylist()
    assert avg == [{"model": "m1", "s": pytest.approx(-0.3)}, {"model": "m2", "s": pytest.approx(-0.25)}]


def test_history_on_an_empty_store_has_the_views(tmp_path):
    assert selections(tmp_path).num_rows == 0
    con = connect(tmp_path)
    assert con.sql("SELECT count(*) FROM logits").fetchall() == [(0,)]
    con.close()


def test_logits_view_reads_partitions(tmp_path):
    write_file(logits_path(tmp_path, "fp1", "m1", "a" * 64))
    write_file(logits_path(tmp_path, "fp1", "org/m2", "b" * 64), cs=0)
    rows = query(tmp_path, "SELECT model, count(*) AS n, max(len(features)) AS d FROM logits GROUP BY model ORDER BY model")
    assert rows.to_pylist() == [{"model": "m1", "n": 10, "d": 4}, {"model": "org/m2", "n": 10, "d": 4}]  # DuckDB decodes the partition value


def test_stale_temporaries_are_removed_before_writing_again(tmp_path):
    import os
    import time

    from storage.logits import STALE_TMP_S

    path = tmp_path / "d" / "part-x.parquet"
    path.parent.mkdir()
    stale = path.with_name(f".{path.name}.dead.tmp")
    fresh = path.with_name(f".{path.name}.live.tmp")
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    old = time.time() - STALE_TMP_S - 10
    os.utime(stale, (old, old))
    write_file(path)
    assert not stale.exists() and fresh.exists() and path.exists()


def test_history_lists_ties_and_selections_without_a_scored_model(tmp_path):
    rows = ranking_rows("r1", "a", {"m1": -0.5, "m2": -0.5})
    for r in rows:
        r["rank"] = 1
    failed = ranking_rows("r2", "a", {"m1": 0.0})
    failed[0].update(score=None, rank=None, status="failed", error="ModelLoadError: x")
    write_rankings(tmp_path, "fp-a", "r1", rows)
    write_rankings(tmp_path, "fp-a", "r2", failed)
    got = {r["run_id"]: r for r in selections(tmp_path, "a").to_pylist()}
    assert got["r1"]["best_model"] == "m1, m2" and got["r1"]["models_scored"] == 2
    assert got["r2"]["best_model"] is None and got["r2"]["models_scored"] == 0 and got["r2"]["models"] == 1


def test_background_writer_writes_the_same_file_in_order(tmp_path):
    feats, logits = write_file(tmp_path / "fg.parquet", n=50)
    write_file(tmp_path / "bg.parquet", n=50, background=True)
    a, b = read_logits(tmp_path / "fg.parquet"), read_logits(tmp_path / "bg.parquet")
    np.testing.assert_array_equal(b.features, feats)
    np.testing.assert_array_equal(b.logits, logits)
    assert b.sample_ids == a.sample_ids and b.metadata["lead.n"] == "50"


def test_background_write_error_surfaces_and_leaves_no_file(tmp_path):
    path = tmp_path / "x" / "part.parquet"
    with pytest.raises(Exception):
        with LogitsWriter(path, {}, background=True) as w:
            w.write(["a"], np.array([0]), np.zeros((1, 2), np.float32), None)
            w.write(["b"], np.array([0]), np.zeros((1, 3), np.float32), None)  # another width: the write fails
            w.write(["c"], np.array([0]), np.zeros((1, 2), np.float32), None)
            w.write(["d"], np.array([0]), np.zeros((1, 2), np.float32), None)
    assert list(path.parent.iterdir()) == []


def test_background_write_error_at_close_leaves_no_file(tmp_path):
    path = tmp_path / "y" / "part.parquet"
    with pytest.raises(Exception):
        with LogitsWriter(path, {}, background=True) as w:
            w.write(["a"], np.array([0]), np.zeros((1, 2), np.float32), None)
            w.write(["b"], np.array([0]), np.zeros((1, 3), np.float32), None)  # fails in the writer thread
    assert list(path.parent.iterdir()) == []


def test_long_model_ids_get_a_bounded_hashed_folder_and_keep_their_name(tmp_path):
    """30 CJK characters percent-encode to 270 characters, over the 255-byte file name limit."""
    long_name = "模型" * 15
    short = logits_path(tmp_path, "fp", "efficientnet_lite0.in1k", "a" * 64)
    assert short.parent.name == "model=efficientnet_lite0.in1k"  # short ids keep their path (caches stay valid)
    path = logits_path(tmp_path, "fp", long_name, "b" * 64)
    assert path.parent.name == "model=" + "%E6%A8%A1%E5%9E%8B" * 10 + "~aab011b60f3a3b41"
    assert len(path.parent.name.encode()) == 203
    assert encode_model_id(long_name + "!") != encode_model_id(long_name)
    rng = np.random.default_rng(0)
    with LogitsWriter(path, {"lead.cache_key": "b" * 64, "lead.model": long_name, "lead.classes": '["a", "b"]'}) as w:
        w.write(["s0", "s1"], np.array([0, 1]), rng.standard_normal((2, 4)), None)
    write_file(short)
    assert read_logits(path).metadata["lead.model"] == long_name
    rows = query(tmp_path, "SELECT model, count(*) AS n FROM logits GROUP BY model ORDER BY model")
    assert rows.to_pylist() == [{"model": "efficientnet_lite0.in1k", "n": 10}, {"model": long_name, "n": 2}]


def damage(path, column, where):
    """Overwrite 64 bytes inside ``column``'s chunk of the first row group (the footer stays intact);
    ``where`` is "start" (zstd fails to decode) or "middle" (decodes to other values without checksums)."""
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(column)
    offset = chunk.data_page_offset + (100 if where == "start" else chunk.total_compressed_size // 2)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xab" * 64)


@pytest.mark.parametrize("where", ["start", "middle"])
def test_a_damaged_logits_file_is_detected_and_set_aside(tmp_path, where):
    from storage.logits import DamagedLogitsError, check_cached

    path = logits_path(tmp_path, "fp", "m", "k" * 64)
    write_file(path, n=64, d=256, cs=100, key="k" * 64)
    assert read_metadata_keys(path)["lead.page_checksums"] == "crc32"
    assert check_cached(path, "k" * 64) == (True, "")
    assert check_cached(path, "other") == (False, "")
    intact = read_logits(path).features.copy()
    damage(path, 2, where)
    if where == "middle":  # without the checksums this damage reads back as other numbers
        changed = pq.read_table(path, page_checksum_verification=False).column("features").combine_chunks()
        assert not np.array_equal(changed.flatten().to_numpy().reshape(64, 256), intact)
    with pytest.raises(DamagedLogitsError, match=rf"^logits file {path} must read back as written; got OSError: "):
        read_logits(path)
    ok, warning = check_cached(path, "k" * 64)
    assert not ok and not path.exists() and path.with_name(path.name + ".corrupt").exists()
    assert warning.startswith(f"logits file {path} must read back as written; got OSError: ")
    assert "CRC checksum verification failed" in warning
    assert warning.endswith(". Set aside as part-kkkkkkkkkkkkkkkk.parquet.corrupt; extracting again.")
    assert check_cached(path, "k" * 64) == (False, "")
    assert query(tmp_path, "SELECT count(*) AS n FROM logits").to_pylist() == [{"n": 0}]  # *.corrupt is not read


def read_metadata_keys(path):
    from storage.logits import read_metadata

    return read_metadata(path)
