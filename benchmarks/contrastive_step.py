"""Training step time of our contrastive Matryoshka loss against sentence-transformers' ``MatryoshkaLoss`` around
``MultipleNegativesRankingLoss``: all-MiniLM-L6-v2, the same batches of SNLI triplets (batch 32, at most 64 tokens),
sizes 384 ... 12, in one process, alternated, medians.

* step: ours is ``MatryoshkaModule.training_step`` (the module ``scripts/train.py`` builds for
  ``+experiment=nli_minilm_matryoshka``: one encoder pass over the 3 x 32 texts, ``ContrastiveTask``'s loss on every
  prefix) + backward + our AdamW step; the peer is ``SentenceTransformerTrainer.compute_loss`` (its loss on the
  trainer's collated batch) + backward + the trainer's own optimiser step (``create_optimizer``). Batches are
  tokenised beforehand by each side's own collator, so only what a step computes is timed.
* trainer (``--trainer``): the whole training loops, a Lightning ``Trainer`` with the training app's callbacks
  against ``SentenceTransformerTrainer``, each fed by its own loader over the SNLI triplets; the time from the start
  of step ``--warmup`` to the end of the last step.

Before any step both losses are computed on the first batch with dropout off, from the same pretrained weights:
they are the same objective, so they must agree (printed, and in the JSON).

    python benchmarks/contrastive_step.py                       # ms per step, ours and the peer's, and the ratio
    python benchmarks/contrastive_step.py --trainer --json results/sentence_embeddings/contrastive_step_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.common import alternate, write_json
from scripts.peer_st_train import (
    DIMS,
    RECIPE,
    build_peer_model,
    peer_loss,
    snli_triplets,
    training_args,
    triplets_dataset,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESET = ("+experiment=nli_minilm_matryoshka", "data.validation=none", "model.scheduler.start_factor=0.0")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=5, help="repeats of each, alternated")
    p.add_argument("--trainer", action="store_true", help="also time the whole training loops")
    p.add_argument("--trainer-warmup", type=int, default=2, help="untimed first steps of each trainer run")
    p.add_argument("--trainer-steps", type=int, default=6, help="timed steps of each trainer run")
    p.add_argument("--trainer-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def preset_config():
    """The composed training config of our preset with the study's overrides (what scripts/train.py gets)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import mrl.app  # noqa: F401  (the configs' ${mrl.*} resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(PRESET))


def plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def our_module():
    """Our module and optimiser as ``scripts/train.py`` builds them for the preset (the scheduler aside)."""
    from mrl.lightning import MatryoshkaModule
    from mrl.optim import create_optimizer

    torch.manual_seed(0)
    model = plain(preset_config().model)
    backbone = model.pop("backbone")
    module = MatryoshkaModule(backbone=backbone, **model).train()
    optimizer = create_optimizer(module, encoder=module.encoder, **module.optimizer_cfg)
    return module, optimizer


def peer_trainer(rows, output_dir: Path, max_steps: int | None = None, seed: int = 0):
    """The peer's model, loss and trainer (and its optimiser) as ``scripts/peer_st_train.py`` trains them."""
    from sentence_transformers import SentenceTransformerTrainer

    torch.manual_seed(0)
    model = build_peer_model(RECIPE["model"], RECIPE["max_length"], RECIPE["pooling"])
    args = training_args(output_dir, seed=seed)
    if max_steps is not None:
        args.max_steps = max_steps
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=triplets_dataset(rows),
                                         loss=peer_loss(model, DIMS, RECIPE["scale"]))
    return model, trainer


def batches(rows, count: int, batch_size: int = 32) -> list[list[tuple[str, str, str]]]:
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    return [[rows[i] for i in order[b * batch_size:(b + 1) * batch_size]] for b in range(count)]


def loss_check(module, model, trainer, ours_batch, peer_batch) -> tuple[float, float]:
    """Both losses on one batch, dropout off, from the same weights."""
    module.eval()
    model.eval()
    with torch.no_grad():
        ours = float(module.training_step(ours_batch, 0))
        peer = float(trainer.compute_loss(model, dict(peer_batch)))
    module.train()
    model.train()
    return ours, peer


