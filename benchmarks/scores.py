"""Time of every transferability score over N x D x K, and LEAD against a ResNet-50 forward pass.

    python benchmarks/scores.py                 # the grid of issue 7: N in {1k, 10k, 50k}, D in {512, 2048}, K in {10, 100}
    python benchmarks/scores.py --quick         # N in {1k, 10k} only

Features are Gaussian class clusters (class means N(0, I), unit noise), source logits (Cs = 1,000) a
fixed random linear map of them. Each (method, D, K) runs from the smallest N up; once a call takes more
than ``--cap`` / 5 seconds the larger N are not run and are reported as skipped, with the time the
measured growth predicts. LEAD's growth exponent in N is fitted from its largest two sizes. The
ResNet-50 forward pass (timm ``resnet50``, 224 x 224, batch 32, this machine's default threads) is
timed on a sample of images and scaled to N.

Writes benchmarks/results/scores.json. Targets (issue 7): LEAD linear in N, never an N x N matrix;
LEAD at N = 50,000, D = 2,048, K = 100 faster than the ResNet-50 forward pass over the same images.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results"


def make_data(n: int, d: int, k: int, cs: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    means = rng.standard_normal((k, d)).astype(np.float32)
    x = means[y] + rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((d, cs), dtype=np.float32) / math.sqrt(d)
    return x, (x @ w).astype(np.float32), y


def forward_rate(images: int = 64, batch: int = 32) -> float:
    """Images per second of a ResNet-50 forward pass at 224 x 224 (random weights: same cost)."""
    import timm
    import torch

    model = timm.create_model("resnet50", pretrained=False).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        model(x)  # warm-up
        started = time.perf_counter()
        for _ in range(images // batch):
            model(x)
    return images / (time.perf_counter() - started)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cap", type=float, default=600.0, help="seconds; larger N skipped once a call takes cap/5")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--out", type=Path, default=RESULTS / "scores.json")
    ap.add_argument("--points", default=None, help="only these D x K, e.g. 2048x100,512x10 (default: all four)")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the measured (method, N, D, K) rows of an existing --out, keep the others")
    args = ap.parse_args(argv)
    points = [(512, 10), (512, 100), (2048, 10), (2048, 100)]
    if args.points:
        points = [tuple(int(v) for v in p.split("x")) for p in args.points.split(",")]

    import torch

    from lead.scoring import METHODS, get_method

    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    ns = [1000, 10000] if args.quick else [1000, 10000, 50000]
    rows = []
    fwd = forward_rate()
    print(f"ResNet-50 forward: {fwd:.1f} images/s", flush=True)
    for d, k in points:
        if True:
            for method in methods:
                fn = get_method(method)
                last = None
                for n in ns:
                    row = {"method": method, "n": n, "d": d, "k": k}
                    if last is not None and last["seconds"] > args.cap / 5:
                        growth = 2.0 if last.get("exponent") is None else last["exponent"]
                        row.update(skipped=True, predicted_seconds=last["seconds"] * (n / last["n"]) ** max(1.0, growth))
                        rows.append(row)
                        print(f"{method:9s} N={n:6d} D={d:4d} K={k:3d}: skipped (predicted {row['predicted_seconds']:.0f} s)", flush=True)
                        continue
                    x, s, y = make_data(n, d, k)
                    tracemalloc.start()
                    started = time.perf_counter()
                    try:
                        fn(features=x, logits=s, labels=y)
                        row["seconds"] = time.perf_counter() - started
                    except Exception as err:  # too few samples etc.: reported
                        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                        row["seconds"] = math.nan
                    row["peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
                    tracemalloc.stop()
                    if last is not None and math.isfinite(row["seconds"]) and last["seconds"] > 0:
                        row["exponent"] = math.log(row["seconds"] / last["seconds"]) / math.log(n / last["n"])
                    rows.append(row)
                    last = row if math.isfinite(row["seconds"]) else None
                    print(f"{method:9s} N={n:6d} D={d:4d} K={k:3d}: {row['seconds']:8.2f} s, peak {row['peak_mb']:7.0f} MB"
                          + (f", exponent {row['exponent']:.2f}" if "exponent" in row else "") + (f"  {row.get('error', '')}"), flush=True)
                    if last is None:
                        break
    if args.merge and args.out.is_file():
        measured = {(r["method"], r["n"], r["d"], r["k"]) for r in rows}
        old = json.loads(args.out.read_text())
        rows = [r for r in old["rows"] if (r["method"], r["n"], r["d"], r["k"]) not in measured] + rows
        fwd = old["resnet50_images_per_s"]  # one forward-pass reference for the whole table
    lead_big = [r for r in rows if r["method"] == "lead" and r["n"] == max(ns) and r["d"] == 2048 and r["k"] == 100]
    out = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "resnet50_images_per_s": fwd,
        "resnet50_seconds_for_n": {n: n / fwd for n in ns},
        "rows": rows,
        "lead_at_largest": lead_big[0] if lead_big else None,
        "lead_over_forward": (lead_big[0].get("seconds", lead_big[0].get("predicted_seconds")) / (max(ns) / fwd)) if lead_big else None,
        "lead_params": get_method("lead").params,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    md = markdown(out, ns)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(json.dumps({k: out[k] for k in ("resnet50_images_per_s", "lead_at_largest", "lead_over_forward")}, indent=1, default=str))
    return out


def markdown(out: dict, ns: list[int]) -> str:
    """Seconds per method (rows) and (N, D, K) (columns); predicted values in brackets, errors as n/a."""
    cols = [(n, d, k) for d in (512, 2048) for k in (10, 100) for n in ns]
    cell = {}
    for r in out["rows"]:
        key = (r["method"], r["n"], r["d"], r["k"])
        if r.get("skipped"):
            cell[key] = f"({r['predicted_seconds']:.0f})"
        elif "error" in r:
            cell[key] = "n/a"
        else:
            cell[key] = f"{r['seconds']:.2f}" if r["seconds"] < 10 else f"{r['seconds']:.0f}"
    methods = list(dict.fromkeys(r["method"] for r in out["rows"]))
    lines = ["| method | " + " | ".join(f"N={n // 1000}k D={d} K={k}" for n, d, k in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell.get((m, *c), "") for c in cols) + " |")
    fwd = out["resnet50_images_per_s"]
    lines.append("| ResNet-50 forward pass | " + " | ".join(f"{n / fwd:.0f}" for n, d, k in cols) + " |")
    return "Seconds (predicted from the measured growth in brackets):\n\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
