"""Heads (mrl, mrle, ff) and the Matryoshka loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mrl.errors import ConfigError
from mrl.heads import HEADS, FixedFeatureHead, MatryoshkaHead, TiedMatryoshkaHead, create_head
from mrl.losses import CrossEntropy, MatryoshkaLoss, prefixes

DIMS = [4, 8, 16, 32, 64]
ODD_DIMS = [3, 10, 17, 40]  # sizes that are not powers of two, width 40
NUM_CLASSES = 7
BATCH = 5


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _per_size_reference(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """One separate matmul per size: ``z[:, :m] @ W[:, :m].T + b``."""
    return torch.stack([z[:, :m] @ weight[:, :m].T + bias for m in dims])


# (a) MRL-E logits ------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [DIMS, ODD_DIMS], ids=["pow2", "odd"])
def test_mrle_logits_match_per_size_matmul_float64(dims):
    _seed()
    head = TiedMatryoshkaHead(dims, NUM_CLASSES).double()
    z = torch.randn(BATCH, dims[-1], dtype=torch.float64)
    out = head(z)
    ref = _per_size_reference(z, head.weight, head.bias, dims)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # The last size is a plain linear layer over the full embedding.
    torch.testing.assert_close(out[-1], F.linear(z, head.weight, head.bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [DIMS, ODD_DIMS], ids=["pow2", "odd"])
def test_mrle_logits_match_per_size_matmul_float32(dims):
    _seed(1)
    head = TiedMatryoshkaHead(dims, NUM_CLASSES)
    z = torch.randn(BATCH, dims[-1])
    out = head(z)
    ref64 = _per_size_reference(z.double(), head.weight.double(), head.bias.double(), dims)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, _per_size_reference(z, head.weight, head.bias, dims), rtol=1e-5, atol=1e-5)


def test_mrle_classifier_at_is_prefix_of_shared_weight():
    head = TiedMatryoshkaHead(DIMS, NUM_CLASSES)
    w, b = head.classifier_at(8)
    assert w.shape == (NUM_CLASSES, 8)
    assert torch.equal(w, head.weight[:, :8]) and b is head.bias
    # MRL-E serves sizes it was not trained at, too.
    assert head.classifier_at(12)[0].shape == (NUM_CLASSES, 12)


# (b) MRL heads are independent -----------------------------------------------------------------


@pytest.mark.parametrize("i", range(len(DIMS)))
def test_mrl_loss_at_one_size_only_reaches_its_classifier(i):
    _seed(2)
    head = MatryoshkaHead(DIMS, NUM_CLASSES)
    z = torch.randn(BATCH, DIMS[-1])
    y = torch.randint(0, NUM_CLASSES, (BATCH,))
    F.cross_entropy(head(z)[i], y).backward()
    for j, fc in enumerate(head.classifiers):
        for p in (fc.weight, fc.bias):
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            if j == i:
                assert grad.abs().sum().item() > 0
            else:
                assert torch.count_nonzero(grad).item() == 0, f"size {DIMS[i]} loss reached classifier {DIMS[j]}"


@pytest.mark.parametrize("j", range(len(DIMS)))
def test_mrl_perturbing_one_classifier_leaves_other_sizes_unchanged(j):
    _seed(3)
    head = MatryoshkaHead(DIMS, NUM_CLASSES)
    z = torch.randn(BATCH, DIMS[-1])
    before = head(z).detach()
    with torch.no_grad():
        head.classifiers[j].weight.add_(torch.randn_like(head.classifiers[j].weight))
        head.classifiers[j].bias.add_(1.0)
    after = head(z).detach()
    for i in range(len(DIMS)):
        if i == j:
            assert (after[i] - before[i]).abs().max().item() > 1e-3
        else:
            assert torch.equal(after[i], before[i])


def test_mrl_classifier_shapes_and_classifier_at():
    head = MatryoshkaHead(DIMS, NUM_CLASSES)
    assert [fc.weight.shape for fc in head.classifiers] == [(NUM_CLASSES, m) for m in DIMS]
    w, b = head.classifier_at(16)
    assert torch.equal(w, head.classifiers[2].weight) and b is head.classifiers[2].bias


# (c) prefix property ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 8, 20])
def test_ff_gradient_wrt_embedding_is_zero_beyond_k(k):
    _seed(4)
    width = 32
    head = FixedFeatureHead([k], NUM_CLASSES)
    z = torch.randn(BATCH, width, requires_grad=True)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))
    logits = head(z)
    assert logits.shape == (1, BATCH, NUM_CLASSES)
    F.cross_entropy(logits[0], y).backward()
    assert torch.count_nonzero(z.grad[:, k:]).item() == 0
    assert z.grad[:, :k].abs().sum().item() > 0
    # Same for the logits: changing the tail does nothing.
    z2 = z.detach().clone()
    z2[:, k:] = torch.randn(BATCH, width - k) * 100
    assert torch.equal(head(z2), logits.detach())


@pytest.mark.parametrize("name", ["mrl", "mrle"])
def test_logits_of_size_m_ignore_coordinates_beyond_m(name):
    _seed(5)
    head = create_head(name, DIMS, NUM_CLASSES)
    z = torch.randn(BATCH, DIMS[-1])
    base = head(z).detach()
    for g, m in enumerate(DIMS):
        z2 = z.clone()
        if m < DIMS[-1]:
            z2[:, m:] = torch.randn(BATCH, DIMS[-1] - m) * 100
        out = head(z2).detach()
        assert torch.equal(out[: g + 1], base[: g + 1]), f"{name}: logits of size <= {m} moved"
        if m < DIMS[-1]:
            assert (out[g + 1:] - base[g + 1:]).abs().max().item() > 1e-3
        # Gradient form of the same property.
        zg = z.clone().requires_grad_(True)
        head(zg)[g].sum().backward()
        assert torch.count_nonzero(zg.grad[:, m:]).item() == 0
        assert zg.grad[:, :m].abs().sum().item() > 0


# (d) shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("batch", [1, 6])
def test_head_output_shape(name, batch):
    dims = [16] if name == "ff" else [4, 8, 16]
    head = create_head(name, dims, NUM_CLASSES)
    assert head.name == name and head.nesting_dims == dims
    out = head(torch.randn(batch, 16))
    assert out.shape == (len(dims), batch, NUM_CLASSES)
    assert out.dtype == torch.float32


def test_registry_holds_the_three_heads():
    assert {"mrl", "mrle", "ff"} <= set(HEADS)


# (e) loss --------------------------------------------------------------------------------------


def _manual_smoothed_ce(logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``(1 - eps) * NLL + eps * mean_c(-log p_c)``, batch mean."""
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    uniform = -logp.mean(dim=-1)
    return ((1.0 - eps) * nll + eps * uniform).mean()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_matryoshka_loss_equals_weighted_sum_of_cross_entropies(label_smoothing):
    _seed(6)
    weights = [0.5, 1.0, 2.0, 0.0, 1.5]
    logits = torch.randn(len(weights), 9, NUM_CLASSES) * 3
    y = torch.randint(0, NUM_CLASSES, (9,))
    crit = MatryoshkaLoss(CrossEntropy(label_smoothing), weights)
    loss = crit(logits, y)

    per_size_ref = [F.cross_entropy(logits[g], y, label_smoothing=label_smoothing) for g in range(len(weights))]
    expected = sum(w * ce for w, ce in zip(weights, per_size_ref))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(crit.per_size(logits, y), torch.stack(per_size_ref), rtol=1e-6, atol=1e-6)

    # the loop path (a base loss without `stacked`) gives the same numbers as the one-call path
    looped = MatryoshkaLoss(lambda out, target: crit.base_loss(out, target), weights)
    torch.testing.assert_close(looped(logits, y), loss, rtol=1e-6, atol=1e-6)

    manual = sum(w * _manual_smoothed_ce(logits[g].double(), y, label_smoothing) for g, w in enumerate(weights))
    torch.testing.assert_close(loss.double(), manual, rtol=1e-6, atol=1e-6)
    assert loss.item() > 0


