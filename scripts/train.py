"""Train and test an MRL / MRL-E / FF model: ``python scripts/train.py +experiment=cifar10_resnet18``.

Exit status: 0 done; 1 the run failed (e.g. a non-finite loss); 2 bad input (one line, before training);
143 stopped by SIGTERM, or by SLURM's requeue signal, after saving a checkpoint (rerun with the printed
``ckpt_path=`` or ``resume=auto``; a requeued SLURM job resumes by itself).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.errors import ConfigError  # noqa: E402
from mrl.lightning import NonFiniteLossError  # noqa: E402
from mrl.slurm import JobRequeued  # noqa: E402
from mrl.app.train import TrainingInterrupted, train  # noqa: E402

SIGTERM_EXIT = 128 + 15  # what a shell reports for a process ended by SIGTERM


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as err:
        print(f"error: {err}; lower model.optimizer.lr, set trainer.gradient_clip_val, or check the data",
              file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as err:
        resume = f"; resume with the same command and ckpt_path={err.checkpoint}" if err.checkpoint else ""
        print(f"{err}{resume}", file=sys.stderr)
        sys.exit(SIGTERM_EXIT)
    except JobRequeued as err:
        print(str(err), file=sys.stderr)
        sys.exit(SIGTERM_EXIT)


if __name__ == "__main__":
    main()
