"""Peak resident memory of extraction for a small and a large number of images (target: they differ
by less than 20%). Each size runs in a fresh process; the larger set repeats the dataset's files
under new sample ids when it has fewer images than asked.

    python benchmarks/memory.py [--sizes 2000 20000] [--dataset mnist-5k] [--size 32]

Writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def child(dataset: str, n: int, size: int, store: str) -> None:
    import dataclasses

    from lead.data import Sample, resolve_dataset
    from lead.extract import extract
    from lead.zoo import load_model, load_zoo
    from storage.logits import LogitsWriter

    ds = resolve_dataset(dataset, datasets_dir=Path(store) / "datasets")
    base = ds.samples
    samples = [Sample(f"{i}:{base[i % len(base)].sample_id}", base[i % len(base)].path, base[i % len(base)].label)
               for i in range(n)]
    spec = dataclasses.replace(load_zoo("efficientnet-lite")[0], input_size=(size, size))
    model = load_model(spec)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with LogitsWriter(Path(tmp) / "part.parquet", {}) as w:
            for b in extract(model, spec, samples, ds.classes, batch_size=64, num_workers=2):
                w.write(b.sample_ids, b.labels, b.features, b.logits)
    print(json.dumps({
        "images": n,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "peak_rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "lead-bench-store"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.dataset, args.child, args.size, args.store)
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--dataset", args.dataset, "--size",
                              str(args.size), "--store", args.store], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small, large = rows[0]["peak_rss_mb"], rows[-1]["peak_rss_mb"]
    result = {"benchmark": "memory", "model": "tf_efficientnet_lite0", "input_size": args.size, "runs": rows,
              "growth": round(large / small - 1, 3), "target": "< 0.20"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
