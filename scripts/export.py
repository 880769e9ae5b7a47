"""Export a text checkpoint to sentence-transformers, with its Matryoshka manifest:
``python scripts/export.py ckpt_path=<run>/checkpoints/last.ckpt output_dir=<dir> [quality=<table>] [overwrite=true]``.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.console import quiet_known_warnings  # noqa: E402
from mrl.errors import ConfigError  # noqa: E402
from mrl.export import MANIFEST_NAME, export_sentence_transformer  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    quiet_known_warnings()
    try:
        for field in ("ckpt_path", "output_dir"):
            if not cfg[field]:
                raise ConfigError(field, "is not set", "give ckpt_path=<checkpoint.ckpt> output_dir=<new directory>")
        if not isinstance(cfg.overwrite, bool):
            raise ConfigError("overwrite", f"is {cfg.overwrite!r}", "give true or false")
        quality = OmegaConf.to_container(cfg.quality) if OmegaConf.is_list(cfg.quality) else cfg.quality
        out = export_sentence_transformer(cfg.ckpt_path, cfg.output_dir, quality=quality, overwrite=cfg.overwrite)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"sentence-transformers model: {out}\nmanifest: {out / MANIFEST_NAME}")


if __name__ == "__main__":
    main()
