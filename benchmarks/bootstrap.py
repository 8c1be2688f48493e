"""Cost of the paired bootstrap (issue 16) per method, at N = 1,000 and 10,000 images.

    python benchmarks/bootstrap.py                # N in {1k, 10k}, D = 1,280 (EfficientNet-Lite's width), K = 10
    python benchmarks/bootstrap.py --n 1000       # one size

Features and source logits as benchmarks/scores.py (Gaussian class clusters, Cs = 1,000). For each method:

- ``score_s``: one score on all images (what a ranking pays without the bootstrap);
- per-sample methods: ``bootstrap_s``, the time :func:`lead.scoring.bootstrap.score_and_resample` adds for
  B = 200 (the gather and mean of the per-sample terms; the terms come with the score);
- recomputed methods: ``per_resample_s``, the mean of 3 recomputations on resamples (one BLAS thread, the
  Gram coordinates for LogME and TransRate when N < D, as the bootstrap runs them), ``full_b_s`` = 200 times
  that, and ``budget_b``: the resamples the default budget (RECOMPUTE_BUDGET_S per model) allows, or
  "too slow" below MIN_RESAMPLES.

N-LEEP at 10k is left out by default (its score alone takes minutes here; its bootstrap is the same gather
as every per-sample method's). Writes benchmarks/results/bootstrap.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scores import make_data  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("lead", "logme", "leep", "nce", "nleep", "hscore", "sfda", "gbc", "transrate")
B = 200


def measure(method: str, x, logits, y) -> dict:
    from lead.scoring import get_method
    from lead.scoring.bootstrap import MIN_RESAMPLES, RECOMPUTE_BUDGET_S, score_and_resample

    m = get_method(method)
    started = time.perf_counter()
    m(features=x, logits=logits, labels=y)
    score_s = time.perf_counter() - started
    row = {"method": method, "score_s": score_s}
    if m.terms is not None:
        r = score_and_resample(m, features=x, logits=logits, labels=y, n_resamples=B)
        row.update(mode=r.mode, bootstrap_s=r.seconds, resamples=int(r.resampled.size))
        return row
    probe = score_and_resample(m, features=x, logits=logits, labels=y, n_resamples=3, budget_s=1e6, min_resamples=1)
    per = probe.seconds / 3
    fits = int(RECOMPUTE_BUDGET_S / per)
    row.update(mode=probe.mode, per_resample_s=per, full_b_s=per * B,
               budget_b=min(B, fits) if fits >= MIN_RESAMPLES else "too slow")
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--nleep-10k", action="store_true", help="also run N-LEEP at N >= 10,000")
    args = ap.parse_args(argv)
    from lead.scoring.bootstrap import paired_resamples

    out = {"machine": platform.platform(), "cores": __import__("os").cpu_count(), "d": args.d, "k": args.k, "b": B,
           "rows": []}
    for n in args.n:
        x, logits, y = make_data(n, args.d, args.k)
        started = time.perf_counter()
        paired_resamples(y, B)
        out["rows"].append({"n": n, "method": "(drawing the resamples)", "score_s": time.perf_counter() - started})
        for method in args.methods.split(","):
            if method == "nleep" and n >= 10000 and not args.nleep_10k:
                continue
            row = {"n": n, **measure(method, x, logits, y)}
            print(json.dumps(row), flush=True)
            out["rows"].append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bootstrap.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
