"""Contrastive Matryoshka training (mrl.tasks.ContrastiveTask, mrl.losses.contrastive): the losses against slow
loops and against sentence-transformers' own, the per-size and per-layer sums, the seeded per-step draws, the
gather over 2 processes against one process on the whole batch, 2D layer outputs, and bad settings."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mrl.errors import ConfigError
from mrl.losses import CoSENT, InBatchNegatives
from mrl.tasks import create_task


def slow_in_batch_negatives(anchors, candidates, targets, scale):
    """-log softmax of each anchor's own candidate, written as loops over rows."""
    total = 0.0
    for i in range(len(anchors)):
        a = anchors[i] / anchors[i].norm()
        sims = [scale * float(a @ (c / c.norm())) for c in candidates]
        log_norm = math.log(sum(math.exp(s) for s in sims))
        total += log_norm - sims[int(targets[i])]
    return total / len(anchors)


def slow_cosent(first, second, scores, scale):
    cos = [scale * float(F.cosine_similarity(a, b, dim=0)) for a, b in zip(first, second)]
    terms = [math.exp(cos[j] - cos[i]) for i in range(len(cos)) for j in range(len(cos)) if scores[i] > scores[j]]
    return math.log(1 + sum(terms))


def test_in_batch_negatives_matches_a_loop_and_sentence_transformers():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    g = torch.Generator().manual_seed(0)
    anchors, positives, negatives = (torch.randn(6, 10, generator=g, dtype=torch.float64) for _ in range(3))
    candidates = torch.cat([positives, negatives])
    targets = torch.arange(6)
    ours = InBatchNegatives(scale=20.0)(anchors, candidates, targets)
    assert float(ours) == pytest.approx(slow_in_batch_negatives(anchors, candidates, targets, 20.0), rel=1e-5)
    theirs = MultipleNegativesRankingLoss(model=None, scale=20.0).compute_loss_from_embeddings(
        [anchors.float(), positives.float(), negatives.float()], None)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)


def test_cosent_matches_a_loop_and_sentence_transformers():
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    g = torch.Generator().manual_seed(1)
    first, second = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    scores = torch.tensor([0.0, 1.5, 5.0, 2.2, 2.2, 4.1, 3.0, 0.4])  # a tie: no term between tied pairs
    ours = CoSENT(scale=20.0)(first, second, scores)
    assert float(ours) == pytest.approx(slow_cosent(first, second, scores, 20.0), rel=1e-5)
    theirs = CoSENTLoss(model=None, scale=20.0).compute_loss_from_embeddings([first, second], scores)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)


def triplet_batch(b: int = 5, width: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3 * b, width, generator=g)
    return z, {"input_ids": torch.zeros(3 * b, 4, dtype=torch.long), "num_columns": 3}


