"""The forward pass: images -> pre-logit features and source-head logits, streamed in batches.

Decoding and resizing run in DataLoader worker processes; the model runs under
``torch.inference_mode`` on the selected device (bf16 autocast on CUDA). Memory stays bounded by one
batch whatever the dataset's size, because results are yielded batch by batch to the caller (which
writes them to Parquet).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lead.data import Sample
from lead.errors import DatasetError
from lead.zoo import ModelSpec


@dataclass(frozen=True)
class Batch:
    """One batch of results. ``features``: (B, D) float32; ``logits``: (B, Cs) float32 or None for
    headless models; ``labels``: (B,) int32; ``sample_ids``: B strings."""

    sample_ids: list[str]
    labels: np.ndarray
    features: np.ndarray
    logits: np.ndarray | None


def select_device(requested: str | None = None) -> str:
    """``requested`` if given (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else ``cuda`` when available, else ``cpu``."""
    import torch

    if requested and requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


#: Modules the DataLoader's fork server imports once, so each worker starts in milliseconds.
FORKSERVER_PRELOAD = ["torch", "torchvision.transforms", "timm.data", "PIL.Image", "lead.extract"]


@lru_cache(maxsize=1)
def loader_context():
    """The multiprocessing context of the DataLoader workers: a fork server where the OS has one.

    Plain ``fork`` deadlocks here: the flow runs extraction and scoring in threads of one process, and
    forking while another thread is inside an OpenBLAS call hangs in OpenBLAS's fork handler (seen with
    numpy's bundled OpenBLAS). A fork server is a clean single-threaded process started once, with
    torch and the transforms already imported, from which workers are forked.
    """
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def build_transform(spec: ModelSpec):
    """Resize directly to ``spec.input_size`` (no crop: small target images keep all their content),
    convert to a tensor and normalise with the weights' mean and std. Uses timm's transform factory."""
    from timm.data import create_transform

    return create_transform(
        input_size=(3, *spec.input_size),
        interpolation=spec.interpolation,
        mean=spec.mean,
        std=spec.std,
        crop_pct=1.0,
        crop_mode="squash",
        is_training=False,
    )


class ImageSamples:
    """A map-style torch dataset over samples: RGB-decoded, transformed image and label index.

    Raises (in the worker, surfaced by the DataLoader):
        DatasetError: an image that cannot be decoded, naming the file.
    """

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform):
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        s = self.samples[i]
        try:
            with Image.open(s.path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"dataset: image {s.path} must be a readable image; got {type(err).__name__}: {err}.") from err
        return self.transform(img), self.index[s.label], i


def extract(
    model,
    spec: ModelSpec,
    samples: Sequence[Sample],
    classes: Sequence[str],
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | None = None,
) -> Iterator[Batch]:
    """Run ``model`` over ``samples`` and yield a :class:`Batch` per batch, in sample order.

    Features come from ``forward_head(forward_features(x), pre_logits=True)`` and logits from
    ``forward_head(..., pre_logits=False)``, one ``forward_features`` call for both (timm's API).

    Args:
        model: a timm model (eval mode); moved to ``device``.
        spec: the model's spec (preprocessing).
        samples: images and labels; ``classes`` maps labels to indices.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes for decoding and resizing (0: in this thread).
        device: see :func:`select_device`.
    """
    import torch
    from torch.utils.data import DataLoader

    dev = torch.device(select_device(device))
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    headless = getattr(model, "num_classes", 1) == 0
    loader = DataLoader(
        ImageSamples(samples, classes, build_transform(spec)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        multiprocessing_context=loader_context() if num_workers > 0 else None,
    )
    ids = [s.sample_id for s in samples]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        for images, labels, index in loader:
            images = images.to(dev, non_blocking=True)
            if dev.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            pooled = model.forward_features(images)
            feats = model.forward_head(pooled, pre_logits=True)
            logits = None if headless else model.forward_head(pooled)
            yield Batch(
                sample_ids=[ids[i] for i in index.tolist()],
                labels=labels.numpy().astype(np.int32),
                features=feats.float().cpu().numpy(),
                logits=None if logits is None else logits.float().cpu().numpy(),
            )
