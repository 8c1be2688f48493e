"""Benchmark suites: a zoo, target datasets, and the real fine-tuned accuracy of every (model, dataset).

A suite is a YAML file::

    name: my-suite
    description: free text (provenance, protocol)
    unit: percent                      # unit of the accuracies
    zoo: zoo.yaml                      # a zoo file (relative to the suite) or a built-in zoo name;
                                       # or omit it and list the zoo's `models:` inline in the suite
    datasets:                          # dataset name -> source, as `lead rank --dataset` takes it
      animals: data/animals            # (relative paths are relative to the suite file)
      cifar10: torchvision:CIFAR10:train
    accuracies:                        # dataset -> model -> fine-tuned accuracy
      animals: {model_a: 91.2, model_b: 85.0}
    published_weighted_tau:            # optional: method -> dataset -> published weighted tau
      logme: {animals: 0.5}
    features: my-suite/features        # optional: stored features, <features>/<dataset>/<model>.parquet
                                       # (logits-file schema); `lead bench` then scores these files and
                                       # runs no forward pass (datasets are then descriptions, not sources)

Built-in suites (``builtin_suites()``) ship the published SFDA benchmark ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from lead.data import check_name
from lead.errors import InputError
from lead.evaluation import rank_statistics

BUILTIN_SUITES_DIR = Path(__file__).parent / "suites"
#: Rank statistics reported per (dataset, method), in column order.
STATISTICS = ("weighted_tau", "kendall_tau", "spearman_rho", "top1_hit", "regret")


@dataclass(frozen=True)
class Suite:
    """A loaded suite. ``zoo`` is a zoo file path or built-in zoo name; ``datasets`` maps a dataset name to
    its source; ``accuracies[dataset][model]`` is the fine-tuned accuracy in ``unit``."""

    name: str
    description: str
    path: Path
    zoo: str
    datasets: dict[str, str]
    accuracies: dict[str, dict[str, float]]
    unit: str = "percent"
    published: dict[str, dict[str, float]] | None = None
    features: Path | None = None

    def stored_features(self, dataset: str) -> dict[str, Path]:
        """``{model: path}`` of the stored features of ``dataset`` (models with an accuracy only).

        Raises:
            InputError: the suite has no stored features, or a model's file is missing.
        """
        if self.features is None:
            raise InputError(f"suite {self.name}: stored features must be declared with 'features:'; got none.")
        out = {}
        for model in self.accuracies[dataset]:
            path = self.features / dataset / f"{model}.parquet"
            if not path.is_file():
                raise InputError(f"suite {self.name}: stored features {path} must exist; got no such file. Rebuild the suite.")
            out[model] = path
        return out


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in BUILTIN_SUITES_DIR.glob("*.yaml"))


def load_suite(path: str | Path) -> Suite:
    """Read a suite file, or a built-in suite by name.

    Raises:
        InputError: no such file or suite, invalid YAML, missing keys, a dataset without accuracies,
            fewer than 2 models with an accuracy on a dataset, or a non-numeric accuracy.
    """
    p = Path(path).expanduser()
    if not p.is_file() and (BUILTIN_SUITES_DIR / f"{path}.yaml").is_file():
        p = BUILTIN_SUITES_DIR / f"{path}.yaml"
    if not p.is_file():
        raise InputError(f"suite: {path} must be a YAML file or a built-in suite ({', '.join(builtin_suites())}); got neither.")
    where = f"suite {p}"
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{where}: the file must be valid YAML; got {err}.") from err
    if not isinstance(doc, dict):
        raise InputError(f"{where}: the file must be a mapping; got {type(doc).__name__}.")
    missing = [k for k in ("name", "datasets", "accuracies") if k not in doc]
    if missing:
        raise InputError(f"{where}: the suite must have {missing}; got keys {sorted(doc)}.")
    if "zoo" in doc:
        zoo = str(doc["zoo"])
        if (p.parent / zoo).is_file():
            zoo = str((p.parent / zoo).resolve())
    elif "models" in doc:
        zoo = str(p.resolve())  # the suite file itself is a valid zoo file
    else:
        raise InputError(f"{where}: the suite must name a 'zoo' or list its 'models'; got neither.")
    datasets = {}
    for name, source in (doc["datasets"] or {}).items():
        check_name(str(name), what=f"{where}: dataset")
        source = str(source)
        local = p.parent / source
        datasets[str(name)] = str(local.resolve()) if local.exists() else source
    accuracies: dict[str, dict[str, float]] = {}
    for name in datasets:
        accs = (doc["accuracies"] or {}).get(name)
        if not isinstance(accs, dict) or len(accs) < 2:
            raise InputError(f"{where}: accuracies of dataset {name!r} must list at least 2 models; got {accs!r}.")
        try:
            accuracies[name] = {str(m): float(a) for m, a in accs.items()}
        except (TypeError, ValueError) as err:
            raise InputError(f"{where}: accuracies of dataset {name!r} must be numbers; got {accs!r}.") from err
    if not datasets:
        raise InputError(f"{where}: the suite must list at least one dataset; got none.")
    features = None
    if doc.get("features"):
        features = (p.parent / str(doc["features"])).resolve()
        if not features.is_dir():
            raise InputError(f"{where}: features must be a folder of stored features; got {features}, no such folder.")
        datasets = {name: str(source) for name, source in (doc["datasets"] or {}).items()}
    return Suite(
        name=check_name(str(doc["name"]), what=f"{where}: suite"),
        description=str(doc.get("description", "")),
        path=p.resolve(),
        zoo=zoo,
        datasets=datasets,
        accuracies=accuracies,
        unit=str(doc.get("unit", "percent")),
        published=doc.get("published_weighted_tau"),
        features=features,
    )


def evaluate(suite: Suite, scores: dict[str, dict[str, dict[str, float]]], methods: list[str]) -> list[dict]:
    """Rank statistics of every method on every dataset of the suite.

    Args:
        scores: ``scores[dataset][method][model]``, the transferability scores of the models that were
            scored (a dataset that could not be ranked at all is simply absent).
        methods: method ids, in report order.
    Returns:
        One dict per (dataset, method): ``dataset``, ``method``, ``n_models`` (models with both a score and
        an accuracy), the statistics of :data:`STATISTICS` (NaN when fewer than 2 models), ``note``.
    """
    rows = []
    for dataset in suite.datasets:
        accs = suite.accuracies[dataset]
        for method in methods:
            got = scores.get(dataset, {}).get(method, {})
            models = sorted(m for m in got if m in accs and math.isfinite(got[m]))
            row = {"dataset": dataset, "method": method, "n_models": len(models), "note": ""}
            if len(models) >= 2:
                row.update(rank_statistics([got[m] for m in models], [accs[m] for m in models]))
            else:
                row.update({k: math.nan for k in STATISTICS})
                row["note"] = "not ranked" if dataset not in scores else f"only {len(models)} model(s) scored"
            rows.append(row)
    return rows


def mean_by_method(rows: list[dict], statistic: str = "weighted_tau") -> dict[str, float]:
    """Mean of ``statistic`` per method over the datasets where it is defined (NaN if none)."""
    out: dict[str, float] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [r[statistic] for r in rows if r["method"] == method and math.isfinite(r[statistic])]
        out[method] = sum(values) / len(values) if values else math.nan
    return out
