"""Images per second out of the two training data paths, side by side in one process: the ImageFolder loader
(one JPEG file per sample, seeded epoch sampler, per-sample augmentation seeds) and the WebDataset shard stream
(the same JPEGs in tar shards made by ``scripts/make_shards.py``), with the same transforms, batch, workers and
pinned memory, through each DataModule's own ``train_dataloader``. No model: this is what the loader can feed.

    python benchmarks/dataloader.py                           # CIFAR-10 JPEGs from ../shared/data
    python benchmarks/dataloader.py --workers 4 --batches 60 --repeats 5 --json results/benchmarks/dataloader_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.common import alternate, write_json  # noqa: E402
from mrl.data import create_datamodule  # noqa: E402
from mrl.data.shards import convert_image_folder  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("MRL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(DEFAULT_DATA / "cifar10-jpeg.tar.gz"), help="ImageFolder tree or archive")
    p.add_argument("--shards", default=None, help="shards of --root (default: converted into a temporary folder)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=40, help="timed batches per run, after --warmup")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternated")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def timed(loader, args) -> float:
    """Images per second over ``args.batches`` batches after ``args.warmup`` (worker start-up excluded)."""
    iterator = iter(loader)
    for _ in range(args.warmup):
        next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(args.batches):
        images += len(next(iterator)[1])
    seconds = time.perf_counter() - start
    del iterator  # stops the workers
    return images / seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    common = dict(batch_size=args.batch_size, num_workers=args.workers, seed=0, pin_memory=True, image_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None:
            shards = Path(tmp) / "shards"
            start = time.perf_counter()
            convert_image_folder(args.root, shards, samples_per_shard=1000, cache_dir=os.environ.get("MRL_CACHE_DIR"))
            print(f"converted {args.root} into shards in {time.perf_counter() - start:.0f} s", flush=True)
        folder = create_datamodule("cifar10", root=args.root, verify_images=False, validation="none",
                                   cache_dir=os.environ.get("MRL_CACHE_DIR"), **common)
        stream = create_datamodule("webdataset", root=str(shards), transform="cifar", **common)
        folder.setup("fit"), stream.setup("fit")
        rates, median = alternate({"image_folder": lambda: timed(folder.train_dataloader(), args),
                                   "shards": lambda: timed(stream.train_dataloader(), args)}, args.repeats, "images/s")
    print(f"\nbatch {args.batch_size}, {args.workers} workers, {args.batches} batches x {args.repeats}: ImageFolder "
          f"{median['image_folder']:.1f} images/s, shards {median['shards']:.1f} images/s, "
          f"ratio {median['shards'] / median['image_folder']:.2f}")
    write_json(args.json, args, images_per_s=rates, median=median)
    return 0


if __name__ == "__main__":
    sys.exit(main())
