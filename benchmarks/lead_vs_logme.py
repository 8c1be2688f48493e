"""LEAD's time against LogME's on the score-timing grid (the performance issue's target: LEAD no slower).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lead_vs_logme.py

Same data as benchmarks/scores.py (Gaussian class clusters), both scores timed in one process, one after
the other, on the same arrays. Writes benchmarks/results/lead_vs_logme.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scores import make_data  # noqa: E402

from lead.scoring import get_method  # noqa: E402

GRID = [(1000, 512, 10), (10000, 512, 10), (1000, 2048, 100), (10000, 2048, 100), (50000, 2048, 100)]


def main() -> list[dict]:
    rows = []
    for n, d, k in GRID:
        x, s, y = make_data(n, d, k)
        row = {"n": n, "d": d, "k": k}
        for m in ("lead", "logme"):
            t = time.perf_counter()
            get_method(m)(features=x, logits=s, labels=y)
            row[m] = time.perf_counter() - t
        row["ratio"] = row["lead"] / row["logme"]
        rows.append(row)
        print(f"N={n} D={d} K={k}: lead {row['lead']:.2f} s, logme {row['logme']:.2f} s, ratio {row['ratio']:.2f}", flush=True)
    (Path(__file__).parent / "results" / "lead_vs_logme.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
