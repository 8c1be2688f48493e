"""One-command GPU benchmark (issue #18, target 5): extraction throughput and every score against the forward pass.

    .venv/bin/python benchmarks/gpu.py                # on a GPU machine: ResNet-50 in bf16, 224 px; scores at N=50k, D=2048, K=100
    .venv/bin/python benchmarks/gpu.py --tiny         # anywhere (CPU): a tiny timm model, 64 images, scores at N=600, D=64, K=5

1. Extraction: ``lead.extract.extract`` (DataLoader workers decode and resize JPEG files, bf16 autocast and
   channels-last on CUDA, features and logits copied back) against a bare loop on the same device (decode,
   resize and forward in one thread, the same autocast), the same files, model, batch size and resolution,
   alternating, best of ``--repeats``; the pipeline once per ``--workers`` value. Reported: images/s of each,
   the ratio pipeline / bare (target >= 0.95), and the forward pass alone (random tensors already on the
   device, the same batches and autocast, features and logits copied back: the ceiling no loader can pass)
   with the ratio pipeline / forward. The model has random weights (``pretrained=False``: same cost,
   nothing downloaded). The images are random noise (JPEG quality 90): harder to decode than photographs.
2. Scores: every registered method on Gaussian class clusters (``benchmarks/scores.py``'s data) at the size
   of the run, each in a child process with a time limit ``--cap`` (a method over it is reported as
   ``timeout``), against the seconds the forward pass alone needs for N images (``over_forward``).

The results file is rewritten after each stage and each method, so a run stopped early keeps what it measured.

Writes ``--out`` (default benchmarks/results/gpu.json). Run it whenever a GPU machine is lent; the tiny
mode is what the test suite runs (tests/bench/test_gpu_benchmark.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FULL = {"arch": "resnet50", "size": 224, "images": 2048, "batch": 128, "workers": [min(8, os.cpu_count() or 1)],
        "n": 50_000, "d": 2048, "k": 100, "cap": 1800.0}
TINY = {"arch": "test_resnet", "size": 64, "images": 64, "batch": 16, "workers": [1], "n": 600, "d": 64, "k": 5, "cap": 120.0}


def write_images(folder: Path, count: int, size: int) -> list:
    """``count`` random RGB JPEG files (quality 90) of side ``size`` in ``folder``, two classes; returns lead Samples."""
    import numpy as np
    from PIL import Image

    from lead.data import Sample

    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        label = f"c{i % 2}"
        (folder / label).mkdir(parents=True, exist_ok=True)
        path = folder / label / f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        samples.append(Sample(f"{label}/{path.name}", path, label))
    return samples


def extraction(cfg: dict, device: str, repeats: int) -> dict:
    import timm
    import torch

    from lead.extract import build_transform, extract, load_rgb
    from lead.zoo import ModelSpec

    spec = ModelSpec(name=cfg["arch"], arch=cfg["arch"], weights="none:random", input_size=(cfg["size"], cfg["size"]),
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    model = timm.create_model(cfg["arch"], pretrained=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        samples = write_images(Path(tmp), cfg["images"], cfg["size"])
        classes = ["c0", "c1"]
        transform = build_transform(spec)
        dev = torch.device(device)

        def bare() -> float:
            m = model.to(dev)
            if dev.type == "cuda":
                m = m.to(memory_format=torch.channels_last)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
            started = time.perf_counter()
            with torch.inference_mode(), autocast:
                for i in range(0, len(samples), cfg["batch"]):
                    x = torch.stack([transform(load_rgb(s.path, spec.input_size)) for s in samples[i:i + cfg["batch"]]]).to(dev)
                    if dev.type == "cuda":
                        x = x.contiguous(memory_format=torch.channels_last)
                    pooled = m.forward_features(x)
                    m.forward_head(pooled, pre_logits=True).float().cpu().numpy()
                    m.forward_head(pooled).float().cpu().numpy()
            return len(samples) / (time.perf_counter() - started)

        def pipeline(workers: int, on_device: bool | None = None) -> float:
            started = time.perf_counter()
            for _ in extract(model, spec, samples, classes, batch_size=cfg["batch"], num_workers=workers, device=device,
                             normalize_on_device=on_device):
                pass
            return len(samples) / (time.perf_counter() - started)

        def forward_only() -> float:
            """The forward pass alone: random input already on the device, the bare loop's batches and autocast."""
            m = model.to(dev)
            x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], device=dev)
            if dev.type == "cuda":
                m = m.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
            batches = -(-len(samples) // cfg["batch"])
            started = time.perf_counter()
            with torch.inference_mode(), autocast:
                for _ in range(batches):
                    pooled = m.forward_features(x)
                    m.forward_head(pooled, pre_logits=True).float().cpu().numpy()
                    m.forward_head(pooled).float().cpu().numpy()
            return batches * cfg["batch"] / (time.perf_counter() - started)

        bare()  # warm-up (cuDNN autotuning, allocator)
        runs = {"bare": [], "forward_only": [], **{f"pipeline_{w}_workers": [] for w in cfg["workers"]}}
        # on CUDA the pipeline's default hands uint8 images to the device (lead.extract.normalize_uint8);
        # "_float" is the float transform in the workers, as on a CPU
        compare = dev.type == "cuda"
        for _ in range(repeats):
            runs["bare"].append(bare())
            runs["forward_only"].append(forward_only())
            for w in cfg["workers"]:
                runs[f"pipeline_{w}_workers"].append(pipeline(w))
                if compare:
                    runs.setdefault(f"pipeline_{w}_workers_float", []).append(pipeline(w, on_device=False))
        same_input = same_input_on_device(samples[:cfg["batch"]], spec, dev)
    best_pipeline = max(max(runs[f"pipeline_{w}_workers"]) for w in cfg["workers"])
    return {"arch": cfg["arch"], "input_size": cfg["size"], "images": cfg["images"], "batch_size": cfg["batch"],
            "images_per_s": runs, "ratio_best": best_pipeline / max(runs["bare"]),
            "ratio_to_forward": best_pipeline / max(runs["forward_only"]), "target": ">= 0.95",
            "num_workers": cfg["workers"], "device": device, "dtype": "bfloat16" if device.startswith("cuda") else "float32",
            "uint8_input_identical": same_input}


def same_input_on_device(samples, spec, dev) -> bool:
    """Whether one batch's model input is the same bit for bit on ``dev`` both ways: the float transform on the
    host, copied over, against uint8 copied over and ``lead.extract.normalize_uint8`` on the device."""
    import torch

    from lead.extract import build_transform, load_rgb, normalize_uint8

    images = [load_rgb(s.path, spec.input_size) for s in samples]
    on_host = torch.stack([build_transform(spec)(im) for im in images]).to(dev)
    on_device = normalize_uint8(torch.stack([build_transform(spec, uint8=True)(im) for im in images]).to(dev), spec)
    return bool(torch.equal(on_host, on_device))


def _score_child(methods: list[str], n: int, d: int, k: int, queue) -> None:
    """Score ``methods`` one after the other on one data set, putting (method, result) on ``queue`` after each.

    Each method first scores a tiny data set once, untimed, so that the timings leave out the imports a
    method does on its first call (scipy's modules: about 0.3 s); then ``(None, None)`` says the child is ready.
    """
    from scores import make_data

    from lead.scoring import get_method

    warm = make_data(20 * k, 8, k, cs=16, seed=1)
    for method in methods:
        try:
            get_method(method)(features=warm[0], logits=warm[1], labels=warm[2])
        except Exception:  # reported when it fails on the real data
            pass
    x, s, y = make_data(n, d, k)
    queue.put((None, None))
    for method in methods:
        started = time.perf_counter()
        try:
            value = get_method(method)(features=x, logits=s, labels=y)
            queue.put((method, {"seconds": time.perf_counter() - started, "value": float(value)}))
        except Exception as err:  # a method that cannot score this size is reported, not fatal
            queue.put((method, {"error": f"{type(err).__name__}: {str(err)[:200]}"}))


def scores(cfg: dict, forward_images_per_s: float, report=lambda result: None, methods=None) -> dict:
    """Every registered method (or ``methods``) in a child process (one for all of them; a method past
    ``cap`` seconds is killed with its child, reported as a timeout, and a new child scores the rest).
    ``report`` gets the result so far after each method."""
    import queue as queue_module

    from lead.scoring import METHODS

    ctx = multiprocessing.get_context("spawn")
    forward_seconds = cfg["n"] / forward_images_per_s
    rows: dict[str, dict] = {}
    todo = list(methods or METHODS)

    def result() -> dict:
        return {"n": cfg["n"], "d": cfg["d"], "k": cfg["k"], "cap_s": cfg["cap"], "forward_seconds_for_n": forward_seconds,
                "methods": {m: rows[m] for m in METHODS if m in rows}}

    while todo:
        results = ctx.Queue()
        child = ctx.Process(target=_score_child, args=(todo, cfg["n"], cfg["d"], cfg["k"], results), daemon=True)
        child.start()
        try:
            # the child's start-up (imports, warm-up calls, data) is not the first method's time
            results.get(timeout=300.0)
            while todo:
                method, row = results.get(timeout=cfg["cap"])
                rows[method] = row
                todo.remove(method)
                if "seconds" in row:
                    row["over_forward"] = row["seconds"] / forward_seconds
                print(f"  {method:10s} {row}", flush=True)
                report(result())
        except queue_module.Empty:
            rows[todo[0]] = {"timeout": cfg["cap"]}
            print(f"  {todo[0]:10s} timeout after {cfg['cap']:.0f} s", flush=True)
            todo.pop(0)
            report(result())
        finally:
            if child.is_alive():
                child.kill()
            child.join()
    return result()


def _write(path: Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model and score size (CPU smoke run; the test)")
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", default=None,
                    help="DataLoader workers of the pipeline, comma-separated to compare several (default: min(8, cores); tiny 1)")
    ap.add_argument("--images", type=int, default=None, help="images of the extraction runs (default 2048; tiny 64)")
    ap.add_argument("--cap", type=float, default=None, help="seconds per score (default 1800; tiny 120)")
    ap.add_argument("--methods", default=None, help="comma-separated scores to time (default: every registered one)")
    ap.add_argument("--skip-scores", action="store_true", help="extraction only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    args = ap.parse_args(argv)

    import timm
    import torch

    from lead.extract import select_device

    cfg = dict(TINY if args.tiny else FULL)
    if args.cap is not None:
        cfg["cap"] = args.cap
    if args.images:
        cfg["images"] = args.images
    if args.workers:
        cfg["workers"] = [int(w) for w in args.workers.split(",")]
    device = select_device(args.device)
    out = {"mode": "tiny" if args.tiny else "full",
           "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                       "timm": timm.__version__,
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "cpus": os.cpu_count()}}
    print(f"extraction: {cfg['arch']} at {cfg['size']} px on {device}", flush=True)
    out["extraction"] = ext = extraction(cfg, device, args.repeats)
    _write(args.out, out)
    print(f"  pipeline / bare = {ext['ratio_best']:.3f}, pipeline / forward alone = {ext['ratio_to_forward']:.3f}, "
          f"uint8 input identical: {ext['uint8_input_identical']} "
          f"({ext['images_per_s']})", flush=True)
    if not args.skip_scores:
        print(f"scores at N={cfg['n']}, D={cfg['d']}, K={cfg['k']} (cap {cfg['cap']:.0f} s each)", flush=True)

        def report(partial: dict) -> None:
            out["scores"] = partial
            _write(args.out, out)

        report(scores(cfg, max(ext["images_per_s"]["forward_only"]), report,
                      methods=args.methods.split(",") if args.methods else None))
    return out


if __name__ == "__main__":
    main()
