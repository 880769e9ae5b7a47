"""Convert an ImageFolder tree, or image-caption files, into WebDataset tar shards for ``data=webdataset``:
``python scripts/make_shards.py --src /data/imagenet --out /data/imagenet-shards [--samples-per-shard 1000]``.

``--src`` holds ``train/<class>/<image>`` and ``val/`` (or ``test/``), or is an archive of such a tree. Writes
``<out>/<split>/<split>-NNNNNN.tar`` (each sample: the image's original bytes and its class index, samples
shuffled once across shards) and ``<out>/meta.json``; ``--holdout-fraction 0.01`` also writes a stratified
``holdout`` split taken out of train. Thin wrapper over :func:`mrl.data.shards.convert_image_folder`.

``--captions tsv`` (or ``csv``): ``--src`` holds ``train.tsv`` and ``test.tsv`` of ``path<TAB>caption`` rows (paths
relative to the file); each pair becomes a sample with the image's bytes and its caption, for
``data=image_text data.format=webdataset`` (dual encoders); ``--holdout-fraction`` holds out whole images
(:func:`mrl.data.shards.convert_caption_files`). Shards of an ImageFolder serve dual encoders too (captioned from
the class names with templates).
Pick ``--samples-per-shard`` so that the training shards number at least (GPUs x loader workers): ImageNet's
1.28M images at 1000 per shard give 1,282 shards, enough for 128 GPUs with 10 workers each.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.data.shards import convert_caption_files, convert_image_folder  # noqa: E402
from mrl.errors import ConfigError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="ImageFolder root (train/ and val/ or test/) or an archive of one")
    parser.add_argument("--out", required=True, help="a new folder for the shards")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--holdout-fraction", type=float, default=0.0,
                        help="stratified part of train written as the holdout split (data.validation=holdout)")
    parser.add_argument("--seed", type=int, default=0, help="the holdout draw and the order of samples in shards")
    parser.add_argument("--cache-dir", default=None, help="where an archive is extracted (default ~/.cache/mrl)")
    parser.add_argument("--captions", choices=("tsv", "csv"), default=None,
                        help="--src holds train.<fmt> and test.<fmt> image-caption files instead of an ImageFolder")
    parser.add_argument("--bad-pairs", choices=("skip", "error"), default="skip",
                        help="with --captions: missing or unreadable images and empty captions")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.captions:
            meta = convert_caption_files(args.src, args.out, args.captions, samples_per_shard=args.samples_per_shard,
                                         holdout_fraction=args.holdout_fraction, seed=args.seed,
                                         bad_pairs=args.bad_pairs)
        else:
            meta = convert_image_folder(args.src, args.out, samples_per_shard=args.samples_per_shard,
                                        holdout_fraction=args.holdout_fraction, seed=args.seed,
                                        cache_dir=args.cache_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, info in meta["splits"].items():
        print(f"{split}: {info['num_samples']} samples in {len(info['shards'])} shards")
    what = "captioned pairs" if meta["captions"] else f"{len(meta['classes'])} classes"
    print(f"{what} -> {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
