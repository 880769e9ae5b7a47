"""Contrastive sentence embeddings with a Matryoshka loss: every prefix of the embedding, L2-normalised after
slicing, is trained with the same contrastive loss (sentence-transformers' ``MatryoshkaLoss`` around
``MultipleNegativesRankingLoss`` or ``CoSENTLoss``), optionally on intermediate layers too (2D Matryoshka).

Batches come from :class:`mrl.data.pairs.PairCollate`: ``input_ids [K*B, T]`` (all K columns of the B items in
one padded tensor, column-major: anchors, then positives, then hard negatives), ``num_columns`` K and, for scored
pairs, ``score [B]``. The encoder runs once per step on the K*B texts; the sizes are slices of that one output.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mrl.errors import ConfigError
from mrl.losses import CoSENT, InBatchNegatives, MatryoshkaLoss, all_gather_with_grad, prefixes
from mrl.losses.contrastive import world_size
from mrl.tasks.base import Reduce, Task, register_task

LOSSES = {"mnrl": InBatchNegatives, "cosent": CoSENT}
LAYER_WEIGHTINGS = {  # sentence-transformers' AdaptiveLayerLoss schedules, by layer index from 0
    "uniform": lambda index: 1.0,
    "linear": lambda index: 1.0 / (1 + index),
    "log": lambda index: 1.0 / (1.0 + math.log(1 + index)),
}
MONITORS = ("spearman", "accuracy", "loss")


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``[n_r, ...]`` rows of every rank concatenated (any ``n_r``; for metrics, no gradient); itself on one
    process."""
    if world_size() == 1:
        return x
    parts: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(parts, x.cpu())
    return torch.cat(parts)


