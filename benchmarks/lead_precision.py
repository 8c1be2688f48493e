"""LEAD's float32 probe against its float64 arithmetic on the committed suites' features (issue #18, target 3).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lead_precision.py

LEAD's ridge probe computes its fold Gram matrices and out-of-fold products in float32 when the features are
float32 and D <= N (docs/performance.md, "Target 3", fourth round). Every target of the committed suites has
D > N (50-250 samples, 320-2,048 dimensions), where the probe stays float64, so the selection protocol
(benchmarks/select_default.py) does not reach the float32 arithmetic. This script does: each model's stored
features are mapped to D' = N // 2 dimensions by one fixed Gaussian projection (computed in float64, rounded
to float32), and LEAD (the default, and ``ridge_alpha`` 0.01, the most ill-conditioned candidate of the
protocol) scores them as float32 (the float32 probe) and as the same values in float64 (the float64 probe).
Reported per target: the largest relative change of a score, whether the ranking of the models is the same,
the weighted tau against the suite's fine-tuning accuracies under each precision, and the smallest relative
gap between two models' scores (the change a ranking could absorb). Writes
benchmarks/results/lead_precision.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from select_default import SUITES, tau_of  # noqa: E402

from lead.benchmark import load_suite  # noqa: E402
from lead.scoring.lead import lead_score  # noqa: E402

VARIANTS = {"lead": {}, "lead[ridge-alpha=0.01]": {"ridge_alpha": 0.01}}


def main() -> dict:
    from storage.logits import read_logits

    rows, summary = [], {}
    for suite_name in SUITES:
        suite = load_suite(suite_name)
        for dataset in suite.datasets:
            accs = suite.accuracies[dataset]
            scores = {v: {"float32": {}, "float64": {}} for v in VARIANTS}
            for model in accs:
                f = read_logits(suite.stored_features(dataset)[model])
                n, d = f.features.shape
                proj = np.random.default_rng(7).standard_normal((d, n // 2)) / np.sqrt(d)
                x32 = (f.features.astype(np.float64) @ proj).astype(np.float32)
                for v, knobs in VARIANTS.items():
                    scores[v]["float32"][model] = lead_score(x32, f.labels, **knobs)
                    scores[v]["float64"][model] = lead_score(x32.astype(np.float64), f.labels, **knobs)
            for v in VARIANTS:
                a, b = scores[v]["float32"], scores[v]["float64"]
                ranked = sorted(b.values())
                row = {
                    "target": f"{suite_name}/{dataset}", "variant": v, "n": int(n), "d": int(n // 2),
                    "max_rel_change": max(abs(a[m] - b[m]) / abs(b[m]) for m in accs),
                    "same_ranking": sorted(accs, key=a.get) == sorted(accs, key=b.get),
                    "tau_float32": tau_of(a, accs), "tau_float64": tau_of(b, accs),
                    "min_rel_gap": min(abs(q - p) / abs(q) for p, q in zip(ranked[:-1], ranked[1:])),
                }
                rows.append(row)
                print(f"{row['target']:40s} {v:24s} N={n} D'={n // 2}: max rel change {row['max_rel_change']:.1e}, "
                      f"same ranking {row['same_ranking']}, tau {row['tau_float32']:.3f} / {row['tau_float64']:.3f}, "
                      f"smallest gap {row['min_rel_gap']:.1e}", flush=True)
    for v in VARIANTS:
        mine = [r for r in rows if r["variant"] == v]
        summary[v] = {"mean_tau_float32": float(np.mean([r["tau_float32"] for r in mine])),
                      "mean_tau_float64": float(np.mean([r["tau_float64"] for r in mine])),
                      "max_rel_change": max(r["max_rel_change"] for r in mine),
                      "same_ranking": sum(r["same_ranking"] for r in mine), "targets": len(mine)}
        print(v, summary[v])
    out = {"summary": summary, "rows": rows}
    (ROOT / "benchmarks" / "results" / "lead_precision.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
