"""LEAD's time against LogME's on the score-timing grid (issue #18, target 3: LEAD no slower at every point).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lead_vs_logme.py                 # the 12 points of scores.py, 3 repeats
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lead_vs_logme.py --repeats 5 --old   # also the previous default (logreg)

Same data as benchmarks/scores.py (Gaussian class clusters). At each point the two scores run on the same
arrays, alternating (lead, logme, lead, logme, ...), so load from other processes hits both alike; the
figure reported is the median over repeats of the paired ratio lead / logme (and the median seconds).
Both scores run single-threaded, so each call's CPU time (``time.process_time``) is recorded too: on a
machine shared with other work it is what the wall time would be without the others, and the ratio of
CPU times (``ratio_cpu``) is the steadier figure there.
``--old`` adds LEAD with ``initial="logreg"`` (the default before issue #18), timed the same way.
Writes benchmarks/results/lead_vs_logme.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scores import make_data  # noqa: E402

from lead.scoring import get_method, lead_score  # noqa: E402

#: The grid of benchmarks/scores.py: N in {1k, 10k, 50k} x D in {512, 2048} x K in {10, 100}.
GRID = [(n, d, k) for d in (512, 2048) for k in (10, 100) for n in (1000, 10000, 50000)]


def timed(fn, cpu: list | None = None) -> float:
    """Wall seconds of ``fn()``; its CPU seconds (this process) are appended to ``cpu`` when given."""
    started, started_cpu = time.perf_counter(), time.process_time()
    fn()
    if cpu is not None:
        cpu.append(time.process_time() - started_cpu)
    return time.perf_counter() - started


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old", action="store_true", help="also time initial='logreg' (the previous default)")
    ap.add_argument("--max-n", type=int, default=50000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lead_vs_logme.json")
    args = ap.parse_args(argv)
    lead, logme = get_method("lead"), get_method("logme")
    rows = []
    for n, d, k in [g for g in GRID if g[0] <= args.max_n]:
        x, _, y = make_data(n, d, k)
        runs = {"lead": [], "logme": [], "lead_logreg": []}
        cpu = {"lead": [], "logme": []}
        for _ in range(args.repeats):
            runs["lead"].append(timed(lambda: lead(features=x, labels=y), cpu["lead"]))
            runs["logme"].append(timed(lambda: logme(features=x, labels=y), cpu["logme"]))
            if args.old:
                runs["lead_logreg"].append(timed(lambda: lead_score(x, y, initial="logreg")))
        ratios = [a / b for a, b in zip(runs["lead"], runs["logme"])]
        ratios_cpu = [a / b for a, b in zip(cpu["lead"], cpu["logme"])]
        row = {"n": n, "d": d, "k": k, "lead": statistics.median(runs["lead"]), "logme": statistics.median(runs["logme"]),
               "ratio": statistics.median(ratios), "ratio_max": max(ratios), "lead_cpu": statistics.median(cpu["lead"]),
               "logme_cpu": statistics.median(cpu["logme"]), "ratio_cpu": statistics.median(ratios_cpu), "runs": runs,
               "runs_cpu": cpu}
        if args.old:
            row["lead_logreg"] = statistics.median(runs["lead_logreg"])
            row["ratio_logreg"] = statistics.median(a / b for a, b in zip(runs["lead_logreg"], runs["logme"]))
        rows.append(row)
        print(f"N={n} D={d} K={k}: lead {row['lead']:.3f} s, logme {row['logme']:.3f} s, ratio {row['ratio']:.2f} "
              f"(max {row['ratio_max']:.2f}); CPU lead {row['lead_cpu']:.3f} s, logme {row['logme_cpu']:.3f} s, "
              f"ratio {row['ratio_cpu']:.2f}" + (f"; logreg {row['lead_logreg']:.2f} s ({row['ratio_logreg']:.1f}x)" if args.old else ""),
              flush=True)
    out = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
           "lead_params": get_method("lead").params, "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
