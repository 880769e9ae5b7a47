"""Host time the framework adds to each training step: a model so small that a step is almost all overhead, run
through ``MatryoshkaModule`` in a Lightning ``Trainer`` (the training app's callbacks, CSV logger, atomic
checkpoint IO) and through a bare PyTorch loop, on the same in-memory batches.

On a GPU this overhead is time the device waits for whenever a step synchronises, so it is what separates the
framework from a bare loop there (``benchmarks/train_throughput.py`` measures that gap on a real model).

    python benchmarks/step_overhead.py                  # milliseconds per step, framework and bare, and the difference
    python benchmarks/step_overhead.py --steps 500 --repeats 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.common import alternate, write_json  # noqa: E402
from mrl.lightning import MatryoshkaModule  # noqa: E402
from mrl.optim import create_optimizer  # noqa: E402

DIMS = [1, 2, 4, 8, 16, 32]  # as many sizes as a ResNet-18 study has, less four
OPTIMIZER = {"name": "sgd", "lr": 0.1, "momentum": 0.9}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="steps per run (one epoch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="runs of each, alternated")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def make_module() -> MatryoshkaModule:
    torch.manual_seed(0)
    return MatryoshkaModule(backbone={"name": "mlp", "in_chans": 1, "image_size": 8, "hidden_dim": 32},
                            num_classes=10, nesting_dims=DIMS, label_smoothing=0.1, optimizer=OPTIMIZER)


def run_framework(loader, steps: int) -> float:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from mrl.checkpointing import AtomicCheckpointIO
    from mrl.app.train import build_callbacks

    module = make_module()
    with tempfile.TemporaryDirectory() as out:
        callbacks, _ = build_callbacks({"checkpoint": {}, "lr_monitor": True}, module, Path(out), validates=False,
                                       has_logger=True, bar="none")
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            logger=CSVLogger(out, name="csv"), callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                            default_root_dir=out)
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        return (time.perf_counter() - start) / steps


def run_bare(loader, steps: int) -> float:
    module = make_module()
    model, criterion = torch.nn.Sequential(module.encoder, module.task.head).train(), module.task.criterion
    optimizer = create_optimizer(model, **OPTIMIZER)
    start = time.perf_counter()
    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    n = args.steps * args.batch_size
    data = torch.utils.data.TensorDataset(torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,)))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    times, median = alternate({"framework": lambda: 1e3 * run_framework(loader, args.steps),
                               "bare": lambda: 1e3 * run_bare(loader, args.steps)}, args.repeats, "ms/step")
    overhead = median["framework"] - median["bare"]
    print(f"\n{len(DIMS)} sizes, batch {args.batch_size}, {args.steps} steps x {args.repeats}: framework "
          f"{median['framework']:.2f} ms/step, bare loop {median['bare']:.2f} ms/step, host overhead "
          f"{overhead:.2f} ms/step")
    write_json(args.json, args, ms_per_step=times, median_ms=median, overhead_ms=overhead)
    return 0


if __name__ == "__main__":
    sys.exit(main())