def test_task_loss_is_the_base_loss_of_each_prefix():
    """Each size's loss is the base loss of the truncated embeddings (sentence-transformers' MatryoshkaLoss: truncate,
    then the cosine of the loss normalises), with the candidates of every column."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    dims = [2, 4, 16]
    task = create_task("contrastive", dims, [1.0, 1.0, 1.0], 16)
    z, batch = triplet_batch()
    per_size = task.loss(z, batch)
    reference = MultipleNegativesRankingLoss(model=None)
    for g, m in enumerate(dims):
        cols = [c[:, :m] for c in z.view(3, 5, 16)]
        assert float(per_size[g]) == pytest.approx(float(reference.compute_loss_from_embeddings(cols, None)), rel=1e-5)


def test_sizes_per_step_draws_the_same_sizes_for_the_same_seed_and_step():
    dims = [2, 4, 8, 16]
    a = create_task("contrastive", dims, [1.0] * 4, 16, sizes_per_step=2, seed=3)
    b = create_task("contrastive", dims, [1.0] * 4, 16, sizes_per_step=2, seed=3)
    z, batch = triplet_batch()
    draws = set()
    for step in range(12):
        a.step = b.step = step
        loss_a, loss_b = a.loss(z, batch), b.loss(z, batch)
        assert a.sizes_this_step == b.sizes_this_step and len(a.sizes_this_step) == 2
        assert torch.equal(loss_a, loss_b)
        assert all((loss_a[g] != 0) == (g in a.sizes_this_step) for g in range(4))
        draws.add(tuple(a.sizes_this_step))
    assert len(draws) > 1  # the draw changes with the step


def test_2d_layer_outputs_and_their_weights():
    """encoder(batch, layers) pools the hidden states of those layers (the last one equals the usual embedding);
    a 2D task trains the drawn prior layer and the last one, weighted as sentence-transformers' AdaptiveLayerLoss."""
    from mrl.encoders import create_encoder

    encoder = create_encoder("hf/minilm", max_length=16).eval()
    batch = encoder.tokenize(["a man plays a guitar", "two dogs run", "a woman cooks",
                              "music is played", "animals run", "food is made"])
    with torch.no_grad():
        layered = encoder(batch, layers=[1, 3, 6])
        hidden = encoder.model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        assert torch.allclose(layered[1], (hidden[3] * mask).sum(1) / mask.sum(1), atol=1e-5)
        assert torch.allclose(layered[-1], encoder(batch), atol=1e-6)

    task = create_task("contrastive", [12, 384], [1.0, 1.0], 384, layers="all", layer_weighting="linear",
                       prior_layers_weight=0.5)
    task.attach(encoder)
    assert task.prior_layers == [1, 2, 3, 4, 5]
    task.train()
    task.step = 7
    batch["num_columns"] = 2
    with torch.no_grad():
        z = task.encode(encoder, batch)
        (layer,) = task.layers_this_step
        assert z.shape == (2, 6, 384)
        per_size = task.loss(z, batch)
        single = create_task("contrastive", [12, 384], [1.0, 1.0], 384)
        expected = single.loss(z[1], batch) + 0.5 * (1.0 / layer) * single.loss(z[0], batch)
        assert torch.allclose(per_size, expected, atol=1e-6)
        task.eval()
        assert task.encode(encoder, batch).shape == (6, 6, 384)  # every layer in evaluation
        out = task.predict(task.encode(encoder, batch), batch)
        assert out["layer_embeddings"].shape == (6, 6, 384)
        assert torch.equal(out["embeddings"], out["layer_embeddings"][-1])
    assert task.metadata()["layers"] == [1, 2, 3, 4, 5, 6]


