"""The forward pass: features and logits equal timm's own calls, in sample order, any batch size."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from lead.data import image_folder
from lead.extract import build_transform, extract, select_device
from lead.zoo import load_model
from tests.lead.test_zoo import lite0


def test_extract_matches_plain_timm_forward(tiny_dataset):
    ds = image_folder(tiny_dataset)
    spec = lite0(32)
    model = load_model(spec)
    batches = list(extract(model, spec, ds.samples, ds.classes, batch_size=5, num_workers=2, device="cpu"))
    assert [len(b.sample_ids) for b in batches] == [5, 5, 5, 5, 4]
    feats = np.concatenate([b.features for b in batches])
    logits = np.concatenate([b.logits for b in batches])
    assert feats.shape == (24, 1280) and logits.shape == (24, 1000) and feats.dtype == np.float32
    assert [i for b in batches for i in b.sample_ids] == [s.sample_id for s in ds.samples]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), ds.label_indices)

    from PIL import Image

    tf = build_transform(spec)
    x = torch.stack([tf(Image.open(s.path).convert("RGB")) for s in ds.samples[:3]])
    with torch.inference_mode():
        ref_logits = model(x).numpy()
        ref_feats = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(logits[:3], ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feats[:3], ref_feats, rtol=1e-4, atol=1e-4)


def test_normalising_on_the_device_gives_the_same_input_bit_for_bit(tiny_dataset, tmp_path):
    """The CUDA path (uint8 from the workers, float conversion and normalisation on the device), run on the CPU:
    the model input equals the default transform's exactly, so features and logits are the same, and an image
    that cannot be decoded is still left out with its reason."""
    import shutil

    from PIL import Image

    from lead.data import Sample
    from lead.extract import normalize_uint8

    ds = image_folder(tiny_dataset)
    spec = lite0(32)
    images = [Image.open(s.path).convert("RGB") for s in ds.samples[:6]]
    as_float = torch.stack([build_transform(spec)(im) for im in images])
    as_uint8 = torch.stack([build_transform(spec, uint8=True)(im) for im in images])
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == as_float.shape == (6, 3, 32, 32)
    assert torch.equal(normalize_uint8(as_uint8, spec), as_float)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    shutil.copy(ds.samples[0].path, tmp_path / "good.png")
    samples = [*ds.samples[:7], Sample("broken.png", broken, ds.samples[0].label)]
    model = load_model(spec)
    runs = [list(extract(model, spec, samples, ds.classes, batch_size=4, num_workers=1, device="cpu", normalize_on_device=flag))
            for flag in (False, True)]
    for default, on_device in zip(*runs):
        assert default.sample_ids == on_device.sample_ids and default.skipped == on_device.skipped
        np.testing.assert_array_equal(default.features, on_device.features)
        np.testing.assert_array_equal(default.logits, on_device.logits)
    assert [s for b in runs[1] for s, _ in b.skipped] == ["broken.png"]


def test_torch_threads_beside_loader_workers_default_and_cut(tiny_dataset, monkeypatch):
    import lead.extract as extract_module
    from lead.config import cpu_threads

    ds = image_folder(tiny_dataset)
    spec = lite0(32)
    model = load_model(spec)
    before = torch.get_num_threads()
    # the default (None) leaves torch's setting alone
    assert extract_module.TORCH_THREADS_BESIDE_WORKERS is None
    seen = [torch.get_num_threads() for _ in extract(model, spec, ds.samples[:5], ds.classes, batch_size=5, num_workers=1, device="cpu")]
    assert seen == [before]
    # -1: the cores the workers leave, at least one, given back afterwards
    monkeypatch.setattr(extract_module, "TORCH_THREADS_BESIDE_WORKERS", -1)
    seen = []
    for b in extract(model, spec, ds.samples[:10], ds.classes, batch_size=5, num_workers=1, device="cpu"):
        seen.append(torch.get_num_threads())
    assert seen == [min(before, max(1, cpu_threads() - 1))] * 2
    assert torch.get_num_threads() == before


def test_the_cpu_threads_are_omp_num_threads_when_set_else_the_cores(monkeypatch):
    import os

    from lead.config import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    for unset in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert cpu_threads() == (os.cpu_count() or 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads() == (os.cpu_count() or 1)


def test_device_auto_selects_cpu_without_cuda():
    assert select_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu") == "cpu"


@pytest.mark.timeout(180)
def test_loader_workers_start_while_another_thread_runs_blas(tiny_dataset):
    """Regression: with fork-started workers this hung in OpenBLAS's fork handler (scoring and extraction
    share one process in the flow). Workers come from a fork server instead."""
    import threading

    from lead.extract import loader_context

    # plain fork only while this process has a single thread (other tests may have left threads running)
    assert loader_context().get_start_method() == ("fork" if threading.active_count() == 1 else "forkserver")
    ds = image_folder(tiny_dataset)
    spec = lite0(32)
    model = load_model(spec)
    stop = threading.Event()

    def blas_loop():
        a = np.random.default_rng(0).standard_normal((400, 400))
        while not stop.is_set():
            a = np.tanh(a @ a.T / 400)

    worker = threading.Thread(target=blas_loop, daemon=True)
    worker.start()
    assert loader_context().get_start_method() == "forkserver"
    try:
        for _ in range(3):
            n = sum(len(b.sample_ids) for b in extract(model, spec, ds.samples, ds.classes, batch_size=8, num_workers=2, device="cpu"))
            assert n == 24
    finally:
        stop.set()
        worker.join()


def _raised(fn):
    try:
        fn()
    except BaseException as err:  # the real exception, as the task would see it
        return err
    raise AssertionError("expected an exception")


def test_only_errors_that_can_pass_are_retried(tmp_path):
    """Deterministic errors (a ViT given the wrong input size, a file name too long, bad input, a model that
    cannot load) fail at once; I/O, network, memory and CUDA faults are retried."""
    import errno

    import timm
    from prefect.states import Failed

    from lead.errors import DatasetError, ModelLoadError
    from tasks.extract import is_transient, retry_transient

    vit = timm.create_model("test_vit3", pretrained=False, num_classes=3).eval()
    wrong_size = _raised(lambda: vit(torch.zeros(1, 3, 32, 32)))
    assert str(wrong_size) == "Input height (32) doesn't match model (160)."
    too_long = _raised(lambda: open(tmp_path / ("x" * 300), "w"))
    assert too_long.errno == errno.ENAMETOOLONG
    deterministic = [wrong_size, too_long, DatasetError("bad"), ModelLoadError("bad"), ValueError("shape"),
                     RuntimeError("mat1 and mat2 shapes cannot be multiplied"), FileNotFoundError(errno.ENOENT, "gone")]
    transient = [OSError(errno.EIO, "Input/output error"), OSError(errno.ESTALE, "Stale file handle"),
                 ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("timed out"), MemoryError(),
                 RuntimeError("CUDA error: an illegal memory access was encountered"),
                 RuntimeError("DataLoader worker (pid 123) is killed by signal: Killed.")]
    assert [is_transient(e) for e in deterministic] == [False] * len(deterministic)
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert retry_transient(None, None, Failed(data=wrong_size)) is False
    assert retry_transient(None, None, Failed(data=OSError(errno.EIO, "Input/output error"))) is True


def test_default_loader_workers_are_one_on_cpu_and_the_cores_per_gpu_less_one_on_a_gpu(monkeypatch):
    import os

    from lead import config
    from lead.config import Settings, default_num_workers

    monkeypatch.delenv("LEAD_NUM_WORKERS", raising=False)
    assert default_num_workers("cpu") == 1
    cores = os.cpu_count() or 1
    # no CUDA device here: counted as one GPU
    assert default_num_workers("cuda") == default_num_workers("cuda:1") == max(1, cores - 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [default_num_workers("cuda", gpus=g) for g in (1, 2, 8, 16, 32)] == [15, 7, 1, 1, 1]
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(config, "gpu_driver_present", lambda: False)
    assert default_num_workers("auto") == 1
    assert Settings.from_env(device="cpu").num_workers == -1  # not set: each extraction chooses (below)
    monkeypatch.setattr(config, "gpu_driver_present", lambda: True)
    assert default_num_workers("auto") == max(1, cores - 1)
    monkeypatch.setenv("LEAD_NUM_WORKERS", "3")  # an explicit setting wins
    assert Settings.from_env(device="cpu").num_workers == 3
    assert Settings.from_env(device="cpu", num_workers=0).num_workers == 0


def test_each_extraction_starts_workers_only_when_decoding_would_take_longer_than_starting_them(tiny_dataset, monkeypatch):
    """``num_workers`` negative (the default): the measured decode time of the dataset against the workers' start.
    24 PNGs of 32 px decode in milliseconds: no workers, and the same features and logits as with one; a
    start that costs nothing (or images that take long to decode) gets the default; a number asked for is kept."""
    import lead.extract as extract_module
    from lead.extract import ImageSamples, resolve_num_workers

    ds = image_folder(tiny_dataset)
    spec = lite0(32)
    dataset = ImageSamples(ds.samples, ds.classes, build_transform(spec), spec.input_size)
    assert resolve_num_workers(-1, dataset, "cpu") == 0
    assert [resolve_num_workers(n, dataset, "cpu") for n in (0, 1, 3)] == [0, 1, 3]
    assert resolve_num_workers(-1, ImageSamples([], ds.classes, build_transform(spec), spec.input_size), "cpu") == 1
    monkeypatch.setattr(extract_module, "WORKER_START_S", {"first": 0.0, "later": 0.0})
    assert resolve_num_workers(-1, dataset, "cpu") == 1
    # decoding that takes 0.2 s an image: 24 images take longer than the measured start of workers
    monkeypatch.setattr(extract_module, "WORKER_START_S", {"first": 4.0, "later": 0.4})
    slow = ImageSamples(ds.samples, ds.classes, lambda im: (time.sleep(0.2), build_transform(spec)(im))[1], spec.input_size)
    assert resolve_num_workers(-1, slow, "cpu") == 1

    model = load_model(spec)
    auto, one = ([b for b in extract(model, spec, ds.samples, ds.classes, batch_size=10, num_workers=n, device="cpu")] for n in (-1, 1))
    np.testing.assert_array_equal(np.concatenate([b.features for b in auto]), np.concatenate([b.features for b in one]))
    np.testing.assert_array_equal(np.concatenate([b.logits for b in auto]), np.concatenate([b.logits for b in one]))
