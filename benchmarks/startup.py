"""Start-up cost of a cached `lead rank` against importing torch + timm + lead.scoring (issue #18, target 1).

    .venv/bin/python benchmarks/startup.py --store /tmp/store [--repeats 3] [--profile]

The store must already hold a ranking of the demo (``LEAD_STORE=/tmp/store lead rank --dataset
animal-mnist-fewshot --zoo efficientnet-lite`` once), so the timed runs extract nothing and recompute no
score. Both commands are whole processes, run alternately; CPU is user + system time of the process tree
(``getrusage(RUSAGE_CHILDREN)``: the Prefect server subprocess is waited for, so it counts). Reported: the
median of each and the median paired ratio (target <= 1.5). ``--profile`` also writes a cProfile of one
cached run (the `lead` process, cumulative time) and `python -X importtime` totals per top-level package.
Writes benchmarks/results/startup.json (and startup_profile.txt).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RANK = ["rank", "--dataset", "animal-mnist-fewshot", "--zoo", "efficientnet-lite"]
IMPORTS = "import torch, timm, lead.scoring"


def run(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(CPU seconds of the process tree, wall seconds, exit status)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall, proc.returncode


def import_totals(env: dict, cmd_prefix: list[str]) -> dict[str, float]:
    """Self time of every imported module under -X importtime, summed per top-level package (seconds)."""
    proc = subprocess.run([*cmd_prefix], env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    totals: dict[str, float] = collections.Counter()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            try:
                self_us = int(parts[0].split(":")[1])
            except ValueError:
                continue
            totals[parts[2].strip().split(".")[0]] += self_us / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])[:25])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = ap.parse_args(argv)
    env = {**os.environ, "LEAD_STORE": str(args.store.resolve())}
    env.pop("PREFECT_API_URL", None)
    lead = str(Path(sys.executable).with_name("lead"))
    runs = {"rank": [], "imports": []}
    for _ in range(args.repeats):
        runs["rank"].append(run([lead, *RANK], env))
        runs["imports"].append(run([sys.executable, "-c", IMPORTS], env))
    if any(r[2] != 0 for rs in runs.values() for r in rs):
        raise SystemExit("a run failed (see above)")
    cpu = {k: statistics.median(r[0] for r in rs) for k, rs in runs.items()}
    wall = {k: statistics.median(r[1] for r in rs) for k, rs in runs.items()}
    out = {"cpu_s": cpu, "wall_s": wall, "ratio_cpu": statistics.median(a[0] / b[0] for a, b in zip(runs["rank"], runs["imports"])),
           "ratio_wall": statistics.median(a[1] / b[1] for a, b in zip(runs["rank"], runs["imports"])),
           "runs": runs, "target": "ratio_cpu <= 1.5"}
    print(json.dumps({k: out[k] for k in ("cpu_s", "wall_s", "ratio_cpu", "ratio_wall")}, indent=1))
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            prof = Path(tmp) / "rank.prof"
            code = f"import sys; sys.argv = ['lead', *{RANK!r}]; from flows.cli import app; app()"
            script = Path(tmp) / "rank.py"
            script.write_text(code + "\n")
            cpu_p, _, _ = run([sys.executable, "-m", "cProfile", "-o", str(prof), str(script)], env)
            buf = io.StringIO()
            pstats.Stats(str(prof), stream=buf).sort_stats("cumulative").print_stats(45)
        out["imports_rank"] = import_totals(env, [lead, *RANK])
        out["imports_reference"] = import_totals(env, [sys.executable, "-c", IMPORTS])
        text = (f"cProfile of one cached `lead {' '.join(RANK)}` (process tree CPU {cpu_p:.1f} s)\n\n" + buf.getvalue()
                + "\n-X importtime, self seconds per top-level package (lead rank):\n"
                + "\n".join(f"  {k:28s} {v:6.2f}" for k, v in out["imports_rank"].items())
                + "\n\n-X importtime (import torch, timm, lead.scoring):\n"
                + "\n".join(f"  {k:28s} {v:6.2f}" for k, v in out["imports_reference"].items()) + "\n")
        (RESULTS / "startup_profile.txt").write_text(text)
        print(text[:6000])
    args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