def test_matryoshka_loss_gradient_matches_loop():
    _seed(7)
    weights = [1.0, 0.25, 3.0]
    logits = torch.randn(3, 4, NUM_CLASSES, requires_grad=True)
    y = torch.randint(0, NUM_CLASSES, (4,))
    MatryoshkaLoss(CrossEntropy(0.1), weights)(logits, y).backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    sum(w * F.cross_entropy(ref_logits[g], y, label_smoothing=0.1) for g, w in enumerate(weights)).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)


def _slow_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE written as loops: row i's positive is b[i], its negatives every other b[j]."""
    total = 0.0
    for i in range(a.shape[0]):
        scores = [float(torch.dot(a[i], b[j]) / (a[i].norm() * b[j].norm())) / temperature for j in range(b.shape[0])]
        top = max(scores)
        total += -(scores[i] - top - math.log(sum(math.exp(s - top) for s in scores)))
    return torch.tensor(total / a.shape[0], dtype=torch.float64)


def test_matryoshka_loss_wraps_an_embedding_loss_on_prefixes():
    """A second base loss, on pairs of embedding prefixes (what the contrastive task wraps): the wrapper's value
    equals the weighted loop over sizes, each computed by a slow InfoNCE on a[:, :m], b[:, :m]."""
    _seed(8)
    dims, weights, temperature = [2, 4, 8], [1.0, 0.5, 2.0], 0.1
    a, b = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)

    def info_nce(x, y):
        logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature
        return F.cross_entropy(logits, torch.arange(x.shape[0]))

    loss = MatryoshkaLoss(info_nce, weights)(prefixes(dims, a, b))
    expected = sum(w * _slow_info_nce(a[:, :m], b[:, :m], temperature) for m, w in zip(dims, weights))
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    assert all(p[0].data_ptr() == a.data_ptr() for p in prefixes(dims, a, b))  # views, not copies
    with pytest.raises(ValueError, match="3 weights but got 2 sizes"):
        MatryoshkaLoss(info_nce, weights)(prefixes([2, 4], a, b))


