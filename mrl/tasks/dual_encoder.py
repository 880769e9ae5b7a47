"""Image-text dual encoders (ALIGN/CLIP) with a Matryoshka contrastive loss: the symmetric InfoNCE (image->text and
text->image) on every prefix of the shared embedding, each prefix L2-normalised after slicing, with one learnable
temperature, summed with per-size weights (:class:`~mrl.losses.MatryoshkaLoss` around
:class:`~mrl.losses.SymmetricInfoNCE`). Both towers run once per step; the sizes are slices of their outputs.

The encoder is :class:`mrl.encoders.dual.DualEncoder` (``model.backbone.name=dual``); batches come from
:class:`mrl.data.image_text.ImageTextDataModule`: ``image [B, 3, H, W]``, the captions' ``input_ids`` /
``attention_mask`` and, for class-captioned data, ``label [B]``.

Under DDP (``gather``) the features of every rank are gathered with gradient, so the global batch gives the
negatives; ``local_loss`` (open_clip's option) scores only this rank's rows against all gathered columns (the same
loss and gradients, less memory and compute than every rank computing the whole global matrix).

Validation and test metrics per size (exact sums over the split, reduced over ranks): zero-shot top-1/top-5 on
the images against class prompts (``templates`` x class names, encoded by the text tower; per size: slice,
normalise, average the templates, renormalise), in-batch image->text and text->image recall@1 (a retrieved item
counts when its caption is the query's: identical captions are one caption) and the loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrl.errors import ConfigError
from mrl.losses import MatryoshkaLoss, SymmetricInfoNCE, all_gather_with_grad, prefixes
from mrl.losses.contrastive import world_size
from mrl.tasks.base import Reduce, Task, register_task

DEFAULT_TEMPLATES = ("a photo of a {class}.", "a blurry photo of a {class}.", "a low resolution photo of a {class}.",
                     "a close-up photo of a {class}.", "a photo of the small {class}.")
MONITORS = ("auto", "zero_shot", "recall", "loss")
MAX_LOGIT_SCALE_RANGE = (1.0, 1000.0)


def check_templates(templates: Any, field: str = "model.templates") -> list[str]:
    """A non-empty list of strings, each with one ``{class}`` placeholder."""
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ConfigError(field, f"expected a non-empty list of caption templates, got {templates!r}",
                          "e.g. ['a photo of a {class}.', 'a blurry photo of a {class}.']")
    for template in templates:
        if not isinstance(template, str) or "{class}" not in template:
            raise ConfigError(field, f"template {template!r} has no {{class}} placeholder",
                              "write each template with {class} where the class name goes")
    return list(templates)


def fill(template: str, name: str) -> str:
    return template.replace("{class}", name)


def display_name(folder: str) -> str:
    """A class folder's name as a caption word: ``sea_lion`` -> ``sea lion``."""
    return folder.replace("_", " ").strip()


def check_temperature(temperature: Any, max_logit_scale: Any) -> None:
    """``max_logit_scale`` in [1, 1000] and the initial ``temperature`` in [1 / max_logit_scale, 1]."""
    low, high = MAX_LOGIT_SCALE_RANGE
    if isinstance(max_logit_scale, bool) or not isinstance(max_logit_scale, (int, float)) \
            or not low <= max_logit_scale <= high:
        raise ConfigError("model.max_logit_scale", f"is {max_logit_scale!r}, outside [{low:g}, {high:g}]",
                          "set it to 100 (CLIP's clamp of the learnt logit scale)")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not 1.0 / max_logit_scale <= temperature <= 1.0:
        raise ConfigError("model.temperature", f"is {temperature!r}, outside [1/max_logit_scale = "
                          f"{1.0 / max_logit_scale:g}, 1]", "set it to 0.07 (CLIP's initial temperature)")


def class_embeddings(prompts: torch.Tensor, dim: int) -> torch.Tensor:
    """``[C, dim]`` zero-shot class embeddings at size ``dim`` from prompt embeddings ``[T, C, width]``: each
    prompt's prefix L2-normalised, averaged over the T templates, renormalised."""
    return F.normalize(F.normalize(prompts[..., :dim].float(), dim=-1).mean(dim=0), dim=-1)


