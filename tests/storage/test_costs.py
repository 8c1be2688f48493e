"""The store's cost cache (storage.costs): counted once, read back without torch, recounted when stale."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

from lead.cost import cost_key, spec_cost
from lead.zoo import load_zoo
from storage.costs import cached_spec_cost, read_cost
from storage.store import Store


def _lite0():
    return next(s for s in load_zoo("efficientnet-lite") if s.name == "efficientnet_lite0.in1k")


def test_counted_once_then_read_back_in_a_process_that_never_imports_torch(tmp_path):
    spec, st = _lite0(), Store.of(tmp_path / "store")
    assert read_cost(spec, st) is None
    cost = cached_spec_cost(spec, st)
    assert cost == spec_cost(spec) and cost.params == 4_652_008  # timm's own count (tests/lead/test_cost.py)
    path = st.cost_file(cost_key(spec))
    assert json.loads(path.read_text()) == {"params": cost.params, "flops": cost.flops, "input_size": [64, 64]}
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left beside it
    code = textwrap.dedent(f"""
        import sys
        from lead.zoo import load_zoo
        from storage.costs import cached_spec_cost
        spec = next(s for s in load_zoo("efficientnet-lite") if s.name == "efficientnet_lite0.in1k")
        cost = cached_spec_cost(spec, {str(st.root)!r})
        print(cost.params, cost.flops, "torch" in sys.modules, "timm" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(cost.params), str(cost.flops), "False", "False"]


def test_the_key_follows_what_the_count_depends_on():
    spec = _lite0()
    keys = {cost_key(spec), cost_key(dataclasses.replace(spec, input_size=(96, 96))),
            cost_key(dataclasses.replace(spec, num_classes=10)), cost_key(dataclasses.replace(spec, arch="resnet18"))}
    assert len(keys) == 4
    # what does not change the count does not change the key: the name, the weights, the preprocessing
    same = dataclasses.replace(spec, name="other", weights="timm:tf_efficientnet_lite0.in1k", mean=(0.4, 0.4, 0.4))
    assert cost_key(same) == cost_key(spec)


def test_a_corrupt_or_malformed_file_is_recounted_and_rewritten(tmp_path):
    spec, st = _lite0(), Store.of(tmp_path / "store")
    path = st.cost_file(cost_key(spec))
    path.parent.mkdir(parents=True)
    for bad in ("{not json", json.dumps({"params": 1}), json.dumps([1, 2])):
        path.write_text(bad)
        assert read_cost(spec, st) is None
        assert cached_spec_cost(spec, st).params == 4_652_008
        assert read_cost(spec, st) == spec_cost(spec)
