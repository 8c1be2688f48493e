"""Executors: the same 8-model `lead rank` on the thread pool and on a 2-worker local Dask cluster, then
the Dask ranking again (all cached). Each run is a fresh `lead` process (start-up included: imports, the
temporary Prefect API, MLflow's database, and for Dask the cluster's start); the first two on fresh
stores, so both extract every model. The inputs are those of benchmarks/orchestration.py (MNIST images,
3 EfficientNet-Lites and 5 small timm nets).

    python benchmarks/executors.py [--n 2000] [--size 32] [--workers 2]

Writes benchmarks/results/executors.json; docs/performance.md reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from orchestration import RESULTS, make_inputs  # noqa: E402


def rank(lead: str, data: Path, zoo: Path, store: Path, executor: str, workers: int) -> tuple[float, dict]:
    """One `lead rank` process; returns (wall seconds, the selection)."""
    env = {**os.environ, "LEAD_EXECUTOR": executor, "LEAD_MAX_WORKERS": str(workers)}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    started = time.perf_counter()
    out = subprocess.run([lead, "rank", "-d", str(data), "-z", str(zoo), "--store", str(store), "--json"],
                         capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"lead rank --executor {executor} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout)


def summary(wall: float, sel: dict) -> dict:
    models = sel["models"]
    return {
        "wall_s": round(wall, 1), "in_flow_s": round(sel["seconds"], 1), "start_up_s": round(wall - sel["seconds"], 1),
        "extracted": sum(1 for m in models if (m.get("extraction") or {}).get("status") == "extracted"),
        "cached": sum(1 for m in models if (m.get("extraction") or {}).get("status") == "cached"),
        "workers": sorted({(m.get("extraction") or {}).get("worker", "") for m in models}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    lead = str(Path(sys.executable).with_name("lead"))
    work = Path(tempfile.mkdtemp(prefix="lead-exec-bench-"))
    try:
        data, zoo = make_inputs(work, args.n, args.size)
        threads = rank(lead, data, zoo, work / "store-threads", "threads", args.workers)
        dask = rank(lead, data, zoo, work / "store-dask", "dask", args.workers)
        cached = rank(lead, data, zoo, work / "store-dask", "dask", args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t_scores = {m["model"]: m["scores"].get("lead") for m in threads[1]["models"]}
    d_scores = {m["model"]: m["scores"].get("lead") for m in dask[1]["models"]}
    same = all(t_scores[k] is not None and d_scores.get(k) is not None and abs(t_scores[k] - d_scores[k]) <= 1e-6
               for k in t_scores)
    result = {
        "benchmark": "executors", "models": len(t_scores), "images": args.n, "input_size": args.size,
        "workers": args.workers, "cpus": os.cpu_count(),
        "threads": summary(*threads), "dask": summary(*dask), "dask_cached_rerun": summary(*cached),
        "ratio_dask_over_threads": round(dask[0] / threads[0], 3),
        "cached_over_first_dask": round(cached[0] / dask[0], 3),
        "same_scores_1e-6": same,
        "same_ranks": [m["model"] for m in threads[1]["models"]] == [m["model"] for m in dask[1]["models"]],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "executors.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
