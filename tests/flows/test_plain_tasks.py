"""The two tasks run in a fresh process from their arguments alone (the next step runs them on Dask
workers): a dataset reference, a model spec, the store root and a key; no in-memory dataset, no event."""

from __future__ import annotations

import pickle
import subprocess
import sys

from lead.data import image_folder
from lead.dataref import DatasetRef

RUN = """
import pickle, sys
from tasks.extract import extract_logits
from tasks.score import score_model
ref, spec, kwargs, methods = pickle.load(open(sys.argv[1], "rb"))
out = extract_logits.fn(ref, spec, **kwargs)
scores = score_model.fn(spec.name, kwargs["store"], kwargs["key"], methods)
pickle.dump((out, scores), open(sys.argv[2], "wb"))
"""


def test_extract_and_score_run_in_a_fresh_process_from_plain_arguments(tiny_dataset, tmp_path):
    from lead.zoo import load_zoo, weights_digest
    from storage.store import Store
    from tasks.extract import extraction_key
    from tests.conftest import lite_entry, write_zoo

    ds = image_folder(tiny_dataset)
    ref = DatasetRef.of(str(tiny_dataset), ds)
    assert (ref.source, ref.name, ref.fingerprint, ref.n_samples) == (str(ds.root), ds.name, ds.fingerprint(), len(ds))
    spec = load_zoo(str(write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])))[0]
    st = Store.of(tmp_path / "store")
    cache_key = extraction_key(ref.fingerprint, spec, weights_digest(spec))
    kwargs = {"cache_key": cache_key, "weights_digest": weights_digest(spec), "store": str(st.root),
              "key": st.logits_key(ref.fingerprint, spec.name, cache_key), "device": "cpu", "batch_size": 8, "num_workers": 0}
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((ref, spec, kwargs, ["lead", "logme"])))
    subprocess.run([sys.executable, "-c", RUN, str(args), str(tmp_path / "out.pkl")], check=True, timeout=300)
    out, scores = pickle.loads((tmp_path / "out.pkl").read_bytes())
    assert out["n"] == len(ds) and out["path"] == str(st.path(kwargs["key"])) and out["extracted"]
    assert set(scores) == {"lead", "logme"} and all("score" in v for v in scores.values())


def test_a_dataset_reference_opens_the_same_dataset_again(tiny_dataset, tmp_path):
    ds = image_folder(tiny_dataset, name="animals")
    ref = pickle.loads(pickle.dumps(DatasetRef.of(str(tiny_dataset), ds)))
    again = ref.open()
    assert (again.name, again.classes, [s.sample_id for s in again.samples]) == (ds.name, ds.classes, [s.sample_id for s in ds.samples])
    import shutil

    shutil.copytree(tiny_dataset, tmp_path / "d")
    manifest = tmp_path / "d" / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{s.sample_id},{s.label}\n" for s in ds.samples))
    from lead.data import csv_manifest

    mref = DatasetRef.of(str(manifest), csv_manifest(manifest, name="m"))
    assert mref.source == str(manifest.resolve()) and len(mref.open()) == len(ds)


def test_a_dataset_that_changed_since_it_was_planned_is_refused(tiny_dataset, tmp_path):
    import shutil

    import pytest

    from lead.errors import DatasetError

    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    ref = DatasetRef.of(str(root), image_folder(root))
    next(root.rglob("*.png")).unlink()
    with pytest.raises(DatasetError, match="must not change during a ranking"):
        ref.open()