@pytest.mark.parametrize("kind", ["mrl", "mrle", "ff"])
def test_heads_slice_prefixes_of_3d_inputs_like_each_row_alone(kind):
    """``z [B, T, width]`` (per-token embeddings, as an MLM head sees them): each token's logits equal the head
    applied to that token's 2-D row."""
    _seed(9)
    dims = [16] if kind == "ff" else DIMS
    head = create_head(kind, dims, NUM_CLASSES)
    z = torch.randn(3, 5, DIMS[-1])
    out = head(z)
    assert out.shape == (len(dims), 3, 5, NUM_CLASSES)
    for t in range(5):
        torch.testing.assert_close(out[:, :, t], head(z[:, t]), rtol=1e-6, atol=1e-6)


# (f) config errors -----------------------------------------------------------------------------


def test_unknown_head_type_raises_config_error():
    with pytest.raises(ConfigError, match="model.head") as err:
        create_head("linear", [8, 16], NUM_CLASSES)
    assert err.value.field == "model.head"
    assert "mrle" in str(err.value)


def test_ff_with_two_dims_raises_config_error():
    with pytest.raises(ConfigError, match="model.nesting_dims") as err:
        create_head("ff", [8, 16], NUM_CLASSES)
    assert err.value.field == "model.nesting_dims"
    assert "\n" not in str(err.value)


def test_bad_num_classes_raises_config_error():
    with pytest.raises(ConfigError, match="model.num_classes"):
        create_head("mrl", [8, 16], 1)
