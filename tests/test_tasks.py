"""The task layer: the registry, a task that is not classification running through the shared LightningModule,
embedding files and evaluators, and checkpoints from before the task refactor still loading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mrl
from mrl.checkpoint import load_head, read_checkpoint
from mrl.embeddings import embed_split, load_split
from mrl.errors import ConfigError
from mrl.lightning import MatryoshkaModule
from mrl.losses import MatryoshkaLoss, prefixes
from mrl.tasks import TASKS, ClassificationTask, Task, create_task, register_task
from mrl.app.train import train


class UnitNorm(torch.nn.Module):
    """A base loss on one prefix: ``mean((||z[:, :m]|| - 1)^2)``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.norm(dim=-1) - 1) ** 2).mean()


class PrefixNormTask(Task):
    """A task without a classifier, as a contrastive one will be: an embedding loss on every prefix through
    ``MatryoshkaLoss`` + ``prefixes``, one metric per size, no logits."""

    name = "prefix_norm_test"

    def __init__(self, nesting_dims, loss_weights, width: int, scale: float = 1.0):
        super().__init__(nesting_dims, loss_weights)
        self.scale = torch.nn.Parameter(torch.tensor(scale))  # the task's own parameter, trained and saved
        self.criterion = MatryoshkaLoss(UnitNorm(), self.loss_weights)
        self.sums: dict[str, torch.Tensor] = {}

    def forward(self, z, batch):
        return prefixes(self.nesting_dims, self.scale * z)

    def loss(self, outputs, batch):
        return self.criterion.per_size(outputs)

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return len(batch["label"])

    def reset_metrics(self, stage):
        self.sums[stage] = torch.zeros(len(self.nesting_dims) + 1, dtype=torch.float64)

    def update_metrics(self, stage, outputs, batch):
        n = self.batch_size(batch)
        per_size = self.criterion.per_size(outputs).detach().double().cpu() * n
        self.sums[stage] += torch.cat([per_size, torch.tensor([float(n)], dtype=torch.float64)])

    def compute_metrics(self, stage, reduce):
        sums = reduce(self.sums[stage]).cpu()
        n = max(float(sums[-1]), 1.0)
        metrics = {f"loss@{m}": float(s) / n for m, s in zip(self.nesting_dims, sums[:-1])}
        return {**metrics, "loss": sum(metrics.values()), "num_samples": int(sums[-1])}

    def monitor_keys(self):
        return [f"val/loss@{m}" for m in self.nesting_dims] + ["val/loss"]


@pytest.fixture
def prefix_norm_task():
    register_task(PrefixNormTask)
    yield PrefixNormTask
    TASKS.pop(PrefixNormTask.name)


