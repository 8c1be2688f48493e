"""The forward pass: images -> pre-logit features and source-head logits, streamed in batches.

Decoding and resizing run in DataLoader worker processes; the model runs under
``torch.inference_mode`` on the selected device (bf16 autocast on CUDA). Memory stays bounded by one
batch whatever the dataset's size, because results are yielded batch by batch to the caller (which
writes them to Parquet).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lead.config import cpu_threads
from lead.data import Sample
from lead.errors import InputError, error_text
from lead.preprocess import Preprocessing, forward, has_head
from lead.zoo import ModelSpec


@dataclass(frozen=True)
class Batch:
    """One batch of results. ``features``: (B, D) float32; ``logits``: (B, Cs) float32 or None for
    headless models; ``labels``: (B,) int32; ``sample_ids``: B strings. ``skipped``: (sample id, error)
    of the images of this batch that could not be decoded (not among the B rows; B may be 0).
    ``seconds``: wall time of the batch's forward pass on its device, copying the results back included
    (which waits for the device); decoding excluded. Sum B over the sum of ``seconds`` is the model's
    throughput in images/s (:func:`throughput`)."""

    sample_ids: list[str]
    labels: np.ndarray
    features: np.ndarray
    logits: np.ndarray | None
    skipped: list[tuple[str, str]]
    seconds: float = 0.0


def throughput(images: int, seconds: float) -> float | None:
    """Images per second of forward passes, or None when nothing was timed."""
    return images / seconds if images > 0 and seconds > 0 else None


def select_device(requested: str | None = None) -> str:
    """``requested`` if given (``cpu``, ``cuda``, ``cuda:N``, ``mps``), else ``cuda`` when available, else ``cpu``.

    Raises:
        InputError: an unknown device, or one this machine does not have.
    """
    from lead.config import gpu_driver_present

    if requested == "cpu" or (requested in (None, "", "auto") and not gpu_driver_present()):
        return "cpu"  # without importing torch (a cached `lead rank` needs no torch at all)
    import torch

    if not requested or requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", requested):
        raise InputError(f"device must be auto, cpu, cuda, cuda:N or mps; got {requested!r}.")
    if requested.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= count:
            raise InputError(f"device {requested!r} must exist; got {count} CUDA device(s) on this machine. Use --device auto or cpu.")
    if requested == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError("device 'mps' must be available; got none on this machine. Use --device auto or cpu.")
    return requested


#: Set to stop every running extraction of this process after its current batch (the CLI sets it on
#: Ctrl-C; the thread pool would otherwise let running extractions finish before the process exits).
CANCEL = threading.Event()

#: Modules the DataLoader's fork server imports once, so each worker starts in milliseconds.
FORKSERVER_PRELOAD = ["torch", "torchvision.transforms", "timm.data", "PIL.Image", "lead.extract"]


@lru_cache(maxsize=1)
def _forkserver_context():
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def loader_context():
    """The multiprocessing context for the DataLoader workers.

    ``fork`` while this process has a single thread (a plain script: fast, and no ``__main__`` guard
    needed); a fork server as soon as other threads run (the flow, which extracts and scores in a thread
    pool). Forking while another thread is inside an OpenBLAS call hangs in OpenBLAS's fork handler (seen
    here with numpy's bundled OpenBLAS); a fork server is a clean single-threaded process, started once with
    torch and the transforms imported, from which workers are forked. Like any non-fork start method it
    imports the caller's main module in the workers, which scripts guard with ``if __name__ == "__main__"``.
    """
    import multiprocessing as mp
    import threading

    methods = mp.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        return mp.get_context("fork")
    if "forkserver" in methods:
        return _forkserver_context()
    return mp.get_context("spawn")


#: Seconds of wall time that DataLoader workers cost an extraction before its first batch, measured on a 2-core
#: machine (docs/performance.md, issue #18): about 4 s when the fork server still has to start (a fresh Python
#: importing FORKSERVER_PRELOAD, once per process), about 0.4 s for each later extraction (forking a worker
#: and handing it the dataset). Decoding in the model's thread costs nothing to start but does not overlap
#: the forward pass.
WORKER_START_S = {"first": 4.0, "later": 0.4}
#: Images decoded in the extraction's own thread to time one decode (:func:`resolve_num_workers`).
DECODE_PROBE = 5
_WORKERS_STARTED: set[str] = set()  # the multiprocessing contexts that have started DataLoader workers here


def resolve_num_workers(requested: int, dataset, device_type: str) -> int:
    """DataLoader workers for one extraction: ``requested`` when it is 0 or more (the user's setting); when
    negative (the default, ``LEAD_NUM_WORKERS`` unset), no workers if decoding every image in the model's
    thread takes less time than starting them, else :func:`lead.config.default_num_workers`.

    The decode time is measured: the first :data:`DECODE_PROBE` images are decoded and transformed here
    (``dataset[i]``), and their median time times ``len(dataset)`` is compared with :data:`WORKER_START_S`
    (``first`` while no worker has been started from this process's fork server, ``later`` after). Workers
    save at most that decode time (they overlap it with the forward pass); they always cost their start.
    A 300-image demo of 28 px images decodes in about 0.02 s against 4 s of start: no workers. ImageNet-size
    JPEGs (about 4 ms each) need workers from about 1,000 images, or 100 once the fork server runs.

    Args:
        requested: workers asked for; negative means choose.
        dataset: the map-style dataset the DataLoader will read (:class:`ImageSamples`).
        device_type: ``cpu``, ``cuda`` or ``mps`` (the default's count depends on it).
    """
    from lead.config import default_num_workers

    if requested >= 0:
        return requested
    workers = default_num_workers(device_type)
    n = len(dataset)
    if workers == 0 or n == 0:
        return workers
    times = []
    for i in range(min(DECODE_PROBE, n)):
        started = time.perf_counter()
        dataset[i]
        times.append(time.perf_counter() - started)
    per_image = float(np.median(times))  # the median: the first decode also pays the decoder's imports
    context = loader_context()
    start = WORKER_START_S["later"] if context.get_start_method() == "fork" or context.get_start_method() in _WORKERS_STARTED \
        else WORKER_START_S["first"]
    return 0 if per_image * n < start else workers


def exit_with_process(pid: int, worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: end this worker once process ``pid`` (the one extracting) is gone.

    Workers forked from the fork server are its children, not the extracting process's, so torch's own
    parent watchdog does not see a killed ranking; without this they lived on (about 0.5 GB each).
    """

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # the pid was reused by another user's process
                os._exit(1)

    threading.Thread(target=watch, name="lead-parent-watch", daemon=True).start()


def build_transform(spec: ModelSpec, *, uint8: bool = False):
    """The transform of one decoded image for ``spec``: :meth:`lead.preprocess.Preprocessing.transform`
    (resize directly to ``spec.input_size``, no crop, to a tensor, normalise with the weights' mean and std).

    With ``uint8`` the transform stops before the conversion to float: it returns the resized image as a
    uint8 tensor (3, H, W), and :func:`normalize_uint8` finishes it with the same arithmetic (divide by
    255, subtract the mean, divide by the std, in float32) on the model's device.
    """
    transform = Preprocessing.of(spec).transform()
    if not uint8:
        return transform
    from torchvision import transforms

    steps = [t for t in transform.transforms if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")]
    return transforms.Compose([*steps, transforms.PILToTensor()])


def normalize_uint8(images, spec: ModelSpec):
    """The float conversion and normalisation that :func:`build_transform` with ``uint8`` leaves out.

    Args:
        images: uint8 tensor (B, 3, H, W) on any device.
        spec: the model's spec (its ``mean`` and ``std``).
    Returns:
        float32 tensor (B, 3, H, W) on the same device: ``(images / 255 - mean) / std`` per channel, the
        operations and order of torchvision's ``ToTensor`` then ``Normalize``, so the same values bit for bit.
    """
    import torch

    mean = torch.tensor(spec.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def load_rgb(path, size: tuple[int, int] | None = None):
    """Decode an image file to an 8-bit RGB ``PIL.Image``.

    Modes: grayscale, palette (transparency dropped through RGBA), RGBA/LA (alpha dropped, as
    torchvision's loader does), CMYK and YCbCr convert directly; 16-bit and 32-bit integer or float
    images (``I;16``, ``I``, ``F``) are scaled from their dtype's range (or their own maximum for
    floats) to 0..255 first, since PIL's own conversion clips them. The EXIF orientation tag is applied
    (``ImageOps.exif_transpose``), so a camera JPEG stored sideways with Orientation 6 comes back upright,
    as a viewer shows it. JPEGs larger than twice ``size`` are decoded at reduced scale
    (``Image.draft``). PIL's decompression-bomb limit stays in force.

    Raises:
        OSError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, ValueError: not a
        readable image (zero bytes, truncated, another format, too large).
    """
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as src:
        if size is not None and src.format == "JPEG":
            side = 2 * max(size)  # either side may end up the width once the orientation is applied
            src.draft("RGB", (side, side))
        src.load()
        im = ImageOps.exif_transpose(src)  # a copy when rotated; ``src`` itself otherwise
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") else (float(arr.max()) or 1.0)
            if im.mode == "I" and arr.max() <= 65535:
                top = 65535.0 if arr.max() > 255 else 255.0
            return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L").convert("RGB")
        if im.mode == "P":
            return im.convert("RGBA").convert("RGB")
        return im.convert("RGB")


class ImageSamples:
    """A map-style torch dataset over samples: ``(image tensor, label index, sample index, error)``.

    An image that cannot be decoded does not raise: it yields a zero tensor and the error text
    (``"<Type>: <message>"``), so the caller can skip it, count it and name it.
    """

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform, input_size: tuple[int, int],
                 dtype: str = "float32"):
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform
        self.input_size = tuple(input_size)
        self.dtype = dtype  # of the zero tensor standing in for an image that cannot be decoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        s = self.samples[i]
        try:
            x = self.transform(load_rgb(s.path, self.input_size))
            error = ""
        except Exception as err:  # any decoding failure of this one file
            x = torch.zeros(3, *self.input_size, dtype=getattr(torch, self.dtype))
            error = error_text(err)
        return x, self.index[s.label], i, error


#: While DataLoader workers decode on a CPU-only run, torch's intra-op threads may be cut to the cores the
#: workers leave: a positive int sets that many, -1 means cores minus workers (at least one), None (the
#: default) leaves torch's setting alone. Measured on 2 cores (benchmarks/extraction.py, docs/performance.md,
#: issue #18): cutting to one thread beside two workers ran at 0.73 of a bare timm loop, leaving torch alone
#: at 0.89 (one worker: 0.93): decoding small images keeps the workers idle most of the time, so the cut
#: only halves the forward pass. The flow's own split between concurrent extractions still applies.
TORCH_THREADS_BESIDE_WORKERS: int | None = None
_THREADS_LOCK = threading.Lock()
_THREADS_USERS = [0, 0]  # [extractions inside, threads before the first one]


@contextlib.contextmanager
def _threads_beside_workers(device_type: str, num_workers: int):
    """Set torch's intra-op threads for the duration of a CPU extraction with workers; restored by the last one out."""
    import torch

    if device_type != "cpu" or num_workers <= 0 or TORCH_THREADS_BESIDE_WORKERS is None:
        yield
        return
    want = TORCH_THREADS_BESIDE_WORKERS if TORCH_THREADS_BESIDE_WORKERS > 0 else max(1, cpu_threads() - num_workers)
    with _THREADS_LOCK:
        if _THREADS_USERS[0] == 0:
            _THREADS_USERS[1] = torch.get_num_threads()
        _THREADS_USERS[0] += 1
        torch.set_num_threads(min(want, _THREADS_USERS[1]))
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS[0] -= 1
            if _THREADS_USERS[0] == 0:
                torch.set_num_threads(_THREADS_USERS[1])


def extract(
    model,
    spec: ModelSpec,
    samples: Sequence[Sample],
    classes: Sequence[str],
    *,
    batch_size: int = 64,
    num_workers: int = -1,
    device: str | None = None,
    normalize_on_device: bool | None = None,
) -> Iterator[Batch]:
    """Run ``model`` over ``samples`` and yield a :class:`Batch` per batch, in sample order.

    Images that cannot be decoded are left out of the batch's rows and listed in ``Batch.skipped``.

    Features and logits come from :func:`lead.preprocess.forward` (one ``forward_features`` call, then
    ``forward_head`` with and without ``pre_logits``: timm's API), the forward pass the benchmark build uses.

    Args:
        model: a timm model (eval mode); moved to ``device``.
        spec: the model's spec (preprocessing).
        samples: images and labels; ``classes`` maps labels to indices.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes for decoding and resizing (0: in this thread; negative, the
            default: :func:`resolve_num_workers` chooses by the measured decode time).
        device: see :func:`select_device`.
        normalize_on_device: the workers hand over uint8 images and the float conversion and normalisation
            run on ``device`` (:func:`normalize_uint8`: the same values). None (the default): on CUDA
            only, where it quarters the bytes the workers write, the main process pins and the bus carries,
            and frees the workers' CPU for decoding (measured on an H200: benchmarks/gpu.py,
            docs/performance.md). On a CPU the float work stays in the workers, beside the forward pass.
    """
    import torch
    from torch.utils.data import DataLoader

    dev = torch.device(select_device(device))
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    headless = not has_head(model)
    on_device = dev.type == "cuda" if normalize_on_device is None else normalize_on_device
    dataset = ImageSamples(samples, classes, build_transform(spec, uint8=on_device), spec.input_size,
                           dtype="uint8" if on_device else "float32")
    num_workers = resolve_num_workers(num_workers, dataset, dev.type)
    if num_workers > 0:
        _WORKERS_STARTED.add(loader_context().get_start_method())
    loader = DataLoader(
        dataset,
        worker_init_fn=functools.partial(exit_with_process, os.getpid()) if num_workers > 0 else None,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        multiprocessing_context=loader_context() if num_workers > 0 else None,
    )
    ids = [s.sample_id for s in samples]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast, _threads_beside_workers(dev.type, num_workers):
        for images, labels, index, errors in loader:
            if CANCEL.is_set():
                raise InterruptedError(f"extraction of {spec.name!r} cancelled")
            bad = [i for i, e in enumerate(errors) if e]
            skipped = [(ids[int(index[i])], errors[i]) for i in bad]
            if bad:
                good = torch.tensor([i for i in range(len(errors)) if not errors[i]], dtype=torch.long)
                images, labels, index = images[good], labels[good], index[good]
            if len(index) == 0:
                yield Batch([], np.zeros(0, np.int32), np.zeros((0, 0), np.float32), None, skipped)
                continue
            started = time.perf_counter()
            images = images.to(dev, non_blocking=True)
            if on_device:
                images = normalize_uint8(images, spec)
            if dev.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            feats, logits = forward(model, images, logits=not headless)
            feats_np = feats.float().cpu().numpy()  # the copy to the host ends the forward pass's time
            logits_np = None if logits is None else logits.float().cpu().numpy()
            yield Batch(
                sample_ids=[ids[i] for i in index.tolist()],
                labels=labels.numpy().astype(np.int32),
                features=feats_np,
                logits=logits_np,
                skipped=skipped,
                seconds=time.perf_counter() - started,
            )
