"""Model cost: parameters and FLOPs against independent counts, the Pareto front, the deploy limits."""

from __future__ import annotations

import math

import pytest
import torch

from lead.cost import ModelCost, check_limits, count_flops, count_params, model_cost, pareto_front, spec_cost
from lead.errors import InputError
from lead.zoo import load_zoo


def test_a_tiny_conv_net_counted_by_hand():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 10))
    # conv: 8 x 8 output pixels x 8 channels x (3 x 3 x 3) multiply-adds; linear: 512 x 10; 2 FLOPs each
    assert count_flops(net, 8) == 2 * (8 * 8 * 8 * 27 + 512 * 10) == 37888
    assert count_params(net) == (3 * 8 * 9 + 8) + (512 * 10 + 10) == 5354
    assert net.training  # the mode is restored
    with pytest.raises(InputError, match="input_size must be one or two positive ints"):
        count_flops(net, (0, 8))


def test_a_timm_model_matches_timm_and_torch_counted_independently():
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    spec = next(s for s in load_zoo("efficientnet-lite") if s.name == "efficientnet_lite0.in1k")
    cost = spec_cost(spec)  # built on the meta device, no weights
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert cost.params == sum(p.numel() for p in model.parameters()) == 4_652_008  # timm's card: 4.7 M
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, 64, 64))
    assert cost.flops == counter.get_total_flops()
    assert cost.input_size == (64, 64) and cost.gflops == pytest.approx(cost.flops / 1e9)
    assert model_cost(model, 64) == cost
    # timm's results table gives 0.40 GMACs at 224 px; FlopCounterMode counts convolutions and matmuls only
    assert count_flops(model, 224) / 2 / 1e9 == pytest.approx(0.40, rel=0.05)


def test_pareto_flags_on_a_hand_made_table():
    table = {  # (score, GFLOPs)
        "small-good": (0.80, 1.0),   # front: nothing is cheaper and at least as good
        "big-best": (0.90, 8.0),     # front: the best score
        "mid-worse": (0.75, 4.0),    # dominated by small-good (better and cheaper)
        "same-as-small": (0.80, 1.0),  # equal to small-good: neither dominates, both on the front
        "tie-cost": (0.70, 1.0),     # dominated by small-good (same cost, lower score)
        "unscored": (math.nan, 0.1),  # off, and dominates nobody
        "no-cost": (0.95, math.nan),  # off: cost unknown
    }
    assert pareto_front(table) == {"small-good": True, "big-best": True, "mid-worse": False, "same-as-small": True,
                                   "tie-cost": False, "unscored": False, "no-cost": False}
    assert pareto_front({}) == {}
    assert pareto_front({"only": (1.0, 2.0)}) == {"only": True}


def test_deploy_limits_say_why_a_model_is_left_out():
    cost = ModelCost(params=5_416_680, flops=84_386_560, input_size=(64, 64))
    assert check_limits(cost) == ""
    assert check_limits(cost, max_params=6e6, max_gflops=0.1) == ""
    assert check_limits(cost, max_params=5e6) == "5,416,680 parameters, over --max-params 5,000,000"
    assert check_limits(cost, max_gflops=0.05) == "0.0844 GFLOPs per image, over --max-gflops 0.05"
    assert "cannot be shown to fit" in check_limits(None, max_params=1e6)
    with pytest.raises(InputError, match="max_gflops must be a number > 0; got -1"):
        check_limits(cost, max_gflops=-1)
