"""Datasets: ImageFolder and CSV readers, fingerprints, built-in demo sets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lead.data import DEMO_DATASETS, csv_manifest, image_folder, materialise_demo, resolve_dataset
from lead.errors import DatasetError, InputError


def test_image_folder_reads_classes_and_samples(tiny_dataset):
    ds = image_folder(tiny_dataset)
    assert ds.name == "animals"
    assert ds.classes == ["bear", "cat", "horse", "zebra"]
    assert len(ds) == 24
    assert ds.samples[0].sample_id == "bear/" + sorted(p.name for p in (tiny_dataset / "bear").iterdir())[0]
    np.testing.assert_array_equal(np.bincount(ds.label_indices), [6, 6, 6, 6])


def test_fingerprint_ignores_order_names_and_location_but_sees_bytes_and_labels(tiny_dataset, tmp_path):
    base = image_folder(tiny_dataset).fingerprint()
    assert len(base) == 64
    moved = shutil.copytree(tiny_dataset, tmp_path / "elsewhere")
    for i, p in enumerate(sorted((moved / "cat").iterdir())):
        p.rename(p.with_name(f"renamed{i}.png"))
    assert image_folder(moved).fingerprint() == base
    # a label change
    shutil.move(str(next((moved / "cat").iterdir())), moved / "bear" / "moved.png")
    assert image_folder(moved).fingerprint() != base
    # a byte change
    moved2 = shutil.copytree(tiny_dataset, tmp_path / "bytes")
    f = next((moved2 / "zebra").iterdir())
    f.write_bytes(f.read_bytes() + b"\0")
    assert image_folder(moved2).fingerprint() != base


def test_csv_manifest_equals_image_folder(tiny_dataset, tmp_path):
    ds = image_folder(tiny_dataset)
    manifest = tiny_dataset.parent / "manifest.csv"
    lines = ["path,label"] + [f"animals/{s.sample_id},{s.label}" for s in reversed(ds.samples)]
    manifest.write_text("\n".join(lines) + "\n")
    m = csv_manifest(manifest)
    assert m.name == "manifest"
    assert m.classes == ds.classes and len(m) == len(ds)
    assert m.fingerprint() == ds.fingerprint()
    assert resolve_dataset(manifest, datasets_dir=tmp_path).fingerprint() == ds.fingerprint()


def test_csv_manifest_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.png,a\n")
    with pytest.raises(DatasetError, match="must have the header columns 'path,label'"):
        csv_manifest(bad)
    bad.write_text("path,label\nmissing.png,a\n")
    with pytest.raises(DatasetError, match=r"got 1 problem\(s\) \(line 2: the file must exist; got no such file 'missing.png'\)"):
        csv_manifest(bad)


def test_unknown_dataset_and_bad_names_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="must be an ImageFolder directory, a .csv manifest"):
        resolve_dataset("no-such-thing", datasets_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="must contain images in one sub-folder per class; got none"):
        image_folder(tmp_path / "empty")
    with pytest.raises(InputError, match="name must be a plain name"):
        image_folder(tmp_path, name="../escape")


def test_demo_animal_mnist_fewshot_materialises_once(tmp_path):
    root = materialise_demo("animal-mnist-fewshot", tmp_path)
    ds = image_folder(root)
    assert len(ds) == 300 and len(ds.classes) == 10
    assert set(ds.classes) == {"bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"}
    mtime = root.stat().st_mtime_ns
    assert materialise_demo("animal-mnist-fewshot", tmp_path) == root
    assert root.stat().st_mtime_ns == mtime
    # no duplicate images (the package has 284 exact duplicates)
    digests = {s.path.read_bytes() for s in ds.samples}
    assert len(digests) == 300
    assert not list(tmp_path.glob(".animal-mnist-fewshot.*"))


def test_demo_registry_lists_two_real_datasets():
    assert {"animal-mnist-fewshot", "mnist-5k"} <= set(DEMO_DATASETS)
    images, labels = DEMO_DATASETS["mnist-5k"].make()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert sorted(set(labels)) == [str(i) for i in range(10)]


def test_torchvision_datasets_fail_clearly_without_the_network(tmp_path):
    with pytest.raises(DatasetError, match=r"'torchvision:NoSuchSet': 'NoSuchSet' must be a torchvision.datasets class"):
        resolve_dataset("torchvision:NoSuchSet", datasets_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"'torchvision:CIFAR10:train': the download must succeed; got"):
        resolve_dataset("torchvision:CIFAR10:train", datasets_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name != ".downloads"]


def test_torchvision_dataset_materialises_as_image_folder(tmp_path, monkeypatch):
    """The same code path on a torchvision dataset class that needs no download (FakeData), made smaller
    than its default (1,000 random 224 px images, 13 s of CPU to write as PNG) through its own arguments:
    200 images of 32 px."""
    import torchvision.datasets as tvd

    class FakeData(tvd.FakeData):
        def __init__(self, size=200, image_size=(3, 32, 32), num_classes=10, transform=None, target_transform=None,
                     random_offset=0):
            super().__init__(size, image_size, num_classes, transform, target_transform, random_offset)

    monkeypatch.setattr(tvd, "FakeData", FakeData)
    root = resolve_dataset("torchvision:FakeData", datasets_dir=tmp_path)
    assert root.name == "torchvision-fakedata"
    assert len(root) == 200 and len(root.classes) == 10
    from PIL import Image

    assert Image.open(root.samples[0].path).size == (32, 32)


def test_csv_manifest_rows_blank_duplicate_outside(tmp_path):
    from PIL import Image

    folder = tmp_path / "m"
    folder.mkdir()
    for n in ("a.png", "b.png", "c.png", "d.png"):
        Image.new("L", (4, 4), 1).save(folder / n)
    Image.new("L", (4, 4), 1).save(tmp_path / "outside.png")
    manifest = folder / "labels.csv"
    manifest.write_text("path,label\na.png,x\nb.png,x\na.png,x\nc.png,y\nd.png,y\n")
    ds = csv_manifest(manifest)
    assert len(ds) == 4 and ds.notes == ["ignored 1 repeated row(s) of the manifest"]
    manifest.write_text("path,label\na.png,x\nb.png,\n")
    with pytest.raises(DatasetError, match=r"\(line 3: a path and a label are required; got path='b.png', label=''\)"):
        csv_manifest(manifest)
    manifest.write_text("path,label\na.png,x\na.png,y\n")
    with pytest.raises(DatasetError, match=r"\(line 3: 'a.png' must have one label; got 'y' here and 'x' on line 2\)"):
        csv_manifest(manifest)
    manifest.write_text("path,label\n../outside.png,x\n")
    with pytest.raises(DatasetError, match=r"\(line 2: the path must stay inside the manifest's folder; got '../outside.png'\)"):
        csv_manifest(manifest)


def test_class_requirements_and_unusual_class_names(tmp_path):
    from PIL import Image

    from lead.data import check_rankable

    for cls, n in (("sea lion", 2), ("ñandú", 2), ("42", 2), ("empty", 0), ("single", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("L", (4, 4), i).save(tmp_path / cls / f"{i}.png")
    ds = image_folder(tmp_path)
    assert ds.classes == ["42", "sea lion", "single", "ñandú"]
    assert ds.notes == ["ignored 1 class folder(s) without images: empty"]
    with pytest.raises(DatasetError, match=r"every class must have at least 2 images; got fewer for \['single'\]"):
        check_rankable(ds)
    (tmp_path / "single" / "0.png").unlink()
    ok = check_rankable(image_folder(tmp_path))
    assert ok.classes == ["42", "sea lion", "ñandú"]
    (tmp_path / "one" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (4, 4), i).save(tmp_path / "one" / "a" / f"{i}.png")
    with pytest.raises(DatasetError, match=r"must have at least 2 classes; got 1 \(\['a'\]\)"):
        check_rankable(image_folder(tmp_path / "one"))


def test_csv_manifest_encodings(tmp_path):
    from PIL import Image

    for n in ("ä.png", "b.png"):
        Image.new("L", (4, 4), 1).save(tmp_path / n)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("path,label\nä.png,x\nb.png,y\n".encode("utf-8-sig"))
    assert csv_manifest(bom).classes == ["x", "y"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\nä.png,x\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"must be UTF-8 text; got byte 0xe4 at position 11. Save it as UTF-8"):
        csv_manifest(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="must have the header columns 'path,label'; got an empty file"):
        csv_manifest(empty)
    header = tmp_path / "header.csv"
    header.write_text("path,label\n")
    with pytest.raises(DatasetError, match="must list images; got a header and no rows"):
        csv_manifest(header)


def test_every_suffix_pillow_opens_is_read_and_other_files_are_named(tmp_path):
    """A class of .jfif JPEGs is a class; a .jfif among PNGs is read; non-image files are counted and named."""
    from PIL import Image

    from lead.data import image_suffixes

    assert {".jfif", ".jpe", ".jpg", ".png", ".qoi"} <= set(image_suffixes())
    assert not {".txt", ".pdf", ".h5"} & set(image_suffixes())
    root = tmp_path / "ds"
    for folder, names in {"a": ["1.jfif", "2.jfif", "3.JFIF"], "b": ["1.png", "2.png", "3.jfif", "notes.txt"]}.items():
        (root / folder).mkdir(parents=True)
        for n in names:
            if n.endswith(".txt"):
                (root / folder / n).write_text("not an image")
            else:
                Image.new("RGB", (8, 8), (10, 20, 30)).save(root / folder / n, format="JPEG" if "jfif" in n.lower() else "PNG")
    (root / "README.md").write_text("about")
    (root / "b" / ".DS_Store").write_bytes(b"\0")
    ds = image_folder(root)
    assert ds.classes == ["a", "b"]
    assert [s.sample_id for s in ds.samples] == ["a/1.jfif", "a/2.jfif", "a/3.JFIF", "b/1.png", "b/2.png", "b/3.jfif"]
    assert ds.notes == ["ignored 2 file(s) that are not images: README.md, b/notes.txt"]
    (root / "c").mkdir()
    for i in range(12):
        (root / "c" / f"{i:02d}.txt").write_text("x")
    assert image_folder(root).notes == [
        "ignored 1 class folder(s) without images: c",
        "ignored 14 file(s) that are not images: README.md, b/notes.txt, c/00.txt, c/01.txt, c/02.txt, c/03.txt, "
        "c/04.txt, c/05.txt, c/06.txt, c/07.txt and 4 more",
    ]


def test_csv_manifest_reports_every_problem_in_one_error(tmp_path):
    from PIL import Image

    folder = tmp_path / "m"
    folder.mkdir()
    for n in ("a.png", "b.png", "c.png"):
        Image.new("L", (4, 4), 1).save(folder / n)
    manifest = folder / "labels.csv"
    manifest.write_text("path,label\na.png,x\nb.png,\nc.png,y\ngone.png,y\n")
    with pytest.raises(DatasetError) as info:
        csv_manifest(manifest)
    assert str(info.value) == (
        f"dataset: manifest {manifest}: every row must give an existing image inside {folder} and one label; got 2 "
        "problem(s) (line 3: a path and a label are required; got path='b.png', label=''; line 5: the file must exist; "
        "got no such file 'gone.png'). Fix or remove those rows."
    )
    manifest.write_text("path,label\n" + "".join(f"gone{i}.png,x\n" for i in range(12)) + "../out.png,y\n")
    with pytest.raises(DatasetError, match=r"got 13 problem\(s\) \(line 2: .*; line 11: the file must exist; got no such "
                       r"file 'gone9.png'; and 3 more\)"):
        csv_manifest(manifest)
