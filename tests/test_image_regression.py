"""Image results do not move with the task-generic core: the digits default and a short CIFAR-10 run, same seed,
give the numbers stored in tests/data/image_regression.json, which were made by this same code at commit
bdb86df (before batches became dicts, encoders a factory and the loss a wrapper):

    git worktree add /tmp/mrl_before bdb86df
    python -c "from tests.test_image_regression import reference_runs; import json; \\
               print(json.dumps(reference_runs('/tmp/mrl_before', '/tmp/regression'), indent=1))"

Compared: test top-1/top-5 per size and the checksum of the trained weights (sum of |w| over the last
checkpoint's tensors), which any change to data order, augmentation, initialisation or the loss would move.

The runs pin the CPU kernels (:data:`PORTABLE_KERNELS`): by default ATen, MKL and oneDNN pick code paths by the
CPU's instruction set and thread count, and the same training on an AVX-512 and an AVX2 machine then drifts by
about 1e-4 in the checksum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CIFAR10_TAR, PROJECT_ROOT

STORED = Path(__file__).parent / "data" / "image_regression.json"
#: the same arithmetic on any x86-64 CPU: scalar ATen kernels, MKL's reproducible mode, oneDNN at SSE4.1, 1 thread
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUNS = {
    "digits_default": [],
    "cifar10_short": ["+experiment=cifar10_resnet18", f"data.root={CIFAR10_TAR}", "data.verify_images=false",
                      "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=4",
                      "test_checkpoint=last"],
}


def reference_runs(project_root: str | Path, out_dir: str | Path) -> dict[str, dict]:
    """Each run of :data:`RUNS` through ``scripts/train.py`` of the checkout at ``project_root``: test top-1 and
    top-5 by size, and the weight checksum of its last checkpoint."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **PORTABLE_KERNELS}
    results = {}
    for name, overrides in RUNS.items():
        run = Path(out_dir) / name
        command = [sys.executable, "scripts/train.py", *overrides, "logger=csv", "callbacks.progress_bar=none",
                   f"hydra.run.dir={run}"]
        proc = subprocess.run(command, cwd=project_root, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = json.loads((run / "metrics_by_dim.json").read_text())["rows"]
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        results[name] = {"by_dim": {str(r["dim"]): [r["top1"], r["top5"]] for r in rows},
                         "weight_abs_sum": float(sum(v.double().abs().sum() for v in state.values()
                                                     if v.is_floating_point()))}
    return results


@pytest.mark.skipif(not CIFAR10_TAR.is_file(), reason="the shared CIFAR-10 archive is not here")
def test_image_results_equal_the_numbers_stored_before_the_generic_core(tmp_path):
    stored = json.loads(STORED.read_text())
    now = reference_runs(PROJECT_ROOT, tmp_path)
    for name in RUNS:
        assert now[name]["by_dim"] == stored[name]["by_dim"], name
        assert now[name]["weight_abs_sum"] == pytest.approx(stored[name]["weight_abs_sum"], rel=1e-6), name
