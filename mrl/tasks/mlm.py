"""Masked language modelling with Matryoshka sizes: the paper's BERT experiment.

The MLM output layer is tied to the input embeddings (BERT's decoder is the token embedding matrix ``E [V, width]``),
so there is one output layer for all sizes and MRL becomes MRL-E. For size ``m``, the first ``m`` coordinates of a
masked token's final hidden state go through BERT's MLM transform restricted to its first ``m`` inputs and outputs,
and are scored against the first ``m`` columns of ``E``::

    t_m      = gelu(W[:m, :m] h[:m] + b[:m])                        # the transform's dense layer, sliced
    u_m      = LayerNorm_m(t_m) * gamma[:m] + beta[:m]              # normalised over those m coordinates
    logits_m = E[:, :m] u_m + bias                                  # [V]: the tied decoder, its first m columns

Cross-entropy over the masked tokens at each size; the sizes' losses summed with their weights
(:class:`~mrl.losses.MatryoshkaLoss`). The encoder runs once per step; only the masked positions reach the
transform and the ``[V]``-wide logits. ``head=ff`` trains one size (``nesting_dims=[m]``): the FF-style baseline,
a model trained at that size alone with the same sliced head.

Batches come from :class:`mrl.data.mlm.MLMCollate`: the tokenizer's outputs with masked ``input_ids`` and
``mlm_labels [B, T]`` (the original id at predicted positions, -100 elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrl.data.mlm import IGNORE_INDEX, check_mask_probability, check_mask_token
from mrl.errors import ConfigError
from mrl.losses import CrossEntropy, MatryoshkaLoss
from mrl.tasks.base import Reduce, Task, register_task

HEAD_INITS = ("auto", "random")
# the MLM head of a BertForMaskedLM checkpoint: ours -> the checkpoint's names (older files say gamma/beta)
CHECKPOINT_HEAD = {"dense.weight": ("cls.predictions.transform.dense.weight",),
                   "dense.bias": ("cls.predictions.transform.dense.bias",),
                   "norm.weight": ("cls.predictions.transform.LayerNorm.weight",
                                   "cls.predictions.transform.LayerNorm.gamma"),
                   "norm.bias": ("cls.predictions.transform.LayerNorm.bias",
                                 "cls.predictions.transform.LayerNorm.beta"),
                   "bias": ("cls.predictions.bias", "cls.predictions.decoder.bias")}


class TokenStates(NamedTuple):
    """What :meth:`MaskedLMTask.encode` gives: the last layer's token vectors ``hidden [B, T, width]``, the
    sentence embeddings ``pooled [B, width]`` (the encoder's pooling: what embedding files hold) and the tied
    output layer ``decoder [V, width]`` (the encoder's input embeddings, the parameter itself)."""

    hidden: torch.Tensor
    pooled: torch.Tensor
    decoder: torch.Tensor


class TiedMLMHead(nn.Module):
    """BERT's MLM head (dense, activation, LayerNorm, then the tied decoder plus a bias), usable at any prefix size
    ``m``: the dense weight sliced to ``[m, m]``, the LayerNorm over ``m`` coordinates with its first ``m`` scales
    and shifts, the decoder's first ``m`` columns. At ``m = width`` it is BERT's head exactly."""

    def __init__(self, width: int, vocab_size: int, activation: str = "gelu", eps: float = 1e-12):
        from transformers.activations import ACT2FN

        super().__init__()
        if activation not in ACT2FN:
            raise ConfigError("model.backbone.name", f"the encoder's activation {activation!r} is unknown to "
                              "transformers", "use a BERT-style encoder")
        self.width, self.vocab_size, self.eps = width, vocab_size, float(eps)
        self.activation_name = activation
        self.activation = ACT2FN[activation]
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def reset_parameters(self, std: float) -> None:
        """BERT's initialisation: dense weights normal(0, std), biases 0, LayerNorm scales 1."""
        nn.init.normal_(self.dense.weight, std=std)
        nn.init.zeros_(self.dense.bias)
        self.norm.reset_parameters()
        nn.init.zeros_(self.bias)

    def transform(self, h: torch.Tensor, m: int) -> torch.Tensor:
        """``h [N, >=m] -> [N, m]``: the transform restricted to the first ``m`` inputs and outputs."""
        x = self.activation(F.linear(h[..., :m], self.dense.weight[:m, :m], self.dense.bias[:m]))
        return F.layer_norm(x, (m,), self.norm.weight[:m], self.norm.bias[:m], self.eps)

    def forward(self, h: torch.Tensor, decoder: torch.Tensor, m: int) -> torch.Tensor:
        """Logits ``[N, V]`` of size ``m`` for hidden states ``h [N, width]`` and the tied ``decoder [V, width]``."""
        return F.linear(self.transform(h, m), decoder[:, :m], self.bias)


def checkpoint_mlm_head(source: str) -> dict[str, torch.Tensor] | None:
    """The MLM head tensors of a BertForMaskedLM-style checkpoint (a directory or a cached hub id), by our names;
    ``None`` when it has none (a plain BertModel such as all-MiniLM-L6-v2) or no weights file can be found."""
    from pathlib import Path

    files = []
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = Path(source) / name
        if not Path(source).is_dir():
            try:
                from transformers.utils import cached_file

                found = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
            except Exception:  # noqa: BLE001  (not cached, offline, unknown id: no head to read)
                found = None
            path = Path(found) if found else path
        if path.is_file():
            files.append(path)
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = set(f.keys())
                found = {ours: next((k for k in theirs if k in keys), None) for ours, theirs in CHECKPOINT_HEAD.items()}
                if all(found.values()):
                    return {ours: f.get_tensor(key) for ours, key in found.items()}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            found = {ours: next((k for k in theirs if k in state), None) for ours, theirs in CHECKPOINT_HEAD.items()}
            if all(found.values()):
                return {ours: state[key] for ours, key in found.items()}
    return None


@register_task
class MaskedLMTask(Task):
    """Masked language modelling at every size with the tied, sliced MLM head (MRL-E; see the module doc).

    Args:
        head: ``mrle`` (every size of ``nesting_dims`` through the one tied head) or ``ff`` (one size:
            ``nesting_dims=[m]``, the FF-style baseline trained at that size alone).
        mask_probability: the share of tokens predicted, in (0, 1) (BERT: 0.15); the data masks (the presets pass
            ``data.mask_probability=${model.mask_probability}``), the task records it.
        head_init: ``auto`` (the checkpoint's own MLM head when the pretrained encoder's checkpoint has one, e.g.
            bert-base-uncased; else BERT's initialisation) or ``random`` (BERT's initialisation).
    """

    name = "mlm"

    @classmethod
    def check_config(cls, get) -> None:
        probability = get("model.mask_probability")
        if probability is not None:
            check_mask_probability("model.mask_probability", probability)
        data_probability = get("data.mask_probability")
        if data_probability is not None:
            check_mask_probability("data.mask_probability", data_probability)
            if probability is not None and data_probability != probability:
                raise ConfigError("data.mask_probability", f"is {data_probability} but model.mask_probability is "
                                  f"{probability}", "set data.mask_probability=${model.mask_probability}, as the "
                                  "presets do")
        data = get("data.name")
        if data is not None and data != "mlm_text":
            raise ConfigError("data.name", f"is {data!r}, but the mlm task trains on masked plain text",
                              "use data=mlm_local (local sentences) or data=mlm_wiki_books (data.name=mlm_text)")

    def __init__(self, nesting_dims: Sequence[int], loss_weights: Sequence[float], width: int, head: str = "mrle",
                 mask_probability: float = 0.15, head_init: str = "auto"):
        super().__init__(nesting_dims, loss_weights)
        if head not in ("mrle", "ff"):
            raise ConfigError("model.head", f"is {head!r}, but a masked LM's output layer is the input embedding "
                              "matrix, shared by every size (so MRL is MRL-E)", "use mrle (every size) or ff (one "
                              "size in model.nesting_dims)")
        if head == "ff" and len(self.nesting_dims) != 1:
            raise ConfigError("model.nesting_dims", f"has {len(self.nesting_dims)} sizes for head=ff",
                              "give the one size, e.g. model.nesting_dims=[48]")
        if head_init not in HEAD_INITS:
            raise ConfigError("model.head_init", f"is {head_init!r}", f"choose one of {list(HEAD_INITS)}")
        self.mask_probability = check_mask_probability("model.mask_probability", mask_probability)
        self.head_type, self.head_init, self.width = head, head_init, width
        self.criterion = MatryoshkaLoss(CrossEntropy(), self.loss_weights)
        self.head: TiedMLMHead | None = None   # built by attach(), which knows the vocabulary
        self.head_source = "random"            # where the head's initial weights came from
        self._sums: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------ encoder

    def attach(self, encoder: Any) -> None:
        if not all(hasattr(encoder, a) for a in ("token_states", "input_embeddings", "tokenizer")):
            raise ConfigError("model.backbone.name", f"masked language modelling needs a Hugging Face text encoder, "
                              f"not {type(encoder).__name__}", "use an hf/ encoder (e.g. hf/minilm)")
        check_mask_token(encoder.tokenizer, getattr(encoder, "name", "the encoder"))
        vocab, width = encoder.input_embeddings.shape
        if width != self.width:
            raise ConfigError("model.backbone.name", f"the input embeddings are {width} wide but the encoder's output "
                              f"is {self.width}: the output layer cannot be tied", "use a BERT-style encoder")
        config = encoder.model.config
        self.head = TiedMLMHead(width, vocab, getattr(config, "hidden_act", "gelu"),
                                getattr(config, "layer_norm_eps", 1e-12))
        self.head.reset_parameters(float(getattr(config, "initializer_range", 0.02)))
        if self.head_init == "auto" and getattr(encoder, "pretrained", False):
            stored = checkpoint_mlm_head(getattr(encoder, "source", encoder.name))
            if stored is not None and stored["bias"].shape == (vocab,):
                self.head.load_state_dict(stored)
                self.head_source = "checkpoint"

    def encode(self, encoder: Any, batch: Mapping[str, Any]) -> TokenStates:
        """The encoder's token states (one pass), their pooled sentence embedding, and the tied output layer."""
        hidden, attention_mask = encoder.token_states(batch)
        return TokenStates(hidden, encoder.pool(hidden, attention_mask), encoder.input_embeddings)

    # ------------------------------------------------------------------------------------------ loss

    def _targets(self, batch: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if "mlm_labels" not in batch:
            raise ConfigError("data.name", "the batch has no mlm_labels: the mlm task trains on masked text",
                              "use data=mlm_local or data=mlm_wiki_books (data.name=mlm_text)")
        labels = batch["mlm_labels"].to(device)
        where = labels != IGNORE_INDEX
        return where, labels[where]

    def forward(self, z: TokenStates, batch: Mapping[str, Any]) -> list[torch.Tensor]:
        """Per size, the logits ``[N, V]`` of the ``N`` masked tokens of the batch (in row-major order)."""
        where, _ = self._targets(batch, z.hidden.device)
        masked = z.hidden[where]                                              # [N, width]: the only rows scored
        return [self.head(masked, z.decoder, m) for m in self.nesting_dims]

    def loss(self, outputs: Sequence[torch.Tensor], batch: Mapping[str, Any]) -> torch.Tensor:
        """``[G]``: each size's mean cross-entropy over the masked tokens (0, with gradient, when none is masked)."""
        _, targets = self._targets(batch, outputs[0].device)
        if targets.numel() == 0:
            return torch.stack([logits.sum() * 0.0 for logits in outputs])
        return self.criterion.per_size(outputs, targets)

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return int(batch["input_ids"].shape[0])

    # ------------------------------------------------------------------------------------------ metrics

    def reset_metrics(self, stage: str) -> None:
        self._sums[stage] = {}

    def update_metrics(self, stage: str, outputs: Sequence[torch.Tensor], batch: Mapping[str, Any]) -> None:
        """Exact counts: masked tokens predicted right at each size, summed cross-entropies, masked tokens, texts."""
        _, targets = self._targets(batch, outputs[0].device)
        correct = torch.stack([logits.argmax(dim=-1).eq(targets).sum() for logits in outputs])
        loss_sum = torch.stack([F.cross_entropy(logits.float(), targets, reduction="sum") for logits in outputs])
        sums = self._sums.setdefault(stage, {})
        for key, value in (("correct", correct.double()), ("loss_sum", loss_sum.detach().double()),
                           ("tokens", torch.tensor(float(targets.numel()), dtype=torch.float64)),
                           ("texts", torch.tensor(float(self.batch_size(batch)), dtype=torch.float64))):
            sums[key] = sums.get(key, 0) + value.cpu()

    def compute_metrics(self, stage: str, reduce: Reduce) -> dict[str, float]:
        """``mlm_accuracy@m`` (percent of the masked tokens whose top-1 prediction at size m is the original token)
        and ``loss@m`` (their mean cross-entropy), over the whole split (sums reduced over ranks before dividing);
        ``loss``: the weighted sum over sizes, as trained; ``num_samples``: masked tokens scored."""
        sums = self._sums.get(stage, {})
        zeros, zero = torch.zeros(len(self.nesting_dims), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        correct, loss_sum = reduce(sums.get("correct", zeros)).cpu(), reduce(sums.get("loss_sum", zeros)).cpu()
        tokens, texts = float(reduce(sums.get("tokens", zero))), float(reduce(sums.get("texts", zero)))
        metrics: dict[str, float] = {}
        if tokens > 0:
            for g, m in enumerate(self.nesting_dims):
                metrics[f"mlm_accuracy@{m}"] = 100.0 * float(correct[g]) / tokens
            for g, m in enumerate(self.nesting_dims):
                metrics[f"loss@{m}"] = float(loss_sum[g]) / tokens
            metrics["mlm_accuracy_mean"] = float(np.mean([metrics[f"mlm_accuracy@{m}"] for m in self.nesting_dims]))
            metrics["loss"] = float(sum(w * metrics[f"loss@{m}"] for w, m in zip(self.loss_weights, self.nesting_dims)))
        metrics["num_samples"] = int(tokens)
        metrics["num_texts"] = int(texts)
        return metrics

    def monitor_keys(self) -> list[str]:
        keys = [f"val/{kind}@{m}" for kind in ("mlm_accuracy", "loss") for m in self.nesting_dims]
        return keys + ["val/mlm_accuracy_mean", "val/loss"]

    @property
    def default_monitor(self) -> str:
        return f"val/mlm_accuracy@{self.nesting_dims[-1]}"

    # ------------------------------------------------------------------------------------------ outputs

    def predict(self, z: TokenStates, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``embeddings [B, width]``: the encoder's pooled sentence embedding (its prefixes are the sizes), and
        ``labels`` when the data has them."""
        out = {"embeddings": z.pooled}
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "num_classes": None, "mask_probability": self.mask_probability,
                "vocab_size": self.head.vocab_size if self.head is not None else None,
                "head_init": self.head_source}

    @classmethod
    def data_args(cls, datamodule: Any) -> dict[str, Any]:
        probability = getattr(datamodule, "mask_probability", None)
        if probability is None:
            raise ConfigError("data.name", f"is {getattr(datamodule, 'data_name', type(datamodule).__name__)!r}, but "
                              "the mlm task trains on masked plain text", "use data=mlm_local or data=mlm_wiki_books "
                              "(data.name=mlm_text)")
        return {"mask_probability": probability}
