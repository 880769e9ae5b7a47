"""The peer arm of the sentence-embedding comparison: all-MiniLM-L6-v2 trained by sentence-transformers itself,
``MatryoshkaLoss`` around ``MultipleNegativesRankingLoss`` with ``SentenceTransformerTrainer``, on the SNLI triplets
our own reader gives (``mrl.data.pairs.load_pairs``, as ``configs/data/snli.yaml`` reads them), with the settings of
our preset ``nli_minilm_matryoshka`` (see ``results/sentence_embeddings/README.md`` for the protocol):

    python scripts/peer_st_train.py --seed 42 --output-dir /work/sent_runs/st_matryoshka-seed42

The model is built from modules (``Transformer`` with ``max_seq_length`` 64, mean ``Pooling``) over the same local
weights as our ``hf/minilm`` encoder, so it starts from the embeddings our ``TextEncoder`` gives (no ``Normalize``
module: the loss normalises each truncated prefix). Writes the trained model to ``--output-dir/model`` (the
transformer at its root, so ``mrl.encoders.text.TextEncoder`` loads it) and ``--output-dir/train.json`` (settings,
steps, seconds, versions). The functions are imported by ``scripts/sentence_embedding_study.py`` and
``benchmarks/contrastive_step.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# What the peer shares with our preset (configs/experiment/nli_minilm_matryoshka.yaml, configs/model/
# minilm_sentence.yaml, configs/task/contrastive.yaml, configs/data/snli.yaml).
DIMS = (384, 192, 96, 48, 24, 12)
RECIPE: dict[str, Any] = {"model": "minilm", "pooling": "mean", "max_length": 64, "batch_size": 32, "epochs": 1,
                          "lr": 2e-5, "warmup_ratio": 0.1, "weight_decay": 0.01, "scale": 20.0,
                          "max_grad_norm": 0.0, "drop_last": True}
SNLI_SOURCE: dict[str, Any] = {"format": "snli", "splits": ["dev", "test"], "options": {"hard_negatives": True}}


def data_dir() -> Path:
    """The shared data folder (``MRL_DATA_DIR``, as ``configs/paths/default.yaml``; else ``../shared/data``)."""
    return Path(os.environ.get("MRL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def snli_triplets(root: str | Path | None = None) -> list[tuple[str, str, str]]:
    """The (premise, entailment, contradiction) rows our SNLI reader trains on, in its order."""
    from mrl.data.pairs import load_pairs

    root = Path(root) if root is not None else data_dir() / "text" / "snli"
    return list(load_pairs(SNLI_SOURCE["format"], root, SNLI_SOURCE["splits"], **SNLI_SOURCE["options"]).rows)


def triplets_dataset(rows: Sequence[tuple[str, str, str]]):
    """The rows as a ``datasets.Dataset`` with columns anchor, positive, negative (the peer's input format)."""
    from datasets import Dataset

    anchors, positives, negatives = (list(column) for column in zip(*rows))
    return Dataset.from_dict({"anchor": anchors, "positive": positives, "negative": negatives})


def build_peer_model(name: str = "minilm", max_length: int = 64, pooling: str = "mean", device: str = "cpu"):
    """A ``SentenceTransformer`` of ``Transformer`` (our ``hf/<name>`` weights and tokenizer, ``max_seq_length``)
    and ``Pooling`` (``pooling``): the modules of our ``TextEncoder`` with that pooling, nothing after them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from mrl.encoders.text import resolve_text_model

    transformer = Transformer(resolve_text_model(name), max_seq_length=max_length)
    pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
    return SentenceTransformer(modules=[transformer, pool], device=device)


def peer_loss(model, dims: Sequence[int] = DIMS, scale: float = 20.0):
    """sentence-transformers' ``MatryoshkaLoss(MultipleNegativesRankingLoss(scale))`` on ``dims``, weights 1."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    return MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=scale), matryoshka_dims=list(dims),
                          matryoshka_weights=[1] * len(dims))


def training_args(output_dir: str | Path, seed: int, recipe: dict[str, Any] = RECIPE, device: str = "cpu"):
    """The ``SentenceTransformerTrainingArguments`` of the recipe: AdamW (the trainer's default, fused torch AdamW),
    linear warm-up over the first tenth of the steps from 0 then linear decay to 0, weight decay off on biases and
    LayerNorm, no gradient clipping (ours clips nothing), the last partial batch dropped (as our loader), the default
    batch sampler (a seeded random permutation, no duplicate avoidance, as ours), fp32, no evaluation, no saves."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=recipe["epochs"], per_device_train_batch_size=recipe["batch_size"],
        learning_rate=recipe["lr"], lr_scheduler_type="linear", warmup_steps=recipe["warmup_ratio"],
        weight_decay=recipe["weight_decay"], max_grad_norm=recipe["max_grad_norm"], seed=seed, data_seed=seed,
        dataloader_drop_last=recipe["drop_last"], batch_sampler=BatchSamplers.BATCH_SAMPLER, fp16=False, bf16=False,
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to="none", use_cpu=device == "cpu",
        disable_tqdm=True)


def train_peer(output_dir: str | Path, seed: int, dims: Sequence[int] = DIMS, snli_root: str | Path | None = None,
               recipe: dict[str, Any] = RECIPE, device: str = "cpu", max_steps: int | None = None) -> dict[str, Any]:
    """Train one seed; the model goes to ``output_dir/model``, the record to ``output_dir/train.json`` (returned)."""
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import set_seed

    output_dir = Path(output_dir)
    set_seed(seed)
    rows = snli_triplets(snli_root)
    model = build_peer_model(recipe["model"], recipe["max_length"], recipe["pooling"], device)
    args = training_args(output_dir / "trainer", seed, recipe, device)
    if max_steps is not None:
        args.max_steps = max_steps
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=triplets_dataset(rows),
                                         loss=peer_loss(model, dims, recipe["scale"]))
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    model.save(str(output_dir / "model"))
    record = {"arm": "st_matryoshka", "seed": seed, "dims": list(dims), "recipe": recipe,
              "triplets": len(rows), "steps": int(trainer.state.global_step), "train_seconds": seconds,
              "train_loss": float(result.training_loss), "optimizer": type(trainer.optimizer).__name__,
              "optim": str(args.optim), "log_history": trainer.state.log_history,
              "versions": {"sentence_transformers": sentence_transformers.__version__,
                           "transformers": transformers.__version__, "torch": torch.__version__}}
    (output_dir / "train.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    p.add_argument("--snli-root", type=Path, default=None, help="default: $MRL_DATA_DIR/text/snli")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (smoke tests)")
    args = p.parse_args(argv)
    record = train_peer(args.output_dir, args.seed, args.dims, args.snli_root, max_steps=args.max_steps)
    print(f"peer seed {args.seed}: {record['steps']} steps in {record['train_seconds']:.0f} s, "
          f"loss {record['train_loss']:.4f} -> {args.output_dir / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
