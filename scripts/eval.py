"""Evaluate a checkpoint's embeddings: ``python scripts/eval.py embeddings_dir=/path/emb [dims=all] ...``.

Thin wrapper over :func:`mrl.evaluation.run.evaluate`; see ``configs/eval.yaml`` for the settings. Progress
(each evaluator, each size) is logged to the console, which is copied to ``<hydra.run.dir>/eval.log``.
"""

import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import mrl.app  # noqa: E402,F401  (the configs' ${mrl.*} resolvers)
from mrl.console import tee_console  # noqa: E402
from mrl.errors import ConfigError  # noqa: E402
from mrl.evaluation.run import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    with tee_console(Path(cfg.paths.output_dir) / f"{cfg.task_name}.log"):
        try:
            tables = evaluate(OmegaConf.to_container(cfg, resolve=True), command=command)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        out = Path(cfg.output_dir)
        for name in tables:
            print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
