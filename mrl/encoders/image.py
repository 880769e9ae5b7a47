"""Backbones: any network that maps images ``[B, C, H, W]`` to an embedding ``[B, width]``.

One factory, :func:`create_backbone`, takes a name:

* ``mlp`` / ``convnet``: small networks defined here, for CPU-sized data (digits);
* ``torchvision/<resnet18|34|50|101|152>``: torchvision ResNets, as in the paper's ImageNet runs;
* any other name is looked up in timm (``resnet50``, ``vit_base_patch16_224``, ...), built with its
  classifier removed; the embedding width is read from the model.

``small_input=True`` adapts a network to 32x32 inputs: a ResNet gets the CIFAR stem (3x3 stride-1
first convolution, no max-pool), a ViT gets ``img_size=image_size, patch_size=4``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from mrl.errors import ConfigError
from mrl.network import host_reachable

TORCHVISION_PREFIX = "torchvision/"
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
LOCAL_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


class Backbone(nn.Module):
    """Uniform wrapper: ``forward(batch) -> [B, width]``; ``width`` is the embedding size. ``batch`` is a dict
    holding ``image [B, C, H, W]`` (the encoders' contract) or that tensor itself."""

    def __init__(self, net: nn.Module, width: int, name: str):
        super().__init__()
        self.net = net
        self.width = int(width)
        self.name = name

    def forward(self, batch: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["image"] if isinstance(batch, Mapping) else batch)


def register_local(name: str):
    def wrap(fn):
        LOCAL_BACKBONES[name] = fn
        return fn
    return wrap


@register_local("mlp")
def _mlp(in_chans: int, image_size: int, hidden_dim: int = 512, width: int = 256, norm: str = "batch",
         **_) -> Backbone:
    if norm not in ("batch", "none"):
        raise ConfigError("model.backbone.norm", f"is {norm!r}", "choose batch (BatchNorm after each layer) or none")

    def normalise(features: int) -> nn.Module:
        return nn.BatchNorm1d(features) if norm == "batch" else nn.Identity()

    net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, hidden_dim),
                        normalise(hidden_dim), nn.ReLU(inplace=True),
                        nn.Linear(hidden_dim, width), normalise(width), nn.ReLU(inplace=True))
    return Backbone(net, width, "mlp")


