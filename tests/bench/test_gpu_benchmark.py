"""benchmarks/gpu.py in its tiny CPU mode (issue #18, target 5): the one-command GPU benchmark runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_in_its_tiny_mode_and_reports_every_score(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--device", "cpu", "--repeats", "1",
                           "--cap", "60", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    ext = r["extraction"]
    assert r["mode"] == "tiny" and ext["device"] == "cpu" and ext["dtype"] == "float32" and ext["images"] == 64
    assert all(v > 0 for vs in ext["images_per_s"].values() for v in vs)
    assert ext["uint8_input_identical"] is True
    assert ext["ratio_best"] == pytest.approx(max(ext["images_per_s"]["pipeline_1_workers"]) / max(ext["images_per_s"]["bare"]))
    assert ext["ratio_to_forward"] == pytest.approx(max(ext["images_per_s"]["pipeline_1_workers"]) / max(ext["images_per_s"]["forward_only"]))

    from lead.scoring import METHODS, get_method

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scores import make_data

    rows = r["scores"]["methods"]
    assert list(rows) == list(METHODS)
    x, s, y = make_data(600, 64, 5)
    for m in METHODS:
        assert rows[m]["seconds"] > 0
        assert rows[m]["value"] == pytest.approx(get_method(m)(features=x, logits=s, labels=y), rel=1e-9)
        assert rows[m]["over_forward"] == pytest.approx(rows[m]["seconds"] / r["scores"]["forward_seconds_for_n"])


def test_a_score_past_its_cap_is_reported_as_a_timeout_and_its_child_killed():
    """The time limit: each method that outlasts ``cap`` is a timeout row, its child process is killed and a
    new child scores the rest; nothing is left running."""
    import multiprocessing

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu

    # N-LEEP's mixture at N = 5,000 takes about 10 s here: far past a 1 s cap; NCE then takes milliseconds
    cfg = {**gpu.TINY, "n": 5000, "cap": 1.0}
    r = gpu.scores(cfg, forward_images_per_s=100.0, methods=["nleep", "nce"])
    assert r["methods"]["nleep"] == {"timeout": 1.0}
    assert r["methods"]["nce"]["seconds"] < 1.0
    assert r["forward_seconds_for_n"] == pytest.approx(5000 / 100.0)
    assert multiprocessing.active_children() == []