def same_caption(batch: Mapping[str, Any]) -> torch.Tensor:
    """``[B, B]`` bool: whether captions i and j are the same text (the same token ids)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is not None:
        ids = ids.masked_fill(mask == 0, -1)
    return (ids[:, None, :] == ids[None, :, :]).all(dim=-1)


@register_task
class DualEncoderTask(Task):
    """The symmetric InfoNCE on every prefix of an image-text dual encoder.

    Args:
        head: ``mrl`` (every size of ``nesting_dims``) or ``ff`` (one size: no Matryoshka when it is the full
            width, FF-k otherwise).
        temperature: the initial temperature (CLIP: 0.07, a logit scale of 1/0.07), learnt in log space when
            ``learn_temperature``; the logit scale is clamped to at most ``max_logit_scale`` (CLIP: 100).
        gather: under DDP, gather both towers' features of every rank (with gradient) as negatives.
        local_loss: with ``gather``, each rank's own rows against all gathered columns (open_clip's
            ``local_loss``); False: every rank computes the whole global batch's loss.
        templates: zero-shot prompts with a ``{class}`` placeholder (null: the data's caption templates, else
            :data:`DEFAULT_TEMPLATES`).
        zero_shot_classes: the class names the prompts use, one per class of the data in its order (null: the
            data's class names, underscores as spaces).
        monitor: what selects checkpoints: ``zero_shot`` (top-1 at the full size; class-captioned data), ``recall``
            (in-batch mean of image->text and text->image recall@1), ``loss``, or ``auto`` (zero_shot when the
            data has classes, else recall).
        class_names, caption_templates: from the data (:meth:`data_args`).
    """

    name = "dual_encoder"
    #: row-aligned arrays predict() gives beside embeddings (see mrl.embeddings)
    row_arrays = ("text_embeddings",)

    @classmethod
    def data_args(cls, datamodule: Any) -> dict[str, Any]:
        return {"class_names": list(getattr(datamodule, "class_names", None) or []) or None,
                "caption_templates": getattr(datamodule, "templates", None)}

    @classmethod
    def check_config(cls, get) -> None:
        backbone = get("model.backbone.name")
        if backbone is not None and backbone != "dual":
            raise ConfigError("model.backbone.name", f"is {backbone!r}, but the dual_encoder task needs an image and a "
                              "text tower", "use model.backbone.name=dual (e.g. model=align_cifar_minilm)")
        batch_size = get("data.batch_size")
        if isinstance(batch_size, int) and batch_size < 2:
            raise ConfigError("data.batch_size", f"is {batch_size}, but the image-text loss scores each image against "
                              "the other captions of its batch", "set data.batch_size to 2 or more")
        check_temperature(get("model.temperature") if get("model.temperature") is not None else 0.07,
                          get("model.max_logit_scale") if get("model.max_logit_scale") is not None else 100.0)
        dims, dim = get("model.nesting_dims"), get("model.backbone.dim")
        if isinstance(dims, (list, tuple)) and dims and isinstance(dim, int) \
                and all(isinstance(d, int) for d in dims) and max(dims) > dim:
            raise ConfigError("model.nesting_dims", f"size {max(dims)} is wider than the shared embedding width "
                              f"model.backbone.dim={dim}", f"use sizes <= {dim}, or widen model.backbone.dim")
        if get("model.templates") is not None:
            check_templates(get("model.templates"))

    def __init__(self, nesting_dims: Sequence[int], loss_weights: Sequence[float], width: int, head: str = "mrl",
                 temperature: float = 0.07, learn_temperature: bool = True, max_logit_scale: float = 100.0,
                 gather: bool = True, local_loss: bool = False, templates: Sequence[str] | None = None,
                 zero_shot_classes: Sequence[str] | None = None, monitor: str = "auto",
                 class_names: Sequence[str] | None = None, caption_templates: Sequence[str] | None = None,
                 seed: int = 0):
        super().__init__(nesting_dims, loss_weights)
        if head not in ("mrl", "ff"):
            raise ConfigError("model.head", f"is {head!r}; a dual encoder has no classifier to tie (mrle)",
                              "use mrl (every size) or ff (one size in model.nesting_dims)")
        if head == "ff" and len(self.nesting_dims) != 1:
            raise ConfigError("model.nesting_dims", f"has {len(self.nesting_dims)} sizes for head=ff",
                              f"give the one size, e.g. model.nesting_dims=[{width}]")
        check_temperature(temperature, max_logit_scale)
        if monitor not in MONITORS:
            raise ConfigError("model.monitor", f"is {monitor!r}", f"choose one of {list(MONITORS)}")
        self.class_names = list(class_names) if class_names else None
        if zero_shot_classes is not None:
            if self.class_names is None:
                raise ConfigError("model.zero_shot_classes", "is set but the data has no classes (captions only)",
                                  "set model.zero_shot_classes=null")
            if isinstance(zero_shot_classes, str) or len(zero_shot_classes) != len(self.class_names):
                raise ConfigError("model.zero_shot_classes", f"has {len(zero_shot_classes)} names but the data has "
                                  f"{len(self.class_names)} classes",
                                  "give one name per class, in the data's order (sorted folder names), or null")
            if sorted(zero_shot_classes) == sorted(self.class_names) and list(zero_shot_classes) != self.class_names:
                raise ConfigError("model.zero_shot_classes", "names the data's classes in another order, so class i "
                                  "would be prompted with another class's name",
                                  f"list them in the data's order {self.class_names[:4]}..., or null")
        if monitor == "zero_shot" and self.class_names is None:
            raise ConfigError("model.monitor", "is zero_shot but the data has no classes (captions only)",
                              "set model.monitor=recall (or auto)")
        self.zero_shot_classes = (list(zero_shot_classes) if zero_shot_classes is not None
                                  else [display_name(c) for c in self.class_names] if self.class_names else None)
        self.templates = check_templates(templates if templates is not None
                                         else caption_templates or list(DEFAULT_TEMPLATES))
        self.head_type = head
        self.monitor = ("zero_shot" if self.class_names else "recall") if monitor == "auto" else monitor
        self.gather, self.local_loss = bool(gather), bool(local_loss)
        self.max_logit_scale, self.seed = float(max_logit_scale), int(seed)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)),
                                        requires_grad=bool(learn_temperature))
        self.criterion = MatryoshkaLoss(SymmetricInfoNCE(), self.loss_weights)
        self._encoder: list[nn.Module] = []   # the module's encoder, for class prompts (a list: not a submodule)
        self._prompts: dict[str, torch.Tensor] = {}
        self._sums: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------ encoder

    def attach(self, encoder: nn.Module) -> None:
        if not hasattr(encoder, "encode_pair"):
            raise ConfigError("model.backbone.name", f"the dual_encoder task needs an image and a text tower, not "
                              f"{type(encoder).__name__}", "use model.backbone.name=dual")
        self._encoder = [encoder]

    def encode(self, encoder: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[2, B, d]``: the images' and the captions' embeddings, one pass of each tower."""
        return encoder.encode_pair(batch)

    def scale(self) -> torch.Tensor:
        """The logit scale ``exp(log_scale)``, clamped to ``max_logit_scale`` (no gradient beyond the clamp)."""
        return self.logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def forward(self, z: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return z

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return int(batch["input_ids"].shape[0])

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        image, text = outputs[0], outputs[1]
        b = image.shape[0]
        world = world_size()
        if self.gather and world > 1:
            all_image, all_text = all_gather_with_grad(image), all_gather_with_grad(text)
            if self.local_loss:
                rank = torch.distributed.get_rank()
                rows_image, rows_text = image, text
                targets = torch.arange(b, device=image.device) + rank * b
            else:
                rows_image, rows_text = all_image, all_text
                targets = torch.arange(world * b, device=image.device)
            cols_image, cols_text = all_image, all_text
        else:
            rows_image = cols_image = image
            rows_text = cols_text = text
            targets = torch.arange(b, device=image.device)
        return self.criterion.per_size(prefixes(self.nesting_dims, rows_image, cols_text, rows_text, cols_image),
                                       targets, self.scale())

    # ------------------------------------------------------------------------------------------ prompts

    def prompt_texts(self) -> list[str]:
        """The zero-shot prompts, template-major: ``templates[t]`` filled with class ``c`` at ``t * C + c``."""
        return [fill(t, name) for t in self.templates for name in self.zero_shot_classes or []]

    @torch.no_grad()
    def prompt_embeddings(self, encoder: nn.Module | None = None) -> torch.Tensor:
        """``[T, C, width]`` full-width embeddings of every (template, class) prompt."""
        encoder = encoder if encoder is not None else self._encoder[0]
        was_training = encoder.training
        encoder.eval()
        try:
            emb = encoder.encode_texts(self.prompt_texts())
        finally:
            encoder.train(was_training)
        return emb.view(len(self.templates), len(self.zero_shot_classes), -1)

    def split_arrays(self, encoder: nn.Module) -> dict[str, np.ndarray]:
        """What embedding files hold once per split beside the rows: ``class_prompt_embeddings [T, C, width]``
        (class-captioned data)."""
        if not self.zero_shot_classes:
            return {}
        return {"class_prompt_embeddings": self.prompt_embeddings(encoder).float().cpu().numpy()}

    # ------------------------------------------------------------------------------------------ metrics

    def reset_metrics(self, stage: str) -> None:
        self._sums.pop(stage, None)
        self._prompts.pop(stage, None)  # the text tower changed since: encode the prompts afresh

    @torch.no_grad()
    def update_metrics(self, stage: str, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        image, text = outputs[0].detach().float(), outputs[1].detach().float()
        b = image.shape[0]
        same = same_caption(batch).to(image.device)
        rows = torch.arange(b, device=image.device)
        i2t, t2i = [], []
        for image_m, text_m in prefixes(self.nesting_dims, image, text):
            sim = F.normalize(image_m, dim=-1) @ F.normalize(text_m, dim=-1).T
            i2t.append(same[rows, sim.argmax(dim=1)].sum())
            t2i.append(same[sim.argmax(dim=0), rows].sum())
        losses = self.criterion.per_size(prefixes(self.nesting_dims, image, text, text, image), rows, self.scale())
        sums = self._sums.setdefault(stage, {})
        values = {"i2t": torch.stack(i2t).double(), "t2i": torch.stack(t2i).double(),
                  "loss_sum": (losses.detach().double() * b), "total": torch.tensor(float(b), dtype=torch.float64)}
        if self.zero_shot_classes and "label" in batch:
            if stage not in self._prompts:
                self._prompts[stage] = self.prompt_embeddings().to(image.device).float()
            labels = batch["label"].to(image.device)
            k = min(5, len(self.zero_shot_classes))
            top1, top5 = [], []
            for m in self.nesting_dims:
                logits = F.normalize(image[:, :m], dim=-1) @ class_embeddings(self._prompts[stage], m).T
                best = logits.topk(k, dim=1).indices
                top1.append(best[:, 0].eq(labels).sum())
                top5.append(best.eq(labels[:, None]).any(dim=1).sum())
            values.update(zs1=torch.stack(top1).double(), zs5=torch.stack(top5).double(),
                          zs_total=torch.tensor(float(b), dtype=torch.float64))
        for key, value in values.items():
            sums[key] = sums.get(key, 0) + value.cpu()

    def compute_metrics(self, stage: str, reduce: Reduce) -> dict[str, float]:
        sums = self._sums.get(stage, {})
        g = len(self.nesting_dims)
        zeros, zero = torch.zeros(g, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        # every rank reduces the same keys, even one that saw no labelled batch
        got = {key: reduce(sums.get(key, zeros if key in ("i2t", "t2i", "zs1", "zs5", "loss_sum") else zero))
               for key in ("i2t", "t2i", "loss_sum", "total", "zs1", "zs5", "zs_total")}
        metrics: dict[str, float] = {}
        total = float(got["total"])
        if total > 0:
            for i, m in enumerate(self.nesting_dims):
                metrics[f"i2t_r1@{m}"] = 100.0 * float(got["i2t"][i]) / total
                metrics[f"t2i_r1@{m}"] = 100.0 * float(got["t2i"][i]) / total
                metrics[f"recall@{m}"] = (metrics[f"i2t_r1@{m}"] + metrics[f"t2i_r1@{m}"]) / 2
            metrics["recall_mean"] = float(np.mean([metrics[f"recall@{m}"] for m in self.nesting_dims]))
            weights = torch.tensor(self.loss_weights, dtype=torch.float64)
            metrics["loss"] = float((got["loss_sum"] * weights).sum()) / total
        zs_total = float(got["zs_total"])
        if zs_total > 0:
            for i, m in enumerate(self.nesting_dims):
                metrics[f"zero_shot_top1@{m}"] = 100.0 * float(got["zs1"][i]) / zs_total
                metrics[f"zero_shot_top5@{m}"] = 100.0 * float(got["zs5"][i]) / zs_total
            metrics["zero_shot_top1_mean"] = float(np.mean([metrics[f"zero_shot_top1@{m}"]
                                                            for m in self.nesting_dims]))
        metrics["num_samples"] = int(total)
        return metrics

    def monitor_keys(self) -> list[str]:
        kinds = ["recall", "i2t_r1", "t2i_r1"] + (["zero_shot_top1", "zero_shot_top5"] if self.class_names else [])
        means = ["val/recall_mean"] + (["val/zero_shot_top1_mean"] if self.class_names else [])
        return [f"val/{kind}@{m}" for kind in kinds for m in self.nesting_dims] + means + ["val/loss"]

    @property
    def default_monitor(self) -> str:
        if self.monitor == "loss":
            return "val/loss"
        kind = "zero_shot_top1" if self.monitor == "zero_shot" else "recall"
        return f"val/{kind}@{self.nesting_dims[-1]}"

    # ------------------------------------------------------------------------------------------ outputs

    def predict(self, z: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``embeddings [B, d]`` (the images), ``text_embeddings [B, d]`` (their captions) and ``labels [B]`` when
        the data has classes."""
        out = {"embeddings": z[0], "text_embeddings": z[1]}
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "num_classes": None, "class_names": self.class_names,
                "zero_shot_classes": self.zero_shot_classes, "templates": self.templates,
                "logit_scale": float(self.scale().detach()), "modalities": ["image", "text"]}
