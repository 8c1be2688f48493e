"""The ``build-benchmark`` flow: build a benchmark suite with real fine-tuned accuracies, offline.

Steps, each a cached Prefect task of ``tasks/build.py`` keyed by its inputs (and idempotent on its own
output file, so an interrupted build, or one whose Prefect cache was wiped, resumes where it stopped):

1. ``prepare-target``: cut each few-shot target (train / test split) from its source.
2. ``pretrain-model``: pre-train each timm architecture of the config on Fashion-MNIST (safetensors
   checkpoint in the work folder; retried once on a transient error).
3. ``extract-features``: pre-logit features and source logits of every (model, target) on the target's
   training split, as Parquet in the suite folder (float16) and in the work folder (float32).
4. ``backbone-kernel``: LEAD's per-class kernel taken over the backbone's last block as well as the
   random head (``lead.kernels``), for the study of docs/benchmarks.md.
5. ``finetune-run``: fine-tune every model on every target at every rate and seed of the protocol
   (retried once); each run's result is a JSON file in the work folder.

Then the suite is written: ``<out>/<name>.yaml`` (zoo, protocol, ground truth) and ``<out>/<name>/``
(``features/<dataset>/<model>.parquet``, ``finetune_runs.csv``, ``pretrain_runs.csv``, ``kernels.csv``,
``build.json``).
``lead bench --suite <out>/<name>.yaml`` then scores the stored features without any forward pass.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.logging import get_run_logger

from lead import __version__
from lead.benchbuild import BUILD_VERSION, BuildConfig, FineTuning, fashion_mnist, ground_truth, model_spec, parameter_count
from lead.data import file_digest
from lead.zoo import ModelSpec, weights_digest
from storage.files import atomic_write
from tasks.build import (
    backbone_kernel,
    extract_features,
    finetune_run,
    prepare_target,
    pretrain_model,
    write_json,
)

__all__ = ["build_benchmark", "model_spec", "parameter_count"]


# ------------------------------------------------------------------------------------------- flow

def _kept(task_fn, exists, *args):
    """Run a cached task; if its cached result names files that are gone (the suite or work folder was
    cleaned), run it again with the cache refreshed."""
    result = task_fn(*args)
    if not exists(result):
        result = task_fn.with_options(refresh_cache=True)(*args)
    return result


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _gather(futures: list, bar=None, describe=None) -> list:
    """Results of ``futures`` in submission order, advancing ``bar`` as each finishes."""
    from prefect.futures import as_completed

    done = {}
    for fut in as_completed(futures):
        done[id(fut)] = fut.result()
        if bar is not None:
            if describe is not None:
                bar.set_postfix_str(describe(done[id(fut)]))
            bar.update()
    return [done[id(f)] for f in futures]


def _workers() -> int:
    import os

    return int(os.environ.get("LEAD_BENCH_WORKERS") or max(1, os.cpu_count() or 1))


@flow(name="build-benchmark", validate_parameters=False, task_runner=ThreadPoolTaskRunner(max_workers=_workers()))
def build_benchmark(config: dict | None = None, out: str = "lead/suites", work: str = "~/.cache/lead/bench-build",
                    show_progress: bool = False) -> dict:
    """Build the suite described by ``config`` (a :class:`lead.benchbuild.BuildConfig` as a dict; default:
    the committed ``offline-fewshot`` suite) into ``out``, with checkpoints and run records in ``work``.

    Returns:
        {"suite" (path of the YAML), "accuracies", "runs" (count), "seconds", "pretraining"}.
    Raises:
        DatasetError: a source is missing (e.g. Fashion-MNIST not installed).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    cfg = BuildConfig.from_dict(config) if config else BuildConfig()
    out_dir, work_dir = Path(out).expanduser().resolve(), Path(work).expanduser().resolve()
    suite_dir = out_dir / cfg.name
    work_dir.mkdir(parents=True, exist_ok=True)
    source_digest = (file_digest(Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
                     if any(p.source == "fashion-mnist" for p in cfg.pretrained) else "")
    if any(p.source == "fashion-mnist" for p in cfg.pretrained):
        fashion_mnist("train")  # a clear error now if the package is missing

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    target_paths = {t.name: _kept(prepare_target, lambda p: Path(p).is_file(), t, str(work_dir)) for t in cfg.targets}
    timings["targets_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pre = _pretrained(cfg, source_digest, work_dir)
    timings["pretraining_s"] = time.perf_counter() - t0
    specs = [model_spec(m) for m in cfg.imagenet] + [model_spec(p, r["checkpoint"]) for p, r in zip(cfg.pretrained, pre)]
    weights = {s.name: weights_digest(s) for s in specs}

    t0 = time.perf_counter()
    pairs = [(t, s) for t in cfg.targets for s in specs]
    _features(pairs, weights, target_paths, suite_dir, work_dir)
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    kernels = [row for rows in _gather([backbone_kernel.submit(s, weights[s.name], t, target_paths[t.name], str(work_dir))
                                        for t, s in pairs]) for row in rows] if cfg.kernels else []
    timings["kernels_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    runs = _finetuning(cfg, specs, weights, target_paths, work_dir, show_progress)
    logger.info("%d fine-tuning runs done", len(runs))
    timings["finetuning_s"] = time.perf_counter() - t0

    suite_path, accuracies = _write_suite(cfg, specs, pre, runs, kernels, timings, started, out_dir)
    logger.info("suite written to %s in %.0f s", suite_path, timings["total_s"])
    return {"suite": str(suite_path), "accuracies": accuracies, "runs": len(runs), "seconds": timings["total_s"],
            "timings": timings, "pretraining": pre}


def _pretrained(cfg: BuildConfig, source_digest: str, work_dir: Path) -> list[dict]:
    """Pre-train the config's models (a cached result whose checkpoint is gone is trained again) and copy
    each checkpoint to ``<work>/models/<name>.safetensors``, the name the zoo file gives."""
    pre = _gather([pretrain_model.submit(p, cfg.pretrain_pool, source_digest, str(work_dir)) for p in cfg.pretrained])
    pre = [r if Path(r["checkpoint"]).is_file() else
           pretrain_model.with_options(refresh_cache=True)(p, cfg.pretrain_pool, source_digest, str(work_dir))
           for p, r in zip(cfg.pretrained, pre)]
    for r in pre:  # the zoo file names $LEAD_BENCH_MODELS/<name>.safetensors: the latest build of each
        named = work_dir / "models" / f"{r['name']}.safetensors"
        atomic_write(named, lambda tmp, src=r["checkpoint"]: shutil.copyfile(src, tmp))
    return pre


def _features(pairs: list, weights: dict, target_paths: dict, suite_dir: Path, work_dir: Path) -> None:
    """Extract the stored features of every (target, model); a cached result whose files were deleted is
    extracted again."""
    feature_args = [(s, weights[s.name], t, target_paths[t.name], str(suite_dir / "features" / t.name / f"{s.name}.parquet"),
                     str(work_dir)) for t, s in pairs]
    results = _gather([extract_features.submit(*a) for a in feature_args])
    for a, r in zip(feature_args, results):
        if not (Path(r["path"]).is_file() and Path(r["path32"]).is_file()):
            extract_features.with_options(refresh_cache=True)(*a)


def _finetuning(cfg: BuildConfig, specs: list[ModelSpec], weights: dict, target_paths: dict, work_dir: Path,
                show_progress: bool) -> list[dict]:
    """Every fine-tuning run of the protocol (model x target x rate x seed), in submission order."""
    jobs = [(s, t, lr, seed) for seed in cfg.protocol.seeds for t in cfg.targets for s in specs for lr in cfg.protocol.lrs]
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="fine-tuning runs", unit="run")
    runs = _gather([finetune_run.submit(s, weights[s.name], t, target_paths[t.name], cfg.protocol, lr, seed, str(work_dir))
                    for s, t, lr, seed in jobs], bar,
                   lambda r: f"{r['model']} {r['dataset']} lr={r['lr']} seed={r['seed']}: {r['test_acc']:.1f}%")
    if bar is not None:
        bar.close()
    return runs


def _write_suite(cfg: BuildConfig, specs: list[ModelSpec], pre: list[dict], runs: list[dict], kernels: list[dict],
                 timings: dict, started: float, out_dir: Path) -> tuple[Path, dict]:
    """Write the suite folder's CSVs and ``build.json`` (``timings["total_s"]`` is set here), then the
    suite YAML. Returns (the YAML's path, the accuracies {dataset: {model: percent}})."""
    suite_dir = out_dir / cfg.name
    truth = ground_truth(runs)
    accuracies = {d: {m: round(v["accuracy"], 4) for m, v in models.items()} for d, models in truth.items()}
    spread = {d: {m: round(v["std"], 4) for m, v in models.items()} for d, models in truth.items()}
    best_lr = {d: {m: v["lr"] for m, v in models.items()} for d, models in truth.items()}

    atomic_write(suite_dir / "finetune_runs.csv", lambda tmp: tmp.write_text(
        _csv(runs, ["model", "dataset", "lr", "seed", "test_acc", "train_loss", "seconds", "steps"])))
    atomic_write(suite_dir / "kernels.csv", lambda tmp: tmp.write_text(
        _csv(kernels, ["dataset", "model", "class", "lambda_head", "lambda_backbone", "n"])))
    atomic_write(suite_dir / "pretrain_runs.csv", lambda tmp: tmp.write_text(
        _csv([{**r, "checkpoint": Path(r["checkpoint"]).name} for r in pre],
             ["name", "arch", "images", "source_test_acc", "train_loss", "seconds", "steps", "checkpoint"])))
    timings["total_s"] = time.perf_counter() - started
    write_json(suite_dir / "build.json", {
        "config": cfg.to_dict(), "timings": timings, "version": __version__, "build_version": BUILD_VERSION,
        "built_at": datetime.now(UTC).isoformat(), "best_lr": best_lr, "accuracy_std": spread,
    })
    tgt = {t.name: t for t in cfg.targets}
    shots = {t.shots for t in cfg.targets}
    params = {s.name: parameter_count(s) for s in specs}
    source_acc = {m.name: m.source_accuracy for m in cfg.imagenet if m.source_accuracy is not None}
    source_acc.update({r["name"]: round(float(r["source_test_acc"]), 2) for r in pre})
    doc = {
        "name": cfg.name,
        "description": (
            f"Built offline by flows/build_benchmark.py (lead {__version__}): {len(specs)} models "
            f"({len(cfg.imagenet)} with ImageNet weights, {len(cfg.pretrained)} pre-trained here on Fashion-MNIST) "
            f"and {len(cfg.targets)} few-shot targets. Ground truth: whole-network fine-tuning, {_protocol_text(cfg.protocol)}; "
            "the accuracy of a (model, dataset) is the mean test accuracy over seeds at the rate with the best mean. "
            "Scores are computed on the training split's stored features (float16 Parquet), "
            f"{'/'.join(str(s) for s in sorted(shots))} images per class."
        ),
        "unit": "percent",
        "features": f"{cfg.name}/features",
        "models": [_zoo_entry(s, params[s.name], source_acc.get(s.name)) for s in specs],
        "datasets": {name: f"{t.source}{f' {t.transform}' if t.transform else ''}"
                     f"{f' classes {list(t.classes)}' if t.classes else ''} "
                     f"(train {t.shots}/class, test {t.test_per_class}/class, seed {t.seed})" for name, t in tgt.items()},
        "protocol": {**{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.protocol.__dict__.items()}},
        "accuracies": accuracies,
        "accuracy_std": spread,
    }
    suite_path = atomic_write(out_dir / f"{cfg.name}.yaml", lambda tmp: tmp.write_text(
        "# Generated by `lead bench build`; rebuild rather than edit.\n" + yaml.safe_dump(doc, sort_keys=False, width=110)))
    return suite_path, accuracies


def _protocol_text(p: FineTuning) -> str:
    return (f"SGD momentum {p.momentum}, weight decay {p.weight_decay:g}, batch {p.batch_size}, {p.epochs} epochs, "
            f"cosine decay, no augmentation, a new linear head, rates {list(p.lrs)}, seeds {list(p.seeds)}")


def _zoo_entry(s: ModelSpec, params: int | None = None, source_accuracy: float | None = None) -> dict:
    weights = s.weights
    if s.scheme == "file":
        weights = f"file:$LEAD_BENCH_MODELS/{s.name}.safetensors"
    entry = {"name": s.name, "arch": s.arch, "weights": weights, "input_size": s.input_size[0], "mean": list(s.mean),
             "std": list(s.std), "interpolation": s.interpolation}
    if params is not None:
        entry["params"] = params
    if source_accuracy is not None:
        entry["source_accuracy"] = source_accuracy
    return entry


if __name__ == "__main__":
    print(json.dumps(build_benchmark(show_progress=True), indent=1, default=str)[:2000])
