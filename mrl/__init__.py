"""mrl: Matryoshka Representation Learning (Kusupati et al., NeurIPS 2022) in PyTorch.

Plain Python API (no Hydra needed)::

    import mrl
    model = mrl.create_model("torchvision/resnet50", head="mrle", num_classes=1000)
    logits = model(images)            # [len(model.nesting_dims), B, 1000]
    loss = mrl.MatryoshkaLoss(mrl.CrossEntropy(0.1), [1.0] * len(model.nesting_dims))(logits, labels)
    module, meta = mrl.load_model("last.ckpt")  # any checkpoint of scripts/train.py
"""

from mrl.encoders import Backbone, create_backbone
from mrl.errors import ConfigError
from mrl.heads import HEADS, FixedFeatureHead, MatryoshkaHead, TiedMatryoshkaHead, create_head
from mrl.checkpoint import load_model
from mrl.losses import CrossEntropy, MatryoshkaLoss, prefixes
from mrl.model import MatryoshkaClassifier, create_model
from mrl.nesting import auto_nesting_dims, resolve_loss_weights, resolve_nesting_dims

__version__ = "0.1.0"

__all__ = ["HEADS", "Backbone", "ConfigError", "CrossEntropy", "FixedFeatureHead", "MatryoshkaClassifier",
           "MatryoshkaHead", "MatryoshkaLoss", "TiedMatryoshkaHead", "auto_nesting_dims", "create_backbone",
           "create_head", "create_model", "load_model", "prefixes", "resolve_loss_weights", "resolve_nesting_dims"]