@register_local("convnet")
def _convnet(in_chans: int, channels: tuple[int, ...] = (32, 64, 128), **_) -> Backbone:
    layers: list[nn.Module] = []
    prev = in_chans
    for i, ch in enumerate(channels):
        layers += [nn.Conv2d(prev, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
        prev = ch
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Backbone(nn.Sequential(*layers), prev, "convnet")


def _no_weights(name: str, err: Exception) -> ConfigError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError("model.backbone.pretrained",
                       f"pretrained weights for {name!r} are not reachable ({type(err).__name__}: {detail[:200]})",
                       "download them and set model.backbone.pretrained_path=/path/to/weights, "
                       "or set model.backbone.pretrained=false")


@contextmanager
def _hub_offline_if_unreachable(active: bool):
    """Without network, huggingface_hub retries for about a minute before failing; go offline at once
    instead (cached weights still load) when the hub does not answer within a few seconds."""
    if not active:
        yield
        return
    import huggingface_hub.constants as hub

    endpoint = urlparse(hub.ENDPOINT)
    if hub.HF_HUB_OFFLINE or host_reachable(endpoint.hostname or "huggingface.co", endpoint.port or 443):
        yield
        return
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def _load_state_file(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("model.backbone.pretrained_path", f"{path} does not exist",
                          "point it at a weights file (.pth/.pt/.safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: report it, don't crash later
        raise ConfigError("model.backbone.pretrained_path", f"cannot read weights for {name!r} from {path} "
                          f"({type(err).__name__})", "give a PyTorch state_dict file") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _cifar_stem_(net: nn.Module, in_chans: int, name: str) -> None:
    if not isinstance(getattr(net, "conv1", None), nn.Conv2d) or not hasattr(net, "maxpool"):
        raise ConfigError("model.backbone.small_input", f"no 32x32 variant for {name!r}",
                          "use a ResNet or ViT backbone, or small_input=false")
    net.conv1 = nn.Conv2d(in_chans, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()


def _torchvision_resnet(arch: str, pretrained: bool, pretrained_path: str | None, small_input: bool,
                        in_chans: int) -> Backbone:
    import torchvision

    name = TORCHVISION_PREFIX + arch
    if arch not in TORCHVISION_RESNETS:
        raise ConfigError("model.backbone.name", f"unknown torchvision backbone {name!r}",
                          f"choose one of {[TORCHVISION_PREFIX + a for a in TORCHVISION_RESNETS]}")
    weights = None
    if pretrained and not pretrained_path:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        net = torchvision.models.get_model(arch, weights=weights)
    except Exception as err:  # no network, hub unreachable, hash mismatch
        raise _no_weights(name, err) from None
    if pretrained and pretrained_path:
        state = {k: v for k, v in _load_state_file(pretrained_path, name).items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise ConfigError("model.backbone.pretrained_path", f"weights do not fit {name!r}: "
                              f"{len(missing)} missing, {len(unexpected)} unexpected keys",
                              "give a checkpoint of the same architecture")
    width = net.fc.in_features
    net.fc = nn.Identity()
    if small_input:
        _cifar_stem_(net, in_chans, name)
    elif in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
    return Backbone(net, width, name)


def _timm_model(name: str, pretrained: bool, pretrained_path: str | None, small_input: bool,
                in_chans: int, image_size: int | None, **kwargs) -> Backbone:
    import timm

    if not timm.is_model(name):
        raise ConfigError("model.backbone.name", f"unknown backbone {name!r}",
                          f"use mlp, convnet, {TORCHVISION_PREFIX}resnet50 or a timm model name "
                          "(see timm.list_models())")
    # Only timm's plain ViTs take img_size/patch_size (not levit, maxvit, fastvit, ...).
    is_vit = timm.models.model_entrypoint(name).__module__.endswith((".vision_transformer", ".deit"))
    if small_input and is_vit:
        kwargs.setdefault("img_size", image_size or 32)
        kwargs.setdefault("patch_size", 4)
    overlay = {"file": str(Path(pretrained_path).expanduser())} if pretrained and pretrained_path else None
    if overlay and not Path(overlay["file"]).is_file():
        raise ConfigError("model.backbone.pretrained_path", f"{overlay['file']} does not exist",
                          "point it at a weights file (.pth/.pt/.safetensors)")
    try:
        with _hub_offline_if_unreachable(pretrained and overlay is None):
            net = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans,
                                    pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as err:
        if pretrained:
            raise _no_weights(name, err) from None
        raise
    width = getattr(net, "head_hidden_size", None) or net.num_features
    if small_input and not is_vit:
        _cifar_stem_(net, in_chans, name)
    return Backbone(net, width, name)


def create_backbone(name: str, pretrained: bool = False, pretrained_path: str | None = None,
                    small_input: bool = False, in_chans: int = 3, image_size: int | None = None,
                    **kwargs) -> Backbone:
    """Build a backbone by name; see the module docstring for the names it knows."""
    if not isinstance(name, str) or not name:
        raise ConfigError("model.backbone.name", f"expected a backbone name, got {name!r}")
    if pretrained_path and not pretrained:
        raise ConfigError("model.backbone.pretrained_path", "is set but pretrained=false, so it would be ignored",
                          "set model.backbone.pretrained=true, or drop pretrained_path")
    if name in LOCAL_BACKBONES:
        if pretrained:
            raise ConfigError("model.backbone.pretrained", f"{name!r} has no pretrained weights",
                              "set model.backbone.pretrained=false")
        if name == "mlp" and not image_size:
            raise ConfigError("model.backbone.image_size", "the mlp backbone needs the input image size",
                              "set model.backbone.image_size (the presets take it from data.image_size)")
        return LOCAL_BACKBONES[name](in_chans=in_chans, image_size=image_size, **kwargs)
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_resnet(name[len(TORCHVISION_PREFIX):], pretrained, pretrained_path,
                                   small_input, in_chans)
    return _timm_model(name, pretrained, pretrained_path, small_input, in_chans, image_size, **kwargs)
