"""Cache: a second `lead rank` on unchanged inputs runs no forward pass and costs a small share of the
first (target: at most 15%, start-up included, on a dataset whose first run extracts for a minute or
more). Both runs are whole `lead rank` processes on a fresh store, timed wall-clock.

    python benchmarks/cache.py [--dataset mnist-5k] [--zoo efficientnet-lite] [--size 96]

Writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--zoo", default="efficientnet-lite")
    ap.add_argument("--size", type=int, default=96, help="input side for every model of the zoo")
    args = ap.parse_args()

    from lead.zoo import load_zoo

    lead = str(Path(sys.executable).with_name("lead"))
    work = Path(tempfile.mkdtemp(prefix="lead-cache-bench-"))
    zoo = work / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": [
        {**{k: v for k, v in s.to_dict().items() if v is not None}, "input_size": args.size,
         "mean": list(s.mean), "std": list(s.std)} for s in load_zoo(args.zoo)]}))
    runs = []
    try:
        for attempt in ("first", "second"):
            started = time.perf_counter()
            out = subprocess.run([lead, "rank", "-d", args.dataset, "-z", str(zoo), "--store", str(work / "store"),
                                  "--json"], capture_output=True, text=True, check=True)
            wall = time.perf_counter() - started
            sel = json.loads(out.stdout)
            runs.append({
                "run": attempt, "wall_s": round(wall, 1), "flow_s": round(sel["seconds"], 1),
                "extraction": {m["model"]: m["extraction"]["status"] for m in sel["models"]},
                "extraction_s": round(sum(m["extraction"]["seconds"] for m in sel["models"]), 1),
                "scoring": {m["model"]: m.get("scoring") for m in sel["models"]},
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "cache", "dataset": args.dataset, "zoo": args.zoo, "input_size": args.size, "runs": runs,
              "second_over_first": round(runs[1]["wall_s"] / runs[0]["wall_s"], 3), "target": "<= 0.15"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
