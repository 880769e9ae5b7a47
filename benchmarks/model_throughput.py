"""Training images/s of a network alone at ImageNet scale: ResNet-50, 224 px, 1000 classes, on synthetic batches.

What one GPU can train when the data path keeps up (``benchmarks/dataloader.py`` measures the data path): a
full step, forward, ``MatryoshkaLoss``, backward and SGD, on a fixed random batch that already sits on the device,
so that neither decoding nor the host-to-device copy counts. Heads are compared side by side in one process:
``mrl`` (nesting 8..2048, nine linear heads), ``mrle`` (one tied head) and ``ff`` (FF-2048, one head: a plain
ResNet-50), each eager and, with ``--compile``, under ``torch.compile`` as well.

    python benchmarks/model_throughput.py --device cuda --precision bf16 --channels-last --compile \
        --json results/benchmarks/model_throughput_gpu.json
    python benchmarks/model_throughput.py --batch-size 8 --image-size 64 --steps 3   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.common import alternate, write_json  # noqa: E402
from mrl import create_model  # noqa: E402
from mrl.losses import CrossEntropy, MatryoshkaLoss  # noqa: E402
from mrl.optim import create_optimizer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="torchvision/resnet50")
    p.add_argument("--heads", default="mrl,ff", help="comma-separated: mrl, mrle, ff (FF at the full width)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=10, help="steps before the timed window")
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="eager runs of each head, alternated")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16: autocast")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    p.add_argument("--compile", action="store_true", help="also time each head under torch.compile (one run each)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = sorted(set(args.heads) - {"mrl", "mrle", "ff"})
    if unknown or not args.heads:
        p.error(f"--heads: unknown {unknown or 'empty list'}; choose from mrl, mrle, ff")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    return args


def synchronize(args) -> None:
    if args.device == "cuda":  # device work is asynchronous: the clock reads only after it has finished
        torch.cuda.synchronize()


def train_rate(args, head: str, compiled: bool) -> float:
    """Images/s over ``args.steps`` timed steps of one freshly built model (``head``), after ``args.warmup``."""
    torch.manual_seed(0)
    model = create_model(args.backbone, head=head, num_classes=args.num_classes,
                         nesting_dims=[2048] if head == "ff" else "auto")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(args.device, memory_format=memory_format).train()
    criterion = MatryoshkaLoss(CrossEntropy(0.1), [1.0] * len(model.nesting_dims)).to(args.device)
    optimizer = create_optimizer(model, lr=0.1, weight_decay=1e-4)
    network = torch.compile(model) if compiled else model
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(args)
            t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = criterion(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(args)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(loss):
        raise RuntimeError(f"{head}: the loss is {loss.item()} after {args.warmup + args.steps} steps")
    if args.device == "cuda":
        peak_memory_gib[f"{head}{' compiled' * compiled}"] = torch.cuda.max_memory_allocated() / 2**30
    return args.steps * args.batch_size / seconds


peak_memory_gib: dict[str, float] = {}


def main(argv=None) -> int:
    args = parse_args(argv)
    rates, median = alternate({head: (lambda h=head: train_rate(args, h, False)) for head in args.heads},
                              args.repeats, "images/s")
    if args.compile:
        compiled_rates, compiled = alternate({f"{h} compiled": (lambda h=h: train_rate(args, h, True))
                                              for h in args.heads}, 1, "images/s")
        rates.update(compiled_rates)
        median.update(compiled)
    setting = f"{args.device}, precision {args.precision}" + ", channels_last" * args.channels_last
    print(f"\n{args.backbone}, {args.image_size} px, {args.num_classes} classes ({setting}), batch {args.batch_size}, "
          f"{args.steps} timed steps, synthetic data on the device:")
    reference = median[args.heads[-1]]
    for name, rate in median.items():
        memory = f", peak memory {peak_memory_gib[name]:.1f} GiB" if name in peak_memory_gib else ""
        print(f"  {name:14s} {rate:9.1f} images/s  ({rate / reference:.3f} x {args.heads[-1]} eager){memory}")
    write_json(args.json, args, images_per_s=rates, median=median, peak_memory_gib=peak_memory_gib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