def step_comparison(args, rows, out: Path) -> dict:
    from mrl.data.pairs import PairCollate
    from mrl.encoders.text import load_tokenizer

    module, optimizer = our_module()
    model, trainer = peer_trainer(rows, out / "peer")
    peer_optimizer = trainer.create_optimizer()
    count = args.steps + 1
    chosen = batches(rows, count)
    collate = PairCollate(load_tokenizer("minilm"), RECIPE["max_length"])
    ours_batches = [collate([{"texts": row} for row in batch]) for batch in chosen]
    peer_batches = [trainer.data_collator([{"anchor": a, "positive": p, "negative": n} for a, p, n in batch])
                    for batch in chosen]
    initial = loss_check(module, model, trainer, ours_batches[0], peer_batches[0])
    print(f"loss on the first batch, dropout off, same weights: ours {initial[0]:.6f}, peer {initial[1]:.6f}")

    def ours_step(i: int) -> None:
        loss = module.training_step(ours_batches[i], i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def peer_step(i: int) -> None:
        loss = trainer.compute_loss(model, dict(peer_batches[i]))
        peer_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        peer_optimizer.step()

    def timed(step) -> float:
        step(0)  # untimed: the first batch
        start = time.perf_counter()
        for i in range(1, count):
            step(i)
        return 1e3 * (time.perf_counter() - start) / args.steps

    times, median = alternate({"ours": lambda: timed(ours_step), "peer": lambda: timed(peer_step)}, args.repeats,
                              "ms/step")
    return {"what": "training step (forward, Matryoshka MNRL loss, backward, AdamW)", "unit": "ms/step",
            "ours": median["ours"], "peer": median["peer"], "ratio": median["ours"] / median["peer"],
            "values": times, "initial_loss": {"ours": initial[0], "peer": initial[1]}}


class Window:
    """Wall-clock seconds from the start of step ``first`` to the end of step ``last`` (0-based)."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.seconds = first, last, None

    def start(self, step: int) -> None:
        if step == self.first:
            self.t0 = time.perf_counter()

    def end(self, step: int) -> None:
        if step == self.last:
            self.seconds = time.perf_counter() - self.t0


def run_ours_trainer(args, out: Path) -> float:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from mrl.app.train import build_callbacks, build_module
    from mrl.checkpointing import AtomicCheckpointIO
    from mrl.data import create_datamodule

    cfg = preset_config()
    L.seed_everything(42, workers=True, verbose=False)
    datamodule = create_datamodule(**plain(cfg.data))
    datamodule.setup("fit")
    module = build_module(plain(cfg.model), datamodule)
    window = Window(args.trainer_warmup, args.trainer_warmup + args.trainer_steps - 1)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            window.start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            window.end(batch_idx)

    with tempfile.TemporaryDirectory(dir=out) as run_dir:
        callbacks, _ = build_callbacks(plain(cfg.callbacks), module, Path(run_dir), validates=False,
                                       has_logger=True, bar="none")
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.trainer_warmup + args.trainer_steps,
                            max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                            enable_model_summary=False, logger=CSVLogger(run_dir, name="csv"),
                            callbacks=[*callbacks, Timer()], plugins=[AtomicCheckpointIO()], default_root_dir=run_dir)
        trainer.fit(module, datamodule=datamodule)
    return 1e3 * window.seconds / args.trainer_steps


def run_peer_trainer(args, rows, out: Path) -> float:
    from transformers import TrainerCallback

    window = Window(args.trainer_warmup, args.trainer_warmup + args.trainer_steps - 1)

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            window.start(state.global_step)

        def on_step_end(self, targs, state, control, **kwargs):
            window.end(state.global_step - 1)  # global_step counts the finished step here

    with tempfile.TemporaryDirectory(dir=out) as run_dir:
        _, trainer = peer_trainer(rows, Path(run_dir), max_steps=args.trainer_warmup + args.trainer_steps, seed=42)
        trainer.add_callback(Timer())
        trainer.train()
    return 1e3 * window.seconds / args.trainer_steps


def main(argv=None) -> int:
    import sentence_transformers

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = snli_triplets()
    comparisons = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        comparisons["step"] = step_comparison(args, rows, out)
        if args.trainer:
            times, median = alternate({"ours": lambda: run_ours_trainer(args, out),
                                       "peer": lambda: run_peer_trainer(args, rows, out)}, args.trainer_repeats,
                                      "ms/step")
            comparisons["trainer"] = {
                "what": "whole training loop (loader, trainer, callbacks, logging, step)", "unit": "ms/step",
                "ours": median["ours"], "peer": median["peer"], "ratio": median["ours"] / median["peer"],
                "values": times}
    print()
    for name, part in comparisons.items():
        print(f"{name}: ours {part['ours']:.1f} ms/step, peer {part['peer']:.1f} ms/step, ours / peer "
              f"{part['ratio']:.3f}")
    description = (f"all-MiniLM-L6-v2, batch {RECIPE['batch_size']} SNLI triplets (96 texts), at most "
                   f"{RECIPE['max_length']} tokens, sizes {', '.join(map(str, DIMS))}, fp32, CPU; "
                   f"{args.steps} timed steps per repeat after one untimed"
                   + (f"; trainers: {args.trainer_steps} timed steps after {args.trainer_warmup} untimed, "
                      f"{args.trainer_repeats} repeats" if args.trainer else ""))
    write_json(args.json, args, description=description, comparisons=comparisons, repeats=args.repeats,
               sentence_transformers=sentence_transformers.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
