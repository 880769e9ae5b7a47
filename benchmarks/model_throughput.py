"""Training images/s of a network alone, on synthetic batches: ResNet-50 at ImageNet scale by default.

What the device can train when the data path keeps up (``benchmarks/dataloader.py`` measures the data path): a
full step, forward, ``MatryoshkaLoss``, backward and SGD, on a fixed random batch that already sits on the device,
so that neither decoding nor the host-to-device copy counts. Heads are compared side by side in one process:
``mrl`` (nesting up to the full width, one linear head per size), ``mrle`` (one tied head) and ``ff`` (FF at the
full width, one head: the plain network), in each memory format of ``--memory-formats`` (NCHW ``contiguous``,
NHWC ``channels_last``), eager and, with ``--compile``, under ``torch.compile`` as well.

``--clock cpu`` times each step by the CPU time of this process instead of the wall clock: on a CPU shared with
another job (a study training beside it) the wall clock measures the neighbour; run it with one thread
(``OMP_NUM_THREADS=1``), so that the CPU time is the work of the step.

    python benchmarks/model_throughput.py --device cuda --precision bf16 --memory-formats channels_last --compile \
        --json results/benchmarks/model_throughput_gpu.json
    OMP_NUM_THREADS=1 python benchmarks/model_throughput.py --backbone torchvision/resnet18 --num-classes 10 \
        --image-size 32 --batch-size 128 --heads mrl --memory-formats contiguous,channels_last --clock cpu
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
from mrl.encoders import create_encoder  # noqa: E402
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
    p.add_argument("--repeats", type=int, default=3, help="eager runs of each variant, alternated")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16: autocast")
    p.add_argument("--memory-formats", default="contiguous",
                   help="comma-separated, timed side by side: contiguous (NCHW), channels_last (NHWC)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: CPU time of this process (a CPU shared with another job; use one thread)")
    p.add_argument("--compile", action="store_true", help="also time each variant under torch.compile (one run each)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = sorted(set(args.heads) - {"mrl", "mrle", "ff"})
    if unknown or not args.heads:
        p.error(f"--heads: unknown {unknown or 'empty list'}; choose from mrl, mrle, ff")
    args.memory_formats = [f.strip() for f in args.memory_formats.split(",") if f.strip()]
    unknown = sorted(set(args.memory_formats) - set(MEMORY_FORMATS))
    if unknown or not args.memory_formats:
        p.error(f"--memory-formats: unknown {unknown or 'empty list'}; choose from {', '.join(MEMORY_FORMATS)}")
    if args.clock == "cpu" and args.device == "cuda":
        p.error("--clock cpu: the CPU time of the host does not time device work; use --clock wall on cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    return args


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def synchronize(args) -> None:
    if args.device == "cuda":  # device work is asynchronous: the clock reads only after it has finished
        torch.cuda.synchronize()


def variant_name(head: str, memory_format: str, compiled: bool) -> str:
    return head + f" {memory_format}" * (memory_format != "contiguous") + " compiled" * compiled


def train_rate(args, head: str, memory_format: str, compiled: bool) -> float:
    """Images/s over ``args.steps`` timed steps of one freshly built model (``head``), after ``args.warmup``."""
    torch.manual_seed(0)
    model = create_model(args.backbone, head=head, num_classes=args.num_classes,
                         nesting_dims=[args.width] if head == "ff" else "auto")  # FF: the plain network, one head
    layout = MEMORY_FORMATS[memory_format]
    model = model.to(args.device, memory_format=layout).train()
    criterion = MatryoshkaLoss(CrossEntropy(0.1), [1.0] * len(model.nesting_dims)).to(args.device)
    optimizer = create_optimizer(model, lr=0.1, weight_decay=1e-4)
    network = torch.compile(model) if compiled else model
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(args)
            t0 = clock()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = criterion(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(args)
    seconds = clock() - t0
    if not torch.isfinite(loss):
        raise RuntimeError(f"{head}: the loss is {loss.item()} after {args.warmup + args.steps} steps")
    if args.device == "cuda":
        peak_memory_gib[variant_name(head, memory_format, compiled)] = torch.cuda.max_memory_allocated() / 2**30
    return args.steps * args.batch_size / seconds


peak_memory_gib: dict[str, float] = {}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.width = create_encoder(name=args.backbone).width  # the full embedding width (FF's size)
    variants = [(h, f) for h in args.heads for f in args.memory_formats]
    rates, median = alternate({variant_name(h, f, False): (lambda h=h, f=f: train_rate(args, h, f, False))
                               for h, f in variants}, args.repeats, "images/s")
    if args.compile:
        compiled_rates, compiled = alternate({variant_name(h, f, True): (lambda h=h, f=f: train_rate(args, h, f, True))
                                              for h, f in variants}, 1, "images/s")
        rates.update(compiled_rates)
        median.update(compiled)
    clock = "CPU time of this process" if args.clock == "cpu" else "wall clock"
    print(f"\n{args.backbone}, {args.image_size} px, {args.num_classes} classes ({args.device}, precision "
          f"{args.precision}, {torch.get_num_threads()} threads), batch {args.batch_size}, {args.steps} timed steps, "
          f"synthetic data on the device, {clock}:")
    reference = variant_name(args.heads[-1], args.memory_formats[0], False)
    for name, rate in median.items():
        memory = f", peak memory {peak_memory_gib[name]:.1f} GiB" if name in peak_memory_gib else ""
        print(f"  {name:28s} {rate:9.1f} images/s  ({rate / median[reference]:.3f} x {reference}){memory}")
    write_json(args.json, args, images_per_s=rates, median=median, peak_memory_gib=peak_memory_gib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
