"""Orchestration overhead: `lead rank` (Prefect flow, caching, Parquet, MLflow, DuckDB-ready tables)
over 8 small models against the same extraction and LEAD scoring in a plain Python loop. Both run as
fresh processes on a fresh store, start-up included; `lead rank` also reports the time inside its flow,
so the fixed start-up (imports, ephemeral Prefect API, MLflow database) shows separately.

    python benchmarks/orchestration.py [--n 2000] [--size 32]

Writes benchmarks/results/orchestration.json. Target (issue 7): lead rank / plain loop <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).parent / "results"
#: Five small timm architectures beside the three EfficientNet-Lites (random weights: only time counts).
SMALL_ARCHS = ("mobilenetv3_small_050", "resnet10t", "test_efficientnet", "test_convnext", "test_vit")


def make_inputs(work: Path, n: int, size: int) -> tuple[Path, Path]:
    import timm

    from lead.data import mnist_5k
    from lead.zoo import load_zoo, save_checkpoint
    from PIL import Image

    images, labels = mnist_5k()
    data = work / "data"
    for i in range(n):
        (data / labels[i]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(data / labels[i] / f"{i:05d}.png")
    models = [{**{k: v for k, v in s.to_dict().items() if v is not None}, "input_size": size,
               "mean": list(s.mean), "std": list(s.std)} for s in load_zoo("efficientnet-lite")]
    for arch in SMALL_ARCHS:
        save_checkpoint(timm.create_model(arch, pretrained=False, num_classes=10), work / f"{arch}.safetensors")
        models.append({"name": arch, "arch": arch, "weights": f"file:{arch}.safetensors", "input_size": size,
                       "mean": [0.5] * 3, "std": [0.5] * 3})
    zoo = work / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    return data, zoo


def plain(data: str, zoo: str, out: str) -> None:
    """The same work without orchestration: load, extract to Parquet, score LEAD, one model after another."""
    from lead.data import image_folder
    from lead.extract import extract
    from lead.scoring import lead_score
    from lead.zoo import load_model, load_zoo
    from storage.logits import LogitsWriter, read_logits

    ds = image_folder(data)
    scores = {}
    for spec in load_zoo(zoo):
        path = Path(out) / f"{spec.name}.parquet"
        with LogitsWriter(path, {}) as w:
            for b in extract(load_model(spec), spec, ds.samples, ds.classes, batch_size=64, num_workers=2):
                w.write(b.sample_ids, b.labels, b.features, b.logits)
        f = read_logits(path)
        scores[spec.name] = lead_score(f.features, f.labels)
    print(json.dumps(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--plain", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain(*args.plain)
        return
    work = Path(tempfile.mkdtemp(prefix="lead-orch-bench-"))
    try:
        data, zoo = make_inputs(work, args.n, args.size)
        (work / "plain").mkdir()
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--plain", str(data), str(zoo), str(work / "plain")],
                             capture_output=True, text=True, check=True)
        plain_s = time.perf_counter() - started
        plain_scores = json.loads(out.stdout.strip().splitlines()[-1])
        lead = str(Path(sys.executable).with_name("lead"))
        started = time.perf_counter()
        out = subprocess.run([lead, "rank", "-d", str(data), "-z", str(zoo), "--store", str(work / "store"), "--json"],
                             capture_output=True, text=True, check=True)
        flow_wall = time.perf_counter() - started
        sel = json.loads(out.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = all(abs(m["scores"]["lead"] - plain_scores[m["model"]]) <= 1e-9 * abs(plain_scores[m["model"]])
               for m in sel["models"])
    result = {
        "benchmark": "orchestration", "models": len(sel["models"]), "images": args.n, "input_size": args.size,
        "plain_loop_s": round(plain_s, 1), "lead_rank_wall_s": round(flow_wall, 1),
        "lead_rank_in_flow_s": round(sel["seconds"], 1), "start_up_s": round(flow_wall - sel["seconds"], 1),
        "ratio": round(flow_wall / plain_s, 3), "target": "<= 1.2", "same_scores": same,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "orchestration.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
