"""OmegaConf resolvers of the configs, registered when ``mrl`` is imported (before Hydra resolves a run
directory): ``${mrl.job_dirname:...}`` names a multirun job's folder, ``${mrl.slurm_or:...}`` keys a run
directory by its SLURM job."""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

from mrl.slurm import slurm_or


def job_dirname(override_dirname: str, max_len: int = 120) -> str:
    """A folder name for a multirun job from its overrides (``model.ff_dim=8,seed=1``): path separators
    and shell-hostile characters replaced, long names shortened with a hash so they stay unique."""
    name = re.sub(r"[^A-Za-z0-9._=,+@-]+", "_", override_dirname).strip("_") or "default"
    if len(name) > max_len:
        name = name[: max_len - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


OmegaConf.register_new_resolver("mrl.job_dirname", job_dirname, replace=True)
# Cached like Hydra's ${now:}: the value travels with a pickled config, so a job that hydra-submitit-launcher
# runs on a compute node keeps the sweep folder resolved on the login node.
OmegaConf.register_new_resolver("mrl.slurm_or", slurm_or, replace=True, use_cache=True)