def test_metrics_spearman_and_in_batch_accuracy_against_references():
    from scipy.stats import spearmanr

    task = create_task("contrastive", [2, 8], [1.0, 1.0], 8).eval()
    g = torch.Generator().manual_seed(4)
    task.reset_metrics("val")
    firsts, seconds, all_scores = [], [], []
    for _ in range(3):
        z = torch.randn(2 * 7, 8, generator=g)
        scores = torch.rand(7, generator=g) * 5
        task.update_metrics("val", z, {"input_ids": torch.zeros(14, 3), "num_columns": 2, "score": scores})
        firsts.append(z[:7])
        seconds.append(z[7:])
        all_scores.append(scores)
    first, second, scores = torch.cat(firsts), torch.cat(seconds), torch.cat(all_scores)
    z, batch = triplet_batch(b=6, width=8)
    task.update_metrics("val", z, batch)
    metrics = task.compute_metrics("val", lambda t: t)
    for m in (2, 8):
        cos = F.cosine_similarity(first[:, :m], second[:, :m], dim=-1)
        assert metrics[f"spearman@{m}"] == pytest.approx(100 * spearmanr(cos, scores).statistic, abs=1e-6)
        a, c = z.view(3, 6, 8)[0, :, :m], z.view(3, 6, 8)[1:].reshape(12, 8)[:, :m]
        hits = sum(int(max(range(12), key=lambda j: float(F.cosine_similarity(a[i], c[j], dim=0))) == i)
                   for i in range(6))
        assert metrics[f"accuracy@{m}"] == pytest.approx(100 * hits / 6)
    assert metrics["num_samples"] == 21 + 6


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"loss": "triplet"}, "model.loss"),
    ({"head": "mrle"}, "model.head"),
    ({"head": "ff"}, "model.nesting_dims"),
    ({"sizes_per_step": 5}, "model.sizes_per_step"),
    ({"layer_weighting": "cubic"}, "model.layer_weighting"),
    ({"monitor": "top1"}, "model.monitor"),
    ({"scale": 0}, "model.scale"),
])
def test_bad_settings_are_one_line_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        create_task("contrastive", [4, 16], [1.0, 1.0], 16, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("loss", ["mnrl", "cosent"])
def test_a_batch_of_one_is_refused_before_any_data_is_read(tmp_path, loss):
    from conftest import compose

    from mrl.app.train import train

    cfg = compose(["+experiment=nli_minilm_matryoshka", f"model.loss={loss}", "data.batch_size=1",
                   "data.train.root=/nonexistent"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^data\.batch_size: is 1, but a contrastive task needs at least 2 items "
                                          r"per batch: .*; set data\.batch_size to 2 or more") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_layers_need_a_layered_encoder_and_valid_layer_numbers():
    from mrl.encoders import create_encoder

    with pytest.raises(ConfigError, match="model.layers: 2D Matryoshka needs a layered text encoder"):
        image_encoder = create_encoder("mlp", image_size=8, in_chans=1)
        create_task("contrastive", [4, 16], [1.0, 1.0], 16, layers="all").attach(image_encoder)
    text = create_encoder("hf/minilm", max_length=16)
    for bad in ([0], [6], [2, 2], []):
        with pytest.raises(ConfigError, match=r"model\.layers: is .*layers in 1\.\.5"):
            create_task("contrastive", [4, 384], [1.0, 1.0], 384, layers=bad).attach(text)


def test_loss_refuses_data_of_the_other_kind():
    z, batch = triplet_batch()
    with pytest.raises(ConfigError, match="model.loss: cosent trains on scored sentence pairs"):
        create_task("contrastive", [4, 16], [1.0, 1.0], 16, loss="cosent").loss(z, batch)
    scored = {"input_ids": torch.zeros(10, 3), "num_columns": 2, "score": torch.rand(5)}
    with pytest.raises(ConfigError, match="model.loss: mnrl trains on"):
        create_task("contrastive", [4, 16], [1.0, 1.0], 16).loss(z[:10], scored)


# ------------------------------------------------------------------------------------------------ DDP gather


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_and_grad(loss_name: str, z_source: torch.Tensor, batch: dict, weight: torch.Tensor):
    """The module's weighted loss of ``z = z_source @ weight`` and its gradient for ``weight``."""
    weight = weight.clone().requires_grad_(True)
    task = create_task("contrastive", [3, 8], [1.0, 0.5], 8, loss=loss_name).train()
    loss = (task.loss(z_source @ weight, batch) * torch.tensor([1.0, 0.5])).sum()
    loss.backward()
    return loss.detach(), weight.grad


def _columns_of(rows: torch.Tensor, k: int, lo: int, hi: int) -> torch.Tensor:
    """Items lo..hi of a column-major ``[K*B, ...]`` batch, column-major again."""
    b = rows.shape[0] // k
    return torch.cat([rows[c * b + lo:c * b + hi] for c in range(k)])


def _worker(rank: int, world: int, port: int, loss_name: str, k: int, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, scores, weight = _problem(k)
        b = x.shape[0] // k // world
        batch = {"input_ids": torch.zeros(k * b, 2), "num_columns": k}
        if scores is not None:
            batch["score"] = scores[rank * b:(rank + 1) * b]
        loss, grad = _loss_and_grad(loss_name, _columns_of(x, k, rank * b, (rank + 1) * b), batch, weight)
        dist.all_reduce(grad)                      # what DDP does: the mean over ranks of the gradients
        dist.all_reduce(loss)
        out[rank] = (loss / world, grad / world)
    finally:
        dist.destroy_process_group()


def _problem(k: int):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(k * 8, 5, generator=g)
    scores = torch.rand(8, generator=g) * 5 if k == 2 else None
    return x, scores, torch.randn(5, 8, generator=g)


@pytest.mark.parametrize(("loss_name", "k"), [("mnrl", 3), ("cosent", 2)])
def test_gather_on_two_processes_equals_one_process_on_the_whole_batch(loss_name, k):
    """Under DDP each rank's loss sees the candidates (MNRL) or pairs (CoSENT) of both ranks, gathered with gradient:
    the mean of the two ranks' losses and gradients (what DDP averages) equals one process's on the whole batch."""
    x, scores, weight = _problem(k)
    batch = {"input_ids": torch.zeros(x.shape[0], 2), "num_columns": k}
    if scores is not None:
        batch["score"] = scores
    loss_one, grad_one = _loss_and_grad(loss_name, x, batch, weight)
    out = mp.Manager().dict()
    port = _free_port()
    mp.start_processes(_worker, args=(2, port, loss_name, k, out), nprocs=2, join=True, start_method="spawn")
    for rank in range(2):
        loss_two, grad_two = out[rank]
        assert float(loss_two) == pytest.approx(float(loss_one), rel=1e-5)
        assert torch.allclose(grad_two, grad_one, atol=1e-6, rtol=1e-4)


os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