@register_task
class ContrastiveTask(Task):
    """A contrastive loss on every prefix ``z[..., :m]`` of the sentence embedding.

    Args:
        loss: ``mnrl`` (multiple-negatives ranking on (anchor, positive[, hard negative]) items: in-batch
            negatives) or ``cosent`` (CoSENT on scored pairs).
        scale: the losses' inverse temperature on cosine similarities (20, as sentence-transformers).
        gather: under DDP, gather the candidates (MNRL) or pairs (CoSENT) of every rank, with gradient, so the
            global batch gives the negatives; ``False``: each rank's own batch only.
        head: ``mrl`` (every size of ``nesting_dims``) or ``ff`` (one size: the model trained without Matryoshka
            when it is the full width, FF-k otherwise).
        sizes_per_step: train a random subset of this many sizes each step (``None``: all); the draw depends on
            ``seed`` and the step only, so it is the same on every rank and after a resume.
        layers: 2D Matryoshka: ``None`` (last layer only), ``all`` or a list of intermediate layers (1 = the first
            transformer block) whose pooled outputs are trained too, ``layers_per_step`` of them drawn per step,
            each loss weighted by ``prior_layers_weight * layer_weighting(layer) / layers_per_step`` (the
            schedules of sentence-transformers' ``AdaptiveLayerLoss``: ``uniform``, ``linear``, ``log``).
        monitor: the validation metric that selects checkpoints: ``spearman`` (scored validation pairs: STS),
            ``accuracy`` (in-batch top-1 on validation pairs) or ``loss``.
    """

    name = "contrastive"

    @classmethod
    def check_config(cls, get) -> None:
        batch_size = get("data.batch_size")
        if isinstance(batch_size, int) and batch_size < 2:  # bool and negatives are refused by the generic checks
            loss = get("model.loss") or "mnrl"
            why = ("each anchor is scored against the other items of its batch as negatives" if loss == "mnrl"
                   else "CoSENT ranks the pairs of a batch against each other")
            raise ConfigError("data.batch_size", f"is {batch_size}, but a contrastive task needs at least 2 items "
                              f"per batch: {why}", "set data.batch_size to 2 or more (32 to 512 is usual)")

    def __init__(self, nesting_dims: Sequence[int], loss_weights: Sequence[float], width: int, loss: str = "mnrl",
                 scale: float = 20.0, gather: bool = True, head: str = "mrl", sizes_per_step: int | None = None,
                 layers: str | Sequence[int] | None = None, layers_per_step: int = 1, prior_layers_weight: float = 1.0,
                 layer_weighting: str = "uniform", monitor: str = "spearman", seed: int = 0):
        super().__init__(nesting_dims, loss_weights)
        if loss not in LOSSES:
            raise ConfigError("model.loss", f"unknown contrastive loss {loss!r}", f"choose one of {sorted(LOSSES)}")
        if not scale > 0:
            raise ConfigError("model.scale", f"must be > 0, got {scale}")
        if head not in ("mrl", "ff"):
            raise ConfigError("model.head", f"is {head!r}; a contrastive model has no classifier to tie (mrle)",
                              "use mrl (every size) or ff (one size in model.nesting_dims)")
        if head == "ff" and len(self.nesting_dims) != 1:
            raise ConfigError("model.nesting_dims", f"has {len(self.nesting_dims)} sizes for head=ff",
                              "give the one size, e.g. model.nesting_dims=[384]")
        if sizes_per_step is not None and not 1 <= sizes_per_step <= len(self.nesting_dims):
            raise ConfigError("model.sizes_per_step", f"is {sizes_per_step}",
                              f"give null (all sizes) or 1..{len(self.nesting_dims)}")
        if layer_weighting not in LAYER_WEIGHTINGS:
            raise ConfigError("model.layer_weighting", f"is {layer_weighting!r}",
                              f"choose one of {sorted(LAYER_WEIGHTINGS)}")
        if layers_per_step < 1:
            raise ConfigError("model.layers_per_step", f"must be >= 1, got {layers_per_step}")
        if monitor not in MONITORS:
            raise ConfigError("model.monitor", f"is {monitor!r}", f"choose one of {list(MONITORS)}")
        self.head_type = head
        self.loss_name, self.scale, self.gather = loss, float(scale), bool(gather)
        self.sizes_per_step, self.seed = sizes_per_step, int(seed)
        self.layers_setting, self.layers_per_step = layers, int(layers_per_step)
        self.prior_layers_weight, self.layer_weighting = float(prior_layers_weight), layer_weighting
        self.monitor = monitor
        self.criterion = MatryoshkaLoss(LOSSES[loss](scale), self.loss_weights)
        self.prior_layers: list[int] = []   # set by attach(), from the encoder's depth
        self.num_layers: int | None = None
        self.layers_this_step: list[int] = []  # the prior layers encode() returned, before the last
        self.step = 0                       # the optimiser step (set by the module), for per-step draws
        self.sizes_this_step: list[int] | None = None
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._scored: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # ------------------------------------------------------------------------------------------ encoder

    def attach(self, encoder: Any) -> None:
        if self.layers_setting is None:
            return
        depth = getattr(encoder, "num_layers", None)
        if depth is None:
            raise ConfigError("model.layers", f"2D Matryoshka needs a layered text encoder, not "
                              f"{type(encoder).__name__}", "use an hf/ encoder, or set model.layers=null")
        prior = list(range(1, depth)) if self.layers_setting == "all" else list(self.layers_setting)
        bad = [layer for layer in prior if isinstance(layer, bool) or not isinstance(layer, int)
               or not 1 <= layer < depth]
        if bad or not prior or len(set(prior)) != len(prior):
            raise ConfigError("model.layers", f"is {self.layers_setting!r}",
                              f"give all, or distinct intermediate layers in 1..{depth - 1} (layer {depth} is the "
                              "last, always trained)")
        self.prior_layers, self.num_layers = sorted(prior), depth

    def _step_random(self, salt: int) -> random.Random:
        return random.Random(hash((self.seed, self.step, salt)))

    def encode(self, encoder: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[B', width]``, or for a 2D model ``[L, B', width]``: the layers trained this step (a draw of
        ``layers_per_step`` prior layers, then the last) in training, every layer in evaluation."""
        if not self.prior_layers:
            return encoder(batch)
        if self.training:
            count = min(self.layers_per_step, len(self.prior_layers))
            chosen = sorted(self._step_random(1).sample(self.prior_layers, count))
        else:
            chosen = self.prior_layers
        self.layers_this_step = chosen
        return encoder(batch, layers=[*chosen, self.num_layers])

    def _layer_weights(self, chosen: Sequence[int]) -> list[float]:
        schedule = LAYER_WEIGHTINGS[self.layer_weighting]
        # layer l is index l - 1 of the schedule, as sentence-transformers counts hidden layers from 0
        return [self.prior_layers_weight * schedule(layer - 1) / len(chosen) for layer in chosen] + [1.0]

    # ------------------------------------------------------------------------------------------ loss

    def forward(self, z: torch.Tensor, batch: Mapping[str, Any] | None = None) -> torch.Tensor:
        return z

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return batch["input_ids"].shape[0] // int(batch.get("num_columns", 1))

    def _columns(self, z: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[K*B, W] -> [K, B, W]`` (column-major rows, see the module doc)."""
        k = int(batch.get("num_columns", 1))
        scored = "score" in batch
        if self.loss_name == "mnrl" and (k < 2 or scored):
            raise ConfigError("model.loss", f"mnrl trains on (anchor, positive[, negative]) items, but the batch "
                              f"has {k} column(s){' and scores' if scored else ''}",
                              "use pair/triplet training data, or model.loss=cosent for scored pairs")
        if self.loss_name == "cosent" and (k != 2 or not scored):
            raise ConfigError("model.loss", "cosent trains on scored sentence pairs, but the batch has "
                              f"{k} column(s){'' if scored else ' and no scores'}",
                              "use scored pairs (e.g. data=stsb_pairs), or model.loss=mnrl")
        return z.reshape(k, z.shape[0] // k, z.shape[-1])

    def _loss_inputs(self, columns: torch.Tensor, batch: Mapping[str, Any], gather: bool) -> tuple[list, tuple]:
        """The per-size inputs of the base loss and its extra arguments, from ``columns [K, B, W]``; the
        gather (one collective per layer, at full width) happens before slicing."""
        if self.loss_name == "mnrl":
            anchors, candidates = columns[0], columns[1:]                    # [B, W], [K-1, B, W]
            b, rank = anchors.shape[0], 0
            if gather and world_size() > 1:
                stacked = all_gather_with_grad(candidates.transpose(0, 1))   # [W*B, K-1, W]
                candidates, rank = stacked.transpose(0, 1), torch.distributed.get_rank()
            flat = candidates.reshape(-1, candidates.shape[-1])              # positives of all ranks first
            targets = torch.arange(b, device=anchors.device) + rank * b
            return prefixes(self.nesting_dims, anchors, flat), (targets,)
        first, second, scores = columns[0], columns[1], batch["score"]
        if gather and world_size() > 1:
            pairs = all_gather_with_grad(columns.transpose(0, 1))            # [W*B, 2, W]
            first, second = pairs[:, 0], pairs[:, 1]
            scores = all_gather_with_grad(scores)
        return prefixes(self.nesting_dims, first, second), (scores,)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[G]``: each size's loss, summed over the layers trained this step with their weights."""
        layers = outputs if outputs.ndim == 3 else outputs[None]              # [L, K*B, W]
        weights = self._layer_weights(self.layers_this_step) if layers.shape[0] > 1 else [1.0]
        self.sizes_this_step = None
        if self.sizes_per_step is not None and self.training:
            self.sizes_this_step = sorted(self._step_random(2).sample(range(len(self.nesting_dims)),
                                                                       self.sizes_per_step))
        total = None
        for weight, z in zip(weights, layers):
            inputs, args = self._loss_inputs(self._columns(z, batch), batch, self.gather and self.training)
            per_size = self.criterion.per_size(inputs, *args, sizes=self.sizes_this_step) * weight
            total = per_size if total is None else total + per_size
        return total

    # ------------------------------------------------------------------------------------------ metrics

    def reset_metrics(self, stage: str) -> None:
        self._sums[stage] = {}
        self._scored[stage] = []

    def update_metrics(self, stage: str, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        z = outputs[-1] if outputs.ndim == 3 else outputs                    # the last layer
        k = int(batch.get("num_columns", 1))
        columns = z.reshape(k, z.shape[0] // k, z.shape[-1]).float()
        if "score" in batch:  # STS-style pairs: Spearman of the cosines at each size, over the whole split
            cos = torch.stack([F.cosine_similarity(a, b, dim=-1) for a, b in prefixes(self.nesting_dims, *columns[:2])])
            self._scored.setdefault(stage, []).append((cos.T.detach().cpu(), batch["score"].detach().float().cpu()))
            return
        # pairs / triplets: in-batch top-1 (does the anchor's nearest candidate is its own positive) and the loss
        anchors, candidates = columns[0], columns[1:].reshape(-1, columns.shape[-1])
        targets = torch.arange(anchors.shape[0], device=anchors.device)
        sums = self._sums.setdefault(stage, {})
        hits = torch.stack([(a_m @ c_m.T).argmax(dim=1).eq(targets).sum()
                            for a_m, c_m in ((F.normalize(a, dim=-1), F.normalize(c, dim=-1))
                                             for a, c in prefixes(self.nesting_dims, anchors, candidates))])
        losses = MatryoshkaLoss(InBatchNegatives(self.scale), self.loss_weights).to(anchors.device)(
            prefixes(self.nesting_dims, anchors, candidates), targets)
        for key, value in (("correct", hits.double()), ("loss_sum", losses.detach().double() * len(targets)),
                           ("total", torch.tensor(float(len(targets)), dtype=torch.float64))):
            sums[key] = sums.get(key, 0) + value.cpu()

    def compute_metrics(self, stage: str, reduce: Reduce) -> dict[str, float]:
        from scipy.stats import spearmanr

        metrics: dict[str, float] = {}
        scored = self._scored.get(stage, [])
        # Every rank calls the same collectives, even one that saw no scored batch.
        cos = gather_rows(torch.cat([c for c, _ in scored]) if scored else torch.zeros(0, len(self.nesting_dims)))
        scores = gather_rows(torch.cat([s for _, s in scored]) if scored else torch.zeros(0))
        if len(scores) > 1:
            for g, m in enumerate(self.nesting_dims):
                metrics[f"spearman@{m}"] = 100.0 * float(spearmanr(cos[:, g].numpy(), scores.numpy()).statistic)
            metrics["spearman_mean"] = float(np.mean([metrics[f"spearman@{m}"] for m in self.nesting_dims]))
        sums = self._sums.get(stage, {})
        zeros = torch.zeros(len(self.nesting_dims), dtype=torch.float64)
        correct = reduce(sums.get("correct", zeros))
        total, loss_sum = reduce(sums.get("total", torch.zeros((), dtype=torch.float64))), \
            reduce(sums.get("loss_sum", torch.zeros((), dtype=torch.float64)))
        if float(total) > 0:
            for g, m in enumerate(self.nesting_dims):
                metrics[f"accuracy@{m}"] = 100.0 * float(correct[g]) / float(total)
            metrics["accuracy_mean"] = float(np.mean([metrics[f"accuracy@{m}"] for m in self.nesting_dims]))
            metrics["loss"] = float(loss_sum) / float(total)
        metrics["num_samples"] = int(total) + len(scores)
        return metrics

    def monitor_keys(self) -> list[str]:
        keys = [f"val/{kind}@{m}" for kind in ("spearman", "accuracy") for m in self.nesting_dims]
        return keys + ["val/spearman_mean", "val/accuracy_mean", "val/loss"]

    @property
    def default_monitor(self) -> str:
        return "val/loss" if self.monitor == "loss" else f"val/{self.monitor}@{self.nesting_dims[-1]}"

    # ------------------------------------------------------------------------------------------ outputs

    def predict(self, z: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``embeddings [B, width]`` (the last layer), ``labels [B]`` when the data has them and, for a 2D model,
        ``layer_embeddings [L, B, width]`` of every trained layer (the prior layers, then the last)."""
        out = {"embeddings": z[-1] if z.ndim == 3 else z}
        if z.ndim == 3:
            out["layer_embeddings"] = z
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def metadata(self) -> dict[str, Any]:
        layers = [*self.prior_layers, self.num_layers] if self.prior_layers else None
        return {**super().metadata(), "num_classes": None, "loss": self.loss_name, "layers": layers}