def _loader(n=40, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


MLP = {"name": "mlp", "in_chans": 1, "image_size": 4, "width": 16, "hidden_dim": 32}


def test_registry_and_its_errors():
    assert TASKS["classification"] is ClassificationTask
    with pytest.raises(ConfigError, match=r"^model.task: unknown task 'segmentation'; choose one of \[.*'contrastive'"):
        create_task("segmentation", [4, 8], [1.0, 1.0], width=8)
    with pytest.raises(ConfigError, match="^model.temperature: is not an argument of the 'classification' task"):
        create_task("classification", [4, 8], [1.0, 1.0], width=8, num_classes=3, temperature=0.05)
    with pytest.raises(ConfigError, match="^model.loss_weights: has 1 weights for 2 sizes"):
        create_task("classification", [4, 8], [1.0], width=8, num_classes=3)


def test_unknown_task_in_the_config_fails_before_training(make_cfg):
    with pytest.raises(ConfigError, match="^model.task: unknown task 'segmentation'"):
        train(make_cfg("model.task=segmentation"))


def test_a_task_without_a_classifier_trains_embeds_and_evaluates(tmp_path, prefix_norm_task):
    """The shared module trains any registered task: its loss falls, its parameters are optimised and saved, its
    metrics are logged per size, and its embedding files have no logits but feed the retrieval evaluator."""
    torch.manual_seed(0)
    module = MatryoshkaModule(backbone=MLP, task=prefix_norm_task.name, nesting_dims=[4, 8, 16], scale=0.5,
                              optimizer={"name": "adamw", "lr": 0.01})
    assert module.head_type == "mrl" and module.task.num_logits is None
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.validate(module, _loader(seed=1), verbose=False)
    start = module.results["val"]
    trainer.fit(module, _loader(), _loader(seed=1))
    end = module.results["val"]
    assert set(end) == {"loss@4", "loss@8", "loss@16", "loss", "num_samples"} and end["num_samples"] == 40
    assert end["loss"] < 0.5 * start["loss"], (start, end)
    assert module.task.scale.item() != 0.5  # the task's own parameter was optimised

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded, meta = mrl.load_model(path)
    assert meta["task"] == prefix_norm_task.name and "num_classes" not in meta
    assert reloaded.task.scale.item() == module.task.scale.item()
    with pytest.raises(ConfigError, match="has no classification head"):
        load_head(path)

    for split, seed in (("train", 0), ("test", 1)):
        embed_split(reloaded, _loader(seed=seed), tmp_path / "emb", split, dtype="float32")
    test = load_split(tmp_path / "emb" / "test")
    assert test.logits is None and not (tmp_path / "emb" / "test" / "logits.npy").exists()
    assert test.meta["task"] == prefix_norm_task.name and test.meta["num_classes"] is None
    x = _loader(seed=1).dataset.tensors[0]
    with torch.no_grad():
        np.testing.assert_allclose(test.embeddings, reloaded.embed(x).numpy(), rtol=1e-6, atol=1e-6)

    from mrl.evaluation.run import evaluate

    tables = evaluate({"embeddings_dir": str(tmp_path / "emb"), "output_dir": str(tmp_path / "eval"),
                       "evaluators": ["retrieval"], "dims": [4, 16], "retrieval": {"ks": [5]}})
    assert "retrieval" in tables and (tmp_path / "eval" / "retrieval.csv").is_file()
    with pytest.raises(ConfigError, match="^evaluators: .* read the per-size logits"):
        evaluate({"embeddings_dir": str(tmp_path / "emb"), "output_dir": str(tmp_path / "eval2"),
                  "evaluators": ["adaptive_classification"]})


def _legacy(ckpt: dict) -> dict:
    """A checkpoint as scripts/train.py wrote it before the task refactor: encoder and head under one ``model``,
    no ``task`` hyperparameter, no ``task``/``encoder`` metadata."""
    back = {"encoder.": "model.backbone.", "task.head.": "model.head."}
    state = {}
    for key, value in ckpt["state_dict"].items():
        prefix = next(p for p in back if key.startswith(p))
        state[back[prefix] + key[len(prefix):]] = value
    meta = {k: v for k, v in ckpt["mrl"].items() if k not in ("task", "encoder")}
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "task"}
    return {**ckpt, "state_dict": state, "mrl": meta, "hyper_parameters": hparams}


def test_checkpoints_from_before_the_task_refactor_load_evaluate_and_resume(make_cfg, tmp_path):
    train(make_cfg("logger=csv", "trainer.max_epochs=1"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert all(k.startswith(("encoder.", "task.head.")) for k in ckpt["state_dict"])
    assert ckpt["mrl"]["task"] == "classification" and ckpt["mrl"]["encoder"] == "mlp"
    old = tmp_path / "old.ckpt"
    torch.save(_legacy(ckpt), old)

    module, meta = mrl.load_model(last)
    legacy, legacy_meta = mrl.load_model(old)
    assert legacy_meta["task"] == "classification" and legacy_meta["encoder"] == "mlp"
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(legacy(x), module(x), rtol=0, atol=0)
        torch.testing.assert_close(load_head(old).head(module.embed(x)), module(x), rtol=0, atol=0)
    assert read_checkpoint(old)[0]["state_dict"].keys() == ckpt["state_dict"].keys()
    # Lightning's own loader (the path trainer.fit(ckpt_path=...) takes) reads the old keys too.
    reference = MatryoshkaModule.load_from_checkpoint(old, map_location="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(x), module(x), rtol=0, atol=0)
    out = train(make_cfg("logger=csv", "trainer.max_epochs=2", f"ckpt_path={old}", out="resumed"))
    assert torch.load(out["last_model_path"], weights_only=False)["epoch"] == 1


def test_the_library_imports_neither_the_app_nor_hydra():
    """The library stays usable without Hydra: training a module, embedding, evaluating and reporting import
    neither ``mrl.app`` (the Hydra-facing application) nor Hydra/OmegaConf."""
    import subprocess
    import sys

    code = ("import sys, mrl, mrl.lightning, mrl.embeddings, mrl.evaluation.run, mrl.report.study, mrl.report.write, "
            "mrl.report.compare, mrl.slurm, mrl.tasks, mrl.checkpoint, mrl.data, mrl.encoders.text; "
            "print(sorted(m.split('.')[0] if m.startswith(('hydra', 'omegaconf')) else m for m in sys.modules "
            "if m.startswith(('mrl.app', 'hydra', 'omegaconf'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
