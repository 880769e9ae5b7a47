"""Backbone factory: widths, the 32x32 stem, local nets, and errors for unreachable weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from mrl.encoders.image import create_backbone
from mrl.errors import ConfigError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No pretrained weights anywhere: empty caches, HF offline, and torch.hub downloads fail."""
    import huggingface_hub.constants as hf_constants

    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    # huggingface_hub reads these at import time; the env vars alone don't reach an imported module.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: {url}")

    # Also keeps the torchvision case hermetic on a machine that does have internet.
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return torch_home


@pytest.mark.parametrize("name, width", [
    ("torchvision/resnet18", 512),
    ("torchvision/resnet50", 2048),
    ("resnet18", 512),
])
def test_backbone_widths(name, width):
    bb = create_backbone(name)
    assert bb.width == width
    bb.eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, width)


def test_timm_vit_small_input():
    bb = create_backbone("vit_tiny_patch16_224", small_input=True, image_size=32)
    assert bb.width == 192
    bb.eval()
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 192)
    assert torch.isfinite(out).all()


def _layer4_spatial(bb: nn.Module, size: int) -> tuple[int, int]:
    seen = {}

    def hook(module, inputs, output) -> None:
        seen["shape"] = output.shape

    handle = bb.net.layer4.register_forward_hook(hook)
    with torch.no_grad():
        bb(torch.randn(2, 3, size, size))
    handle.remove()
    return tuple(seen["shape"][-2:])


@pytest.mark.parametrize("name", ["torchvision/resnet18", "resnet18"])
def test_small_input_resnet_stem(name):
    bb = create_backbone(name, small_input=True)
    conv1 = bb.net.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert isinstance(bb.net.maxpool, nn.Identity)
    bb.eval()
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 512)
    # CIFAR stem keeps 4x4 at the last stage; the ImageNet stem shrinks 32x32 to 1x1.
    assert _layer4_spatial(bb, 32) == (4, 4)
    assert _layer4_spatial(create_backbone(name).eval(), 32) == (1, 1)


def test_small_input_with_one_channel():
    bb = create_backbone("torchvision/resnet18", small_input=True, in_chans=1).eval()
    assert bb.net.conv1.in_channels == 1
    with torch.no_grad():
        assert bb(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_mlp_backbone_forward():
    bb = create_backbone("mlp", in_chans=1, image_size=8, hidden_dim=32, width=16)
    assert bb.width == 16
    assert bb(torch.randn(4, 1, 8, 8)).shape == (4, 16)


def test_mlp_needs_image_size():
    with pytest.raises(ConfigError, match="model.backbone.image_size"):
        create_backbone("mlp", in_chans=1)


def test_convnet_backbone_forward():
    bb = create_backbone("convnet", in_chans=3, channels=(8, 16))
    assert bb.width == 16
    assert bb(torch.randn(4, 3, 16, 16)).shape == (4, 16)
    assert create_backbone("convnet", in_chans=1).width == 128


def test_local_backbone_has_no_pretrained_weights():
    with pytest.raises(ConfigError, match="model.backbone.pretrained"):
        create_backbone("convnet", pretrained=True, in_chans=1)


@pytest.mark.parametrize("name", ["no_such_backbone_xyz", "torchvision/vgg16", ""])
def test_unknown_backbone_raises_config_error(name):
    with pytest.raises(ConfigError, match="model.backbone.name") as err:
        create_backbone(name)
    assert err.value.field == "model.backbone.name"


@pytest.mark.parametrize("name", ["resnet18", "torchvision/resnet18"])
def test_pretrained_without_reachable_weights_raises_config_error(offline, name):
    with pytest.raises(ConfigError, match="model.backbone.pretrained") as err:
        create_backbone(name, pretrained=True)
    message = str(err.value)
    assert err.value.field == "model.backbone.pretrained"
    assert "pretrained_path" in message and "\n" not in message
    assert not any(offline.rglob("*.pth")), "nothing should have been downloaded"


def test_pretrained_path_loads_torchvision_state_dict(offline, tmp_path):
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    with torch.no_grad():  # make BN statistics non-default too
        source.bn1.running_mean.uniform_()
        source.layer4[1].bn2.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)

    bb = create_backbone("torchvision/resnet18", pretrained=True, pretrained_path=str(path))
    loaded = bb.net.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert bb.width == 512


def test_pretrained_path_accepts_wrapped_state_dict(offline, tmp_path):
    import torchvision

    source = torchvision.models.resnet18()
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    bb = create_backbone("torchvision/resnet18", pretrained=True, pretrained_path=str(path))
    assert torch.equal(bb.net.conv1.weight, source.conv1.weight)


@pytest.mark.parametrize("name", ["torchvision/resnet18", "resnet18"])
def test_missing_pretrained_path_raises_config_error(offline, tmp_path, name):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match="model.backbone.pretrained_path") as err:
        create_backbone(name, pretrained=True, pretrained_path=str(missing))
    assert err.value.field == "model.backbone.pretrained_path"
    assert "nope.pth" in str(err.value)


def test_pretrained_path_of_other_architecture_raises_config_error(offline, tmp_path):
    import torchvision

    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ConfigError, match="model.backbone.pretrained_path"):
        create_backbone("torchvision/resnet18", pretrained=True, pretrained_path=str(path))


def test_unreadable_pretrained_path_raises_config_error(offline, tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="model.backbone.pretrained_path"):
        create_backbone("torchvision/resnet18", pretrained=True, pretrained_path=str(path))
