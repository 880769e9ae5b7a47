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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

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
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def make_datamodule(args):
    dm = create_datamodule("cifar10", root=args.root, verify_images=False, batch_size=args.batch_size,
                           num_workers=args.workers, seed=0, cache_dir=os.environ.get("MRL_CACHE_DIR"))
    dm.setup("fit")
    return dm


MODEL = dict(head="mrl", nesting_dims=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], label_smoothing=0.1,
             optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})


def make_module(args, dm) -> MatryoshkaModule:
    torch.manual_seed(0)
    backbone = {"name": args.backbone, "in_chans": 3, "image_size": 32}
    return MatryoshkaModule(backbone=backbone, num_classes=dm.num_classes, class_names=dm.class_names, **MODEL)


class WindowTimer:
    """Wall-clock seconds from the start of step ``first`` to the end of step ``last`` (0-based)."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.seconds = first, last, None

    def start(self, step: int) -> None:
        if step == self.first:
            self.t0 = time.perf_counter()

    def end(self, step: int) -> bool:
        """True once the window is over."""
        if step == self.last:
            self.seconds = time.perf_counter() - self.t0
        return step >= self.last


def run_framework(args, dm) -> float:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from mrl.checkpointing import AtomicCheckpointIO
    from mrl.training import build_callbacks

    timer = WindowTimer(args.warmup, args.warmup + args.steps - 1)

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
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=args.warmup + args.steps,
                            limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, logger=CSVLogger(out, name="csv"),
                            callbacks=[*callbacks, Window()], plugins=[AtomicCheckpointIO()], default_root_dir=out)
        trainer.fit(module, datamodule=dm)
    return args.steps * args.batch_size / timer.seconds


def run_bare(args, dm) -> float:
    module = make_module(args, dm)
    model, criterion = module.model.train(), module.criterion
    optimizer = create_optimizer(model, **MODEL["optimizer"])
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    timer = WindowTimer(args.warmup, args.warmup + args.steps - 1)
    for step, (x, y) in enumerate(loader):
        timer.start(step)
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
    rates: dict[str, list[float]] = {"framework": [], "bare": []}
    for repeat in range(args.repeats):  # alternate, so drifts of a shared machine hit both alike
        for name, run in (("framework", run_framework), ("bare", run_bare)):
            rates[name].append(run(args, dm))
            print(f"repeat {repeat + 1}/{args.repeats}  {name:9s}  {rates[name][-1]:7.1f} images/s", flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    ratio = median["framework"] / median["bare"]
    print(f"\n{args.backbone}, batch {args.batch_size}, {args.workers} workers, {args.steps} timed steps x "
          f"{args.repeats}: framework {median['framework']:.1f} images/s, bare loop {median['bare']:.1f} images/s, "
          f"ratio {ratio:.3f} (target >= 0.95)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "images_per_s": rates,
                                         "median": median, "ratio": ratio, "machine": platform.platform(),
                                         "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
