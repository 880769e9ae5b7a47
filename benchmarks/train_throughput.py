"""Training throughput through the framework against a bare PyTorch loop: same model, data, batch and optimizer.

* framework: ``create_datamodule`` (seeded epoch sampler, per-sample augmentation seeds), ``MatryoshkaModule``,
  a Lightning ``Trainer`` with the training app's callbacks (checkpointing, LR monitor, per-epoch summary), CSV
  logger and atomic checkpoint IO, as ``scripts/train.py`` builds them;
* bare: the DataModule's training dataset in a plain shuffled ``DataLoader`` with the same workers, the same
  model from ``mrl.create_model``, SGD on the same parameter groups, ``MatryoshkaLoss``, a ``for`` loop.

Both time the same window of steps after a warm-up, alternating framework and bare runs in one process;
medians and their ratio are printed (the framework should stay within 5 % of the bare loop).

    python benchmarks/train_throughput.py                          # ResNet-18 on the shared CIFAR-10 tar
    python benchmarks/train_throughput.py --steps 40 --repeats 5 --json results/benchmarks/train_throughput_cpu.json
    # one GPU: CIFAR stem, bf16 autocast, channels_last, batch 512; add --compile for torch.compile on both sides
    python benchmarks/train_throughput.py --device cuda --precision bf16 --channels-last --small-input \
        --batch-size 512 --workers 8 --steps 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.common import alternate, write_json  # noqa: E402
from mrl.data import create_datamodule  # noqa: E402
from mrl.lightning import MatryoshkaModule  # noqa: E402
from mrl.optim import create_optimizer  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("MRL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(DEFAULT_DATA / "cifar10-jpeg.tar.gz"), help="CIFAR-10 archive or folder")
    p.add_argument("--backbone", default="torchvision/resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5, help="steps before the timed window")
    p.add_argument("--steps", type=int, default=25, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternated")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16: autocast (bf16-mixed)")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    p.add_argument("--small-input", action="store_true", help="the CIFAR stem (3x3 stride-1 conv, no max-pool)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network on both sides")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    return args


def make_datamodule(args):
    dm = create_datamodule("cifar10", root=args.root, verify_images=False, batch_size=args.batch_size,
                           num_workers=args.workers, seed=0, cache_dir=os.environ.get("MRL_CACHE_DIR"))
    dm.setup("fit")
    return dm


MODEL = dict(head="mrl", nesting_dims=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], label_smoothing=0.1,
             optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})


def make_module(args, dm) -> MatryoshkaModule:
    torch.manual_seed(0)
    backbone = {"name": args.backbone, "in_chans": 3, "image_size": 32, "small_input": args.small_input}
    return MatryoshkaModule(backbone=backbone, num_classes=dm.num_classes, class_names=dm.class_names,
                            channels_last=args.channels_last, compile=args.compile, **MODEL)


def synchronize(args) -> None:
    if args.device == "cuda":  # device work is asynchronous: the clock reads only after it has finished
        torch.cuda.synchronize()


class WindowTimer:
    """Wall-clock seconds from the start of step ``first`` to the end of step ``last`` (0-based)."""

    def __init__(self, first: int, last: int, sync=lambda: None):
        self.first, self.last, self.seconds, self.sync = first, last, None, sync

    def start(self, step: int) -> None:
        if step == self.first:
            self.sync()
            self.t0 = time.perf_counter()

    def end(self, step: int) -> bool:
        """True once the window is over."""
        if step == self.last:
            self.sync()
            self.seconds = time.perf_counter() - self.t0
        return step >= self.last


def run_framework(args, dm) -> float:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from mrl.checkpointing import AtomicCheckpointIO
    from mrl.app.train import build_callbacks

    timer = WindowTimer(args.warmup, args.warmup + args.steps - 1, lambda: synchronize(args))

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            timer.start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if timer.end(batch_idx):
                trainer.should_stop = True

    module = make_module(args, dm)
    with tempfile.TemporaryDirectory() as out:
        callbacks, _ = build_callbacks({"checkpoint": {}, "lr_monitor": True}, module, Path(out), validates=False,
                                       has_logger=True, bar="none")
        trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                            precision="bf16-mixed" if args.precision == "bf16" else "32-true", max_epochs=1,
                            limit_train_batches=args.warmup + args.steps,
                            limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, logger=CSVLogger(out, name="csv"),
                            callbacks=[*callbacks, Window()], plugins=[AtomicCheckpointIO()], default_root_dir=out)
        trainer.fit(module, datamodule=dm)
    return args.steps * args.batch_size / timer.seconds


def run_bare(args, dm) -> float:
    module = make_module(args, dm)
    # the same encoder, head and loss as the framework's, in a plain loop
    model = torch.nn.Sequential(module.encoder, module.task.head).to(args.device).train()
    criterion = module.task.criterion.to(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    optimizer = create_optimizer(model, **MODEL["optimizer"])
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         pin_memory=args.device == "cuda")
    timer = WindowTimer(args.warmup, args.warmup + args.steps - 1, lambda: synchronize(args))
    for step, (x, y) in enumerate(loader):
        timer.start(step)
        x = x.to(args.device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(args.device, non_blocking=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if timer.end(step):
            break
    return args.steps * args.batch_size / timer.seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    dm = make_datamodule(args)
    rates, median = alternate({"framework": lambda: run_framework(args, dm), "bare": lambda: run_bare(args, dm)},
                              args.repeats, "images/s")
    ratio = median["framework"] / median["bare"]
    setting = f"{args.device}, precision {args.precision}" + ", channels_last" * args.channels_last + \
        ", CIFAR stem" * args.small_input + ", torch.compile" * args.compile
    print(f"\n{args.backbone} ({setting}), batch {args.batch_size}, {args.workers} workers, {args.steps} timed steps x "
          f"{args.repeats}: framework {median['framework']:.1f} images/s, bare loop {median['bare']:.1f} images/s, "
          f"ratio {ratio:.3f} (target >= 0.95)")
    write_json(args.json, args, images_per_s=rates, median=median, ratio=ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
