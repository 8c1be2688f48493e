"""Extraction throughput: the pipeline (DataLoader workers decode and resize, Parquet writer) against a
bare timm loop (decode, resize and forward in one thread) on the same model, files, batch size,
resolution and device, measured side by side, alternating, best of ``--repeats``.

    python benchmarks/extraction.py [--dataset mnist-5k] [--n 2000] [--size 64] [--batch-size 64]

Writes benchmarks/results/extraction.json. Target (issue 7): pipeline / bare >= 0.9 on CPU; issue #18: >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--n", type=int, default=2000, help="images")
    ap.add_argument("--size", type=int, default=64, help="input side in pixels")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers (default: lead's own, lead.config.default_num_workers)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "lead-bench-store"))
    args = ap.parse_args()

    import dataclasses

    import timm
    import torch

    from lead.data import resolve_dataset
    from lead.extract import build_transform, extract, load_rgb, select_device
    from lead.zoo import load_model, load_zoo
    from storage.logits import LogitsWriter

    ds = resolve_dataset(args.dataset, datasets_dir=Path(args.store) / "datasets")
    samples = ds.samples[: args.n]
    spec = dataclasses.replace(load_zoo("efficientnet-lite")[0], input_size=(args.size, args.size))
    model = load_model(spec)
    device = select_device(None)
    if args.num_workers is None:
        from lead.config import default_num_workers

        args.num_workers = default_num_workers(device)
    transform = build_transform(spec)

    def bare() -> float:
        m = model.to(device)
        started = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(samples), args.batch_size):
                x = torch.stack([transform(load_rgb(s.path, spec.input_size)) for s in samples[i : i + args.batch_size]])
                pooled = m.forward_features(x.to(device))
                m.forward_head(pooled, pre_logits=True).cpu().numpy()
                m.forward_head(pooled).cpu().numpy()
        return len(samples) / (time.perf_counter() - started)

    def pipeline() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            with LogitsWriter(Path(tmp) / "part.parquet", {}, background=True) as writer:
                for b in extract(model, spec, samples, ds.classes, batch_size=args.batch_size,
                                 num_workers=args.num_workers, device=device):
                    writer.write(b.sample_ids, b.labels, b.features, b.logits)
            return len(samples) / (time.perf_counter() - started)

    runs = {"bare": [], "pipeline": []}
    for _ in range(args.repeats):
        runs["bare"].append(bare())
        runs["pipeline"].append(pipeline())
    result = {
        "benchmark": "extraction",
        "model": spec.arch, "images": len(samples), "input_size": args.size, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "device": device,
        "images_per_s": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
        "ratio_best": round(max(runs["pipeline"]) / max(runs["bare"]), 3),
        "target": ">= 0.95 (issue #18)",
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "timm": timm.__version__},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extraction.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
