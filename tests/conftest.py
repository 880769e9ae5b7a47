"""Shared fixtures: offline environment, composed Hydra configs, tiny ImageFolder trees."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Under pytest-xdist (-n N) each worker, and the scripts it starts, gets its share of the cores: torch would
# otherwise start a thread per core in every worker, and N workers would fight over the same cores.
if _workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# Tests never touch the network, whatever the caller's environment says.
os.environ["WANDB_MODE"] = "offline"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_SILENT"] = "true"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
SHARED_DATA = Path(os.environ.get("MRL_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
CIFAR10_TAR = SHARED_DATA / "cifar10-jpeg.tar.gz"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose(overrides: list[str], output_dir: Path):
    """A config composed exactly as ``scripts/train.py`` would, writing into ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import mrl.app  # noqa: F401  (the configs' ${mrl.*} resolvers, as the scripts register them)

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = hydra_compose(config_name="train", return_hydra_config=True, overrides=overrides)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.cache_dir = str(output_dir / "cache")
        cfg.paths.data_dir = str(output_dir / "data")
        del cfg.hydra
    return cfg


@pytest.fixture(scope="session")
def cifar10_cache(tmp_path_factory) -> str:
    """The cache folder of every in-process test that reads the shared CIFAR-10 archive: its 60,000 JPEGs are
    extracted once per session, not once per test (``make_cfg`` gives each run its own cache otherwise)."""
    return str(tmp_path_factory.mktemp("cifar10-cache"))


@pytest.fixture
def make_cfg(tmp_path):
    def factory(*overrides: str, out: str = "run"):
        return compose(list(overrides), tmp_path / out)
    return factory


def write_image_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 4, size: int = 40,
                       splits=("train", "val"), seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png`` with random RGB images; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "imgs")


def run_script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python scripts/<name> args...`` from the project root in this offline environment; with ``check``, a
    non-zero exit fails the test with the script's last error lines."""
    proc = subprocess.run([sys.executable, f"scripts/{name}", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=900, check=False)
    if check:
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return proc


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll ``predicate`` until it holds, while ``proc`` (a run a test will interrupt) is still running."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def assert_same_training_log(run_dir: Path, reference_dir: Path) -> None:
    """Lightning's ``csv/metrics.csv`` of a resumed run holds the training rows of the uninterrupted run: every
    (step, epoch, column) once, none lost to the resume or logged twice, values equal. Test-stage columns are
    left out: a first run that finished (rather than being killed) logged its own test rows too."""
    def cells(folder: Path) -> list[tuple]:
        with open(folder / "csv" / "metrics.csv", newline="") as f:
            return sorted((int(row["step"]), row["epoch"], key, float(value)) for row in csv.DictReader(f)
                          for key, value in row.items()
                          if value and key not in ("step", "epoch") and not key.startswith("test/"))

    got, want = cells(run_dir), cells(reference_dir)
    assert [c[:3] for c in got] == [c[:3] for c in want]
    np.testing.assert_allclose([c[3] for c in got], [c[3] for c in want], rtol=1e-5, atol=1e-6)
