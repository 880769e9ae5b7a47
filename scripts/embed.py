"""Embed a checkpoint over data splits: ``python scripts/embed.py ckpt_path=best.ckpt data=cifar10 data.root=...``."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import mrl.app  # noqa: E402,F401  (the configs' ${mrl.*} resolvers)
from mrl.data import create_datamodule  # noqa: E402
from mrl.console import is_main_process, quiet_known_warnings  # noqa: E402
from mrl.embeddings import embed_checkpoint  # noqa: E402
from mrl.errors import ConfigError  # noqa: E402
from mrl.evaluation.robustness import embed_robustness_set  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="embed")
def main(cfg: DictConfig) -> None:
    quiet_known_warnings()
    try:
        if not cfg.ckpt_path:
            raise ConfigError("ckpt_path", "is not set", "give ckpt_path=/path/to/checkpoint.ckpt")
        datamodule = create_datamodule(**OmegaConf.to_container(cfg.data, resolve=True))
        written = embed_checkpoint(cfg.ckpt_path, datamodule, cfg.output_dir, list(cfg.splits), cfg.dtype,
                                   trainer=OmegaConf.to_container(cfg.trainer, resolve=True))
        for name, root in (cfg.get("robustness") or {}).items():
            written[name] = embed_robustness_set(cfg.ckpt_path, root, name, cfg.output_dir, dtype=cfg.dtype,
                                                 num_workers=datamodule.num_workers)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if is_main_process():
        for split, path in written.items():
            print(f"{split}: {path}")


if __name__ == "__main__":
    main()
