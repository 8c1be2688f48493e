"""The benchmark build's Prefect tasks (the flow is ``flows/build_benchmark.py``; the pieces are
:mod:`lead.benchbuild`).

Each task is cached by a key of its inputs (``cache_key_fn``, persisted results) and is idempotent on its
own output file in the work folder, so an interrupted build, or one whose Prefect cache was wiped,
resumes where it stopped. Every file is written atomically (``storage.files.atomic_write``). Model inputs
come from the one preprocessing and the one forward pass of a ranking (:mod:`lead.preprocess`).

1. ``prepare-target``: cut a few-shot target (train / test split) from its source.
2. ``pretrain-model``: pre-train a timm architecture (safetensors checkpoint; retried once on a transient error).
3. ``extract-features``: pre-logit features and source logits on a target's training split, as Parquet in
   the suite folder (float16) and in the work folder (float32).
4. ``backbone-kernel``: LEAD's per-class kernel over the backbone's last block and the random head.
5. ``finetune-run``: one fine-tuning run (retried once); its record is a JSON file in the work folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prefect import task
from prefect.logging import get_run_logger

from lead.benchbuild import (
    BUILD_VERSION,
    FineTuning,
    Pretraining,
    Target,
    TargetData,
    accuracy,
    digest,
    features_and_logits,
    finetune,
    make_target,
    model_inputs,
    preprocessing,
    pretrain,
    pretraining_data,
    set_threads,
)
from lead.errors import InputError, ModelLoadError
from lead.zoo import ModelSpec, load_model, save_checkpoint
from storage.files import atomic_write
from storage.logits import LogitsWriter, is_complete, read_metadata

#: Transient faults (a full disk, an interrupted read) are retried once; deterministic ones are not.
RETRIES = 1
#: Samples per class in the backbone kernel (one backward pass each).
KERNEL_PER_CLASS = 10


def _retry(task, task_run, state) -> bool:
    err = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(err, (InputError, ModelLoadError, KeyboardInterrupt))


def write_json(path: Path, doc) -> Path:
    """``doc`` as indented JSON (sorted keys) at ``path``, atomically. Returns the path."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str)))


def save_target(data: TargetData, path: Path) -> Path:
    """The target's arrays at ``path`` (compressed .npz), atomically. Returns the path."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            data.write_npz(f)

    return atomic_write(Path(path), write)


@task(name="prepare-target", task_run_name="target-{target.name}",
      cache_key_fn=lambda ctx, p: f"bench-target-{digest([p['target'], BUILD_VERSION, p['work']])}", persist_result=True)
def prepare_target(target: Target, work: str) -> str:
    """Cut ``target`` into ``<work>/targets/<name>-<key>.npz``; returns the path."""
    path = Path(work) / "targets" / f"{target.name}-{digest([target, BUILD_VERSION])[:12]}.npz"
    if not path.is_file():
        save_target(make_target(target), path)
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

    acc = accuracy(model, preprocessing(spec.input_size).arrays(test_x), torch.from_numpy(test_y))
    save_checkpoint(model, ckpt)
    out = {"name": spec.name, "arch": spec.arch, "images": spec.images, "checkpoint": str(ckpt),
           "source_test_acc": acc, "train_loss": info["train_loss"], "seconds": info["seconds"], "steps": info["steps"]}
    write_json(record, out)
    logger.info("%s: Fashion-MNIST test accuracy %.2f%% after %.0f s", spec.name, acc, info["seconds"])
    return out


def _load_target(target: Target, path: str) -> TargetData:
    return TargetData.load(target, Path(path))


def _model_on(spec: ModelSpec, target: Target, target_path: str):
    """One torch thread; then the target's arrays, the loaded model and its inputs
    ``(train x, train y, test x, test y)`` (:func:`lead.benchbuild.model_inputs`)."""
    set_threads()
    data = _load_target(target, target_path)
    return data, load_model(spec), model_inputs(data, spec)


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
        x, _, _, _ = model_inputs(data, spec)
        feats, logits = features_and_logits(model, x)
        ids = [f"{target.name}/train/{i:05d}" for i in range(len(feats))]
        for path, dtype in ((Path(out), np.float16), (path32, np.float32)):
            with LogitsWriter(path, meta, dtype=dtype) as w:
                w.write(ids, data.train_y, feats, logits)
    m = read_metadata(Path(out))
    return {"path": out, "path32": str(path32), "d": int(m["lead.d"]), "cs": int(m["lead.cs"])}


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
    data, model, (x, _, _, _) = _model_on(spec, target, target_path)
    k = backbone_class_kernel(model, x, data.train_y, len(data.classes), n_per_class=KERNEL_PER_CLASS)
    n = np.bincount(data.train_y, minlength=len(data.classes)).clip(max=KERNEL_PER_CLASS)
    rows = [{"dataset": target.name, "model": spec.name, "class": c, "lambda_head": float(k["head"][i]),
             "lambda_backbone": float(k["backbone"][i]), "n": int(n[i])} for i, c in enumerate(data.classes)]
    write_json(record, rows)
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
    data, model, (tr_x, tr_y, te_x, te_y) = _model_on(spec, target, target_path)
    res = finetune(model, protocol, lr, seed, tr_x, tr_y, te_x, te_y, num_classes=len(data.classes))
    out = {"model": spec.name, "dataset": target.name, "lr": lr, "seed": seed, **res}
    write_json(record, out)
    return out
