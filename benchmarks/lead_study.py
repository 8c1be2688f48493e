"""The LEAD study: every knob of docs/method.md, the variants of docs/benchmarks.md and every baseline,
measured by weighted tau against the real fine-tuned accuracies of a stored-feature suite.

    python benchmarks/lead_study.py                       # the committed suite offline-fewshot
    python benchmarks/lead_study.py --suite my.yaml --seeds 3 --float32 ~/.cache/lead/bench-build/features32

Writes ``benchmarks/results/lead_study.json`` (every number) and ``benchmarks/results/lead_study.md``
(the tables of docs/benchmarks.md). Each knob is varied alone from the configuration ``--base``; each
LEAD configuration runs with seeds 0..seeds-1 (head, kernel sample, folds), and the tables give the mean
weighted tau over datasets as mean +- std over seeds. The low-data setting subsamples 2, 5 and 10
training images per class (``--draws`` draws each) from the stored features.

Intermediate states are shared between configurations: P0 depends only on (initial, standardize,
seed) and the class rates only on the head's knobs, so both are computed once with
:func:`lead.scoring.lead.lead_details` and recombined with :func:`lead.scoring.lead.evolve`; the script
checks that the recombination equals ``lead_score`` on the base configuration.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr, weightedtau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lead.benchmark import load_suite  # noqa: E402
from lead.scoring import METHODS, get_method  # noqa: E402
from lead.scoring.lead import evolve, lead_details, lead_score, reference_kernel  # noqa: E402
from storage.logits import read_logits  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BASE = {"initial": "svm", "t": 1.0, "n_per_class": 64, "eta": "auto", "head": (1024, 2048), "standardize": True,
        "softmax": False, "n_heads": 1, "loss": "mse", "rescale": False, "kernel": "head"}
#: Each knob varied alone (docs/benchmarks.md, "LEAD's knobs").
VARIANTS = [
    ("initial", "svm_insample"), ("initial", "logreg"), ("initial", "source"),
    ("t", 0.25), ("t", 0.5), ("t", 2.0), ("t", 4.0),
    ("eta", "reference"), ("eta", "reference+rescale"), ("eta", "zoo"),
    ("n_per_class", 8), ("n_per_class", 16),
    ("standardize", False), ("softmax", True), ("n_heads", 4), ("loss", "ce"),
    ("kernel", "backbone"), ("kernel", "backbone+zoo"),
]
BASELINES = [m for m in METHODS if m != "lead"]


def tau(scores: dict[str, float], accs: dict[str, float]) -> float:
    models = [m for m in scores if m in accs and math.isfinite(scores[m])]
    if len(models) < 2:
        return math.nan
    return float(weightedtau([scores[m] for m in models], [accs[m] for m in models])[0])


class Study:
    def __init__(self, suite, kernels: dict | None, subsample: dict | None = None):
        self.suite = suite
        self.data = {}  # (dataset, model) -> (features, logits, labels)
        for d in suite.datasets:
            for model, path in suite.stored_features(d).items():
                f = read_logits(path)
                self.data[(d, model)] = (f.features, f.logits, f.labels)
        self.kernels = kernels or {}
        self.subsample = subsample  # (dataset, model) -> row indices, for the low-data setting

    def arrays(self, d, m):
        x, s, y = self.data[(d, m)]
        if self.subsample is not None:
            idx = self.subsample[d]
            return x[idx], (s[idx] if s is not None else None), y[idx]
        return x, s, y

    @lru_cache(maxsize=None)
    def p0(self, d, m, initial, standardize, seed):
        x, s, y = self.arrays(d, m)
        return lead_details(x, y, initial=initial, standardize=standardize, seed=seed, logits=s,
                            class_kernel=np.ones(len(np.unique(y)))).p0

    @lru_cache(maxsize=None)
    def rates(self, d, m, standardize, rescale, n_per_class, n_heads, head, seed):
        x, s, y = self.arrays(d, m)
        # initial="source" is the cheapest P0; only the rates are kept
        if s is None:
            return lead_details(x, y, initial="svm_insample", standardize=standardize, rescale=rescale,
                                n_per_class=n_per_class, n_heads=n_heads, head=head, seed=seed).lambdas
        return lead_details(x, y, initial="source", logits=s, standardize=standardize, rescale=rescale,
                            n_per_class=n_per_class, n_heads=n_heads, head=head, seed=seed).lambdas

    def lead(self, d, cfg, seed) -> dict[str, float]:
        """LEAD score of every model on dataset ``d`` under ``cfg``."""
        models = list(self.suite.accuracies[d])
        lam, eta = {}, {}
        for m in models:
            x, s, y = self.arrays(d, m)
            if cfg["kernel"].startswith("backbone"):
                k = self.kernels[(d, m)]
                lam[m] = k["lambda_head"] + k["lambda_backbone"]
            else:
                lam[m] = self.rates(d, m, cfg["standardize"], cfg["eta"] == "reference+rescale", cfg["n_per_class"],
                                    cfg["n_heads"], tuple(cfg["head"]), seed)
            if cfg["eta"] in ("reference", "reference+rescale"):
                eta[m] = 1.0 / reference_kernel(x.shape[1], lam[m].size, tuple(cfg["head"]), n_heads=cfg["n_heads"], seed=seed)
            else:
                eta[m] = 1.0 / lam[m].mean()
        if cfg["eta"] == "zoo" or cfg["kernel"] == "backbone+zoo":  # one eta for the zoo: the median model's
            common = 1.0 / float(np.median([lam[m].mean() for m in models]))
            eta = dict.fromkeys(models, common)
        out = {}
        for m in models:
            x, s, y = self.arrays(d, m)
            p0 = self.p0(d, m, cfg["initial"], cfg["standardize"], seed)
            per, _ = evolve(p0, np.unique(y, return_inverse=True)[1], lam[m], eta[m], cfg["t"], loss=cfg["loss"], softmax=cfg["softmax"])
            out[m] = float(per.mean())
        return out

    def lead_tau(self, cfg, seeds) -> dict:
        per_seed = []
        for seed in seeds:
            per_seed.append({d: tau(self.lead(d, cfg, seed), self.suite.accuracies[d]) for d in self.suite.datasets})
        by_dataset = {d: float(np.mean([r[d] for r in per_seed])) for d in self.suite.datasets}
        means = [float(np.nanmean(list(r.values()))) for r in per_seed]
        return {"by_dataset": by_dataset, "mean": float(np.mean(means)), "std": float(np.std(means)), "per_seed": per_seed}

    def baseline_scores(self, method) -> dict[str, dict[str, float]]:
        fn = get_method(method)
        out = {}
        for d in self.suite.datasets:
            out[d] = {}
            for m in self.suite.accuracies[d]:
                x, s, y = self.arrays(d, m)
                try:
                    out[d][m] = fn(features=x, logits=s, labels=y)
                except Exception:  # too few samples for the method: reported as n/a
                    out[d][m] = math.nan
        return out

    def baseline_tau(self, method) -> dict:
        scores = self.baseline_scores(method)
        by = {d: tau(scores[d], self.suite.accuracies[d]) for d in self.suite.datasets}
        vals = [v for v in by.values() if math.isfinite(v)]
        return {"by_dataset": by, "mean": float(np.mean(vals)) if vals else math.nan, "scores": scores}


def config_of(knob, value) -> dict:
    cfg = dict(BASE)
    cfg[knob] = value
    return cfg


def label(knob, value) -> str:
    return f"{knob}={value}"


def diagnosis(study: Study, seeds) -> dict:
    """How much of LEAD's spread across models is the initial state's, and what the rates follow."""
    suite = study.suite
    out = {"p0_alone": {}, "equal_rates": {}, "rates_vs_norm": [], "rates_vs_dim": {}}
    for initial in ("svm", "logreg", "source"):
        taus = []
        for seed in seeds:
            per = {}
            for d in suite.datasets:
                sc = {}
                for m in suite.accuracies[d]:
                    _, _, y = study.arrays(d, m)
                    p0 = study.p0(d, m, initial, True, seed)
                    sc[m] = float(np.log(p0[np.arange(len(y)), np.unique(y, return_inverse=True)[1]]).mean())
                per[d] = tau(sc, suite.accuracies[d])
            taus.append(per)
        out["p0_alone"][initial] = {"by_dataset": {d: float(np.mean([t[d] for t in taus])) for d in suite.datasets},
                                    "mean": float(np.mean([np.nanmean(list(t.values())) for t in taus])),
                                    "std": float(np.std([np.nanmean(list(t.values())) for t in taus]))}
    # the rates' share: LEAD with every class's rate set to the model's mean rate, and the spread explained
    share = {}
    for d in suite.datasets:
        full = study.lead(d, BASE, 0)
        eq = {}
        for m in suite.accuracies[d]:
            _, _, y = study.arrays(d, m)
            codes = np.unique(y, return_inverse=True)[1]
            p0 = study.p0(d, m, "svm", True, 0)
            per, _ = evolve(p0, codes, np.ones(p0.shape[1]), 1.0, 1.0)
            eq[m] = float(per.mean())
        a, b = np.array([full[m] for m in full]), np.array([eq[m] for m in full])
        r2 = float(np.corrcoef(a, b)[0, 1] ** 2)
        share[d] = {"tau_full": tau(full, suite.accuracies[d]), "tau_equal_rates": tau(eq, suite.accuracies[d]),
                    "r2_full_vs_equal_rates": r2, "max_abs_diff": float(np.max(np.abs(a - b))),
                    "score_range": float(a.max() - a.min())}
    out["equal_rates"] = share
    # rates against the features' norm (within a model: per class) and against D (across models)
    for d in suite.datasets:
        for m in suite.accuracies[d]:
            x, s, y = study.arrays(d, m)
            codes = np.unique(y, return_inverse=True)[1]
            for std in (True, False):
                lam = study.rates(d, m, std, False, 64, 1, (1024, 2048), 0)
                z = (x - x.mean(0)) / np.where(x.std(0) == 0, 1, x.std(0)) if std else x.astype(np.float64)
                norm2 = np.array([np.mean((z[codes == k] ** 2).sum(1)) for k in range(lam.size)])
                out["rates_vs_norm"].append({
                    "dataset": d, "model": m, "standardize": std, "d": int(x.shape[1]),
                    "pearson_lambda_norm2": float(np.corrcoef(lam, norm2)[0, 1]),
                    "mean_lambda": float(lam.mean()), "mean_norm2": float(norm2.mean()),
                    "lambda_per_norm2": float(lam.mean() / norm2.mean()),
                    "cv_lambda": float(lam.std() / lam.mean()),
                })
    rows = out["rates_vs_norm"]
    for std in (True, False):
        sel = [r for r in rows if r["standardize"] == std]
        out["rates_vs_dim"][str(std)] = {
            "spearman_mean_lambda_vs_d": float(spearmanr([r["mean_lambda"] for r in sel], [r["d"] for r in sel])[0]),
            "spearman_mean_lambda_vs_norm2": float(spearmanr([r["mean_lambda"] for r in sel], [r["mean_norm2"] for r in sel])[0]),
            "median_pearson_lambda_norm2_within_model": float(np.median([r["pearson_lambda_norm2"] for r in sel])),
            "median_cv_lambda": float(np.median([r["cv_lambda"] for r in sel])),
        }
    return out


def subsample(study: Study, shots: int, draw: int) -> dict[str, np.ndarray]:
    """Rows keeping ``shots`` samples per class (the same rows for every model of a dataset)."""
    out = {}
    for d in study.suite.datasets:
        m = next(iter(study.suite.accuracies[d]))
        y = study.data[(d, m)][2]
        rng = np.random.default_rng(1000 * shots + draw)
        out[d] = np.sort(np.concatenate([rng.choice(np.nonzero(y == k)[0], shots, replace=False) for k in np.unique(y)]))
    return out


def read_kernels(path: Path) -> dict:
    rows = list(csv.DictReader(open(path))) if path.is_file() else []
    out: dict = {}
    for r in rows:
        e = out.setdefault((r["dataset"], r["model"]), {"lambda_head": [], "lambda_backbone": []})
        e["lambda_head"].append(float(r["lambda_head"]))
        e["lambda_backbone"].append(float(r["lambda_backbone"]))
    return {k: {n: np.array(v) for n, v in e.items()} for k, e in out.items()}


def fmt(v, std=None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="offline-fewshot")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--float32", type=Path, default=None, help="folder of float32 features (<dataset>/<model>.parquet)")
    ap.add_argument("--out", type=Path, default=RESULTS / "lead_study.json")
    ap.add_argument("--skip-lowdata", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="only the bench table (with --write-expected: store it)")
    ap.add_argument("--write-expected", action="store_true",
                    help="store the bench table as <suite>/weighted_tau.json (the test's expected values)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    suite = load_suite(args.suite)
    kernels = read_kernels(suite.features.parent / "kernels.csv")
    study = Study(suite, kernels)
    seeds = list(range(args.seeds))
    res: dict = {"suite": suite.name, "seeds": seeds, "base": {k: list(v) if isinstance(v, tuple) else v for k, v in BASE.items()}}

    # the recombination equals lead_score
    d0 = next(iter(suite.datasets))
    m0 = next(iter(suite.accuracies[d0]))
    x, s, y = study.arrays(d0, m0)
    direct = lead_score(x, y, initial=BASE["initial"], standardize=BASE["standardize"])
    assert abs(study.lead(d0, BASE, 0)[m0] - direct) < 1e-9, "recombined LEAD differs from lead_score"

    print("baselines", flush=True)
    res["baselines"] = {m: study.baseline_tau(m) for m in BASELINES}
    if args.table_only:  # only the table `lead bench` must reproduce, with the registry's current defaults
        write_table(study, suite, res, args.write_expected)
        return res
    print("lead base + variants", flush=True)
    configs = {"base": BASE}
    res["lead"] = {"base": study.lead_tau(BASE, seeds)}
    for knob, value in VARIANTS:
        if knob == "kernel" and not kernels:
            continue
        configs[label(knob, value)] = config_of(knob, value)
        res["lead"][label(knob, value)] = study.lead_tau(configs[label(knob, value)], seeds)
        print(f"  {label(knob, value)}: {res['lead'][label(knob, value)]['mean']:.3f}", flush=True)

    # stage 2: from the best single change, every other knob varied alone again; keep the best
    first = max(res["lead"], key=lambda k: res["lead"][k]["mean"])
    chosen_cfg, chosen = configs[first], first
    res["stage2"] = {}
    if first != "base":
        fk = first.split("=")[0]
        res["stage2"][first] = res["lead"][first]
        for knob, value in VARIANTS:
            if knob == fk or (knob == "kernel" and not kernels):
                continue
            cfg = dict(configs[first])
            cfg[knob] = value
            name = f"{first}, {label(knob, value)}"
            configs[name] = cfg
            res["stage2"][name] = study.lead_tau(cfg, seeds)
            print(f"  {name}: {res['stage2'][name]['mean']:.3f}", flush=True)
        chosen = max(res["stage2"], key=lambda k: res["stage2"][k]["mean"])
        chosen_cfg = configs[chosen]
    res["chosen"] = {"name": chosen, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in chosen_cfg.items()},
                     "tau": (res["stage2"] or res["lead"]).get(chosen, res["lead"].get(chosen))}
    print(f"chosen: {chosen}", flush=True)
    print("diagnosis", flush=True)
    res["diagnosis"] = diagnosis(study, seeds)

    if not args.skip_lowdata:
        print("low data", flush=True)
        res["lowdata"] = {}
        smallest = min(int(np.bincount(v[2]).min()) for v in study.data.values())
        for shots in (2, 5, 10):
            if shots >= smallest:
                continue
            rows = {}
            for draw in range(args.draws):
                sub = Study.__new__(Study)
                sub.suite, sub.data, sub.kernels = suite, study.data, kernels
                sub.subsample = subsample(study, shots, draw)
                for name, cfg in configs.items():
                    if cfg["kernel"].startswith("backbone"):  # its kernel was measured on the full split
                        continue
                    if name in res["stage2"] and name != chosen:  # low data: stage 1 and the chosen variant
                        continue
                    rows.setdefault(f"lead ({name})", []).append(sub.lead_tau(cfg, [draw])["mean"])
                for m in BASELINES:
                    rows.setdefault(m, []).append(sub.baseline_tau(m)["mean"])
            res["lowdata"][shots] = {k: {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else math.nan,
                                         "std": float(np.nanstd(v)) if np.isfinite(v).any() else math.nan} for k, v in rows.items()}

    if args.float32 is not None:
        print("float16 vs float32", flush=True)
        diffs, taus = {}, {}
        for method in METHODS:
            fn = get_method(method)
            worst, agree = 0.0, []
            for d in suite.datasets:
                s16, s32 = {}, {}
                for m in suite.accuracies[d]:
                    a = study.data[(d, m)]
                    b = read_logits(args.float32 / d / f"{m}.parquet")
                    try:
                        s16[m] = fn(features=a[0], logits=a[1], labels=a[2])
                        s32[m] = fn(features=b.features, logits=b.logits, labels=b.labels)
                    except Exception:
                        continue
                    worst = max(worst, abs(s16[m] - s32[m]) / max(1e-12, abs(s32[m])))
                agree.append(abs(tau(s16, suite.accuracies[d]) - tau(s32, suite.accuracies[d])))
            diffs[method], taus[method] = worst, float(np.nanmax(agree))
        res["float16"] = {"max_rel_score_diff": diffs, "max_abs_tau_diff": taus}

    write_table(study, suite, res, args.write_expected)
    res["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res, suite)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return res


def write_table(study: Study, suite, res: dict, write: bool) -> None:
    """The table `lead bench --suite <suite> --method all` must reproduce (the registry's methods as they
    are); with ``write``, stored as <suite>/weighted_tau.json for tests/bench/test_offline_suite.py."""
    table = {"lead": {d: tau({m: get_method("lead")(features=x_, logits=s_, labels=y_) for m, (x_, s_, y_) in
                             ((m, study.data[(d, m)]) for m in suite.accuracies[d])}, suite.accuracies[d])
                      for d in suite.datasets}}
    table.update({m: res["baselines"][m]["by_dataset"] for m in BASELINES})
    res["bench_table"] = table
    mean = {m: float(np.nanmean(list(v.values()))) for m, v in table.items()}
    print("bench table means:", json.dumps(mean), flush=True)
    if write:
        (suite.features.parent / "weighted_tau.json").write_text(json.dumps(
            {"note": "weighted tau of `lead bench --suite " + suite.name + " --method all`, written by benchmarks/lead_study.py",
             "lead_params": {k: list(v) if isinstance(v, tuple) else v for k, v in get_method("lead").params.items()},
             "weighted_tau": table, "mean_weighted_tau": mean}, indent=1, default=float))


def markdown(res: dict, suite) -> str:
    ds = list(suite.datasets)
    lines = ["### Every method on every target (weighted tau)", "",
             "| method | " + " | ".join(ds) + " | mean |", "|---|" + "---|" * (len(ds) + 1)]
    lb = res["lead"]["base"]
    lines.append("| lead (defaults) | " + " | ".join(fmt(lb["by_dataset"][d]) for d in ds) + f" | {fmt(lb['mean'], lb['std'])} |")
    for m, r in res["baselines"].items():
        lines.append(f"| {m} | " + " | ".join(fmt(r["by_dataset"][d]) for d in ds) + f" | {fmt(r['mean'])} |")
    lines += ["", "### LEAD's knobs, each varied alone (mean weighted tau ± std over seeds)", "",
              "| variant | " + " | ".join(ds) + " | mean |", "|---|" + "---|" * (len(ds) + 1)]
    for name, r in res["lead"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(r["by_dataset"][d]) for d in ds) + f" | {fmt(r['mean'], r['std'])} |")
    if res.get("stage2"):
        lines += ["", f"### Stage 2: from `{next(iter(res['stage2']))}`, every other knob varied alone", "",
                  "| variant | " + " | ".join(ds) + " | mean |", "|---|" + "---|" * (len(ds) + 1)]
        for name, r in res["stage2"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(r["by_dataset"][d]) for d in ds) + f" | {fmt(r['mean'], r['std'])} |")
        lines.append(f"\nChosen: **{res['chosen']['name']}**.")
    dg = res["diagnosis"]
    lines += ["", "### Diagnosis", "", "Initial state alone (mean log P0[y], the t -> 0 limit):", "",
              "| initial | " + " | ".join(ds) + " | mean |", "|---|" + "---|" * (len(ds) + 1)]
    for k, r in dg["p0_alone"].items():
        lines.append(f"| {k} | " + " | ".join(fmt(r["by_dataset"][d]) for d in ds) + f" | {fmt(r['mean'], r['std'])} |")
    lines += ["", "LEAD against LEAD with every class at the model's mean rate (seed 0):", "",
              "| dataset | tau (LEAD) | tau (equal rates) | R² across models | max abs diff | score range |", "|---|---|---|---|---|---|"]
    for d, r in dg["equal_rates"].items():
        lines.append(f"| {d} | {fmt(r['tau_full'])} | {fmt(r['tau_equal_rates'])} | {r['r2_full_vs_equal_rates']:.4f} | "
                     f"{r['max_abs_diff']:.4f} | {r['score_range']:.4f} |")
    lines += ["", "Rates against feature norm and dimension:", "",
              "| features | Spearman(mean lambda, D) | Spearman(mean lambda, mean norm²) | median Pearson(lambda_k, class norm²) | median CV of lambda_k |",
              "|---|---|---|---|---|"]
    for std, r in dg["rates_vs_dim"].items():
        lines.append(f"| {'standardised' if std == 'True' else 'raw'} | {r['spearman_mean_lambda_vs_d']:.3f} | "
                     f"{r['spearman_mean_lambda_vs_norm2']:.3f} | {r['median_pearson_lambda_norm2_within_model']:.4f} | "
                     f"{r['median_cv_lambda']:.4f} |")
    if "lowdata" in res:
        names = list(next(iter(res["lowdata"].values())))
        lines += ["", "### Low-data setting (images per class used for scoring; mean weighted tau ± std over draws)", "",
                  "| method | " + " | ".join(f"{s}/class" for s in res["lowdata"]) + " |", "|---|" + "---|" * len(res["lowdata"])]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(fmt(res["lowdata"][s][n]["mean"], res["lowdata"][s][n]["std"]) for s in res["lowdata"]) + " |")
    if "float16" in res:
        f = res["float16"]
        lines += ["", "### float16 storage", "", "| method | max relative score difference | max weighted-tau difference |", "|---|---|---|"]
        for m in f["max_rel_score_diff"]:
            lines.append(f"| {m} | {f['max_rel_score_diff'][m]:.2e} | {f['max_abs_tau_diff'][m]:.2e} |")
    lines.append(f"\n_{res['seconds']:.0f} s._")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
